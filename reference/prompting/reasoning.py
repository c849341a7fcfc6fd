"""Chain of thought against direct answering, on word problems of graded difficulty.

The task: arithmetic word problems whose level is the number of operations (level 1: "has a, gets
b more"; level 2: then gives c away; level 3: then finds d more), small whole numbers, every
intermediate count >= 1. Four ways to ask (survey section 4):
- "direct": the assistant's turn opens with "The answer is" and the model writes the number (a
  short budget): Kojima et al.'s zero-shot baseline;
- "zero-shot CoT" (Kojima et al., 2022): the turn opens with "Let's think step by step.", the model
  writes its reasoning, and a second pass appends "Therefore, the answer is" to read the number
  (their two-stage answer extraction);
- "few-shot direct" (Brown et al., 2020): one solved exemplar of the same level as an earlier turn,
  answered "The answer is N.", and the query's turn opened with "The answer is";
- "few-shot CoT" (Wei et al., 2022): the same exemplar answered with a worked solution that ends
  "The answer is N."
The answer is read back by `reading`: for the styles that end on a given answer cue (direct, and the
second pass of zero-shot CoT) the first number the model writes after it; for few-shot CoT
Exercise 3.6's `extract_answer` (the number after the last "answer is", else the last number).

Every style's prompts run as one left-padded batch through `reference.inference.generate.generate`
(greedy, KV cache), not one problem at a time.

`python -m reference.prompting.reasoning --out chapters/results/03_cot.json` runs it on
SmolLM2-135M-Instruct; `--model llama-tiny --per-level 2 --max-new-tokens 8` is the shrunk run the
test uses (llama-tiny has no chat template: the prompts are then "Question: ...\\nAnswer:").
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from reference.prompting.core import _NUMBER, extract_answer
from reference.validation import check_int

LEVELS = (1, 2, 3)
STYLES = ("direct", "zero-shot CoT", "few-shot direct", "few-shot CoT")
ANSWER_CUE = "The answer is"
COT_TRIGGER = "Let's think step by step."
SECOND_PASS = "\nTherefore, the answer is"
_NAMES = ("Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana")
_THINGS = ("apples", "books", "coins", "pens", "shells", "stickers", "marbles")


def word_problems(n: int, level: int, seed: int = 0) -> list[dict[str, Any]]:
    """n problems of `level` operations: {"question", "answer", "steps"} where steps are the worked
    solution's sentences ("7 + 5 = 12."). Level 1 adds; level 2 adds then subtracts; level 3 adds,
    subtracts, adds. Numbers 2..9, every count along the way >= 1."""
    check_int("n", n, 1)
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    rng = random.Random(f"{seed}-{level}")
    out = []
    for _ in range(n):
        who, what = rng.choice(_NAMES), rng.choice(_THINGS)
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        total = a + b
        q = [f"{who} has {a} {what}.", f"{who} gets {b} more."]
        steps = [f"{who} starts with {a} {what} and gets {b} more: {a} + {b} = {total}."]
        if level >= 2:
            c = rng.randint(1, total - 1)
            q.append(f"Then {who} gives {c} away.")
            steps.append(f"Giving {c} away leaves {total} - {c} = {total - c}.")
            total -= c
        if level >= 3:
            d = rng.randint(2, 9)
            q.append(f"Then {who} finds {d} more.")
            steps.append(f"Finding {d} more makes {total} + {d} = {total + d}.")
            total += d
        q.append(f"How many {what} does {who} have now?")
        out.append({"question": " ".join(q), "answer": total, "steps": steps, "level": level})
    return out


def reading(text: str, style: str) -> float | None:
    """The answer a model's output gives under `style`: the first number for the styles whose output
    follows an answer cue ("direct", "few-shot direct", and the second pass of "zero-shot CoT"),
    `extract_answer` (after the last "answer is", else the last number) for "few-shot CoT"."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if style != "few-shot CoT":
        found = re.search(_NUMBER, text)
        return None if found is None else float(found.group(0).replace(",", "").rstrip("."))
    return extract_answer(text)


def _solution(problem: dict[str, Any], cot: bool) -> str:
    return (" ".join(problem["steps"]) + " " if cot else "") + f"{ANSWER_CUE} {problem['answer']}."


