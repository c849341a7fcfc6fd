"""Scaled dot-product attention, its masks, and multi-head / grouped-query attention.

Survey section 1.2(a), "Self-Attention Mechanism". Vaswani et al., 2017, "Attention Is All You
Need", eq. 1 and section 3.2.2 (multi-head); Shazeer, 2019, "Fast Transformer Decoding: One
Write-Head is All You Need" (multi-query); Ainslie et al., 2023, "GQA" (grouped-query).

Mask convention, the same as `torch.nn.functional.scaled_dot_product_attention`: a boolean mask
is True where a query *may* attend to a key; a floating-point mask is *added* to the scores
(0 keeps a key, -inf removes it). Masks broadcast against the scores, shape (..., seq_q, seq_k).
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.nn import functional as F

from reference.validation import (
    ArgumentTypeError, check_bool, check_float, check_int, check_optional_int, check_positions, value_range,
)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Softmax along `dim`, computed stably as exp(x - max) / sum(exp(x - max)).

    Softmax does not change when a constant is subtracted from every entry of a slice, so we
    subtract the slice's maximum: every exponent is then <= 0 and exp cannot overflow, however
    large the scores. A slice that is -inf everywhere (a query allowed to see no key) gives
    zeros instead of NaN.

    Args:
        x: floating-point scores of any shape.
        dim: the dimension to normalise over.

    Returns:
        Probabilities of the same shape as `x`, summing to 1 along `dim` (0 for an all -inf slice).
    """
    if not x.is_floating_point():
        raise TypeError(f"softmax needs a floating-point tensor, got dtype {x.dtype}")
    x_max = x.amax(dim=dim, keepdim=True).detach()  # the shift does not change the result
    x_max = torch.where(torch.isneginf(x_max), torch.zeros_like(x_max), x_max)
    exp = torch.exp(x - x_max)
    total = exp.sum(dim=dim, keepdim=True)
    return exp / torch.where(total == 0, torch.ones_like(total), total)


