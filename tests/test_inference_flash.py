"""Chapter 15: FlashAttention's tiled forward (with the log-sum-exp L) and its recomputing backward.

Oracles: `torch.nn.functional.scaled_dot_product_attention` (outputs and gradients to 1e-5 in
float32), torch.logsumexp of the explicit scores for L, `torch.autograd.gradcheck` in float64; every
case with sequence lengths that are not multiples of the tile sizes, causal and not, square and
with more keys than queries (a decode step over cached keys).

Plausible bugs and the test that catches each:
- running maximum not rescaling acc / l (exp(m - m') forgotten), normalising per tile, missing
  scale -> test_forward_and_lse_equal_sdpa;
- last partial tile dropped (range stops at a multiple of the tile) -> the odd lengths of every test;
- causal diagonal not aligned to the last key, masked tile not skipped, or skipped too early ->
  test_forward_and_lse_equal_sdpa, test_causal_skips_fully_masked_tiles;
- L = m only, or log l without m -> test_forward_and_lse_equal_sdpa;
- backward: D_i omitted or computed from dP instead of dO * O, scale missing on dQ or dK, P^T dO
  transposed, probabilities from a stale maximum -> test_gradients_equal_sdpa, test_gradcheck_float64;
- saving the probabilities instead of recomputing them -> test_saves_only_q_k_v_o_and_l.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference.inference.flash import FlashAttention, peak_tensor_bytes, standard_attention

SHAPES = [(37, 37, 8, 16), (5, 70, 16, 16), (64, 64, 16, 16), (29, 50, 7, 11)]  # n_q, n_k, block_q, block_k


def _qkv(n_q, n_k, d=16, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, n_q, d, generator=g, dtype=dtype)
    k = torch.randn(2, 3, n_k, d, generator=g, dtype=dtype)
    v = torch.randn(2, 3, n_k, d, generator=g, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _sdpa(q, k, v, causal):
    if not causal:
        return F.scaled_dot_product_attention(q, k, v)
    mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(k.shape[-2] - q.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _lse(q, k, causal):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(k.shape[-2] - q.shape[-2])
        s = s.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(s, dim=-1)


@pytest.mark.exercise("15.7")
@pytest.mark.points(4)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k,bq,bk", SHAPES)
def test_forward_and_lse_equal_sdpa(impl, causal, n_q, n_k, bq, bk):
    q, k, v = _qkv(n_q, n_k)
    out, lse = impl.inference.flash.flash_attention_forward(q, k, v, causal, None, bq, bk)
    torch.testing.assert_close(out, _sdpa(q, k, v, causal), atol=1e-5, rtol=1e-5)
    assert lse.shape == q.shape[:-1]
    torch.testing.assert_close(lse, _lse(q, k, causal), atol=1e-5, rtol=1e-5)


@pytest.mark.exercise("15.7")
@pytest.mark.points(1)
def test_custom_scale(impl):
    q, k, v = _qkv(9, 9, d=8)
    out, _ = impl.inference.flash.flash_attention_forward(q, k, v, False, 0.3, 4, 4)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5)


@pytest.mark.exercise("15.7")
@pytest.mark.points(2)
def test_causal_skips_fully_masked_tiles(impl):
    q, k, v = _qkv(64, 64)
    v = v.clone()
    v[..., 16:, :] = float("nan")  # keys 16.. lie in tiles that queries 0..15 must never read
    out, _ = impl.inference.flash.flash_attention_forward(q, k, v, True, None, 16, 16)
    assert torch.isfinite(out[..., :16, :]).all()


@pytest.mark.exercise("15.7")
@pytest.mark.points(1)
def test_forward_peak_memory_is_below_the_score_matrix(impl):
    q, _, _ = _qkv(512, 512)
    with torch.no_grad():
        flash = peak_tensor_bytes(lambda: impl.inference.flash.flash_attention_forward(q, q, q, False, None, 32, 32))
        plain = peak_tensor_bytes(lambda: standard_attention(q, q, q))
    scores = 2 * 3 * 512 * 512 * 4
    assert plain >= scores and flash < scores / 4


@pytest.mark.exercise("15.8")
@pytest.mark.points(4)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k,bq,bk", SHAPES)
def test_gradients_equal_sdpa(impl, causal, n_q, n_k, bq, bk):
    q, k, v = _qkv(n_q, n_k, seed=1, grad=True)
    expected = _sdpa(q, k, v, causal)
    grad_out = torch.randn_like(expected)
    want = torch.autograd.grad(expected, (q, k, v), grad_out)
    with torch.no_grad():
        out, lse = impl.inference.flash.flash_attention_forward(q, k, v, causal, None, bq, bk)
        got = impl.inference.flash.flash_attention_backward(grad_out, q, k, v, out, lse, causal, None, bq, bk)
    for name, g, w in zip("qkv", got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=f"d{name}")


@pytest.mark.exercise("15.8")
@pytest.mark.points(3)
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(impl, causal):
    q, k, v = _qkv(11, 13, d=4, dtype=torch.float64, grad=True)
    flash = impl.inference.flash

    def attend(q, k, v):
        return flash.FlashAttention.apply(q, k, v, causal, None, 4, 5)

    assert torch.autograd.gradcheck(attend, (q, k, v))


@pytest.mark.exercise("15.8")
@pytest.mark.points(1)
def test_backward_skips_fully_masked_tiles(impl):
    q, k, v = _qkv(64, 64)
    q = q.clone()
    q[..., :16, :] = float("nan")  # query tile 0 meets key tile 3 only above the diagonal
    grad_out = torch.ones_like(q)
    out, lse = impl.inference.flash.flash_attention_forward(q, k, v, True, None, 16, 16)
    _, dk, dv = impl.inference.flash.flash_attention_backward(grad_out, q, k, v, out, lse, True, None, 16, 16)
    assert torch.isfinite(dk[..., 48:, :]).all() and torch.isfinite(dv[..., 48:, :]).all()


@pytest.mark.exercise("15.8")
@pytest.mark.points(1)
def test_saves_only_q_k_v_o_and_l(impl):
    q, k, v = _qkv(20, 20, grad=True)
    out = impl.inference.flash.FlashAttention.apply(q, k, v, True)
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [q.shape, k.shape, v.shape, q.shape, q.shape[:-1]]
    out.sum().backward()
    torch.testing.assert_close(q.grad, torch.autograd.grad(_sdpa(q, k, v, True).sum(), q)[0], atol=1e-5, rtol=1e-5)
