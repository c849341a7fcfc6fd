"""`SamplingParams` (the contract with Chapter 16's server): validation, defaults, processors and seeds.

Machinery, not an exercise: checked against the field definitions in the module docstring.
"""

from __future__ import annotations

import pytest
import torch

from reference.inference import generate
from reference.inference.generate import KVCache, kv_cache_bytes_per_token
from reference.models.llama import TransformerLM

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


def _model(context=64, seed=0, sharpen=30.0, layers=2):
    torch.manual_seed(seed)
    model = TransformerLM(vocab_size=61, context_length=context, d_model=32, num_layers=layers, num_heads=4,
                          num_kv_heads=2, d_ff=48).eval()  # fmt: skip
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


def test_cache_memory_formula_and_generate_with_a_growing_cache():
    model = _model()
    cache = KVCache.for_model(model, batch=3, max_len=50)
    assert cache.bytes_per_token == kv_cache_bytes_per_token(2, 2, 8, torch.float32) == 2 * 2 * 2 * 8 * 4
    assert cache.nbytes == 3 * 50 * cache.bytes_per_token
    assert kv_cache_bytes_per_token(30, 3, 64, torch.bfloat16) == 23040
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    a = generate(model, prompts, 20, return_scores=True)
    b = generate(model, prompts, 20, return_scores=True, cache_capacity=2)
    assert a.new_tokens == b.new_tokens
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def test_generate_options_parallel_sampling_and_penalties():
    model = _model(sharpen=1.0)
    out = generate(model, [[1, 2, 3], [7]], 8, temperature=1.0, n=3, generator=torch.Generator().manual_seed(0),
                   return_scores=True, min_p=0.05)  # fmt: skip
    assert out.sequences.shape[0] == 6 and len(out.new_tokens) == 6
    assert out.prompt_lengths == [3, 3, 3, 1, 1, 1]
    assert len({tuple(t) for t in out.new_tokens[:3]}) > 1  # independent samples of one prompt
    first = out.probs[:, 0]  # one prefill: the samples of a prompt start from the same distribution
    torch.testing.assert_close(first[0], first[2])
    kept = first[0] > 0
    assert torch.equal(kept, first[0] >= 0.05 * first[0].max())
    repeat = generate(_model(), [[4, 4, 4]], 12, repetition_penalty=1e6, frequency_penalty=2.0)
    assert len(set(repeat.new_tokens[0])) == 12 and 4 not in repeat.new_tokens[0]
