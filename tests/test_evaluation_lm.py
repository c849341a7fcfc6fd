"""Chapter 13: scoring language models — strided perplexity, the multiple-choice harness, canary exposure.

Oracles: `exp` of PyTorch's cross-entropy over exactly the context each rule gives a token;
lm-evaluation-harness's definitions of `acc` and `acc_norm` (argmax of the summed log-likelihood,
and of that divided by the choice's length in characters, first index on ties) on hand-checked
items; a planted task whose answers llama-tiny must know; Carlini et al. (2019)'s rank definition.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 13`):
- 13.11 every window's targets scored again (tokens counted twice); the first window's targets
  skipped; windows starting at the previous end (no overlap: stride ignored); logits and targets off by one.
- 13.12 see tests/test_evaluation.py.
- 13.16 rank counted from 0; ties counted as better; log of |R| - rank.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from reference.models.llama import TransformerLM


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    return TransformerLM(vocab_size=50, context_length=32, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64).eval()


def _context_starts(total: int, window: int, stride: int) -> list[int]:
    """For every target t = 1..total-1, where its scoring window starts (the rule in the docstring)."""
    starts, scored, begin = [None] * total, 1, 0
    while scored < total:
        end = min(begin + window, total)
        for t in range(max(scored, begin + 1), end):
            starts[t] = begin
        scored, begin = end, begin + stride
    return starts[1:]


@pytest.mark.exercise("13.11")
@pytest.mark.points(3)
@pytest.mark.parametrize("window,stride", [(8, 4), (8, 7), (8, 1), (5, 3), (32, 16)])
def test_sliding_window_nll_matches_cross_entropy_on_each_context(impl, tiny_lm, window, stride):
    ids = torch.randint(0, 50, (45,), generator=torch.Generator().manual_seed(window * 10 + stride))
    got = impl.evaluation.perplexity.sliding_window_nll(tiny_lm, ids.tolist(), window, stride)
    assert got.shape == (44,)
    with torch.no_grad():
        for t, start in enumerate(_context_starts(45, window, stride), start=1):
            logits = tiny_lm(ids[start:t][None])[0, -1]
            assert t - start <= window - 1 and (start == 0 or t - start >= window - stride)
            want = F.cross_entropy(logits[None], ids[t : t + 1])
            assert float(got[t - 1]) == pytest.approx(float(want), abs=1e-5), (t, start)


@pytest.mark.exercise("13.11")
@pytest.mark.points(2)
def test_one_window_is_the_plain_cross_entropy(impl, tiny_lm):
    ids = torch.randint(0, 50, (30,), generator=torch.Generator().manual_seed(1))
    nll = impl.evaluation.perplexity.sliding_window_nll(tiny_lm, ids, 32, 16)
    with torch.no_grad():
        want = F.cross_entropy(tiny_lm(ids[None, :-1])[0], ids[1:])
    assert math.exp(float(nll.mean())) == pytest.approx(math.exp(float(want)), rel=1e-5)
    assert impl.evaluation.perplexity.perplexity(tiny_lm, ids, 32, 16) == pytest.approx(math.exp(float(want)), rel=1e-5)


@pytest.mark.exercise("13.11")
@pytest.mark.points(1)
def test_sliding_window_checks_input(impl, tiny_lm):
    with pytest.raises(ValueError):
        impl.evaluation.perplexity.sliding_window_nll(tiny_lm, [1, 2, 3], 8, 8)  # stride must leave an overlap
    with pytest.raises(ValueError):
        impl.evaluation.perplexity.sliding_window_nll(tiny_lm, [1, 2, 3], 64, 8)  # longer than the context
    with pytest.raises(ValueError):
        impl.evaluation.perplexity.sliding_window_nll(tiny_lm, [1], 8, 4)


@pytest.mark.exercise("13.11")
@pytest.mark.points(2)
def test_more_context_lowers_llama_tiny_perplexity(impl):
    from reference.data.corpus import load_source
    from reference.pretrained import load_pretrained
    from reference.training.assets import split_documents

    model, tokenizer = load_pretrained("llama-tiny")
    text = split_documents(load_source("books"))[1][0].text[:3000]
    ids = tokenizer.encode(text)[:400]
    short = math.exp(float(impl.evaluation.perplexity.sliding_window_nll(model, ids, 16, 15).mean()))
    long = math.exp(float(impl.evaluation.perplexity.sliding_window_nll(model, ids, 128, 64).mean()))
    assert long < short  # a held-out play: the model uses its context


@pytest.mark.exercise("13.12")
@pytest.mark.points(2)
def test_acc_and_acc_norm_as_lm_evaluation_harness_defines_them(impl):
    score = impl.evaluation.harness.multiple_choice_scores
    # acc picks the highest summed log-likelihood; acc_norm divides by characters: -10/1 < -12/6
    assert score([-10.0, -12.0], ["a", "bbbbbb"], 0) == {"acc": 1.0, "acc_norm": 0.0}
    assert score([-10.0, -12.0], ["a", "bbbbbb"], 1) == {"acc": 0.0, "acc_norm": 1.0}
    # characters, not tokens or words: "xy z" has 4 characters (-1.25 > -4.1)
    assert score([-5.0, -4.1], ["xy z", "w"], 0)["acc_norm"] == 1.0
    # the answer text's length, not the scored continuation's: lm-evaluation-harness divides by
    # len(choice) although it scores " " + choice (-2/1 < -5/4; counting the space would tie, -1 = -1)
    assert score([-2.0, -5.0], ["a", "abcd"], 1)["acc_norm"] == 1.0
    # ties go to the first choice (numpy's argmax)
    assert score([-3.0, -3.0, -9.0], ["p", "q", "r"], 0) == {"acc": 1.0, "acc_norm": 1.0}
    assert score([-3.0, -3.0, -9.0], ["p", "q", "r"], 1) == {"acc": 0.0, "acc_norm": 0.0}
    with pytest.raises(ValueError):
        score([-1.0], [" a", " b"], 0)


@pytest.fixture(scope="module")
def llama_tiny_lm():
    from reference.evaluation.harness import HarnessLM
    from reference.pretrained import load_pretrained

    model, tokenizer = load_pretrained("llama-tiny")
    return HarnessLM(model, tokenizer, "llama-tiny")


@pytest.mark.exercise("13.12")
@pytest.mark.points(3)
def test_planted_task_is_answered(impl, llama_tiny_lm):
    """Known answers: a line of a training play and its true next line against letter soup of the same length."""
    import random

    from reference.data.corpus import load_source
    from reference.evaluation.harness import Doc, Task, evaluate_task
    from reference.training.assets import split_documents

    rng = random.Random(0)
    lines = [ln.strip() for ln in split_documents(load_source("books"))[0][1].text.splitlines() if len(ln.strip()) > 25][:200]
    docs = []
    for i in range(0, 40, 2):
        soup = "".join(rng.choice("qxzjkvw ") for _ in range(len(lines[i + 1])))
        choices = [soup, lines[i + 1]] if i % 4 else [lines[i + 1], soup]
        docs.append(Doc(lines[i] + "\n", tuple(choices), 1 if i % 4 else 0))
    result = evaluate_task(llama_tiny_lm, Task("planted", "multiple_choice", docs))
    lls = [[llama_tiny_lm.loglikelihood(d.query, " " + c)[0] for c in d.choices] for d in docs]
    for name in ("acc", "acc_norm"):
        want = [impl.evaluation.harness.multiple_choice_scores(ll, d.choices, d.gold)[name] for ll, d in zip(lls, docs)]
        assert want == [1.0] * len(docs)
        assert result["metrics"][name]["value"] == 1.0


@pytest.mark.exercise("13.12")
@pytest.mark.points(1)
def test_uniform_guess_scores_chance(impl):
    from reference.evaluation.harness import Doc, Task, UniformGuess, evaluate_task

    docs = [Doc("q", ("a", "bb", "ccc", "dddd"), i % 4) for i in range(800)]
    result = evaluate_task(UniformGuess(0), Task("chance", "multiple_choice", docs))
    acc = result["metrics"]["acc"]
    assert abs(acc["value"] - 0.25) < 3 * acc["stderr"]
    assert acc["stderr"] == pytest.approx(math.sqrt(acc["value"] * (1 - acc["value"]) / 799), rel=1e-9)
    per_item = [impl.evaluation.harness.multiple_choice_scores([0.0, 0.0, 0.0, 0.0], d.choices, d.gold)["acc"] for d in docs]
    assert sum(per_item) == 200  # equal scores: always the first choice


@pytest.mark.exercise("13.16")
@pytest.mark.points(2)
def test_exposure_by_rank(impl):
    exposure = impl.evaluation.security.exposure
    losses = [3.0, 1.0, 2.0, 4.0]
    assert exposure(1.0, losses) == pytest.approx(2.0)  # ranked first of 4: log2 4
    assert exposure(3.0, losses) == pytest.approx(2.0 - math.log2(3))
    assert exposure(4.0, losses) == pytest.approx(0.0)
    assert exposure(1.0, [1.0, 1.0, 2.0, 2.0]) == pytest.approx(2.0)  # a tie is not ranked above
    big = [float(i) for i in range(10_000)]
    assert exposure(0.0, big) == pytest.approx(math.log2(10_000))
