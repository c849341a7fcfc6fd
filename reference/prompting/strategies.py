"""The learning strategies of survey section 1.2(b), on one task, and the command that compares them.

The task ("tone"): is a short message hostile or neutral? The labelled sentences of
`reference.data.samples.hostile_neutral_set` (189, 90 hostile), split once with a seed into a
training pool of 128 and a test set of the other 61; the few-shot regimes draw 8, 32 or 128
labelled examples from the pool (balanced where possible).

Strategies (Liu et al., 2023, "Pre-train, Prompt, and Predict", section 7; the survey's list):
- "head": pre-train then fine-tune, a linear classification head on the last token's final hidden
  state, the whole LM trained too (the baseline);
- "zero-shot", "few-shot": tuning-free prompting (template + verbalizer, k examples in context);
- "soft-prompt" (Lester et al., 2021), "prefix" (Li & Liang, 2021, reparameterised), "p-tuning"
  (Liu et al., 2021, MLP encoder): fixed-LM prompt tuning;
- "pet": fixed-prompt LM tuning (Schick & Schütze, 2021): the template and verbalizer fixed, the LM trained;
- "prompt+lm": a soft prompt and the LM trained together;
- "autoprompt" (Shin et al., 2020): an automatically found *discrete* prompt, 8 trigger tokens before
  the template chosen by gradient-guided search, the LM fixed (no continuous parameter is trained;
  each step draws a batch and may swap one trigger, see `_autoprompt_steps`).
Every trained strategy minimises the cross-entropy of the verbalizer's class log-probabilities at the
answer slot (PET's loss), except the head, which has its own classifier.

`python -m reference.prompting.strategies --out chapters/results/03_smollm2.json` runs the
comparison on SmolLM2-135M-Instruct (`--model llama-tiny --quick` is the shrunk version the test
runs). Chain of thought against direct answering has its own command, `reference.prompting.reasoning`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reference.prompting.core import (
    Template, Verbalizer, accuracy, calibrate, class_log_probs, classify, content_free_probs,
    extract_answer, few_shot_prefix,
)
from reference.validation import check_int
from reference.prompting.modules import PrefixTuning, PromptedLM, PromptEncoder, SoftPrompt, count_parameters

# ----------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------

TEMPLATES = (
    Template("message-is", "Message: {x}\nThis message is"),
    Template("all-in-all", "{x} All in all, the tone was"),
    Template("question", "Text: {x}\nQuestion: Is the text rude or polite?\nAnswer:"),
    Template("chat", "Is the following message rude or polite? Answer with one word.\n\n{x}", kind="chat",
             space=False, capitalize=True),
)
CLOZE = Template("cloze", "{x} This message is [MASK].", kind="cloze")
VERBALIZERS = (  # class 0 = neutral, class 1 = hostile
    Verbalizer("polite/rude", (("polite",), ("rude",))),
    Verbalizer("friendly/hostile", (("friendly",), ("hostile",))),
    Verbalizer("positive/negative", (("positive",), ("negative",))),
    Verbalizer("several words", (("polite", "kind", "nice", "friendly"), ("rude", "mean", "insulting", "offensive"))),
)
MAIN_TEMPLATE, MAIN_VERBALIZER = TEMPLATES[3], VERBALIZERS[0]
TRAIN_TEMPLATE = TEMPLATES[2]  # the plain-prefix template the trained strategies share


def tone_task(seed: int = 0, pool: int = 128) -> dict[str, list[tuple[str, int]]]:
    """{"train": pool examples, "test": the rest} of (text, label) with label 1 = hostile, shuffled with `seed`."""
    from reference.data.samples import hostile_neutral_set

    texts, labels = hostile_neutral_set()
    pairs = list(zip(texts, labels))
    random.Random(seed).shuffle(pairs)
    return {"train": pairs[:pool], "test": pairs[pool:]}


def few_shot_sample(train: Sequence[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """n labelled examples from the pool, as balanced over the two classes as the pool allows."""
    rng = random.Random(seed)
    by = {c: [p for p in train if p[1] == c] for c in (0, 1)}
    for v in by.values():
        rng.shuffle(v)
    half = n // 2
    out = by[0][:half] + by[1][: n - half]
    out += [p for p in train if p not in out][: n - len(out)]
    rng.shuffle(out)
    return out


# ----------------------------------------------------------------------------------------------
# Tuning-free prompting
# ----------------------------------------------------------------------------------------------


def zero_shot_grid(model, tokenizer, test, templates=TEMPLATES, verbalizers=VERBALIZERS) -> list[dict[str, Any]]:
    """Accuracy of every template x verbalizer, without and with contextual calibration."""
    texts, labels = [x for x, _ in test], [y for _, y in test]
    rows, cache = [], {}
    for t in templates:
        for v in verbalizers:
            lp = classify(model, tokenizer, t, v, texts, cache=cache)
            p_cf = content_free_probs(model, tokenizer, t, v, cache=cache)
            cal = calibrate(lp.exp(), p_cf)
            rows.append({"template": t.name, "verbalizer": v.name, "accuracy": accuracy(lp, labels),
                         "calibrated": accuracy(cal.log(), labels), "content_free": p_cf.tolist(),
                         "predicted_hostile": float((lp.argmax(-1) == 1).float().mean())})
    return rows


def few_shot_runs(model, tokenizer, task, ks=(0, 1, 2, 4, 8), orders: int = 3, template=TRAIN_TEMPLATE,
                  verbalizer=MAIN_VERBALIZER) -> list[dict[str, Any]]:
    """Accuracy with k in-context examples, for several draws/orders of the examples (seed = order)."""
    texts, labels = [x for x, _ in task["test"]], [y for _, y in task["test"]]
    rows = []
    for k in ks:
        for order in range(orders if k else 1):
            demos = few_shot_prefix(template, verbalizer, few_shot_sample(task["train"], k, seed=100 + order)) if k else ""
            lp = classify(model, tokenizer, template, verbalizer, texts, demonstrations=demos)
            p_cf = content_free_probs(model, tokenizer, template, verbalizer, demonstrations=demos)
            rows.append({"k": k, "order": order, "accuracy": accuracy(lp, labels),
                         "calibrated": accuracy(calibrate(lp.exp(), p_cf).log(), labels)})
    return rows


def chain_of_thought(model, tokenizer, n: int = 20, max_new_tokens: int = 128, seed: int = 0) -> dict[str, Any]:
    """Direct answering against zero-shot chain of thought on n two-step word problems, in batches
    (`reference.prompting.reasoning`, whose command runs the full comparison over difficulty levels)."""
    from reference.prompting.reasoning import measure_style, word_problems

    problems = word_problems(check_int("n", n, 1), 2, seed)
    out: dict[str, Any] = {"n": n, "max_new_tokens": max_new_tokens, "level": 2}
    for style, key in (("direct", "direct"), ("zero-shot CoT", "cot")):
        row, outputs = measure_style(model, tokenizer, problems, style, max_new_tokens=max_new_tokens)
        out[key] = {"accuracy": row["accuracy"], "se": row["se"], "samples": outputs[:3]}
    return out


# ----------------------------------------------------------------------------------------------
# Trained strategies
# ----------------------------------------------------------------------------------------------

TRAINED = ("soft-prompt", "prefix", "p-tuning", "pet", "prompt+lm", "head", "autoprompt")
AUTOPROMPT_CANDIDATES = 4  # candidates per AutoPrompt step, each scored by the real loss on the step's batch


class _Head(nn.Module):
    """Classification head on the last real token's final hidden state (read through a hook on ln_final)."""

    def __init__(self, model: nn.Module, num_classes: int = 2) -> None:
        super().__init__()
        self.model = model
        self.linear = nn.Linear(model.token_embeddings.weight.shape[1], num_classes)

    def forward(self, ids: Tensor, last: Tensor) -> Tensor:
        seen = {}
        handle = self.model.ln_final.register_forward_hook(lambda m, a, out: seen.setdefault("h", out))
        try:
            self.model(ids)
        finally:
            handle.remove()
        h = seen["h"][torch.arange(ids.shape[0]), last]
        return self.linear(h.float())


