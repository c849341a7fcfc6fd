"""Chapter 15: the key/value cache (preallocated and growing), decoding options, beam search.

Oracles: the plain forward without a cache (logits to 1e-5), the cache's byte formula against its
buffers, Hugging Face's `generate(num_beams=B, length_penalty=...)` on the same weights
(`reference.models.hf.to_hf`), and parallel sampling against n separate seeded runs' distributions.

Plausible bugs and the test that catches each:
- cache writes at the wrong offset, returns only the new keys, or off by one in the length ->
  test_cache_update_returns_everything_so_far, test_decoding_through_the_cache_equals_the_plain_forward;
- a growing cache that loses old entries on reallocation, or grows by one (quadratic copying) ->
  test_growing_cache_doubles_and_keeps_its_contents;
- beam search: no length normalisation, length counted with the prompt, finished beams taken from
  all 2B candidates, no reordering of the cache, wrong stopping rule -> test_beam_search_equals_hugging_face.
"""

from __future__ import annotations

import pytest
import torch

from reference.inference import generate
from reference.inference.generate import KVCache, kv_cache_bytes_per_token
from reference.models.llama import TransformerLM

VOCAB = 61


def _model(context=64, seed=0, sharpen=30.0, layers=2):
    torch.manual_seed(seed)
    model = TransformerLM(vocab_size=VOCAB, context_length=context, d_model=32, num_layers=layers, num_heads=4,
                          num_kv_heads=2, d_ff=48).eval()  # fmt: skip
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


def _cache_class(impl):
    class Cache(KVCache):  # the machinery's cache, with the learner's per-layer update
        def layer(self, i):
            return impl.inference.generate.LayerKVCache(self, i)

    return Cache


@pytest.mark.exercise("15.1")
@pytest.mark.points(2)
def test_cache_update_returns_everything_so_far(impl):
    cache = KVCache(2, 3, 2, 4, 10)
    layer = impl.inference.generate.LayerKVCache(cache, 1)
    k1, v1 = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    keys, values = layer.update(k1, v1)
    assert torch.equal(keys, k1) and torch.equal(values, v1)
    cache.advance(5)
    k2, v2 = torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4)
    keys, values = layer.update(k2, v2)
    assert torch.equal(keys, torch.cat([k1, k2], 2)) and torch.equal(values, torch.cat([v1, v2], 2))
    assert torch.equal(cache.keys[1, :, :, :7], keys) and cache.keys[0].abs().sum() == 0  # layer 0 untouched
    cache.advance(2)
    with pytest.raises(ValueError, match="holds 10"):
        layer.update(torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4))


@pytest.mark.exercise("15.1")
@pytest.mark.points(3)
@pytest.mark.parametrize("capacity", [None, 1, 3])
def test_decoding_through_the_cache_equals_the_plain_forward(impl, capacity):
    model = _model()
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = _cache_class(impl)(2, 2, 2, 8, 20, initial_capacity=capacity)
        steps = [model(ids[:, :6], cache=cache)]
        for t in range(6, 20):
            steps.append(model(ids[:, t:t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 20


@pytest.mark.exercise("15.1")
@pytest.mark.points(2)
def test_growing_cache_doubles_and_keeps_its_contents(impl):
    cache = _cache_class(impl)(1, 1, 1, 2, 100, initial_capacity=4)
    written = []
    capacities = []
    for t in range(40):
        kv = torch.full((1, 1, 1, 2), float(t))
        written.append(kv)
        keys, _ = cache.layer(0).update(kv, kv)
        cache.advance(1)
        capacities.append(cache.capacity)
    assert torch.equal(keys, torch.cat(written, 2))
    assert sorted(set(capacities)) == [4, 8, 16, 32, 64] and cache.grown == 4
    assert cache.nbytes == 64 * cache.bytes_per_token


@pytest.mark.exercise("15.10")
@pytest.mark.points(6)
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_beam_search_equals_hugging_face(impl, length_penalty, seed):
    from reference.models.hf import to_hf

    model = _model(sharpen=5.0)
    hf = to_hf(model)
    prompt = torch.randint(0, VOCAB, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
    eos = [3, 7, 11, 20, 33, 40, 50]
    ours = impl.inference.beam.beam_search(model, prompt, 12, num_beams=4, length_penalty=length_penalty,
                                           eos_token_id=eos, num_return_sequences=3)  # fmt: skip
    out = hf.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, 6, dtype=torch.long),
                      max_new_tokens=12, num_beams=4, do_sample=False, length_penalty=length_penalty,
                      early_stopping=False, eos_token_id=eos, pad_token_id=0, num_return_sequences=3,
                      return_dict_in_generate=True, output_scores=True)  # fmt: skip
    theirs = []
    for row in out.sequences[:, 6:].tolist():
        theirs.append(row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))])
    assert ours.sequences == theirs
    torch.testing.assert_close(torch.tensor(ours.scores), out.sequences_scores.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.exercise("15.10")
@pytest.mark.points(1)
def test_one_beam_is_greedy(impl):
    model = _model()
    prompt = [5, 9, 2, 2]
    ours = impl.inference.beam.beam_search(model, prompt, 10, num_beams=1)
    assert ours.sequences == generate(model, [prompt], 10).new_tokens
