"""Memory scheduling (`reference.inference.offload`): blocks fetched on demand under a byte budget.

Machinery, not an exercise. Oracles: the fully resident model (identical logits and greedy tokens),
the budget (the resident bytes never exceed it, checked at every fetch), and for the GGUF source
the model `load_pretrained` builds from the same file.
"""

from __future__ import annotations

import copy

import pytest
import torch

from reference.inference import generate
from reference.inference.offload import GGUFLayerSource, OffloadedLM
from reference.models.llama import TransformerLM


def _model():
    torch.manual_seed(0)
    return TransformerLM(vocab_size=61, context_length=64, d_model=64, num_layers=6, num_heads=4, num_kv_heads=2,
                         d_ff=128).eval()  # fmt: skip


@pytest.mark.parametrize("blocks", [1, 2, 3, 6])
@pytest.mark.parametrize("prefetch", [False, True])
def test_outputs_equal_the_resident_model_and_the_budget_holds(blocks, prefetch):
    model = _model()
    block = sum(p.numel() * 4 for p in model.layers[0].parameters())
    off = OffloadedLM(copy.deepcopy(model), blocks * block, prefetch=prefetch)
    seen = []
    original = off._reserve

    def watched(i, keep):
        ok = original(i, keep)
        seen.append(off.resident_bytes)
        return ok

    off._reserve = watched
    ids = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            assert torch.equal(off(ids), model(ids))
        assert generate(off, [[1, 2, 3], [4]], 10).new_tokens == generate(model, [[1, 2, 3], [4]], 10).new_tokens
    finally:
        off.close()
    assert max(seen) <= off.budget and off.peak_resident_bytes <= off.budget
    if blocks == 6:
        assert off.loads == 6  # everything fits: each block is fetched once
    else:
        assert off.loads > 6  # blocks are fetched again at every forward
    if prefetch and blocks >= 2:
        assert off.prefetched > 0


def test_budget_below_one_block_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="one block"):
        OffloadedLM(model, 1000)


def test_gguf_source_equals_the_loaded_model():
    from reference import pretrained

    model, _ = pretrained.load_pretrained("smollm2-135m-instruct")
    block = sum(p.numel() * 4 for p in model.layers[0].parameters())
    ids = torch.tensor([[1, 504, 3458, 314, 253]])
    with torch.no_grad():
        expected = model(ids)
    off = OffloadedLM(model, 3 * block, source=GGUFLayerSource(pretrained.gguf_path("smollm2-135m-instruct")))
    try:
        with torch.no_grad():
            got = off(ids)
    finally:
        off.close()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert off.peak_resident_bytes <= 3 * block