def causal_mask(seq_len_q: int, seq_len_k: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    """Boolean mask that lets each query see its own position and earlier ones; (seq_len_q, seq_len_k).

    Queries are aligned with the *end* of the keys, as in decoding with a key/value cache: when
    `seq_len_k > seq_len_q` the queries are the last `seq_len_q` positions, so query i may attend
    key j if and only if j <= i + (seq_len_k - seq_len_q). For a square mask this is the lower
    triangle, `torch.ones(n, n, dtype=torch.bool).tril()`.

    Args:
        seq_len_q: number of queries (>= 0).
        seq_len_k: number of keys (>= seq_len_q); defaults to `seq_len_q`.
        device: where to build the mask.

    Returns:
        Boolean tensor of shape (seq_len_q, seq_len_k), True where attending is allowed.
    """
    seq_len_k = seq_len_q if seq_len_k is None else seq_len_k
    seq_len_q, seq_len_k = check_int("seq_len_q", seq_len_q), check_int("seq_len_k", seq_len_k)
    if seq_len_k < seq_len_q:
        raise ValueError(f"seq_len_k ({seq_len_k}) must be >= seq_len_q ({seq_len_q}): queries are the last positions")
    query_pos = torch.arange(seq_len_q, device=device)[:, None] + (seq_len_k - seq_len_q)  # (seq_q, 1)
    key_pos = torch.arange(seq_len_k, device=device)[None, :]  # (1, seq_k)
    return key_pos <= query_pos


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Boolean key-padding mask from sequence lengths; (batch,) -> (batch, 1, 1, max_len).

    Sequences are padded on the right: in row b, keys 0 .. lengths[b] - 1 are real tokens (True)
    and the rest are padding (False). The two singleton dimensions broadcast over heads and
    queries, so the mask can be combined with a causal mask by `&`.

    Args:
        lengths: 1-D integer tensor of lengths, each in [0, max_len].
        max_len: padded length; defaults to `lengths.max()`.

    Returns:
        Boolean tensor of shape (batch, 1, 1, max_len).
    """
    if not isinstance(lengths, Tensor):
        raise ArgumentTypeError(f"lengths must be a torch.Tensor, got {type(lengths).__name__}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (batch,), got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.is_complex():
        raise ArgumentTypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    max_len = check_optional_int("max_len", max_len)
    low, high = value_range(lengths) if lengths.numel() else (0, 0)  # one read
    if max_len is None:
        max_len = high
    if low < 0 or high > max_len:
        raise ValueError(f"lengths must lie in [0, max_len={max_len}], got {lengths.tolist()}")
    positions = torch.arange(max_len, device=lengths.device)
    keep = positions[None, :] < lengths[:, None]  # (batch, max_len)
    return rearrange(keep, "b k -> b 1 1 k")


def _broadcast_shape(what: str, *shapes: torch.Size) -> torch.Size:
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        raise ValueError(f"{what}: shapes {[tuple(s) for s in shapes]} do not broadcast") from None


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """Attention probabilities softmax(q k^T * scale + mask) (Vaswani et al., eq. 1).

    Args:
        q: queries, (..., seq_q, d_k); leading dimensions, e.g. (batch, heads), broadcast with k's.
        k: keys, (..., seq_k, d_k).
        mask: boolean (True = may attend) or additive float mask, broadcastable to (..., seq_q, seq_k).
        scale: multiplier of the scores; defaults to 1 / sqrt(d_k).

    Returns:
        Weights of shape (..., seq_q, seq_k); each row sums to 1 (0 for a fully masked row).
    """
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ArgumentTypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if q.dtype != k.dtype:
        raise ArgumentTypeError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
    if q.dim() < 2 or k.dim() < 2:
        raise ValueError(f"q and k need at least 2 dimensions (seq, d_k), got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the last (d_k) dimension, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    batch = _broadcast_shape("q and k leading dimensions", q.shape[:-2], k.shape[:-2])
    score_shape = torch.Size((*batch, q.shape[-2], k.shape[-2]))
    scale = q.shape[-1] ** -0.5 if scale is None else check_float("scale", scale)
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., seq_q, seq_k)
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise ArgumentTypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise ArgumentTypeError(f"mask must be boolean or floating point, got dtype {mask.dtype}")
        if _broadcast_shape("mask and scores", mask.shape, score_shape) != score_shape:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape {tuple(score_shape)}")
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    return softmax(scores, dim=-1)


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V (Vaswani et al., 2017, eq. 1).

    Args:
        q: queries, (..., seq_q, d_k), e.g. (batch, heads, seq_q, head_dim).
        k: keys, (..., seq_k, d_k).
        v: values, (..., seq_k, d_v).
        mask: boolean (True = may attend) or additive float mask, broadcastable to (..., seq_q, seq_k).
        scale: multiplier of the scores; defaults to 1 / sqrt(d_k).

    Returns:
        Output of shape (..., seq_q, d_v). A query whose keys are all masked gets zeros.
    """
    if not isinstance(v, Tensor) or not v.is_floating_point():
        raise ArgumentTypeError(f"v must be a floating-point tensor, got {getattr(v, 'dtype', type(v).__name__)}")
    if isinstance(k, Tensor) and v.dtype != k.dtype:
        raise ArgumentTypeError(f"k and v must share a dtype, got {k.dtype} and {v.dtype}")
    if v.dim() < 2 or v.shape[-2] != k.shape[-2]:
        raise ValueError(f"k and v must hold the same number of keys (dim -2), got k {tuple(k.shape)} and v {tuple(v.shape)}")
    _broadcast_shape("k and v leading dimensions", k.shape[:-2], v.shape[:-2])
    return attention_weights(q, k, mask, scale) @ v  # (..., seq_q, seq_k) @ (..., seq_k, d_v)


def repeat_kv(x: Tensor, num_repeats: int) -> Tensor:
    """Share each key/value head with a group of query heads; (..., kv_heads, seq, d) -> (..., kv_heads * num_repeats, seq, d).

    Head h of the result is key/value head h // num_repeats, the grouping of grouped-query
    attention (Ainslie et al., 2023) and of Hugging Face's `repeat_kv`.

    Args:
        x: keys or values, (..., kv_heads, seq, head_dim), at least 3 dimensions.
        num_repeats: query heads per key/value head (>= 1).

    Returns:
        Tensor of shape (..., kv_heads * num_repeats, seq, head_dim).
    """
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"x must be (..., kv_heads, seq, head_dim), got shape {tuple(x.shape)}")
    num_repeats = check_int("num_repeats", num_repeats, 1)
    return repeat(x, "... h s d -> ... (h r) s d", r=num_repeats)


