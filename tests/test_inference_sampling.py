"""Chapter 15: the logits processors (top-k, top-p, min-p, repetition / frequency / presence penalties).

Oracles: the kept sets written out by hand from sorted probabilities, Hugging Face's
`TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper` and `RepetitionPenaltyLogitsProcessor`
on the same logits, and OpenAI's definition of the frequency and presence penalties.

Plausible bugs and the test that catches each:
- top-k keeping k - 1 / k + 1, or the smallest k -> test_top_k_keeps_exactly_the_k_largest;
- top-p keeping one token too few (mass before < p replaced by cumulative mass < p) or too many, or
  the least probable tail -> test_top_p_keeps_the_smallest_set_reaching_p;
- min-p threshold on logits instead of probabilities, min_p * max missing, > instead of >= ->
  test_min_p_keeps_tokens_above_the_scaled_maximum;
- repetition penalty that divides negative logits (making them more likely), or applied to unseen
  tokens -> test_repetition_penalty_equals_hugging_face;
- frequency penalty not multiplied by the count, presence counted per occurrence, signs flipped ->
  test_frequency_and_presence_penalties_follow_openai.
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from reference.inference.sampling import SamplingParams, TokenHistory, choose_next, next_token_distribution


def _logits(batch=4, vocab=50, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vocab, generator=g) * scale


def _hand_top_p(row: torch.Tensor, p: float) -> set[int]:
    probs = torch.softmax(row.double(), -1)
    order = torch.argsort(probs, descending=True).tolist()
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i].item()
        if mass >= p:
            break
    return kept


@pytest.mark.exercise("15.2")
@pytest.mark.points(2)
@pytest.mark.parametrize("k", [1, 3, 17, 50, 80])
def test_top_k_keeps_exactly_the_k_largest(impl, k):
    logits = _logits()
    out = impl.inference.sampling.top_k_filter(logits, k)
    for row, kept in zip(logits, torch.isfinite(out)):
        expected = set(torch.argsort(row, descending=True)[: min(k, row.numel())].tolist())
        assert set(kept.nonzero()[:, 0].tolist()) == expected
    torch.testing.assert_close(out[torch.isfinite(out)], logits[torch.isfinite(out)])
    hf = TopKLogitsWarper(k)(None, logits.clone())
    assert torch.equal(torch.isfinite(out), torch.isfinite(hf))


@pytest.mark.exercise("15.2")
@pytest.mark.points(1)
def test_top_k_keeps_ties(impl):
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    out = impl.inference.sampling.top_k_filter(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, True, False, True]]


@pytest.mark.exercise("15.3")
@pytest.mark.points(3)
@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_top_p_keeps_the_smallest_set_reaching_p(impl, p):
    logits = _logits(seed=2)
    out = impl.inference.sampling.top_p_filter(logits, p)
    for row, kept in zip(logits, torch.isfinite(out)):
        assert set(kept.nonzero()[:, 0].tolist()) == _hand_top_p(row, p)
    torch.testing.assert_close(out[torch.isfinite(out)], logits[torch.isfinite(out)])
    if p < 1:
        hf = TopPLogitsWarper(p)(None, logits.clone())
        assert torch.equal(torch.isfinite(out), torch.isfinite(hf))


@pytest.mark.exercise("15.3")
@pytest.mark.points(2)
def test_top_p_boundary(impl):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    f = impl.inference.sampling.top_p_filter
    assert torch.isfinite(f(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(f(logits, 0.51)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(f(logits, 0.96)).tolist() == [[True, True, True, True]]
    assert torch.isfinite(f(logits[:, [3, 1, 0, 2]], 0.7)).tolist() == [[False, True, True, False]]


@pytest.mark.exercise("15.4")
@pytest.mark.points(3)
@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_min_p_keeps_tokens_above_the_scaled_maximum(impl, min_p):
    logits = _logits(seed=3, scale=2.0)
    out = impl.inference.sampling.min_p_filter(logits, min_p)
    probs = torch.softmax(logits.double(), -1)
    expected = probs >= min_p * probs.max(-1, keepdim=True).values
    assert torch.equal(torch.isfinite(out), expected)
    torch.testing.assert_close(out[expected], logits[expected])
    if 0 < min_p < 1:
        hf = MinPLogitsWarper(min_p)(None, logits.clone())
        assert torch.equal(torch.isfinite(out), torch.isfinite(hf))


@pytest.mark.exercise("15.4")
@pytest.mark.points(1)
def test_min_p_scales_with_confidence(impl):
    probs = torch.tensor([[0.6, 0.25, 0.1, 0.05], [0.3, 0.28, 0.22, 0.2]])
    out = impl.inference.sampling.min_p_filter(probs.log(), 0.5)
    assert torch.isfinite(out).tolist() == [[True, False, False, False], [True, True, True, True]]


@pytest.mark.exercise("15.5")
@pytest.mark.points(3)
@pytest.mark.parametrize("penalty", [0.7, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_hugging_face(impl, penalty):
    logits = _logits(batch=3, vocab=20, seed=4)
    ids = torch.tensor([[1, 5, 5, 7], [0, 2, 19, 19], [3, 3, 3, 3]])
    seen = torch.zeros(3, 20, dtype=torch.bool).scatter(1, ids, True)
    out = impl.inference.sampling.repetition_penalty(logits, seen, penalty)
    hf = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    torch.testing.assert_close(out, hf)
    assert torch.equal(out[~seen], logits[~seen])


@pytest.mark.exercise("15.5")
@pytest.mark.points(1)
def test_repetition_penalty_lowers_seen_tokens_of_either_sign(impl):
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = impl.inference.sampling.repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


@pytest.mark.exercise("15.6")
@pytest.mark.points(3)
@pytest.mark.parametrize("frequency,presence", [(0.5, 0.0), (0.0, 0.7), (0.4, -0.3), (-1.0, 1.5)])
def test_frequency_and_presence_penalties_follow_openai(impl, frequency, presence):
    logits = _logits(batch=2, vocab=10, seed=5)
    outputs = [[1, 1, 1, 4], [9]]
    counts = torch.zeros(2, 10)
    for b, row in enumerate(outputs):
        for t in row:
            counts[b, t] += 1
    out = impl.inference.sampling.frequency_presence_penalty(logits, counts, frequency, presence)
    expected = logits.clone()
    for b in range(2):  # OpenAI: mu[j] -= c[j] * alpha_frequency + float(c[j] > 0) * alpha_presence
        for j in range(10):
            c = counts[b, j].item()
            expected[b, j] -= c * frequency + float(c > 0) * presence
    torch.testing.assert_close(out, expected)


@pytest.mark.exercise("15.6")
@pytest.mark.points(1)
def test_penalties_through_the_processor_chain(impl):
    logits = torch.zeros(1, 6)
    history = TokenHistory([[0, 5]], [[2, 2, 3]])  # prompt ids count for repetition, not for frequency
    counts = history.counts(6)
    assert counts.tolist() == [[0, 0, 2, 1, 0, 0]]
    out = impl.inference.sampling.frequency_presence_penalty(logits, counts, 1.0, 0.5)
    assert out.tolist() == [[0.0, 0.0, -2.5, -1.5, 0.0, 0.0]]
    params = SamplingParams(temperature=0, frequency_penalty=1.0, presence_penalty=0.5, repetition_penalty=2.0)
    probs = next_token_distribution(torch.tensor([[1.0, 0.9, 3.0, 2.0, 0.95, 1.2]]), history, params)
    # repetition: 1.0 -> 0.5 (id 0), 3.0 -> 1.5, 2.0 -> 1.0, 1.2 -> 0.6; then -2.5 at id 2, -1.5 at id 3
    assert probs.argmax().item() == 4
    tokens, logprobs = choose_next(torch.zeros(2, 6), TokenHistory.empty(2), SamplingParams(temperature=0.5, top_k=2),
                                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert tokens.shape == (2,) and torch.isfinite(logprobs).sum().item() == 12  # ties: all kept
