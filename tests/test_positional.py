"""Chapter 2: positional encodings — sinusoidal, learned, T5 relative bias, RoPE (both layouts), ALiBi.

Oracles from Hugging Face `transformers`: `rotate_half` / `apply_rotary_pos_emb` and
`LlamaRotaryEmbedding` (RoPE, half layout), complex multiplication as in Meta's LLaMA (RoPE,
interleaved layout), `T5Attention._relative_position_bucket` and `compute_bias`, Bloom's
`_get_alibi_slopes` and `build_alibi_tensor`. Tolerance 1e-6 (float32 inputs, float64 tables).

Harness: attention (`MultiHeadAttention`, Chapter 1) comes from `reference`, so that a Chapter 1
bug never costs Chapter 2 points; the code under test comes from `impl`.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 2`):
- 2.1 sin and cos swapped; exponent i/d instead of 2i/d; position times the wavelength; offset ignored.
- 2.2 position max_len accepted (off by one); positions ignored; table not trained.
- 2.3 directions swapped; causal distance of the wrong sign; buckets not halved per direction; the
  last bucket off by one; the log range not divided by the exact range.
- 2.4 query minus key; always bidirectional; heads in the wrong order.
- 2.5 exponent i/d; positive exponent; odd head_dim accepted.
- 2.6 / 2.7 odd dimensions first; the inverse permutation; identity; halves swapped.
- 2.8 rotation backwards (either layout); interleaved planes taken as halves; cos and sin swapped.
- 2.9 positions ignored; cache doubled but not grown to the position asked for; keys rotated by the
  queries' positions; no head axis for batched positions.
- 2.10 slopes off by one; the wrong half of the 2p sequence; the geometric rule for any head count.
- 2.11 / 2.12 queries aligned to the start; positive bias; distance of the wrong sign; bidirectional
  form ignored; slopes in reverse head order.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.attention import MultiHeadAttention

TOL = {"atol": 1e-6, "rtol": 1e-6}


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# 2.1 sinusoidal, 2.2 learned
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("2.1")
@pytest.mark.points(2)
def test_sinusoidal_values_by_hand(impl):
    pe = impl.positional.sinusoidal_encoding(3, 4)
    assert pe.shape == (3, 4) and pe.dtype == torch.float32
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],
            [math.sin(1), math.cos(1), math.sin(1 / 100), math.cos(1 / 100)],  # 10000^(2/4) = 100
            [math.sin(2), math.cos(2), math.sin(2 / 100), math.cos(2 / 100)],
        ]
    )
    torch.testing.assert_close(pe, expected, **TOL)


@pytest.mark.exercise("2.1")
@pytest.mark.points(1)
@pytest.mark.parametrize("d_model", [1, 5, 8])
def test_sinusoidal_odd_width_and_offset(impl, d_model):
    table = impl.positional.sinusoidal_encoding(20, d_model)
    torch.testing.assert_close(impl.positional.sinusoidal_encoding(5, d_model, offset=15), table[15:], **TOL)
    last = torch.arange(20.0, dtype=torch.float64) / 10000 ** (2 * ((d_model - 1) // 2) / d_model)
    column = torch.sin(last) if d_model % 2 else torch.cos(last)
    torch.testing.assert_close(table[:, -1], column.float(), **TOL)


@pytest.mark.exercise("2.1")
@pytest.mark.points(1)
def test_sinusoidal_dot_product_depends_only_on_distance(impl):
    pe = impl.positional.sinusoidal_encoding(64, 32).double()
    gram = pe @ pe.T
    for shift in (1, 5, 17):
        torch.testing.assert_close(gram.diagonal(shift)[:-10], gram.diagonal(shift)[10:], atol=1e-5, rtol=0)  # float32 table


@pytest.mark.exercise("2.1")
@pytest.mark.points(1)
@pytest.mark.parametrize(("args", "named"), [((-1, 8), "length"), ((4, 0), "d_model"), ((4, 8, -3), "offset")])
def test_sinusoidal_rejects_bad_arguments(impl, args, named):
    with pytest.raises(ValueError, match=named):
        impl.positional.sinusoidal_encoding(*args)


@pytest.mark.exercise("2.2")
@pytest.mark.points(1)
def test_learned_embedding_shapes_and_training(impl):
    torch.manual_seed(0)
    emb = impl.positional.LearnedPositionalEmbedding(16, 8)
    out = emb(torch.arange(5)[None].expand(3, 5))
    assert out.shape == (3, 5, 8)
    out.sum().backward()
    assert sum(p.grad.abs().sum() for p in emb.parameters()) > 0, "the table is trained"
    torch.testing.assert_close(emb(torch.tensor([4])), out[0, 4:5])


@pytest.mark.exercise("2.2")
@pytest.mark.points(1)
def test_learned_embedding_rejects_positions_past_its_table(impl):
    emb = impl.positional.LearnedPositionalEmbedding(16, 8)
    with pytest.raises(ValueError, match="16"):
        emb(torch.arange(17))
    with pytest.raises(ValueError, match="max_len"):
        emb(torch.tensor([-1]))


# ----------------------------------------------------------------------------------------------
# 2.3 T5 buckets, 2.4 T5 bias
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("2.3")
@pytest.mark.points(2)
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (16, 50), (8, 20)])
def test_relative_bucket_matches_t5(impl, bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    grid = torch.arange(-300, 301)[None, :] - torch.arange(0, 3)[:, None]  # (3, 601) relative positions
    ours = impl.positional.relative_position_bucket(grid, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(grid, bidirectional, num_buckets, max_distance)
    assert torch.equal(ours, theirs)


@pytest.mark.exercise("2.4")
@pytest.mark.points(2)
@pytest.mark.parametrize("is_decoder", [False, True])
def test_relative_position_bias_matches_t5(impl, is_decoder):
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention

    torch.manual_seed(0)
    ours = impl.positional.RelativePositionBias(4, bidirectional=not is_decoder, num_buckets=16, max_distance=40)
    config = T5Config(
        d_model=32, d_kv=8, num_heads=4, relative_attention_num_buckets=16, relative_attention_max_distance=40, is_decoder=is_decoder
    )
    theirs = T5Attention(config, has_relative_attention_bias=True)
    with torch.no_grad():
        theirs.relative_attention_bias.weight.copy_(ours.relative_attention_bias.weight)
    bias = ours.bias(torch.arange(6), torch.arange(9))
    assert bias.shape == (4, 6, 9)
    torch.testing.assert_close(bias, theirs.compute_bias(6, 9)[0], **TOL)


# ----------------------------------------------------------------------------------------------
# 2.5 frequencies, 2.6 / 2.7 layouts, 2.8 apply_rope, 2.9 RotaryEmbedding
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("2.5")
@pytest.mark.points(1)
def test_rope_frequencies(impl):
    theta = impl.positional.rope_frequencies(8)
    torch.testing.assert_close(theta, torch.tensor([1.0, 10000**-0.25, 10000**-0.5, 10000**-0.75], dtype=torch.float64))
    torch.testing.assert_close(impl.positional.rope_frequencies(4, base=100.0), torch.tensor([1.0, 0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="7"):
        impl.positional.rope_frequencies(7)


@pytest.mark.exercise("2.6")
@pytest.mark.points(1)
def test_interleaved_to_half(impl):
    x = torch.arange(8)
    assert impl.positional.interleaved_to_half(x).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.exercise("2.7")
@pytest.mark.points(1)
def test_half_to_interleaved_inverts_it(impl):
    x = _rand(2, 3, 10)
    assert impl.positional.half_to_interleaved(torch.arange(8)).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert torch.equal(impl.positional.half_to_interleaved(impl.positional.interleaved_to_half(x)), x)


def _angles(positions: torch.Tensor, head_dim: int) -> torch.Tensor:
    theta = 10000.0 ** -(torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return positions.double()[..., None] * theta  # (..., seq, head_dim // 2)


@pytest.mark.exercise("2.8")
@pytest.mark.points(2)
def test_apply_rope_half_matches_transformers(impl):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = _rand(2, 4, 7, 16), _rand(2, 2, 7, 16, seed=1)
    angles = _angles(torch.arange(3, 10), 16)
    cos, sin = angles.cos(), angles.sin()
    hf_cos, hf_sin = torch.cat([cos, cos], -1)[None].float(), torch.cat([sin, sin], -1)[None].float()  # (1, seq, 16)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    torch.testing.assert_close(impl.positional.apply_rope(q, cos.float(), sin.float(), "half"), q_hf, **TOL)
    torch.testing.assert_close(impl.positional.apply_rope(k, cos.float(), sin.float(), "half"), k_hf, **TOL)


@pytest.mark.exercise("2.8")
@pytest.mark.points(2)
def test_apply_rope_interleaved_is_complex_multiplication(impl):
    """Meta's LLaMA: view pairs (2i, 2i+1) as complex numbers and multiply by e^(i m theta)."""
    x = _rand(3, 5, 12, dtype=torch.float64)
    angles = _angles(torch.arange(5), 12)
    expected = torch.view_as_real(torch.view_as_complex(x.reshape(3, 5, 6, 2)) * torch.polar(torch.ones_like(angles), angles))
    ours = impl.positional.apply_rope(x, angles.cos(), angles.sin(), "interleaved")
    torch.testing.assert_close(ours, expected.reshape(3, 5, 12), atol=1e-12, rtol=0)