class MultiHeadAttention(nn.Module):
    """Multi-head attention; grouped-query (GQA) and multi-query (MQA) attention are special cases.

    `num_kv_heads` key/value heads are shared by `num_heads` query heads: equal numbers give
    multi-head attention (Vaswani et al., 2017), one gives multi-query attention (Shazeer, 2019),
    anything that divides `num_heads` gives grouped-query attention (Ainslie et al., 2023).
    Self-attention when `context` is None, cross-attention (queries from `x`, keys and values from
    `context`) otherwise.

    Parameters (`nn.Linear` layout, weight of shape (out_features, in_features)), with
    head_dim = d_model // num_heads:
      - separate projections (default): `q_proj` (num_heads * head_dim, d_model),
        `k_proj` (num_kv_heads * head_dim, kdim), `v_proj` (num_kv_heads * head_dim, vdim);
      - `fused_qkv=True`: one `qkv_proj` ((num_heads + 2 * num_kv_heads) * head_dim, d_model)
        whose rows are the q, k and v projections stacked in that order (PyTorch's `in_proj_weight`);
      - `out_proj` (d_model, num_heads * head_dim).

    Position enters through `positional`, a relative scheme from `reference.positional` (Chapter 2):
    one with a `rotate(q, k, q_positions, k_positions)` method (RoPE) rotates the heads' queries and
    keys before the scores; one with a `bias(q_positions, k_positions)` method (T5's bias, ALiBi)
    adds a (num_heads, seq_q, seq_k) bias to the scores, together with `mask`. Absolute encodings
    are added to the token embeddings instead, outside attention.

    Args:
        d_model: width of the queries' input and of the output.
        num_heads: number of query heads; must divide `d_model`.
        num_kv_heads: number of key/value heads; must divide `num_heads`; defaults to `num_heads`.
        fused_qkv: one fused projection instead of three (needs kdim == vdim == d_model).
        bias: whether the projections have biases.
        kdim: width of the keys' input (the context in cross-attention); defaults to `d_model`.
        vdim: width of the values' input; defaults to `d_model`.
        positional: a relative position scheme (see above), or None.
        scale: factor on the scores q . k; None means 1 / sqrt(head_dim). T5 uses 1: it never
            rescales the scores (Raffel et al.'s Mesh TensorFlow code starts the query projection
            with the smaller standard deviation (d_model * d_kv)^-1/2 instead; the course's T5
            keeps `init_weights`' 0.02 for every projection).
        sdpa: compute softmax(q k^T * scale + mask) v with PyTorch's fused
            `torch.nn.functional.scaled_dot_product_attention` instead of this module's explicit
            `scaled_dot_product_attention` (the one Chapter 1 teaches). The same function to float
            tolerance, with less memory and time; the course's models turn it on. Also an
            attribute (`attn.sdpa = False` switches a built model back to the explicit path).
        device: where to create the parameters.
        dtype: parameters' dtype.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        *,
        fused_qkv: bool = False,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        positional: nn.Module | None = None,
        scale: float | None = None,
        sdpa: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        kdim = d_model if kdim is None else kdim
        vdim = d_model if vdim is None else vdim
        d_model, num_heads, num_kv_heads = (check_int(n, v, 1) for n, v in
                                            (("d_model", d_model), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)))
        kdim, vdim = check_int("kdim", kdim, 1), check_int("vdim", vdim, 1)
        check_bool("fused_qkv", fused_qkv)
        check_bool("bias", bias)
        if d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
        if fused_qkv and not kdim == vdim == d_model:
            raise ValueError(f"fused_qkv needs kdim == vdim == d_model, got kdim={kdim}, vdim={vdim}, d_model={d_model}")
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        self.fused_qkv = fused_qkv
        factory = {"device": device, "dtype": dtype}
        q_out, kv_out = num_heads * self.head_dim, num_kv_heads * self.head_dim
        if fused_qkv:
            self.qkv_proj = nn.Linear(d_model, q_out + 2 * kv_out, bias=bias, **factory)
        else:
            self.q_proj = nn.Linear(d_model, q_out, bias=bias, **factory)
            self.k_proj = nn.Linear(kdim, kv_out, bias=bias, **factory)
            self.v_proj = nn.Linear(vdim, kv_out, bias=bias, **factory)
        self.out_proj = nn.Linear(q_out, d_model, bias=bias, **factory)
        if positional is not None and not (hasattr(positional, "rotate") or hasattr(positional, "bias")):
            raise ValueError(f"positional must have a rotate or a bias method, got {type(positional).__name__}")
        self.positional = positional
        if scale is not None:
            scale = check_float("scale", scale, positive=True)
        self.scale = scale
        if not isinstance(sdpa, bool):
            raise TypeError(f"sdpa must be a bool, got {sdpa!r}")
        self.sdpa = sdpa

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        context_positions: Tensor | None = None,
        cache: Any | None = None,
    ) -> Tensor:
        """Attend from `x` to itself (self-attention) or to `context` (cross-attention).

        Args:
            x: queries' input, (batch, seq_q, d_model).
            context: keys' and values' input, (batch, seq_k, kdim); None means `x`.
            mask: boolean (True = may attend) or additive float mask, broadcastable to
                (batch, num_heads, seq_q, seq_k), e.g. a causal mask (seq_q, seq_k) or a padding
                mask (batch, 1, 1, seq_k).
            positions: integer positions of x's tokens, (seq_q,) or (batch, seq_q), used by the
                `positional` scheme; defaults to 0 .. seq_q - 1.
            context_positions: positions of the keys; defaults to `positions` in self-attention and
                to 0 .. seq_k - 1 in cross-attention.
            cache: this layer's key/value cache for decoding (Chapter 15, `reference.inference`),
                an object whose `update(k, v)` stores the new keys and values, (batch, kv_heads,
                seq_q, head_dim), after the positional rotation, and returns all keys and values
                so far, (batch, kv_heads, seq_k, head_dim); `mask` must then cover all seq_k keys.
                Self-attention only. None (the default, and in training) keeps nothing.

        Returns:
            Output of shape (batch, seq_q, d_model).
        """
        self._check_inputs(x, context, positions, context_positions)
        source = x if context is None else context
        q_out = self.num_heads * self.head_dim
        if self.fused_qkv:
            w, b = self.qkv_proj.weight, self.qkv_proj.bias
            q = F.linear(x, w[:q_out], None if b is None else b[:q_out])
            k, v = F.linear(source, w[q_out:], None if b is None else b[q_out:]).chunk(2, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(source), self.v_proj(source)
        # "b s (h d) -> b h s d", written with torch's own views (einops' parsing costs more than a decoding step's attention)
        q = q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (batch, heads, seq_q, head_dim)
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)  # (batch, kv_heads, seq_k, head_dim)
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        if cache is not None and context is not None:
            raise ValueError("cache is for self-attention: pass context=None with a cache")
        if self.positional is not None:
            q_pos = torch.arange(x.shape[1], device=x.device) if positions is None else positions
            k_pos = context_positions
            if k_pos is None:
                k_pos = q_pos if context is None else torch.arange(source.shape[1], device=x.device)
            if hasattr(self.positional, "rotate"):
                # with a cache, only the new keys are rotated here (k_pos = their positions); the cached ones already are
                q, k = self.positional.rotate(q, k, q_pos, k_pos if cache is None else q_pos)
            if hasattr(self.positional, "bias"):
                if cache is not None and context_positions is None:
                    raise ValueError("a bias positional scheme with a cache needs context_positions of all the keys")
                bias = self.positional.bias(q_pos, k_pos).to(q.dtype)  # (heads, seq_q, seq_k)
                if mask is None:
                    mask = bias
                elif mask.dtype == torch.bool:
                    mask = torch.where(mask, bias, float("-inf"))
                else:
                    mask = mask + bias
        if cache is not None:
            k, v = cache.update(k, v)  # all keys and values so far, (batch, kv_heads, seq_k, head_dim)
        group = self.num_heads // self.num_kv_heads
        if self.sdpa:
            out = _fused_attention(q, k, v, mask, self.scale, group)  # (batch, heads, seq_q, head_dim)
        else:
            k, v = repeat_kv(k, group), repeat_kv(v, group)  # (batch, heads, seq_k, head_dim)
            out = scaled_dot_product_attention(q, k, v, mask, self.scale)  # (batch, heads, seq_q, head_dim)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # b h s d -> b s (h d)


    def _check_inputs(self, x: Tensor, context: Tensor | None, positions: Tensor | None,
                      context_positions: Tensor | None) -> None:
        """Types, dtypes and shapes of `forward`'s arguments; no value is read."""
        weight = (self.qkv_proj if self.fused_qkv else self.q_proj).weight
        for name, t in (("x", x), ("context", context)):
            if t is None:
                continue
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise ArgumentTypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
            if t.dtype != weight.dtype and not torch.is_autocast_enabled(t.device.type):
                raise ArgumentTypeError(f"{name} has dtype {t.dtype} but the projections are {weight.dtype}: "
                                        f"cast one to the other (e.g. module.to({t.dtype}))")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, seq, d_model={self.d_model}), got shape {tuple(x.shape)}")
        if context is not None and (context.dim() != 3 or context.shape[0] != x.shape[0]):
            raise ValueError(f"context must be (batch={x.shape[0]}, seq_k, features), got shape {tuple(context.shape)}")
        seq_k = x.shape[1] if context is None else context.shape[1]
        for name, p, seq in (("positions", positions, x.shape[1]), ("context_positions", context_positions, seq_k)):
            if p is None:
                continue
            if self.positional is None:
                raise ValueError(f"{name} was given, but this attention has no positional scheme to use it "
                                 "(pass positional=..., or add absolute positions to the embeddings)")
            check_positions(name, p)
            if p.shape[-1] != seq or (p.dim() == 2 and p.shape[0] not in (1, x.shape[0])):
                raise ValueError(f"{name} must be ({seq},) or (batch={x.shape[0]}, {seq}), got shape {tuple(p.shape)}")


def _fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None, group: int) -> Tensor:
    """`F.scaled_dot_product_attention` with this module's conventions: q (batch, heads, seq_q, d),
    k and v (batch, kv_heads, seq_k, d) shared by groups of `group` query heads, the same mask
    convention and the same checks as the explicit path (shapes only: nothing is read on the host)."""
    score_shape = torch.Size((q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
    if mask is not None:
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise ValueError(f"mask must be boolean or floating point, got dtype {mask.dtype}")
        # the same check as torch.broadcast_shapes, written out: that one costs more than a decoding step's attention
        if mask.dim() > 4 or any(m not in (1, s) for m, s in zip(reversed(mask.shape), reversed(score_shape))):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape {tuple(score_shape)}")
        if mask.is_floating_point():
            mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=group > 1)
