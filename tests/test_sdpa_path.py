"""`MultiHeadAttention(sdpa=True)`: PyTorch's fused attention gives the explicit path's results.

Not an exercise: Chapter 1's explicit attention is the one taught and graded (tests/test_attention.py);
this checks the speed path the course's models use against it, the two paths run on the same module
with the same weights (`attn.sdpa` switched), forward and backward, for every mask kind, grouped-query
attention, the positional hooks (RoPE's rotation, ALiBi's and T5's biases), cross-attention and a
key/value cache. A wrong mask convention (inverted boolean, float mask dropped), GQA grouping
(interleaved instead of blocked), a dropped positional bias or a wrong scale each fail here.
"""

from __future__ import annotations

import pytest
import torch

from reference.attention import MultiHeadAttention, causal_mask, padding_mask
from reference.inference import KVCache
from reference.models.llama import TransformerLM
from reference.positional import ALiBi, RelativePositionBias, RotaryEmbedding

TOL = dict(atol=1e-5, rtol=1e-5)
B, S, D = 2, 7, 32


def _both(attn: MultiHeadAttention, *args, **kwargs) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Output and gradients (input, every parameter) of the explicit and of the fused path."""
    results = []
    for sdpa in (False, True):
        attn.sdpa = sdpa
        attn.zero_grad(set_to_none=True)
        inputs = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() == 3 else a
                  for a in args]  # fmt: skip
        out = attn(*inputs, **kwargs)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads = [a.grad for a in inputs if isinstance(a, torch.Tensor) and a.requires_grad]
        grads += [p.grad.clone() for p in attn.parameters() if p.grad is not None]
        results.append((out.detach(), *grads))
    return results[0], results[1]


def _check(attn, *args, **kwargs):
    explicit, fused = _both(attn, *args, **kwargs)
    assert len(explicit) == len(fused) > 2
    for a, b in zip(explicit, fused):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(b, a, **TOL)
    return explicit[0]


def _x(seed=0, batch=B, seq=S, d=D):
    return torch.randn(batch, seq, d, generator=torch.Generator().manual_seed(seed))


def _mask(kind: str, seq_q=S, seq_k=S):
    g = torch.Generator().manual_seed(1)
    if kind == "none":
        return None
    if kind == "causal":
        return causal_mask(seq_q, seq_k)
    if kind == "padding":
        return padding_mask(torch.tensor([seq_k, 3]), seq_k)
    if kind == "causal_and_padding":
        return causal_mask(seq_q, seq_k) & padding_mask(torch.tensor([seq_k, 4]), seq_k)
    if kind == "random_bool":  # any pattern, including a fully masked row
        m = torch.rand(B, 1, seq_q, seq_k, generator=g) < 0.6
        m[0, 0, 2] = False
        return m
    if kind == "float":
        m = torch.randn(B, 4, seq_q, seq_k, generator=g)
        m[1, :, 3, :2] = float("-inf")
        return m
    raise AssertionError(kind)


MASKS = ["none", "causal", "padding", "causal_and_padding", "random_bool", "float"]


def test_sdpa_flag_is_off_by_default_and_checked():
    assert MultiHeadAttention(D, 4).sdpa is False
    assert MultiHeadAttention(D, 4, sdpa=True).sdpa is True
    with pytest.raises(TypeError, match="sdpa"):
        MultiHeadAttention(D, 4, sdpa=1)
    model = TransformerLM(vocab_size=11, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=24)
    assert all(layer.attn.sdpa for layer in model.layers)  # the course's models train and generate on it


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_sdpa_equals_explicit_for_every_mask_and_grouping(kind, heads, kv_heads):
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, heads, kv_heads, bias=True)
    out = _check(attn, _x(), mask=_mask(kind))
    if kind == "random_bool":
        assert torch.equal(out[0, 2], attn.out_proj.bias.detach())  # a query that sees no key gets zeros before out_proj


@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_sdpa_honours_the_scale(scale):
    torch.manual_seed(0)
    _check(MultiHeadAttention(D, 4, 2, scale=scale), _x(), mask=causal_mask(S))


def test_sdpa_fused_qkv():
    torch.manual_seed(0)
    _check(MultiHeadAttention(D, 4, fused_qkv=True), _x(), mask=causal_mask(S))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("positions", ["default", "shifted", "per_row"])
def test_sdpa_with_rope(layout, positions):
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, 4, 2, positional=RotaryEmbedding(D // 4, layout=layout))
    pos = {"default": None, "shifted": torch.arange(5, 5 + S), "per_row": torch.stack([torch.arange(S), torch.arange(3, 3 + S)])}
    _check(attn, _x(), mask=causal_mask(S), positions=pos[positions])


@pytest.mark.parametrize("kind", ["none", "causal", "padding", "float"])
@pytest.mark.parametrize("scheme", ["alibi", "t5_bidirectional", "t5_causal"])
def test_sdpa_with_bias_hooks(scheme, kind):
    """The bias enters the fused kernel as (part of) its float attn_mask."""
    torch.manual_seed(0)
    positional = {"alibi": ALiBi(4), "t5_bidirectional": RelativePositionBias(4, bidirectional=True),
                  "t5_causal": RelativePositionBias(4, bidirectional=False)}[scheme]  # fmt: skip
    if scheme != "alibi":
        torch.nn.init.normal_(positional.relative_attention_bias.weight)  # T5's bias is learned: its gradient is compared too
    attn = MultiHeadAttention(D, 4, positional=positional, scale=1.0 if scheme != "alibi" else None)
    _check(attn, _x(), mask=_mask(kind))


@pytest.mark.parametrize("kind", ["none", "padding"])
def test_sdpa_cross_attention(kind):
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, 4, 2, kdim=24, vdim=24)
    context = torch.randn(B, 9, 24, generator=torch.Generator().manual_seed(5))
    mask = None if kind == "none" else padding_mask(torch.tensor([9, 4]), 9)
    _check(attn, _x(), context, mask=mask)


def test_sdpa_with_a_cache_equals_explicit():
    """Decoding one query against cached keys (seq_q=1 < seq_k), RoPE and GQA."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, 4, 2, bias=False, positional=RotaryEmbedding(D // 4)).eval()
    x = _x()
    outs = []
    for sdpa in (False, True):
        attn.sdpa = sdpa
        cache = KVCache(1, B, 2, D // 4, S)
        with torch.no_grad():
            first = attn(x[:, :-1], mask=causal_mask(S - 1), positions=torch.arange(S - 1), cache=cache.layer(0))
            cache.advance(S - 1)
            last = attn(x[:, -1:], mask=causal_mask(1, S), positions=torch.tensor([S - 1]), cache=cache.layer(0))
        outs.append(torch.cat([first, last], dim=1))
    torch.testing.assert_close(outs[1], outs[0], **TOL)
    with torch.no_grad():
        attn.sdpa = False
        torch.testing.assert_close(outs[0], attn(x, mask=causal_mask(S)), **TOL)  # the cache changes nothing


def test_sdpa_refuses_bad_masks_with_value_errors():
    attn = MultiHeadAttention(D, 4, sdpa=True)
    with pytest.raises(ValueError, match="dtype"):
        attn(_x(), mask=torch.ones(S, S, dtype=torch.long))
    with pytest.raises(ValueError, match="broadcast"):
        attn(_x(), mask=torch.ones(S, S + 1, dtype=torch.bool))


def test_sdpa_in_the_whole_model_equals_explicit():
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=48)
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    results = []
    for sdpa in (True, False):
        for layer in model.layers:
            layer.attn.sdpa = sdpa
        model.zero_grad(set_to_none=True)
        logits = model(ids)
        logits.logsumexp(-1).mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], **TOL)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, **TOL)