def _build(strategy: str, model: nn.Module, tokenizer, n_tokens: int) -> tuple[nn.Module, list[nn.Parameter]]:
    """The trainable module of a strategy over a fresh copy of the model, and what it trains."""
    model = copy.deepcopy(model)
    d_model = model.token_embeddings.weight.shape[1]
    init = tokenizer.encode(" Decide whether the following message is rude or polite.")[:n_tokens]
    if strategy == "soft-prompt":
        net = PromptedLM(model, prompt=SoftPrompt.from_text(model, init))
    elif strategy == "prefix":
        net = PromptedLM(model, prefix=PrefixTuning.for_model(model, n_tokens, reparameterize=True, hidden_size=128))
    elif strategy == "p-tuning":
        net = PromptedLM(model, prompt=PromptEncoder(n_tokens, d_model, hidden_size=128, kind="mlp"))
    elif strategy == "pet":
        net = PromptedLM(model, freeze_model=False)
    elif strategy == "prompt+lm":
        net = PromptedLM(model, prompt=SoftPrompt.from_text(model, init), freeze_model=False)
    elif strategy == "head":
        net = _Head(model)
    elif strategy == "autoprompt":  # discrete triggers; the soft prompt only carries their embeddings
        net = PromptedLM(model, prompt=SoftPrompt.from_text(model, init))
        net.prompt.weight.requires_grad_(False)
        return net.to(next(model.parameters()).device), []
    else:
        raise ValueError(f"strategy must be one of {TRAINED}, got {strategy!r}")
    net = net.to(next(model.parameters()).device)
    return net, [p for p in net.parameters() if p.requires_grad]