@pytest.mark.exercise("2.8")
@pytest.mark.points(2)
def test_layouts_agree_after_the_permutation_and_not_without(impl):
    p = impl.positional
    x = _rand(2, 3, 6, 16)
    angles = _angles(torch.arange(6), 16)
    cos, sin = angles.cos().float(), angles.sin().float()
    interleaved = p.apply_rope(x, cos, sin, "interleaved")
    via_half = p.half_to_interleaved(p.apply_rope(p.interleaved_to_half(x), cos, sin, "half"))
    torch.testing.assert_close(via_half, interleaved, **TOL)
    assert not torch.allclose(p.apply_rope(x, cos, sin, "half"), interleaved, atol=1e-3)


@pytest.mark.exercise("2.8")
@pytest.mark.points(1)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_apply_rope_preserves_norms_and_rejects_odd_widths(impl, layout):
    x = _rand(4, 9, 32)
    angles = _angles(torch.arange(100, 109), 32)
    out = impl.positional.apply_rope(x, angles.cos().float(), angles.sin().float(), layout)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), **TOL)
    with pytest.raises(ValueError, match="even"):
        impl.positional.apply_rope(torch.zeros(2, 5), torch.zeros(2, 2), torch.zeros(2, 2), layout)


@pytest.mark.exercise("2.9")
@pytest.mark.points(2)
def test_rotary_embedding_matches_llama_rotary(impl):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0)
    theirs = LlamaRotaryEmbedding(config)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])  # explicit, not only arange
    hf_cos, hf_sin = theirs(torch.zeros(2, 5, 64), positions)  # (batch, seq, head_dim), half layout
    ours = impl.positional.RotaryEmbedding(16, layout="half")
    cos, sin = ours.cos_sin(positions)
    torch.testing.assert_close(cos.float(), hf_cos[..., :8], **TOL)
    torch.testing.assert_close(sin.float(), hf_sin[..., :8], **TOL)
    q, k = _rand(2, 4, 5, 16), _rand(2, 2, 5, 16, seed=1)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q_hf, k_hf = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    q_ours, k_ours = ours.rotate(q, k, positions, positions)
    torch.testing.assert_close(q_ours, q_hf, **TOL)
    torch.testing.assert_close(k_ours, k_hf, **TOL)
    k_positions = torch.tensor([[3, 4, 5, 6, 7], [0, 2, 4, 6, 8]])  # keys elsewhere than the queries (a cache, say)
    hf_cos_k, hf_sin_k = theirs(torch.zeros(2, 5, 64), k_positions)
    _, k_hf_elsewhere = apply_rotary_pos_emb(q, k, hf_cos_k, hf_sin_k)
    q_ours, k_ours = ours.rotate(q, k, positions, k_positions)
    torch.testing.assert_close(q_ours, q_hf, **TOL)
    torch.testing.assert_close(k_ours, k_hf_elsewhere, **TOL)