def prompt_text(tokenizer, problem: dict[str, Any], style: str, exemplars: Sequence[dict[str, Any]] = ()) -> str:
    """The prompt of one problem in one style, ready to generate from: with the tokenizer's chat
    template when it has one (exemplars as earlier user/assistant turns), else "Question: ...\\nAnswer:"
    blocks."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    cot = style.endswith("CoT")
    shots = list(exemplars) if style.startswith("few-shot") else []
    if style.startswith("few-shot") and not shots:
        raise ValueError(f"style {style!r} needs exemplars")
    ask = lambda p: p["question"]  # noqa: E731
    opening = {"direct": ANSWER_CUE, "zero-shot CoT": COT_TRIGGER, "few-shot direct": ANSWER_CUE, "few-shot CoT": ""}[style]
    if getattr(tokenizer, "chat_template", None):
        messages = []
        for e in shots:
            messages += [{"role": "user", "content": ask(e)}, {"role": "assistant", "content": _solution(e, cot)}]
        messages.append({"role": "user", "content": ask(problem)})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True) + opening
    blocks = [f"Question: {ask(e)}\nAnswer: {_solution(e, cot)}\n\n" for e in shots]
    return "".join(blocks) + f"Question: {ask(problem)}\nAnswer:" + (" " + opening if opening else "")


def _eos_ids(tokenizer) -> list[int]:
    ids = []
    for name in ("eos_token", "<|im_end|>", "<|endoftext|>"):
        token = getattr(tokenizer, name, None) if name == "eos_token" else name
        if token:
            try:
                i = tokenizer.token_to_id(token)
            except (KeyError, ValueError):
                i = None
            if i is not None and i not in ids:
                ids.append(i)
    return ids


@torch.no_grad()
def answer_all(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 48,
               reasons: list[str] | None = None) -> list[str]:
    """Greedy continuations of every prompt, generated `batch_size` rows at a time (left-padded, KV
    cache), each cut at the first end-of-turn token; `reasons` (a list) receives each row's finish
    reason ("eos" or "length")."""
    from reference.inference.generate import generate

    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("batch_size", batch_size, 1)
    eos = _eos_ids(tokenizer)
    texts = []
    for i in range(0, len(prompts), batch_size):
        rows = [tokenizer.encode(p) for p in prompts[i : i + batch_size]]
        g = generate(model, rows, max_new_tokens, temperature=0.0, eos_token_id=eos or None)
        for new in g.new_tokens:
            texts.append(tokenizer.decode([t for t in new if t not in eos]))
        if reasons is not None:
            reasons.extend(g.finish_reasons)
    return texts


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n items, sqrt(p (1 - p) / n)."""
    check_int("n", n, 1)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return math.sqrt(p * (1 - p) / n)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> tuple[float, float]:
    """Mean and standard error of b_i - a_i over the same problems (a paired comparison)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a and b must be equally long, at least 2, got {len(a)} and {len(b)}")
    d = [float(y) - float(x) for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, math.sqrt(var / len(d))


def measure_style(model, tokenizer, problems: Sequence[dict[str, Any]], style: str, exemplars: Sequence[dict[str, Any]] = (),
                  max_new_tokens: int = 128, direct_tokens: int = 8, batch_size: int = 48) -> tuple[dict[str, Any], list[dict]]:
    """Accuracy of one style on `problems` (all generated in batches): (row, the outputs of every problem)."""
    if not problems:
        raise ValueError("problems must not be empty")
    start = time.perf_counter()
    budget = max_new_tokens if style.endswith("CoT") else direct_tokens
    prompts = [prompt_text(tokenizer, p, style, exemplars) for p in problems]
    reasons: list[str] = []
    texts = answer_all(model, tokenizer, prompts, budget, batch_size, reasons)
    shown = texts
    if style == "zero-shot CoT":  # Kojima et al.'s second pass reads the number after a cue
        finals = answer_all(model, tokenizer, [p + t + SECOND_PASS for p, t in zip(prompts, texts)], direct_tokens, batch_size)
        shown = [t + SECOND_PASS + f for t, f in zip(texts, finals)]
        texts = finals
    got = [reading(t, style) for t in texts]
    ok = [g is not None and abs(g - p["answer"]) < 1e-9 for g, p in zip(got, problems)]
    acc = sum(ok) / len(ok)
    row = {"level": problems[0].get("level"), "style": style, "n": len(ok), "accuracy": acc, "se": standard_error(acc, len(ok)),
           "no_number": sum(g is None for g in got) / len(got), "stopped": sum(r == "eos" for r in reasons) / max(1, len(reasons)),
           "mean_output_chars": sum(map(len, shown)) / len(shown), "correct": ok,
           "seconds": round(time.perf_counter() - start, 1)}
    outputs = [{"question": p["question"], "answer": p["answer"], "output": t, "read": g} for p, t, g in zip(problems, shown, got)]
    return row, outputs


def exemplar_for(level: int, problems: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """A worked exemplar of `level` whose question is none of `problems`' (drawn with another seed)."""
    taken = {p["question"] for p in problems}
    for e in word_problems(64, level, seed=seed + 1000):
        if e["question"] not in taken:
            return e
    raise ValueError("no exemplar outside the problems")  # pragma: no cover - 64 draws all taken


