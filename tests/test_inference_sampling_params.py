"""`SamplingParams` (the contract with Chapter 16's server): validation, defaults, processors and seeds.

Machinery, not an exercise: checked against the field definitions in the module docstring.
"""

from __future__ import annotations

import pytest
import torch

from reference.inference.sampling import (
    FrequencyPresencePenalty, MinP, MinTokens, RepetitionPenalty, SamplingParams, Temperature, TokenHistory, TopK, TopP,
    choose_next, processors_for,
)  # fmt: skip


def test_defaults_and_names():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.min_p, p.max_tokens, p.stop, p.stop_token_ids) == (1, 1.0, 1.0, 0.0, 16, (), ())
    assert SamplingParams(stop="###", stop_token_ids=[2, 3]).stop == ("###",)
    assert SamplingParams(stop_token_ids=[2, 3]).stop_token_ids == (2, 3)
    assert SamplingParams(n=2, best_of=4).sequences_to_sample == 4
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams().replace(top_k=5).top_k == 5


@pytest.mark.parametrize("kwargs,error,match", [
    ({"n": 0}, ValueError, "n must"), ({"n": 1.5}, TypeError, "n must"), ({"n": 3, "best_of": 2}, ValueError, "best_of"),
    ({"temperature": -0.1}, ValueError, "temperature"), ({"temperature": float("nan")}, ValueError, "temperature"),
    ({"temperature": "hot"}, TypeError, "temperature"), ({"top_k": 0}, ValueError, "top_k"),
    ({"top_p": 0.0}, ValueError, "top_p"), ({"top_p": 1.5}, ValueError, "top_p"), ({"min_p": -0.1}, ValueError, "min_p"),
    ({"repetition_penalty": 0.0}, ValueError, "repetition_penalty"), ({"frequency_penalty": 3.0}, ValueError, "frequency"),
    ({"presence_penalty": -2.5}, ValueError, "presence"), ({"max_tokens": -1}, ValueError, "max_tokens"),
    ({"min_tokens": 5, "max_tokens": 2}, ValueError, "min_tokens"), ({"stop": [""]}, ValueError, "stop"),
    ({"stop": [1]}, TypeError, "stop"), ({"stop_token_ids": [-1]}, ValueError, "stop_token_ids"),
    ({"seed": True}, TypeError, "seed"), ({"use_beam_search": 1}, TypeError, "use_beam_search"),
    ({"use_beam_search": True, "beam_width": 2, "n": 3}, ValueError, "beam_width"),
    ({"use_beam_search": True, "beam_width": 2, "top_p": 0.5}, ValueError, "beam search"),
    ({"length_penalty": float("inf")}, ValueError, "length_penalty"),
])  # fmt: skip
def test_bad_values_raise_named_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        SamplingParams(**kwargs)


def test_processor_chain_order_and_identities():
    assert processors_for(SamplingParams()) == []
    chain = processors_for(SamplingParams(temperature=0.5, top_k=4, top_p=0.9, min_p=0.1, repetition_penalty=1.1,
                                          frequency_penalty=0.2, min_tokens=2), eos_token_ids=[7])  # fmt: skip
    assert [type(c) for c in chain] == [MinTokens, RepetitionPenalty, FrequencyPresencePenalty, Temperature, TopK, TopP, MinP]
    assert processors_for(SamplingParams(temperature=0, top_k=3)) == []  # greedy: the filters cannot change the argmax


def test_min_tokens_masks_the_stop_ids():
    logits = torch.tensor([[0.0, 0.0, 10.0]])
    params = SamplingParams(temperature=0, min_tokens=2, max_tokens=4)
    assert choose_next(logits, TokenHistory([[1]], [[0]]), params, eos_token_ids=[2])[0].item() != 2
    assert choose_next(logits, TokenHistory([[1]], [[0, 0]]), params, eos_token_ids=[2])[0].item() == 2
    assert choose_next(logits, TokenHistory([[1]], [[0]]), params.replace(ignore_eos=True), eos_token_ids=[2])[0].item() == 2


def test_seed_makes_sampling_reproducible():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.2, seed=11)
    draws = [choose_next(logits, TokenHistory.empty(3), params, generator=params.generator())[0] for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    assert params.replace(seed=None).generator() is None


def test_sampled_frequencies_follow_the_processed_distribution():
    logits = torch.tensor([[1.0, 0.5, 0.0, -1.0, 2.0]]).repeat(4000, 1)
    params = SamplingParams(temperature=0.7, top_k=4)
    tokens, logprobs = choose_next(logits, TokenHistory.empty(4000), params, generator=torch.Generator().manual_seed(1))
    expected = torch.softmax(torch.tensor([1.0, 0.5, 0.0, float("-inf"), 2.0]) / 0.7, -1)
    torch.testing.assert_close(logprobs[0].exp(), expected)
    freq = torch.bincount(tokens, minlength=5).float() / 4000
    assert (freq - expected).abs().max() < 0.03 and freq[3] == 0


def test_history_checks_ids():
    with pytest.raises(ValueError, match="token ids"):
        TokenHistory([[0]], [[9]]).counts(5)
    with pytest.raises(ValueError, match="prompts"):
        TokenHistory([[0], [1]], [[1]])