def _encode_batch(tokenizer, template: Template, texts: Sequence[str], device) -> tuple[Tensor, Tensor]:
    rows = [tokenizer.encode(template.render(x, tokenizer)) for x in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
    return ids, torch.tensor([len(r) - 1 for r in rows], device=device)


def train_strategy(strategy: str, model: nn.Module, tokenizer, train: Sequence[tuple[str, int]], test, *, steps: int,
                   lr: float | None = None, batch_size: int = 8, n_tokens: int = 8, seed: int = 0,
                   template: Template = TRAIN_TEMPLATE, verbalizer: Verbalizer = MAIN_VERBALIZER,
                   candidates: int = AUTOPROMPT_CANDIDATES) -> dict[str, Any]:
    """Train one strategy on `train` for `steps` AdamW steps and report its test accuracy.

    Label words are scored by their first token at the answer slot (the verbalizer's words are
    single tokens for both tokenizers the command uses). Learning rates: 3e-2 for prompt parameters
    (Lester et al. use 0.3 with Adafactor), 2e-5 for the LM, 1e-3 for the head."""
    if strategy not in TRAINED:
        raise ValueError(f"strategy must be one of {TRAINED}, got {strategy!r}")
    check_int("steps", steps, 0)
    check_int("batch_size", batch_size, 1)
    check_int("candidates", candidates, 1)
    if not train or not test:
        raise ValueError(f"train and test must be non-empty, got {len(train)} and {len(test)} examples")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    net, params = _build(strategy, model, tokenizer, n_tokens)
    word_ids = [tokenizer.encode(template.word(ws[0]))[0] for ws in verbalizer.words]
    lm_params = {id(p) for p in net.model.parameters()} if hasattr(net, "model") else set()
    groups = [{"params": [p for p in params if id(p) in lm_params], "lr": lr or 2e-5},
              {"params": [p for p in params if id(p) not in lm_params], "lr": lr or (1e-3 if strategy == "head" else 3e-2)}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0) if params else None
    rng = random.Random(seed)
    start = time.perf_counter()
    losses = []

    def class_logits(texts: Sequence[str]) -> Tensor:
        ids, last = _encode_batch(tokenizer, template, texts, device)
        if strategy == "head":
            return net(ids, last).log_softmax(-1)
        logits = net(ids)[torch.arange(ids.shape[0]), last]  # (batch, vocab) at the answer slot
        return logits.float().log_softmax(-1)[:, word_ids].log_softmax(-1)

    def batch_loss(batch) -> Tensor:
        return nn.functional.nll_loss(class_logits([x for x, _ in batch]), torch.tensor([y for _, y in batch], device=device))

    extra: dict[str, Any] = {}
    if strategy == "autoprompt":
        extra = _autoprompt_steps(net, tokenizer, train, steps, batch_size, rng, batch_loss, losses, candidates)
    else:
        net.train()
        for _ in range(steps):
            loss = batch_loss([train[rng.randrange(len(train))] for _ in range(batch_size)])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    net.eval()
    with torch.no_grad():
        lp = torch.cat([class_logits([x for x, _ in test[i : i + 16]]) for i in range(0, len(test), 16)]).cpu()
    return {"strategy": strategy, "n_train": len(train), "seed": seed, "steps": steps, "accuracy": accuracy(lp, [y for _, y in test]),
            "trainable_parameters": sum(p.numel() for p in params), "first_loss": losses[0] if losses else None,
            "last_loss": sum(losses[-5:]) / max(1, len(losses[-5:])), "seconds": round(time.perf_counter() - start, 1),
            "net": net, **extra}


def _autoprompt_steps(net: PromptedLM, tokenizer, train, steps: int, batch_size: int, rng: random.Random, batch_loss,
                      losses: list[float], k: int = AUTOPROMPT_CANDIDATES) -> dict[str, Any]:
    """AutoPrompt (Shin et al., 2020) as a training loop: each step draws a batch, takes the gradient of
    its loss with respect to the trigger embeddings, proposes `k` replacement tokens for one random
    slot (`autoprompt_candidates`) and keeps the one with the lowest loss on that batch if it beats
    the current trigger there. The triggers stay real tokens, so the result is a hard prompt."""
    from reference.prompting.core import autoprompt_candidates

    model, weight = net.model, net.prompt.weight
    table = model.token_embeddings.weight.detach()
    specials = [i for i in (_token_id(tokenizer, t) for t in getattr(tokenizer, "special_tokens", ()) or ()) if i is not None]
    triggers = tokenizer.encode(" Decide whether the following message is rude or polite.")[: weight.shape[0]]
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    swaps = 0
    try:
        for _ in range(steps):
            batch = [train[rng.randrange(len(train))] for _ in range(batch_size)]
            weight.data.copy_(table[triggers])
            weight.requires_grad_(True)
            weight.grad = None
            loss = batch_loss(batch)
            loss.backward()
            weight.requires_grad_(False)
            slot = rng.randrange(len(triggers))
            best, best_ids = loss.item(), triggers
            for c in autoprompt_candidates(weight.grad[slot : slot + 1], table, k, specials)[0].tolist():
                trial = triggers[:slot] + [c] + triggers[slot + 1 :]
                weight.data.copy_(table[trial])
                with torch.no_grad():
                    trial_loss = batch_loss(batch).item()
                if trial_loss < best:
                    best, best_ids = trial_loss, trial
            swaps += best_ids is not triggers
            triggers = best_ids
            losses.append(best)
        weight.data.copy_(table[triggers])
        weight.grad = None
    finally:
        for p, r in zip(model.parameters(), was):
            p.requires_grad_(r)
    return {"triggers": [tokenizer.decode([i]) for i in triggers], "trigger_ids": triggers, "swaps": swaps,
            "candidates": k}


def _token_id(tokenizer, token: str) -> int | None:
    try:
        return tokenizer.token_to_id(token)
    except (KeyError, ValueError):
        return None


def nearest_tokens(soft: Tensor, embeddings: Tensor, tokenizer, k: int = 3) -> list[list[str]]:
    """For each soft-prompt vector, the k vocabulary tokens with the most similar embedding (cosine)."""
    s = nn.functional.normalize(soft.float(), dim=-1)
    e = nn.functional.normalize(embeddings.float(), dim=-1)
    ids = (s @ e.T).topk(k, dim=-1).indices
    return [[tokenizer.decode([int(i)]) for i in row] for row in ids]


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def run(model_name: str = "smollm2-135m-instruct", regimes: Sequence[int] = (8, 32), seeds: Sequence[int] = (0,),
        steps: int = 10, batch_size: int = 4, strategies: Sequence[str] = TRAINED, quick: bool = False, seed: int = 0,
        ks: Sequence[int] = (0, 1, 3), orders: int = 2, cot_problems: int = 0, test_size: int | None = None,
        num_verbalizers: int = len(VERBALIZERS), out: str | None = None, command: str | None = None,
        tuning_free: bool = True, candidates: int = AUTOPROMPT_CANDIDATES) -> dict[str, Any]:
    """Every strategy on the tone task with one model; returns the results dictionary."""
    from reference.pretrained import load_pretrained
    from reference.runtime import machine_info, pick_device

    device = pick_device()
    torch.manual_seed(seed)
    model, tokenizer = load_pretrained(model_name)
    model = model.to(device)
    task = tone_task(seed)
    if quick or test_size:
        task = {"train": task["train"], "test": task["test"][: test_size or 12]}
    from reference.runtime import write_json

    def save() -> None:
        if out:
            write_json(out, result)
    chat = getattr(tokenizer, "chat_template", None) is not None
    templates = TEMPLATES if chat else TEMPLATES[:3]
    config = {"model": model_name, "regimes": list(regimes), "seeds": list(seeds), "steps": steps, "batch_size": batch_size,
              "ks": list(ks), "orders": orders, "cot_problems": cot_problems,
              "prompt_tokens": 8, "strategies": list(strategies), "train_template": TRAIN_TEMPLATE.text,
              "verbalizer": [list(w) for w in MAIN_VERBALIZER.words], "test_size": len(task["test"]), "pool": len(task["train"]),
              "verbalizers": num_verbalizers, "autoprompt_candidates": candidates}
    result: dict[str, Any] = {"command": command or "python -m reference.prompting.strategies", "seed": seed,
                              "config": config, "machine": machine_info(device)}
    t0 = time.perf_counter()
    if not tuning_free:
        ks, cot_problems, num_verbalizers, templates = (), 0, 0, ()
    result["zero_shot"] = [] if not tuning_free else zero_shot_grid(model, tokenizer, task["test"], templates, VERBALIZERS[:2] if quick else VERBALIZERS[:num_verbalizers])
    save()
    print(f"zero-shot: {time.perf_counter() - t0:.0f} s", flush=True)
    result["few_shot"] = [] if not tuning_free else few_shot_runs(model, tokenizer, task, ks=(0, 2) if quick else ks,
                                                                  orders=2 if quick else orders)
    print(f"tuning-free prompting: {time.perf_counter() - t0:.0f} s", flush=True)
    save()
    if cot_problems:
        result["chain_of_thought"] = chain_of_thought(model, tokenizer, n=cot_problems, max_new_tokens=24 if quick else 128)
    result["tuning_free_seconds"] = round(time.perf_counter() - t0, 1)
    result["trained"] = []
    result["parameters"] = {"model": count_parameters(model)}
    save()
    runs = []
    for s in seeds:  # seeds outermost: a run cut short still has every regime for the first seeds
        for n in regimes:
            train = few_shot_sample(task["train"], n, seed=s)
            for strategy in strategies:
                r = train_strategy(strategy, model, tokenizer, train, task["test"], steps=steps, seed=s, batch_size=batch_size,
                                   candidates=candidates)
                net = r.pop("net")
                if strategy == "soft-prompt" and n == max(regimes) and s == seeds[0]:
                    result["soft_prompt_neighbours"] = {
                        "init": [tokenizer.decode([i]) for i in tokenizer.encode(" Decide whether the following message is rude or polite.")[:8]],
                        "learned": nearest_tokens(net.prompt.weight.detach(), model.token_embeddings.weight.detach(), tokenizer),
                        "moved": float((net.prompt.weight.detach() - SoftPrompt.from_text(model, tokenizer.encode(" Decide whether the following message is rude or polite.")[:8]).weight.detach()).norm(dim=-1).mean()),
                    }
                runs.append(r)
                result["trained"] = runs
                save()
                print(f"{strategy:12s} n={n:4d} seed={s} acc={r['accuracy']:.3f} loss {r['first_loss']:.3f}->{r['last_loss']:.3f} ({r['seconds']} s)", flush=True)
    result["trained"] = runs
    result["parameters"] = {"model": count_parameters(model)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    save()
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m reference.prompting.strategies [--model NAME] [--quick] [--out PATH]`."""
    from reference.runtime import write_json

    parser = argparse.ArgumentParser(description="Chapter 3: every prompt-learning strategy on the tone task")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--regimes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 3])
    parser.add_argument("--orders", type=int, default=2)
    parser.add_argument("--cot-problems", type=int, default=0,
                        help="a quick direct-vs-CoT check on N two-step problems (the full comparison: python -m reference.prompting.reasoning)")
    parser.add_argument("--strategies", nargs="*", default=list(TRAINED), choices=TRAINED)
    parser.add_argument("--test-size", type=int, default=None, help="score only the first N test examples")
    parser.add_argument("--verbalizers", type=int, default=len(VERBALIZERS), help="use the first N verbalizers")
    parser.add_argument("--trained-only", action="store_true", help="skip zero-shot, few-shot and chain of thought")
    parser.add_argument("--candidates", type=int, default=AUTOPROMPT_CANDIDATES, help="AutoPrompt candidates per step")
    parser.add_argument("--quick", action="store_true", help="a shrunk run (12 test examples, fewer grids)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(args.model, args.regimes, args.seeds, args.steps, args.batch_size, args.strategies, quick=args.quick,
        ks=args.ks, orders=args.orders, cot_problems=args.cot_problems, test_size=args.test_size,
        num_verbalizers=args.verbalizers, out=args.out,
        command="python -m reference.prompting.strategies " + " ".join(sys.argv[1:] if argv is None else argv),
        tuning_free=not args.trained_only, candidates=args.candidates)
    if args.out:
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
