"""Chapter 13's long runs, as commands that write JSON results (seed, configuration, machine):

    llm-course evaluate MODEL [MODEL ...] --tasks T [T ...] [--limit N]   -> chapters/results/13_harness.json
    python -m reference.evaluation.run canary [--steps N] [--seeds S]     -> chapters/results/13_canary.json

MODEL is a course model ("llama-tiny", "smollm2-135m-instruct"), "llama-tiny+lora-sft" (llama-tiny
after a short seeded LoRA SFT run of Chapter 11 on the instruction data's training split, done
inside the command) or "uniform-guess" (the chance baseline). The tasks are the harness's registry
(corpus tasks, Chapter 11's instruction tasks on held-out items) and "course_code", pass@k on the
course's function-completion problems, n samples per problem run against their tests. The
evaluation also scores perplexity per corpus source (held-out documents) and the bias pairs for
each real model.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from reference.evaluation import execution, harness, instruction_tasks, perplexity, security
from reference.runtime import machine_info, pick_device, seed_everything, write_json

ROOT = Path(__file__).resolve().parents[2]
HARNESS_JSON = ROOT / "chapters" / "results" / "13_harness.json"
CANARY_JSON = ROOT / "chapters" / "results" / "13_canary.json"
MODELS = ("llama-tiny", "llama-tiny+lora-sft", "smollm2-135m-instruct", "uniform-guess")
CODE_TASK = "course_code"
ALL_TASKS = (*sorted(harness.TASKS), CODE_TASK)
SFT = {"method": "lora", "steps": 150, "examples_per_batch": 16, "context_length": 256}  # Chapter 11's LoRA (q_proj, v_proj, r 8)


def held_out_texts(max_docs: int = 2) -> dict[str, list[str]]:
    """A few held-out documents of each corpus source."""
    from reference.data.corpus import SOURCES

    return {source: [d.text for d in harness.held_out(source)[:max_docs]] for source in SOURCES}


def lora_sft_model(seed: int, device: torch.device, steps: int = SFT["steps"]) -> tuple[Any, Any, dict[str, Any]]:
    """llama-tiny fine-tuned by Chapter 11's LoRA SFT (`reference.finetune`) on the training split of
    the instruction data that the instruction tasks draw their held-out items from; (model, tokenizer, log)."""
    from reference.finetune.instructions import encode_example
    from reference.finetune.results import LEARNING_RATES, prepare
    from reference.finetune.sft import SFTConfig, train_sft
    from reference.pretrained import load_pretrained

    seed_everything(seed)
    base, tokenizer = load_pretrained("llama-tiny")
    model = prepare(SFT["method"], base.to(device), "llama-tiny")
    train = [encode_example(tokenizer, e) for e in instruction_tasks.instruction_data(seed=seed)["train"]]
    lr = LEARNING_RATES[SFT["method"]]
    config = SFTConfig(steps=steps, examples_per_batch=SFT["examples_per_batch"], context_length=SFT["context_length"],
                       learning_rate=lr, min_learning_rate=lr / 10, warmup_steps=max(1, steps // 10), seed=seed,
                       progress=False)  # fmt: skip
    log = train_sft(model, train, config)
    summary = {**SFT, "steps": steps, "learning_rate": lr, "seed": seed, "train_examples": len(train),
               "loss_first": log["loss"][0], "loss_last": sum(log["loss"][-10:]) / len(log["loss"][-10:]),
               "seconds": log["seconds"]}  # fmt: skip
    return model, tokenizer, summary


def evaluate_models(models: list[str], tasks: list[str], limit: int, seed: int = 0, device: str | None = None,
                    ppl_tokens: int = 2048, window: int = 256, stride: int = 128, code_samples: int = 10,
                    code_problems: int | None = None, sft_steps: int = SFT["steps"]) -> dict[str, Any]:  # fmt: skip
    """Every model on every task (the same items and few-shot examples), plus perplexity per source and bias."""
    from reference.pretrained import load_pretrained

    dev = pick_device(device)
    built = {name: harness.get_task(name, n=limit, seed=seed) for name in tasks if name != CODE_TASK}
    problems = execution.PROBLEMS[:code_problems]
    ks = sorted({1, min(5, code_samples), code_samples})
    texts = held_out_texts()
    results, ppl, bias, timing, sft = [], {}, {}, {}, {}
    for name in models:
        start = time.perf_counter()
        seed_everything(seed)
        if name == "uniform-guess":
            lm: Any = harness.UniformGuess(seed)
        else:
            if name == "llama-tiny+lora-sft":
                model, tokenizer, sft[name] = lora_sft_model(seed, dev, sft_steps)
            else:
                model, tokenizer = load_pretrained(name)
            lm = harness.HarnessLM(model.to(dev), tokenizer, name)
            ppl[name] = perplexity.scores_by_source(lm.model, tokenizer, texts, min(window, lm.max_length), stride, ppl_tokens)
            bias[name] = security.stereotype_preference(lm, security.bias_pairs())
        for task in built.values():
            r = harness.evaluate_task(lm, task, seed=seed)
            r["model"] = name
            results.append(r)
        if CODE_TASK in tasks and name != "uniform-guess":  # a chance baseline writes no code
            chat = bool(getattr(lm.tokenizer, "chat_template", None))  # instruction-tuned: asked in a chat turn
            r = execution.evaluate_code(lm, problems, n=code_samples, ks=ks, seed=seed, chat=chat)
            r["model"] = name
            results.append(r)
        timing[name] = time.perf_counter() - start
    return {
        "command": "llm-course evaluate " + " ".join(models) + " --tasks " + " ".join(tasks) + f" --limit {limit}"
                   + f" --code-samples {code_samples}",
        "seed": seed,
        "config": {"models": models, "tasks": tasks, "limit": limit, "perplexity": {"window": window, "stride": stride,
                   "tokens_per_document": ppl_tokens, "documents_per_source": 2},
                   "code": {"problems": len(problems), "samples": code_samples, "ks": ks, "temperature": 0.8, "top_p": 0.95},
                   "instruction_data": {"per_task": instruction_tasks.PER_TASK, "seed": seed}},  # fmt: skip
        "sft": sft,
        "machine": machine_info(dev),
        "results": results,
        "perplexity": ppl,
        "bias": bias,
        "seconds": timing,
        "table": harness.results_table(results, models),
    }


def canary_run(steps: int, n_digits: int, repeats: tuple[int, ...], seed: int, device: torch.device,
               text_bytes: int, reference_candidates: int = 1000) -> dict[str, Any]:  # fmt: skip
    """One training run of Carlini et al. (2019)'s experiment in small: a fresh tiny LLaMA-style
    model trained on Shakespeare with one random secret inserted r times for each r in `repeats`
    (r = 0: a secret never seen), then every secret's exposure among all 10^n_digits candidates,
    and, as the reference distribution, the exposures of `reference_candidates` random candidates
    that were never inserted."""
    from reference.data.corpus import load_source
    from reference.models.llama import TransformerLM
    from reference.pretrained import load_pretrained
    from reference.training.assets import split_documents

    gen = seed_everything(seed)
    rng = random.Random(seed)
    _, tokenizer = load_pretrained("llama-tiny")
    secrets = {r: [rng.randrange(10) for _ in range(n_digits)] for r in repeats}
    train_docs, _ = split_documents(load_source("books"))
    lines = "\n".join(d.text for d in train_docs)[:text_bytes].split("\n")
    for r, digits in secrets.items():  # the canaries go to random lines
        for _ in range(r):
            lines.insert(rng.randrange(len(lines)), security.canary_text(digits))
    ids = torch.tensor(tokenizer.encode("\n".join(lines)))
    context, batch_size = 64, 32
    model = TransformerLM(vocab_size=len(tokenizer.vocab), context_length=context, d_model=96, num_layers=2, num_heads=4,
                          num_kv_heads=2, d_ff=256, tie_embeddings=True).to(device)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - context - 1, (batch_size,), generator=gen)
        batch = torch.stack([ids[s : s + context + 1] for s in starts.tolist()]).to(device)
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    loss_tensor = security.secret_losses(model, tokenizer, n_digits)
    all_losses = loss_tensor.tolist()
    inserted = {int("".join(map(str, d))) for r, d in secrets.items() if r > 0}
    pool = [i for i in range(len(all_losses)) if i not in inserted]
    reference = rng.sample(pool, min(reference_candidates, len(pool)))
    ref_exposure = security.exposures_of(reference, loss_tensor).tolist()
    rows = []
    for r, digits in secrets.items():
        index = int("".join(map(str, digits)))
        rows.append({"repeats": r, "secret": "".join(map(str, digits)),
                     "exposure": security.exposure(all_losses[index], all_losses), "loss": all_losses[index]})  # fmt: skip
    return {"seed": seed, "tokens": int(len(ids)), "epochs": steps * batch_size * context / len(ids),
            "train_loss_first_last": [losses[0], sum(losses[-20:]) / min(20, len(losses))], "canaries": rows,
            "never_inserted": {"n": len(ref_exposure), "mean": sum(ref_exposure) / len(ref_exposure),
                               "exposures": [round(e, 4) for e in ref_exposure]}}  # fmt: skip


def canary_experiment(steps: int = 300, n_digits: int = 4, repeats: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32),
                      seeds: int = 3, device: str | None = None, text_bytes: int = 400_000) -> dict[str, Any]:  # fmt: skip
    """`canary_run` for seeds 0..seeds-1 (each with its own secrets), with the exposure's mean and
    standard deviation per number of repeats."""
    dev = pick_device(device)
    runs = [canary_run(steps, n_digits, tuple(repeats), seed, dev, text_bytes) for seed in range(seeds)]
    never = [e for run in runs for e in run["never_inserted"]["exposures"]]
    summary = {}
    for r in repeats:
        values = [row["exposure"] for run in runs for row in run["canaries"] if row["repeats"] == r]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
        summary[str(r)] = {"mean": mean, "std": std, "values": values}
    return {
        "command": f"python -m reference.evaluation.run canary --steps {steps} --seeds {seeds} --digits {n_digits}",
        "seeds": list(range(seeds)),
        "config": {"steps": steps, "n_digits": n_digits, "repeats": list(repeats), "text_bytes": text_bytes, "context": 64,
                   "batch": 32, "lr": 3e-3, "model": "TransformerLM d_model 96, 2 layers, 4 heads, 2 kv heads"},  # fmt: skip
        "machine": machine_info(dev),
        "max_exposure": math.log2(10**n_digits),
        "never_inserted": {"n": len(never), "mean": sum(never) / len(never),
                           "std": math.sqrt(sum((e - sum(never) / len(never)) ** 2 for e in never) / max(1, len(never) - 1)),
                           "expected": security.expected_random_exposure(10**n_digits)},  # fmt: skip
        "runs": runs,
        "summary": summary,
    }


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help=f"any of {', '.join(MODELS)}")
    parser.add_argument("--tasks", nargs="+", default=list(ALL_TASKS), help=f"tasks (default: all of {list(ALL_TASKS)})")
    parser.add_argument("--limit", type=int, default=100, help="items per task (default: 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--ppl-tokens", type=int, default=2048, help="tokens per held-out document for perplexity")
    parser.add_argument("--code-samples", type=int, default=10, help=f"samples per problem of {CODE_TASK} (default: 10)")
    parser.add_argument("--code-problems", type=int, default=None, help="the first N problems only (default: all)")
    parser.add_argument("--sft-steps", type=int, default=SFT["steps"], help=f"LoRA SFT steps of llama-tiny+lora-sft (default: {SFT['steps']})")
    parser.add_argument("--json", default=str(HARNESS_JSON), help=f"where to write (default: {HARNESS_JSON.relative_to(ROOT)})")


def run_evaluate(args: argparse.Namespace) -> int:
    unknown = [m for m in args.models if m not in MODELS]
    bad_tasks = [t for t in args.tasks if t not in ALL_TASKS]
    problems = ([f"unknown model(s) {unknown}; use {', '.join(MODELS)}"] if unknown else []) + (
        [f"unknown task(s) {bad_tasks}; use {', '.join(ALL_TASKS)}"] if bad_tasks else []) + (
        [f"--limit must be >= 1, got {args.limit}"] if args.limit < 1 else []) + (
        [f"--code-samples must be >= 1, got {args.code_samples}"] if args.code_samples < 1 else []) + (
        [f"--sft-steps must be >= 2, got {args.sft_steps}"] if args.sft_steps < 2 else [])  # fmt: skip
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    payload = evaluate_models(args.models, args.tasks, args.limit, args.seed, args.device, args.ppl_tokens,
                              code_samples=args.code_samples, code_problems=args.code_problems, sft_steps=args.sft_steps)
    write_json(args.json, payload)
    print(payload["table"])
    print(f"results written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-course" if argv and argv[0] == "evaluate" else "python -m reference.evaluation.run",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_arguments(sub.add_parser("evaluate", help="the harness table"))
    canary = sub.add_parser("canary", help="canary exposure after a short training run")
    canary.add_argument("--steps", type=int, default=300)
    canary.add_argument("--seeds", type=int, default=3, help="training runs, seeds 0..N-1 (default: 3)")
    canary.add_argument("--digits", type=int, default=4, help="digits per secret: 10^digits candidates (default: 4)")
    canary.add_argument("--text-bytes", type=int, default=400_000, help="bytes of Shakespeare to train on")
    canary.add_argument("--device", default=None)
    canary.add_argument("--json", default=str(CANARY_JSON))
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        return run_evaluate(args)
    payload = canary_experiment(args.steps, args.digits, seeds=args.seeds, device=args.device, text_bytes=args.text_bytes)
    write_json(args.json, payload)
    for r, row in payload["summary"].items():
        print(f"repeats {int(r):3d}: exposure {row['mean']:.2f} ± {row['std']:.2f} bits of {payload['max_exposure']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
