"""`python -m reference.finetune.results` (or `llm-course finetune`): every fine-tuning method of
Chapter 11 measured on one model, written to chapters/results/11_methods_<model>.json.

For each method, starting from the same pretrained model (SmolLM2-135M-Instruct by default):
trainable parameters, AdamW's state in bytes, the memory of one training step (weights,
gradients, optimizer state, saved activations: `reference.finetune.accounting`), training time,
and the teacher-forced response loss and token accuracy on the validation split (the trained task
types) and on the held-out task types, before ("base") and after SFT. The methods:

    base          no training: the score before SFT
    full          every parameter trained (optional: --methods full; 135M parameters on a CPU is slow)
    lora          LoRA r=8 on the query and value projections (Hu et al., 2021's choice)
    lora-all      LoRA r=8 on every projection of every block
    qlora-nf4     LoRA r=8 (q, v) over NF4 weights with double quantization (Dettmers et al., 2023)
    qlora-q4_1    LoRA r=8 (q, v) over the GGUF file's own Q4_1 blocks (a course model: re-quantized)
    prefix        prefix tuning, 16 virtual tokens, reparameterised by an MLP (Li & Liang, 2021)
    p-tuning-v2   16 virtual tokens per layer, learned directly (Liu et al., 2022)
    lora-r<N>     LoRA (q, v) of rank N, for the rank sweep (e.g. --methods lora-r1,lora-r4,lora-r16,lora-r64)

The defaults are sized to run in about 10-15 minutes on a busy 2-core CPU; they show the
differences between methods, not the best each can reach.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reference.finetune import accounting, lora, quant
from reference.finetune.instructions import HELD_OUT, build_dataset, encode_example
from reference.finetune.sft import SFTConfig, pack_examples, score_examples, sft_loss, train_sft
from reference.runtime import machine_info, pick_device, write_json
from reference.training.numerics import AdamW

METHODS = ("base", "full", "lora", "lora-all", "qlora-nf4", "qlora-q4_1", "prefix", "p-tuning-v2")
DEFAULT_METHODS = ("base", "lora", "lora-all", "qlora-nf4", "qlora-q4_1", "prefix", "p-tuning-v2")
LEARNING_RATES = {"full": 5e-5, "lora": 2e-3, "lora-all": 2e-3, "qlora-nf4": 2e-3, "qlora-q4_1": 2e-3,
                  "prefix": 3e-3, "p-tuning-v2": 1e-2}  # fmt: skip
RESULTS = Path(__file__).resolve().parents[2] / "chapters" / "results"  # 11_methods_<model>.json


def prepare(method: str, base: nn.Module, model_name: str, rank: int = 8, virtual_tokens: int = 16) -> nn.Module:
    """A fresh copy of `base` set up for `method`: the trainable parts require gradients, the rest is frozen."""
    if re.fullmatch(r"lora-r\d+", method):  # the rank sweep: "lora-r2" is "lora" with r = 2
        method, rank = "lora", int(method[6:])
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or lora-r<rank>, got {method!r}")
    if method == "qlora-q4_1" and model_name == "smollm2-135m-instruct":
        model = quant.from_gguf()  # the file's own blocks, bit for bit
    else:
        model = copy.deepcopy(base)
    model = model.to(next(base.parameters()).device)
    if method == "base":
        for p in model.parameters():
            p.requires_grad_(False)
    elif method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method in ("lora", "lora-all", "qlora-nf4", "qlora-q4_1"):
        if method == "qlora-nf4":
            quant.quantize_model(model, "nf4")
        elif method == "qlora-q4_1" and model_name != "smollm2-135m-instruct":
            quant.quantize_model(model, "q4_1")
        targets = quant.LINEAR_TARGETS if method == "lora-all" else ["q_proj", "v_proj"]
        lora.inject_lora(model, targets, r=rank, alpha=2.0 * rank)
    else:
        from reference.prompting.modules import PrefixTuning, PromptedLM

        prefix = PrefixTuning.for_model(model, virtual_tokens, reparameterize=method == "prefix", hidden_size=256)
        model = PromptedLM(model, prefix=prefix)
    return model


def measure(model_name: str = "smollm2-135m-instruct", methods: tuple[str, ...] = DEFAULT_METHODS, steps: int = 30,
            examples_per_batch: int = 8, per_task: int = 120, eval_examples: int = 40, context_length: int = 160,
            rank: int = 8, seed: int = 0, device: str | None = None, progress: bool = True,
            partial: Path | None = None) -> dict[str, Any]:
    """Train and score each method; returns the JSON payload (see the module docstring). With
    `partial`, the payload so far is written there after every method (a long run keeps its rows)."""
    from reference.pretrained import load_pretrained

    torch.manual_seed(seed)
    device = pick_device(device)
    base, tokenizer = load_pretrained(model_name)
    base = base.to(device)
    data = build_dataset(per_task=per_task, seed=seed)
    encode = lambda split: [encode_example(tokenizer, e) for e in split]  # noqa: E731
    train = encode(data["train"])
    validation = encode(data["validation"][:eval_examples])
    held_out = encode(data["held_out"][:: max(1, len(data["held_out"]) // eval_examples)][:eval_examples])
    pad_id = 0
    full_bytes = _state_bytes(base)
    rows: list[dict[str, Any]] = []

    def payload() -> dict[str, Any]:
        return {
            "command": "python -m reference.finetune.results",
            "seed": seed,
            "config": {"model": model_name, "methods": list(methods), "steps": steps, "examples_per_batch": examples_per_batch,
                       "per_task": per_task, "eval_examples": eval_examples, "context_length": context_length, "rank": rank,
                       "held_out_tasks": list(HELD_OUT), "learning_rates": {m: _rate(m) for m in methods if m != "base"},
                       "train_examples": len(train), "validation_examples": len(validation), "held_out_examples": len(held_out)},
            "full_checkpoint_bytes": full_bytes,
            "methods": rows,
            "machine": machine_info(device),
        }

    for method in methods:
        start = time.perf_counter()
        model = prepare(method, base, model_name, rank=rank)
        trainable, total = accounting.trainable_parameters(model)
        row: dict[str, Any] = {"method": method, "trainable_parameters": trainable, "total_parameters": total,
                               "weight_bytes": accounting.weight_bytes(model)}
        if method != "base":
            batch = pack_examples(train[:examples_per_batch], context_length, pad_id).to(device)
            probe = copy.deepcopy(model)
            optimizer = AdamW([p for p in probe.parameters() if p.requires_grad], lr=0.0, weight_decay=0.0)
            row["memory"] = accounting.training_step_memory(probe, lambda m: sft_loss(m, batch), optimizer)
            row["optimizer_bytes"] = row["memory"]["optimizer"]
            del probe, optimizer
            config = SFTConfig(steps=steps, examples_per_batch=examples_per_batch, context_length=context_length,
                               learning_rate=_rate(method), min_learning_rate=_rate(method) / 10,
                               warmup_steps=max(1, steps // 10), seed=seed, progress=progress)
            log = train_sft(model, train, config, pad_id)
            row["train_loss_first"], row["train_loss_last"] = log["loss"][0], sum(log["loss"][-5:]) / len(log["loss"][-5:])
            row["train_seconds"] = round(log["seconds"], 2)
            if method.startswith(("lora", "qlora")):  # also the rank sweep's lora-r<N>
                with tempfile.TemporaryDirectory() as folder:
                    row["adapter_file_bytes"] = lora.save_adapter(model, Path(folder) / "adapter.safetensors").stat().st_size
        else:
            row["optimizer_bytes"] = 0
        row["validation"] = score_examples(model, validation, context_length, pad_id=pad_id)
        row["held_out"] = score_examples(model, held_out, context_length, pad_id=pad_id)
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
        if progress:
            print(f"{method:12s} trainable {trainable:>11,}  val loss {row['validation']['loss']:.3f}  "
                  f"held-out loss {row['held_out']['loss']:.3f}  ({row['seconds']:.0f} s)", flush=True)
        del model
        if partial is not None:
            write_json(partial, payload())
    return payload()


def _rate(method: str) -> float:
    return LEARNING_RATES["lora" if re.fullmatch(r"lora-r\d+", method) else method]


def _state_bytes(model: nn.Module) -> int:
    """Size of the model's full checkpoint as a safetensors file (tied weights once)."""
    from safetensors.torch import save

    seen, state = set(), {}
    for name, p in model.state_dict().items():
        if p.untyped_storage().data_ptr() in seen:
            continue
        seen.add(p.untyped_storage().data_ptr())
        state[name] = p.contiguous().cpu()
    return len(save(state))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.finetune.results", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="smollm2-135m-instruct or llama-tiny")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--examples-per-batch", type=int, default=8)
    parser.add_argument("--per-task", type=int, default=120)
    parser.add_argument("--eval-examples", type=int, default=40)
    parser.add_argument("--context-length", type=int, default=160)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="default: chapters/results/11_methods_<model>.json")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS and not re.fullmatch(r"lora-r\d+", m)]
    if unknown or not methods:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    payload = measure(args.model, methods, steps=args.steps, examples_per_batch=args.examples_per_batch, per_task=args.per_task,
                      eval_examples=args.eval_examples, context_length=args.context_length, rank=args.rank, seed=args.seed,
                      device=args.device, progress=not args.quiet, partial=Path(args.out or RESULTS / f"11_methods_{args.model}.json"))
    out = args.out or RESULTS / f"11_methods_{args.model}.json"
    print(f"wrote {write_json(out, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