def run(model_name: str = "smollm2-135m-instruct", per_level: int = 40, levels: Sequence[int] = LEVELS,
        styles: Sequence[str] = STYLES, max_new_tokens: int = 128, direct_tokens: int = 8, batch_size: int = 48,
        seed: int = 0, out: str | None = None, command: str | None = None) -> dict[str, Any]:
    """Every style on every level; returns (and writes to `out`) the results dictionary."""
    from reference.pretrained import load_pretrained
    from reference.runtime import machine_info, pick_device, write_json

    check_int("per_level", per_level, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("direct_tokens", direct_tokens, 1)
    for s in styles:
        if s not in STYLES:
            raise ValueError(f"styles must be among {STYLES}, got {s!r}")
    for lv in levels:
        if lv not in LEVELS:
            raise ValueError(f"levels must be among {LEVELS}, got {lv!r}")
    device = pick_device()
    torch.manual_seed(seed)
    model, tokenizer = load_pretrained(model_name)
    model = model.to(device).eval()
    config = {"model": model_name, "per_level": per_level, "levels": list(levels), "styles": list(styles),
              "max_new_tokens": max_new_tokens, "direct_tokens": direct_tokens, "batch_size": batch_size,
              "decoding": "greedy", "answer_cue": ANSWER_CUE, "cot_trigger": COT_TRIGGER, "second_pass": SECOND_PASS,
              "chat_template": bool(getattr(tokenizer, "chat_template", None))}
    result: dict[str, Any] = {"command": command or "python -m reference.prompting.reasoning", "seed": seed,
                              "config": config, "machine": machine_info(device), "rows": [], "samples": {},
                              "exemplars": {}, "differences": []}
    t0 = time.perf_counter()
    for lv in levels:
        problems = word_problems(per_level, lv, seed)
        exemplar = exemplar_for(lv, problems, seed)
        result["exemplars"][str(lv)] = {"question": exemplar["question"], "solution": _solution(exemplar, True)}
        correct_by: dict[str, list[bool]] = {}
        for style in styles:
            row, outputs = measure_style(model, tokenizer, problems, style, [exemplar], max_new_tokens, direct_tokens, batch_size)
            correct_by[style] = row["correct"]
            result["rows"].append(row)
            result["samples"][f"{lv}/{style}"] = outputs[:3]
            print(f"level {lv} {style:16s} {row['accuracy']:.3f} ± {row['se']:.3f} ({row['seconds']} s)", flush=True)
            if out:
                write_json(out, result)
        for base, other in (("direct", "zero-shot CoT"), ("few-shot direct", "few-shot CoT")):
            if base in correct_by and other in correct_by and len(problems) >= 2:
                m, se = paired_difference(correct_by[base], correct_by[other])
                result["differences"].append({"level": lv, "from": base, "to": other, "mean": m, "se": se})
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if out:
        write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m reference.prompting.reasoning [--model NAME] [--per-level N] [--out PATH]`."""
    parser = argparse.ArgumentParser(description="Chapter 3: chain of thought against direct answering")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--per-level", type=int, default=40)
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), choices=LEVELS)
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="budget of the chain-of-thought styles")
    parser.add_argument("--direct-tokens", type=int, default=8, help="budget of the direct styles")
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    run(args.model, args.per_level, args.levels, args.styles, args.max_new_tokens, args.direct_tokens, args.batch_size,
        args.seed, args.out, command="python -m reference.prompting.reasoning " + " ".join(sys.argv[1:] if argv is None else argv))
    if args.out:
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
