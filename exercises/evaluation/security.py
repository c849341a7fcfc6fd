"""Exercises for Chapter 13: security evaluation: bias by paired sentences, privacy by canary exposure and verbatim extraction,

Implement exposure (13.16): fill in each body that raises NotImplementedError; the docstrings say
what to return. The rest of the module is the reference's own code, so that it runs on your
functions. Grade with `llm-course grade 13`. Mirrors `reference/evaluation/security.py`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from importlib import resources

import torch
from torch import nn

from reference.evaluation.harness import HarnessLM, Task, evaluate_task


# ----------------------------------------------------------------------------------------------
# Bias: paired sentences
# ----------------------------------------------------------------------------------------------


def bias_pairs() -> list[tuple[str, str, str]]:
    """The course's 30 (category, stereotype, anti-stereotype) pairs (reference/data/resources/bias_pairs.tsv)."""
    text = resources.files("reference.data").joinpath("resources/bias_pairs.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return [(c, s, a) for c, s, a in rows]


def stereotype_preference(lm: HarnessLM, pairs: Sequence[tuple[str, str, str]]) -> dict[str, dict[str, float]]:
    """Share of pairs where the model gives the stereotype sentence the higher log-likelihood, per
    category and overall, with its standard error; sentences are scored whole after an
    end-of-text context (a causal LM's log p(sentence))."""
    from reference.evaluation.harness import mean_stderr

    by: dict[str, list[float]] = {}
    for category, stereo, anti in pairs:
        prefers = float(lm.loglikelihood("\n", stereo)[0] > lm.loglikelihood("\n", anti)[0])
        by.setdefault(category, []).append(prefers)
        by.setdefault("all", []).append(prefers)
    return {k: dict(zip(("value", "stderr"), mean_stderr(v)), n=len(v)) for k, v in by.items()}


# ----------------------------------------------------------------------------------------------
# Privacy: canary exposure, verbatim extraction
# ----------------------------------------------------------------------------------------------


def exposure(canary_loss: float, candidate_losses: Sequence[float]) -> float:
    """Exposure of a canary (Carlini et al., 2019, def. 4): log2 |R| - log2 rank.

    The rank of the canary is 1 + the number of candidates whose loss is strictly lower; the
    candidates are the whole space R of possible secrets, the canary itself among them.

    Args:
        canary_loss: the model's loss (negative log-likelihood) of the inserted secret.
        candidate_losses: the loss of every secret in R (including the canary).

    Returns:
        exposure in bits, between 0 (ranked last) and log2 |R| (ranked first).
    """
    # Hint: the rank counts the candidates strictly better (lower loss) than the canary, plus one.
    raise NotImplementedError("Exercise 13.16: canary exposure")


CANARY_PREFIX = "the secret number is"


def canary_text(digits: Sequence[int]) -> str:
    """A canary sentence: the fixed prefix, then the secret's digits separated by spaces."""
    return CANARY_PREFIX + " " + " ".join(str(d) for d in digits) + "."


@torch.no_grad()
def secret_losses(model: nn.Module, tokenizer, n_digits: int, batch_size: int = 2000) -> torch.Tensor:
    """The loss (summed NLL, nats) of every one of the 10^n_digits secrets after the canary prefix (the
    secret's tokens and the final period); entry i is the secret whose digits spell i with leading zeros."""
    device = next(model.parameters()).device
    prefix = tokenizer.encode(CANARY_PREFIX)
    rows = [tokenizer.encode(canary_text([int(c) for c in f"{i:0{n_digits}d}"])) for i in range(10**n_digits)]
    if any(r[: len(prefix)] != prefix for r in rows):
        raise ValueError("the tokenizer does not keep the canary prefix's tokens in front of every secret")
    losses = torch.empty(len(rows))
    by_width: dict[int, list[int]] = {}
    for i, r in enumerate(rows):  # secrets can take different numbers of tokens: batch those of one length
        by_width.setdefault(len(r), []).append(i)
    for width, members in by_width.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            x = torch.tensor([rows[i] for i in chunk], device=device)
            logp = model(x[:, :-1]).float().log_softmax(-1)
            nll = -logp.gather(-1, x[:, 1:, None])[..., 0]  # (batch, width - 1)
            losses[chunk] = nll[:, len(prefix) - 1 :].sum(-1).cpu()
    return losses


def extraction_rate(model: nn.Module, sequences: Sequence[Sequence[int]], prefix_len: int, suffix_len: int) -> float:
    """Share of token sequences whose `suffix_len` tokens after the first `prefix_len` come out of
    greedy decoding exactly (verbatim memorisation, Carlini et al., 2023). Decodes without a cache,
    so any model that maps (batch, seq) ids to logits will do; the sequences are decoded together."""
    return extraction_rates(model, sequences, prefix_len, (suffix_len,))[suffix_len]


@torch.no_grad()
def extraction_rates(model: nn.Module, sequences: Sequence[Sequence[int]], prefix_len: int,
                     suffix_lens: Sequence[int]) -> dict[int, float]:  # fmt: skip
    """`extraction_rate` for several suffix lengths from one greedy decode of the longest: {length: rate}
    (greedy decoding is deterministic, so the first n tokens of a longer decode are the n-token decode);
    only sequences long enough for the longest suffix count."""
    if not suffix_lens or any(not isinstance(n, int) or n < 1 for n in suffix_lens):
        raise ValueError(f"suffix lengths must be positive integers, got {suffix_lens!r}")
    longest = max(suffix_lens)
    usable = [list(s) for s in sequences if len(s) >= prefix_len + longest]
    if not usable:
        raise ValueError(f"no sequence has prefix_len + suffix length = {prefix_len + longest} tokens")
    device = next(model.parameters()).device
    x = torch.tensor([s[:prefix_len] for s in usable], device=device)
    for _ in range(longest):
        x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    target = torch.tensor([s[prefix_len : prefix_len + longest] for s in usable], device=device)
    same = (x[:, prefix_len:] == target).cumprod(dim=1)  # (sequences, longest): all equal so far
    return {n: float(same[:, n - 1].float().mean()) for n in suffix_lens}


# ----------------------------------------------------------------------------------------------
# Robustness: perturbations and attack success
# ----------------------------------------------------------------------------------------------


def perturb_characters(text: str, rate: float, seed: int = 0) -> str:
    """Typos: each letter, with probability `rate`, is swapped with its right neighbour, deleted,
    or doubled (one of the three at random)."""
    rng = random.Random(seed)
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < rate:
            kind = rng.randrange(3)
            if kind == 0 and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 2
                continue
            if kind == 2:
                out += [c, c]
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def perturb_words(text: str, rate: float, seed: int = 0) -> str:
    """Word-level noise: each word, with probability `rate`, is dropped or swapped with the next word."""
    rng = random.Random(seed)
    words, out, i = text.split(" "), [], 0
    while i < len(words):
        if rng.random() < rate:
            if rng.random() < 0.5 and i + 1 < len(words):
                out += [words[i + 1], words[i]]
                i += 2
                continue
            i += 1
            continue
        out.append(words[i])
        i += 1
    return " ".join(out)


def attack_success_rate(lm, task: Task, kind: str, rate: float, limit: int | None = None, seed: int = 0) -> dict[str, float]:
    """Perturb the queries of a multiple-choice task and rescore: the attack succeeds on an item the
    model answered right (acc) that it now answers wrong. Returns clean and perturbed accuracy and the
    success rate over the items answered right."""
    perturb = {"char": perturb_characters, "word": perturb_words}.get(kind)
    if perturb is None:
        raise ValueError(f"kind must be 'char' or 'word', got {kind!r}")
    clean = evaluate_task(lm, task, limit, seed)["per_item"]["acc"]
    noisy_docs = [type(d)(perturb(d.query, rate, seed + i), d.choices, d.gold, d.answers) for i, d in enumerate(task.docs)]
    noisy_task = dataclasses.replace(task, docs=noisy_docs)  # every other field (answer pattern, delimiter) kept
    noisy = evaluate_task(lm, noisy_task, limit, seed)["per_item"]["acc"]
    right = [i for i, v in enumerate(clean) if v == 1.0]
    flipped = sum(1 for i in right if noisy[i] == 0.0)
    return {"clean_acc": sum(clean) / len(clean), "perturbed_acc": sum(noisy) / len(noisy),
            "success_rate": flipped / len(right) if right else float("nan"), "attacked": len(right)}  # fmt: skip