@pytest.mark.exercise("2.9")
@pytest.mark.points(2)
@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(0, 1000), layout=st.sampled_from(["half", "interleaved"]))
def test_rotated_dot_product_depends_only_on_distance(impl, m, n, shift, layout):
    """<R_m q, R_n k> = <R_(m+s) q, R_(n+s) k>: RoPE is a relative encoding."""
    rope = impl.positional.RotaryEmbedding(8, layout=layout)
    q, k = _rand(1, 8, dtype=torch.float64), _rand(1, 8, seed=1, dtype=torch.float64)

    def score(a: int, b: int) -> float:
        qr, kr = rope.rotate(q, k, torch.tensor([a]), torch.tensor([b]))
        return (qr * kr).sum().item()

    assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.exercise("2.9")
@pytest.mark.points(1)
def test_rotary_cache_grows_on_demand(impl):
    rope = impl.positional.RotaryEmbedding(8)
    early = rope.cos_sin(torch.arange(4))
    cached = rope.cos_cached.shape[0]
    late = rope.cos_sin(torch.arange(cached + 50))
    assert rope.cos_cached.shape[0] >= cached + 50, "the cos/sin table grew"
    torch.testing.assert_close(late[0][:4], early[0])
    fresh = impl.positional.RotaryEmbedding(8).cos_sin(torch.tensor([cached + 49]))
    torch.testing.assert_close(late[1][-1:], fresh[1])
    with pytest.raises(ValueError, match="7"):
        impl.positional.RotaryEmbedding(7)


