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

With --seeds 0,1,2 each trained method runs once per seed (the adapter's or prefix's initial values
and the order of the training batches) on one data split (--data-seed, default the first seed);
each row then keeps the per-seed values and reports the mean and standard error of every score.
Chapter 11's SmolLM2 table (30 minutes on a shared 2-core CPU, one thread):

    python -m reference.finetune.results --model smollm2-135m-instruct \
        --methods base,full,lora,lora-all,qlora-nf4,qlora-q4_1,prefix,p-tuning-v2 --steps 12 \
        --examples-per-batch 4 --context-length 128 --eval-examples 32 --seeds 0,1,2

Runs this short show the differences between methods at one small budget, not the best each can reach.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import re
import sys
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
            partial: Path | None = None, seeds: tuple[int, ...] | list[int] | None = None,
            data_seed: int | None = None, command: str = "python -m reference.finetune.results") -> dict[str, Any]:
    """Train and score each method; returns the JSON payload (see the module docstring). With
    `partial`, the payload so far is written there after every method (a long run keeps its rows).

    With `seeds`, every trained method runs once per seed (the seed sets the adapter's or prefix's
    initialisation and the order of the training batches) on one data set, built with `data_seed`
    (default: the first seed), so that all seeds are scored on the same examples. Each row then
    holds `per_seed` values, and its `validation` and `held_out` scores are the means over seeds,
    with their standard errors (sample standard deviation / sqrt(seeds)) in `validation_se` and
    `held_out_se`. `base` trains nothing and so is scored once (standard error 0)."""
    from reference.pretrained import load_pretrained

    seeds = [seed] if seeds is None else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds!r}")
    data_seed = seeds[0] if data_seed is None else int(data_seed)
    torch.manual_seed(seeds[0])
    device = pick_device(device)
    base, tokenizer = load_pretrained(model_name)
    base = base.to(device)
    data = build_dataset(per_task=per_task, seed=data_seed)
    encode = lambda split: [encode_example(tokenizer, e) for e in split]  # noqa: E731
    train = encode(data["train"])
    validation = encode(data["validation"][:eval_examples])
    held_out = encode(data["held_out"][:: max(1, len(data["held_out"]) // eval_examples)][:eval_examples])
    pad_id = 0
    full_bytes = _state_bytes(base)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}  # method -> one entry per seed
    fixed: dict[str, dict[str, Any]] = {}  # method -> what does not depend on the seed

    def payload() -> dict[str, Any]:
        rows = [_aggregate(method, fixed[method], runs[method]) for method in methods if runs[method]]
        return {
            "command": command,
            "seed": seeds[0],
            "seeds": seeds,
            "data_seed": data_seed,
            "config": {"model": model_name, "methods": list(methods), "steps": steps, "examples_per_batch": examples_per_batch,
                       "per_task": per_task, "eval_examples": eval_examples, "context_length": context_length, "rank": rank,
                       "held_out_tasks": list(HELD_OUT), "learning_rates": {m: _rate(m) for m in methods if m != "base"},
                       "train_examples": len(train), "validation_examples": len(validation), "held_out_examples": len(held_out),
                       "seeds": seeds, "data_seed": data_seed},
            "full_checkpoint_bytes": full_bytes,
            "methods": rows,
            "machine": machine_info(device),
        }

    for run_seed in seeds:  # seeds outermost: a run stopped early still has every method for the first seeds
        for method in methods:
            if method == "base" and runs[method]:
                continue  # nothing random: scored once
            start = time.perf_counter()
            torch.manual_seed(run_seed)  # the adapter's / prefix's initialisation
            model = prepare(method, base, model_name, rank=rank)
            run: dict[str, Any] = {"seed": run_seed}
            if method not in fixed:
                trainable, total = accounting.trainable_parameters(model)
                fixed[method] = {"trainable_parameters": trainable, "total_parameters": total,
                                 "weight_bytes": accounting.weight_bytes(model), "optimizer_bytes": 0}
                if method != "base":  # the memory of one step depends on shapes only: measured for the first seed
                    batch = pack_examples(train[:examples_per_batch], context_length, pad_id).to(device)
                    probe = copy.deepcopy(model)
                    optimizer = AdamW([p for p in probe.parameters() if p.requires_grad], lr=0.0, weight_decay=0.0)
                    fixed[method]["memory"] = accounting.training_step_memory(probe, lambda m: sft_loss(m, batch), optimizer)
                    fixed[method]["optimizer_bytes"] = fixed[method]["memory"]["optimizer"]
                    del probe, optimizer
            if method != "base":
                config = SFTConfig(steps=steps, examples_per_batch=examples_per_batch, context_length=context_length,
                                   learning_rate=_rate(method), min_learning_rate=_rate(method) / 10,
                                   warmup_steps=max(1, steps // 10), seed=run_seed, progress=progress)
                log = train_sft(model, train, config, pad_id)
                run["train_loss_first"], run["train_loss_last"] = log["loss"][0], sum(log["loss"][-5:]) / len(log["loss"][-5:])
                run["train_seconds"] = round(log["seconds"], 2)
                if method.startswith(("lora", "qlora")) and "adapter_file_bytes" not in fixed[method]:  # also lora-r<N>
                    with tempfile.TemporaryDirectory() as folder:
                        size = lora.save_adapter(model, Path(folder) / "adapter.safetensors").stat().st_size
                        fixed[method]["adapter_file_bytes"] = size
            run["validation"] = score_examples(model, validation, context_length, pad_id=pad_id)
            run["held_out"] = score_examples(model, held_out, context_length, pad_id=pad_id)
            run["seconds"] = round(time.perf_counter() - start, 2)
            runs[method].append(run)
            if progress:
                print(f"seed {run_seed} {method:12s} trainable {fixed[method]['trainable_parameters']:>11,}  "
                      f"val loss {run['validation']['loss']:.3f}  held-out loss {run['held_out']['loss']:.3f}  "
                      f"({run['seconds']:.0f} s)", flush=True)
            del model
            if partial is not None:
                write_json(partial, payload())
    return payload()


SCORES = ("loss", "token_accuracy", "exact")


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """The mean of `values` and its standard error, sample std (n - 1) / sqrt(n); 0 for one value."""
    if not values:
        raise ValueError("mean_and_se needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def _aggregate(method: str, fixed: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: the seed-independent columns, the per-seed values, and mean and standard error."""
    row: dict[str, Any] = {"method": method, **fixed, "seeds": [r["seed"] for r in runs]}
    for split in ("validation", "held_out"):
        mean, se = {}, {}
        for key in SCORES:
            mean[key], se[key] = mean_and_se([r[split][key] for r in runs])
        mean["examples"] = runs[0][split]["examples"]
        mean["perplexity"] = math.exp(mean["loss"])
        row[split], row[f"{split}_se"] = mean, se
    for key in ("train_loss_first", "train_loss_last", "train_seconds", "seconds"):
        if key in runs[0]:
            row[key] = sum(r[key] for r in runs) / len(runs)
    row["per_seed"] = runs
    return row


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
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (e.g. 0,1,2): each trained method once per seed, "
                        "scored as mean and standard error; overrides --seed")
    parser.add_argument("--data-seed", type=int, default=None, help="seed of the data set's split (default: the first seed)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="default: chapters/results/11_methods_<model>.json")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS and not re.fullmatch(r"lora-r\d+", m)]
    if unknown or not methods:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    try:
        seeds = None if args.seeds is None else [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        parser.error(f"--seeds must be distinct integers, got {args.seeds!r}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    payload = measure(args.model, methods, steps=args.steps, examples_per_batch=args.examples_per_batch, per_task=args.per_task,
                      eval_examples=args.eval_examples, context_length=args.context_length, rank=args.rank, seed=args.seed,
                      seeds=seeds, data_seed=args.data_seed, device=args.device, progress=not args.quiet,
                      command=" ".join(["python -m reference.finetune.results", *(sys.argv[1:] if argv is None else argv)]), partial=Path(args.out or RESULTS / f"11_methods_{args.model}.json"))
    out = args.out or RESULTS / f"11_methods_{args.model}.json"
    print(f"wrote {write_json(out, payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
