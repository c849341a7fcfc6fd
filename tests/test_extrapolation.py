"""Chapter 2's length-extrapolation experiment (`reference.extrapolation`): tests of `reference` alone."""

from __future__ import annotations

import math

import pytest
import torch

from reference.extrapolation import (
    SCHEMES,
    PositionalDecoder,
    byte_tokens,
    length_extrapolation,
    loss_by_position,
    random_windows,
    train_decoder,
)


def _model(scheme: str, max_len: int = 8) -> PositionalDecoder:
    torch.manual_seed(0)
    return PositionalDecoder(256, 16, 2, 2, 32, scheme, max_len).eval()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_is_a_causal_decoder(scheme):
    model = _model(scheme)
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 7) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 8, 256)
    torch.testing.assert_close(a[:, :5], b[:, :5])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_only_the_learned_table_stops_at_its_length(scheme):
    model = _model(scheme, max_len=8)
    ids = torch.zeros(1, 32, dtype=torch.long)
    if scheme == "learned":
        with pytest.raises(ValueError, match="max_len=8"):
            model(ids)
    else:
        assert torch.isfinite(model(ids)).all()


def test_schemes_differ_and_position_free_model_is_permutation_blind():
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = {s: _model(s)(ids) for s in SCHEMES}
        # one layer with no positions: the last token's output depends only on the set of earlier tokens
        torch.manual_seed(0)
        none = PositionalDecoder(256, 16, 1, 2, 32, "none", 8).eval()
        shuffled = torch.cat([ids[:, :7].flip(1), ids[:, 7:]], dim=1)
        torch.testing.assert_close(none(ids)[:, -1], none(shuffled)[:, -1])
        rope = _model("rope")
        assert not torch.allclose(rope(ids)[:, -1], rope(shuffled)[:, -1], atol=1e-5)
    for s in SCHEMES[1:]:
        assert not torch.allclose(outputs[s], outputs["none"], atol=1e-5), s


def test_training_lowers_the_loss_on_a_learnable_sequence():
    data = byte_tokens("abcdefgh" * 200)
    model = _model("rope")
    losses = train_decoder(model, data, context_length=16, steps=40, batch_size=8, lr=1e-2)
    assert len(losses) == 40 and losses[-1] < 0.3 * losses[0]
    assert loss_by_position(model, data, 32, num_windows=4).shape == (32,)


def test_windows_are_shifted_by_one_and_bad_data_is_refused():
    data = torch.arange(100)
    x, y = random_windows(data, 10, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 10) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="longer than length"):
        random_windows(torch.arange(10), 10, 1, torch.Generator())
    with pytest.raises(ValueError, match="scheme"):
        PositionalDecoder(256, 16, 1, 2, 32, "xpos", 8)
    assert byte_tokens("é").tolist() == [0xC3, 0xA9]


def test_experiment_reports_every_length_and_nan_for_the_learned_table():
    data = byte_tokens("the quick brown fox jumps over the lazy dog. " * 40)
    results = length_extrapolation(data, data, context_length=8, factors=(1, 2), steps=3, d_model=16,
                                   num_layers=1, num_heads=2, progress=False)
    assert set(results) == set(SCHEMES)
    for scheme, result in results.items():
        assert len(result["train_losses"]) == 3 and set(result["loss"]) == {8, 16}
        assert math.isfinite(result["loss"][8])
        assert math.isnan(result["loss"][16]) == (scheme == "learned")
        assert result["by_position"].shape == ((8,) if scheme == "learned" else (16,))