# ----------------------------------------------------------------------------------------------
# 2.10 slopes, 2.11 bias, 2.12 the module
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("2.10")
@pytest.mark.points(2)
@pytest.mark.parametrize("num_heads", [1, 2, 3, 5, 6, 8, 12, 16, 20])
def test_alibi_slopes_match_bloom(impl, num_heads):
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    torch.testing.assert_close(impl.positional.alibi_slopes(num_heads).float(), _get_alibi_slopes(num_heads, "cpu"), **TOL)


@pytest.mark.exercise("2.10")
@pytest.mark.points(1)
def test_alibi_slopes_are_the_papers_geometric_sequence(impl):
    torch.testing.assert_close(impl.positional.alibi_slopes(8), torch.tensor([2.0**-k for k in range(1, 9)], dtype=torch.float64))
    with pytest.raises(ValueError, match="num_heads"):
        impl.positional.alibi_slopes(0)


@pytest.mark.exercise("2.11")
@pytest.mark.points(2)
@pytest.mark.parametrize("num_heads", [4, 6])
def test_alibi_bias_gives_bloom_attention(impl, num_heads):
    """Bloom adds m * key_position; ours adds -m * (query - key): equal after the causal softmax."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    seq = 7
    bloom = build_alibi_tensor(torch.ones(1, seq), num_heads, torch.float32).reshape(num_heads, 1, seq)
    ours = impl.positional.alibi_bias(num_heads, seq)
    assert ours.shape == (num_heads, seq, seq)
    scores = _rand(num_heads, seq, seq)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    softmax = lambda s: torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)  # noqa: E731
    torch.testing.assert_close(softmax(scores + ours), softmax(scores + bloom), **TOL)


@pytest.mark.exercise("2.11")
@pytest.mark.points(1)
def test_alibi_bias_forms(impl):
    bias = impl.positional.alibi_bias(2, 3, causal=False)
    torch.testing.assert_close(bias, bias.transpose(-1, -2))
    torch.testing.assert_close(bias[0], -2.0**-4 * torch.tensor([[0.0, 1, 2], [1, 0, 1], [2, 1, 0]]))
    cached = impl.positional.alibi_bias(2, 2, 5)  # two new queries after three cached keys
    torch.testing.assert_close(cached[1], -2.0**-8 * torch.tensor([[3.0, 2, 1, 0, 0], [4, 3, 2, 1, 0]]))
    with pytest.raises(ValueError, match="seq_k"):
        impl.positional.alibi_bias(2, 5, 3)


@pytest.mark.exercise("2.12")
@pytest.mark.points(2)
def test_alibi_module_inside_attention_equals_the_bias_as_a_mask(impl):
    torch.manual_seed(0)
    alibi = impl.positional.ALiBi(4)
    hooked = MultiHeadAttention(32, 4, positional=alibi)
    plain = MultiHeadAttention(32, 4)
    plain.load_state_dict(hooked.state_dict())
    x, causal = _rand(2, 6, 32), torch.ones(6, 6, dtype=torch.bool).tril()
    slopes = torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8])  # 2^(-8h/n) for n = 4 heads (Press et al., 2022)
    distance = torch.arange(6.0)[:, None] - torch.arange(6.0)[None, :]  # i - j, written here, not by exercise 2.11
    as_mask = (-slopes[:, None, None] * distance).masked_fill(~causal, float("-inf"))
    torch.testing.assert_close(hooked(x, mask=causal), plain(x, mask=as_mask), atol=1e-5, rtol=1e-5)


@pytest.mark.exercise("2.12")
@pytest.mark.points(1)
def test_alibi_module_bidirectional_and_shifted(impl):
    """An encoder's ALiBi (causal=False) penalises |i - j| on both sides; shifting the positions changes nothing."""
    torch.manual_seed(0)
    hooked = MultiHeadAttention(32, 4, positional=impl.positional.ALiBi(4, causal=False))
    plain = MultiHeadAttention(32, 4)
    plain.load_state_dict(hooked.state_dict())
    x = _rand(2, 6, 32)
    distance = (torch.arange(6.0)[:, None] - torch.arange(6.0)[None, :]).abs()
    slopes = torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8])  # 2^(-8h/n) for n = 4 heads (Press et al., 2022)
    bias = -slopes[:, None, None] * distance
    torch.testing.assert_close(hooked(x), plain(x, mask=bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hooked(x, positions=torch.arange(40, 46)), hooked(x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Relative schemes inside attention: shifting every position changes nothing
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("2.9")
@pytest.mark.points(1)
def test_rope_attention_is_shift_invariant(impl):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, 2, positional=impl.positional.RotaryEmbedding(8))
    x, causal = _rand(2, 6, 32), torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(mha(x, mask=causal), mha(x, mask=causal, positions=torch.arange(100, 106)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mha(x, mask=causal), mha(x.flip(1), mask=causal).flip(1), atol=1e-3), "order matters"


@pytest.mark.exercise("2.4")
@pytest.mark.points(1)
def test_t5_bias_attention_is_shift_invariant(impl):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, positional=impl.positional.RelativePositionBias(4))
    x = _rand(2, 6, 32)
    torch.testing.assert_close(mha(x), mha(x, positions=torch.arange(50, 56)), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in mha.parameters()) == 4 * (32 * 32 + 32) + 32 * 4, "the bias table is a parameter"


# ----------------------------------------------------------------------------------------------
# Relative biases with one row of positions per sequence, (batch, seq), as MultiHeadAttention documents
# ----------------------------------------------------------------------------------------------
# batch = heads = seq = 3, so that a bias laid out (heads, batch, ...) or broadcast over the wrong
# axis has the right shape and only its values can give it away.

_BATCHED_Q = torch.tensor([[0, 1, 2], [5, 6, 7], [2, 4, 9]])
_BATCHED_K = torch.tensor([[0, 1, 2], [3, 5, 8], [0, 0, 1]])


@pytest.mark.exercise("2.12")
@pytest.mark.points(1)
@pytest.mark.parametrize("causal", [True, False])
def test_alibi_bias_with_batched_positions_is_each_rows_bias(impl, causal):
    alibi = impl.positional.ALiBi(3, causal=causal)
    batched = alibi.bias(_BATCHED_Q, _BATCHED_K)
    assert batched.shape == (3, 3, 3, 3), "(batch, heads, seq_q, seq_k)"
    for row in range(3):
        torch.testing.assert_close(batched[row], alibi.bias(_BATCHED_Q[row], _BATCHED_K[row]))
    slopes = impl.positional.alibi_slopes(3).float()
    distance = (_BATCHED_Q[2][:, None] - _BATCHED_K[2][None, :]).float()
    distance = distance.clamp(min=0) if causal else distance.abs()
    torch.testing.assert_close(batched[2], -slopes[:, None, None] * distance)


@pytest.mark.exercise("2.4")
@pytest.mark.points(1)
def test_t5_bias_with_batched_positions_is_each_rows_bias(impl):
    torch.manual_seed(0)
    t5 = impl.positional.RelativePositionBias(3, bidirectional=True, num_buckets=8, max_distance=4)
    batched = t5.bias(_BATCHED_Q, _BATCHED_K)
    assert batched.shape == (3, 3, 3, 3), "(batch, heads, seq_q, seq_k)"
    for row in range(3):
        torch.testing.assert_close(batched[row], t5.bias(_BATCHED_Q[row], _BATCHED_K[row]))
