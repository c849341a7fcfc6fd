"""Chapter 5: the parts (norms, feed-forward blocks, residual block), the prefix mask, the LLaMA-style
decoder and its parameter count, graded against either implementation.

Oracles: `torch.nn.LayerNorm`, `torch.nn.RMSNorm`, Hugging Face's `LlamaRMSNorm`, `LlamaMLP`,
`NewGELUActivation` and `LlamaForCausalLM` (weights copied with `reference.models.hf.to_hf`),
`torch.nn.TransformerEncoderLayer` / `TransformerDecoderLayer` with copied weights, and the published
parameter count of LLaMA-7B. Harness pieces (attention, the reference model used to count) come from
`reference`; the code under test comes from `impl`.

`exercises/models/llama.py` (5.7) builds on the *reference* parts, so 5.7 is graded on the model's
wiring alone and each part (5.1-5.5) on its own tests; that is why the norms are tested directly at
scales where eps matters, not only through the model.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 5`):
- 5.1 eps outside the square root, missing or squared (inputs of tiny variance, a large eps);
  unbiased variance; mean not subtracted; statistics over the wrong axis; bias subtracted.
- 5.2 eps outside the square root, missing, or hard-coded; the mean subtracted (LayerNorm); sum of
  squares instead of the mean; the scale ignored.
- 5.3 tanh GELU for exact GELU and back; ReLU ignored; the bias flag ignored.
- 5.4 gate on the wrong branch; sigmoid (GLU) instead of SiLU; biases.
- 5.5 post-norm normalising the branch only; pre-norm residual from the normed input or missing;
  the feed-forward behind the attention's norm; self-/cross-attention mask dropped; positions not
  passed to attention.
- 5.6 prefix one too long (shared and per sequence); prefix on the query axis.
- 5.7 no final norm; eps not passed to the norms; rope_theta ignored; interleaved RoPE; positions
  ignored; prefix_length ignored; no causal mask; head copied, not tied.
- 5.8 kv heads ignored; final norm forgotten; tied head counted; SwiGLU counted as two matrices.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reference.attention import MultiHeadAttention
from reference.models.hf import from_hf, to_hf
from reference.positional import RotaryEmbedding

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter with random values, so that ones and zeros hide nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


# ----------------------------------------------------------------------------------------------
# 5.1 LayerNorm, 5.2 RMSNorm
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("5.1")
@pytest.mark.points(2)
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(impl, bias):
    ours = _randomise(impl.models.parts.LayerNorm(24, eps=1e-5, bias=bias))
    ref = nn.LayerNorm(24, eps=1e-5, bias=bias)
    ref.load_state_dict(ours.state_dict())
    x = _rand(3, 7, 24) * 5 + 3
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    assert {n for n, _ in ours.named_parameters()} == ({"weight", "bias"} if bias else {"weight"})


@pytest.mark.exercise("5.1")
@pytest.mark.points(1)
def test_layernorm_by_hand_and_in_low_precision(impl):
    ln = impl.models.parts.LayerNorm(4, eps=0.0 + 1e-12)
    y = ln(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / math.sqrt(1.25)  # biased variance 1.25
    torch.testing.assert_close(y[0], expected, **TOL)
    x = _rand(2, 5, 4) * 100
    low = ln(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ln(x.to(torch.bfloat16).float()), atol=1e-2, rtol=1e-2)


@pytest.mark.exercise("5.1")
@pytest.mark.points(1)
def test_layernorm_gradcheck_and_errors(impl):
    ln = _randomise(impl.models.parts.LayerNorm(6)).double()
    x = _rand(2, 6, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(ln, (x,))
    with pytest.raises(ValueError, match="d_model"):
        impl.models.parts.LayerNorm(0)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        impl.models.parts.LayerNorm(6)(torch.zeros(2, 5))


@pytest.mark.exercise("5.1")
@pytest.mark.points(1)
@pytest.mark.parametrize(("scale", "eps"), [(1e-3, 1e-5), (1.0, 0.25)], ids=["tiny-variance", "large-eps"])
def test_layernorm_eps_inside_the_square_root(impl, scale, eps):
    """(x - mean) / sqrt(var + eps): with var about eps the placement of eps decides the result."""
    ours = _randomise(impl.models.parts.LayerNorm(24, eps=eps))
    ref = nn.LayerNorm(24, eps=eps)
    ref.load_state_dict(ours.state_dict())
    x = _rand(3, 7, 24) * scale + 2 * scale
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.exercise("5.2")
@pytest.mark.points(1)
@pytest.mark.parametrize(("scale", "eps"), [(1e-3, 1e-6), (1.0, 0.25)], ids=["tiny-inputs", "large-eps"])
def test_rmsnorm_eps_inside_the_square_root(impl, scale, eps):
    """x / sqrt(mean(x^2) + eps): with mean(x^2) about eps the placement of eps decides the result."""
    ours = _randomise(impl.models.parts.RMSNorm(16, eps=eps))
    ref = nn.RMSNorm(16, eps=eps)
    ref.load_state_dict(ours.state_dict())
    x = _rand(2, 9, 16) * scale
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    y = impl.models.parts.RMSNorm(2, eps=eps)(torch.tensor([3.0, 4.0]) * scale)  # mean square 12.5 scale^2
    torch.testing.assert_close(y, torch.tensor([3.0, 4.0]) * scale / math.sqrt(12.5 * scale**2 + eps), **TOL)


@pytest.mark.exercise("5.2")
@pytest.mark.points(2)
def test_rmsnorm_matches_torch_and_hugging_face(impl):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ours = _randomise(impl.models.parts.RMSNorm(16, eps=1e-6))
    x = _rand(2, 9, 16) * 3 + 1
    torch_rms = nn.RMSNorm(16, eps=1e-6)
    hf = LlamaRMSNorm(16, eps=1e-6)
    torch_rms.load_state_dict(ours.state_dict())
    hf.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), torch_rms(x), **TOL)
    torch.testing.assert_close(ours(x), hf(x), **TOL)
    assert [n for n, _ in ours.named_parameters()] == ["weight"]


@pytest.mark.exercise("5.2")
@pytest.mark.points(1)
def test_rmsnorm_by_hand_scale_invariance_and_gradcheck(impl):
    rms = impl.models.parts.RMSNorm(2, eps=1e-8)
    y = rms(torch.tensor([3.0, 4.0]))  # mean square 12.5
    torch.testing.assert_close(y, torch.tensor([3.0, 4.0]) / math.sqrt(12.5), **TOL)
    x = _rand(3, 2)
    torch.testing.assert_close(rms(7.5 * x), rms(x), **TOL)  # RMSNorm forgets the scale of its input
    rms64 = _randomise(impl.models.parts.RMSNorm(5)).double()
    assert torch.autograd.gradcheck(rms64, (_rand(3, 5, dtype=torch.float64).requires_grad_(),))
    with pytest.raises(ValueError, match="eps"):
        impl.models.parts.RMSNorm(4, eps=-1.0)


# ----------------------------------------------------------------------------------------------
# 5.3 MLP, 5.4 SwiGLU
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("5.3")
@pytest.mark.points(2)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
def test_mlp_matches_its_formula(impl, activation):
    from transformers.activations import GELUActivation, NewGELUActivation

    mlp = _randomise(impl.models.parts.MLP(8, 20, activation=activation))
    assert mlp.fc_in.weight.shape == (20, 8) and mlp.fc_out.weight.shape == (8, 20)
    act = {"gelu": GELUActivation(), "gelu_tanh": NewGELUActivation(), "relu": nn.ReLU()}[activation]
    x = _rand(2, 3, 8)
    expected = mlp.fc_out(act(mlp.fc_in(x)))
    torch.testing.assert_close(mlp(x), expected, **TOL)


@pytest.mark.exercise("5.3")
@pytest.mark.points(1)
def test_mlp_without_bias_and_errors(impl):
    mlp = impl.models.parts.MLP(8, 16, activation="relu", bias=False)
    assert mlp.fc_in.bias is None and mlp.fc_out.bias is None
    assert sum(p.numel() for p in mlp.parameters()) == 2 * 8 * 16
    with pytest.raises(ValueError, match="swish"):
        impl.models.parts.MLP(8, 16, activation="swish")


@pytest.mark.exercise("5.4")
@pytest.mark.points(2)
def test_swiglu_matches_hugging_face_llama_mlp(impl):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    ours = _randomise(impl.models.parts.SwiGLU(12, 32))
    assert (ours.w1.weight.shape, ours.w2.weight.shape, ours.w3.weight.shape) == ((32, 12), (12, 32), (32, 12))
    assert all(getattr(ours, w).bias is None for w in ("w1", "w2", "w3"))
    hf = LlamaMLP(LlamaConfig(hidden_size=12, intermediate_size=32, num_attention_heads=2, hidden_act="silu"))
    hf.gate_proj.weight.data, hf.up_proj.weight.data = ours.w1.weight.data, ours.w3.weight.data
    hf.down_proj.weight.data = ours.w2.weight.data
    x = _rand(2, 5, 12)
    torch.testing.assert_close(ours(x), hf(x), **TOL)


@pytest.mark.exercise("5.4")
@pytest.mark.points(1)
def test_swiglu_by_hand(impl):
    ours = impl.models.parts.SwiGLU(1, 1)
    with torch.no_grad():
        ours.w1.weight.fill_(2.0), ours.w3.weight.fill_(3.0), ours.w2.weight.fill_(0.5)
    x = torch.tensor([[1.5]])
    silu = 3.0 / (1 + math.exp(-3.0))  # silu(2 * 1.5)
    torch.testing.assert_close(ours(x), torch.tensor([[0.5 * silu * 4.5]]), **TOL)


# ----------------------------------------------------------------------------------------------
# 5.5 Block
# ----------------------------------------------------------------------------------------------


def _torch_layer_weights(layer: nn.Module, block: nn.Module, cross: bool = False) -> None:
    """Copy a Block (separate q/k/v projections, nn.LayerNorm norms, MLP) into a torch layer."""
    def copy_attention(theirs: nn.MultiheadAttention, ours: MultiHeadAttention) -> None:
        theirs.in_proj_weight.data = torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]).data
        theirs.in_proj_bias.data = torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]).data
        theirs.out_proj.weight.data, theirs.out_proj.bias.data = ours.out_proj.weight.data, ours.out_proj.bias.data

    copy_attention(layer.self_attn, block.attn)
    layer.linear1.load_state_dict(block.ffn.fc_in.state_dict())
    layer.linear2.load_state_dict(block.ffn.fc_out.state_dict())
    layer.norm1.load_state_dict(block.norm_attn.state_dict())
    if cross:
        copy_attention(layer.multihead_attn, block.cross_attn)
        layer.norm2.load_state_dict(block.norm_cross.state_dict())
        layer.norm3.load_state_dict(block.norm_ffn.state_dict())
    else:
        layer.norm2.load_state_dict(block.norm_ffn.state_dict())


def _block(impl, pre_norm: bool, cross: bool = False, d: int = 16, heads: int = 4, d_ff: int = 24):
    torch.manual_seed(1)
    return _randomise(
        impl.models.parts.Block(
            attn=MultiHeadAttention(d, heads),
            ffn=_TorchMLP(d, d_ff),
            norm_attn=nn.LayerNorm(d),
            norm_ffn=nn.LayerNorm(d),
            pre_norm=pre_norm,
            cross_attn=MultiHeadAttention(d, heads) if cross else None,
            norm_cross=nn.LayerNorm(d) if cross else None,
        ),
        seed=2,
    )


class _TorchMLP(nn.Module):
    """The harness's feed-forward block (torch's layers use ReLU by default)."""

    def __init__(self, d: int, d_ff: int) -> None:
        super().__init__()
        self.fc_in, self.fc_out = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(torch.relu(self.fc_in(x)))


@pytest.mark.exercise("5.5")
@pytest.mark.points(2)
@pytest.mark.parametrize("pre_norm", [True, False], ids=["pre-norm", "post-norm"])
def test_block_matches_torch_encoder_layer(impl, pre_norm):
    block = _block(impl, pre_norm).eval()
    layer = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True, norm_first=pre_norm).eval()
    _torch_layer_weights(layer, block)
    x = _rand(2, 6, 16)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(block(x), layer(x), **TOL)
    torch.testing.assert_close(block(x, mask=causal), layer(x, src_mask=~causal), **TOL)  # torch: True = blocked


@pytest.mark.exercise("5.5")
@pytest.mark.points(2)
def test_block_with_cross_attention_matches_torch_decoder_layer(impl):
    block = _block(impl, pre_norm=True, cross=True).eval()
    layer = nn.TransformerDecoderLayer(16, 4, 24, dropout=0.0, batch_first=True, norm_first=True).eval()
    _torch_layer_weights(layer, block, cross=True)
    x, memory = _rand(2, 5, 16), _rand(2, 7, 16, seed=1)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    keep = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])  # (batch, seq_k)
    out = block(x, mask=causal, context=memory, context_mask=keep[:, None, None, :])
    expected = layer(x, memory, tgt_mask=~causal, memory_key_padding_mask=~keep)
    torch.testing.assert_close(out, expected, **TOL)


@pytest.mark.exercise("5.5")
@pytest.mark.points(1)
def test_block_passes_positions_to_attention(impl):
    """With RoPE inside attention the block must hand `positions` on: x + attn(norm(x), positions), then the FFN."""
    torch.manual_seed(1)
    attn = MultiHeadAttention(16, 4, positional=RotaryEmbedding(4))
    ffn, norm_attn, norm_ffn = _TorchMLP(16, 24), nn.LayerNorm(16), nn.LayerNorm(16)
    block = _randomise(impl.models.parts.Block(attn, ffn, norm_attn, norm_ffn), seed=2)
    x = _rand(2, 6, 16)
    positions = torch.tensor([0, 2, 3, 7, 8, 12])  # not a shift of 0 .. 5, so RoPE's result depends on them
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    h = x + attn(norm_attn(x), mask=causal, positions=positions)
    torch.testing.assert_close(block(x, mask=causal, positions=positions), h + ffn(norm_ffn(h)), **TOL)


@pytest.mark.exercise("5.5")
@pytest.mark.points(1)
def test_block_refuses_half_a_cross_attention(impl):
    with pytest.raises(ValueError, match="norm_cross"):
        impl.models.parts.Block(MultiHeadAttention(8, 2), _TorchMLP(8, 8), nn.LayerNorm(8), nn.LayerNorm(8),
                                cross_attn=MultiHeadAttention(8, 2))
    block = _block(impl, pre_norm=True, cross=True)
    with pytest.raises(ValueError, match="context"):
        block(_rand(1, 3, 16))


# ----------------------------------------------------------------------------------------------
# 5.6 prefix mask
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("5.6")
@pytest.mark.points(2)
def test_prefix_mask_by_hand(impl):
    mask = impl.models.masks.prefix_mask(4, 2)
    expected = torch.tensor(
        [[1, 1, 0, 0],
         [1, 1, 0, 0],
         [1, 1, 1, 0],
         [1, 1, 1, 1]], dtype=torch.bool)
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    assert torch.equal(impl.models.masks.prefix_mask(5, 0), torch.ones(5, 5, dtype=torch.bool).tril())
    assert torch.equal(impl.models.masks.prefix_mask(5, 5), torch.ones(5, 5, dtype=torch.bool))


@pytest.mark.exercise("5.6")
@pytest.mark.points(1)
def test_prefix_mask_per_sequence_and_errors(impl):
    lengths = torch.tensor([0, 2, 4])
    mask = impl.models.masks.prefix_mask(4, lengths)
    assert mask.shape == (3, 1, 4, 4)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(mask[b, 0], impl.models.masks.prefix_mask(4, n))
    for bad in (-1, 5):
        with pytest.raises(ValueError, match="prefix_length"):
            impl.models.masks.prefix_mask(4, bad)


# ----------------------------------------------------------------------------------------------
# 5.7 TransformerLM
# ----------------------------------------------------------------------------------------------

CONFIG = dict(vocab_size=61, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=40, rope_theta=500.0)


def _lm(impl, **overrides):
    torch.manual_seed(0)
    return _randomise(impl.models.llama.TransformerLM(**(CONFIG | overrides)), seed=3).eval()


@pytest.mark.exercise("5.7")
@pytest.mark.points(3)
@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
def test_transformer_lm_matches_hugging_face_llama(impl, num_kv_heads):
    model = _lm(impl, num_kv_heads=num_kv_heads)
    hf = to_hf(model)
    ids = torch.randint(0, 61, (3, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, theirs = model(ids), hf(input_ids=ids).logits
    assert ours.shape == (3, 16, 61)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.exercise("5.7")
@pytest.mark.points(1)
def test_transformer_lm_eps_and_positions_match_hugging_face(impl):
    """A large RMSNorm eps must reach every norm, and explicit RoPE positions must reach every layer."""
    model = _lm(impl, eps=0.5)
    hf = to_hf(model)
    assert hf.config.rms_norm_eps == 0.5
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(4))
    positions = torch.cat([torch.arange(8), torch.arange(20, 28)])  # a gap: not a shift, so RoPE notices
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
        theirs = hf(input_ids=ids, position_ids=positions[None].expand(2, -1)).logits
        torch.testing.assert_close(model(ids, positions=positions), theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.exercise("5.7")
@pytest.mark.points(1)
def test_transformer_lm_parameter_names_and_tied_head(impl):
    model = _lm(impl, tie_embeddings=True)
    names = {n for n, _ in model.named_parameters()}
    assert {"token_embeddings.weight", "ln_final.weight", "layers.0.attn.q_proj.weight", "layers.1.ffn.w2.weight",
            "layers.0.norm_attn.weight", "layers.0.norm_ffn.weight"} <= names
    assert model.lm_head.weight is model.token_embeddings.weight
    untied = _lm(impl)
    assert untied.lm_head.weight is not untied.token_embeddings.weight
    assert untied.config["num_kv_heads"] == 4 and untied.config["vocab_size"] == 61
    back = from_hf(to_hf(untied))
    for name, tensor in untied.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


@pytest.mark.exercise("5.7")
@pytest.mark.points(2)
def test_transformer_lm_is_causal(impl):
    model = _lm(impl)
    ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(5))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 61
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], **TOL)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


@pytest.mark.exercise("5.7")
@pytest.mark.points(2)
def test_transformer_lm_as_prefix_decoder(impl):
    model = _lm(impl)
    ids = torch.randint(0, 61, (1, 10), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        base = model(ids, prefix_length=4)
        later_prefix = ids.clone()
        later_prefix[0, 3] = (later_prefix[0, 3] + 1) % 61
        suffix = ids.clone()
        suffix[0, 8] = (suffix[0, 8] + 1) % 61
        in_prefix_changed = model(later_prefix, prefix_length=4)
        suffix_changed = model(suffix, prefix_length=4)
        causal = model(ids)
        per_row = model(ids.repeat(2, 1), prefix_length=torch.tensor([4, 0]))
    assert not torch.allclose(base[0, :3], in_prefix_changed[0, :3], atol=1e-4)  # the prefix sees ahead
    torch.testing.assert_close(base[0, :8], suffix_changed[0, :8], **TOL)  # nobody sees the suffix's future
    torch.testing.assert_close(per_row[0], base[0], **TOL)
    torch.testing.assert_close(per_row[1], causal[0], **TOL)  # prefix 0 is the causal decoder


@pytest.mark.exercise("5.7")
@pytest.mark.points(1)
def test_transformer_lm_greedy_generation_matches_its_logits(impl):
    model = _lm(impl)
    prompt = torch.randint(0, 61, (2, 3), generator=torch.Generator().manual_seed(7))
    out = model.generate(prompt, max_new_tokens=5, temperature=0.0)
    assert out.shape == (2, 8) and torch.equal(out[:, :3], prompt)
    with torch.no_grad():
        for t in range(3, 8):
            assert torch.equal(model(out[:, :t])[:, -1].argmax(-1), out[:, t])


@pytest.mark.exercise("5.7")
@pytest.mark.points(1)
def test_transformer_lm_rejects_bad_input(impl):
    model = _lm(impl)
    with pytest.raises(ValueError, match="61"):
        model(torch.tensor([[1, 2, 61]]))
    with pytest.raises(ValueError, match="-1"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="num_kv_heads"):
        impl.models.llama.TransformerLM(**(CONFIG | {"num_kv_heads": 3}))


# ----------------------------------------------------------------------------------------------
# 5.8 parameter count
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("5.8")
@pytest.mark.points(2)
@pytest.mark.parametrize(
    "config",
    [
        dict(vocab_size=61, d_model=32, num_layers=2, num_heads=4, d_ff=40),
        dict(vocab_size=100, d_model=48, num_layers=3, num_heads=6, d_ff=128, num_kv_heads=2),
        dict(vocab_size=17, d_model=16, num_layers=1, num_heads=2, d_ff=8, num_kv_heads=1, tie_embeddings=True),
    ],
)
def test_llama_parameter_count_matches_the_module(impl, config):
    from reference.models.counting import module_parameter_count
    from reference.models.llama import TransformerLM

    model = TransformerLM(context_length=8, **config)
    assert impl.models.counting.llama_parameter_count(**config) == module_parameter_count(model)


@pytest.mark.exercise("5.8")
@pytest.mark.points(1)
def test_llama_parameter_count_of_llama_7b(impl):
    counts = impl.models.counting.llama_parameter_count(32000, 4096, 32, 32, 11008)
    assert sum(counts.values()) == 6_738_415_616  # LLaMA-7B (Touvron et al., 2023), as Hugging Face counts it
    assert counts["head"] == counts["embeddings"] == 32000 * 4096
