"""Exercises for Chapter 1: scaled dot-product attention, masks, multi-head attention.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 1`. Mirrors `reference/attention.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.nn import functional as F


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
    # Hint: softmax does not change when one constant is subtracted from a whole slice; subtract each
    # slice's maximum (keep the reduced dimension so it broadcasts) and no exponent is positive. A slice
    # that is -inf everywhere has a -inf maximum, and -inf - (-inf) is NaN: decide what to subtract there
    # so that such a slice comes out as zeros.
    raise NotImplementedError("Exercise 1.1: numerically stable softmax")


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
    # Hint: the queries are the last seq_len_q of seq_len_k positions, so query i may see key j exactly
    # when j <= i + (seq_len_k - seq_len_q). Comparing a key index with a query index, broadcast against
    # each other, gives the whole (seq_len_q, seq_len_k) matrix at once.
    raise NotImplementedError("Exercise 1.2: causal mask")


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
    # Hint: key j of sequence b is real when j < lengths[b]: one broadcast comparison gives (batch, max_len).
    # The result must broadcast over heads and queries too: which two dimensions of size 1 does that need?
    raise NotImplementedError("Exercise 1.3: padding mask")


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
    # Hint: the scores are the dot product of every query with every key, shape (..., seq_q, seq_k), times
    # the scale (1 / sqrt(d_k) unless one is given). A boolean mask sends the forbidden scores to -inf; a
    # float mask is added to the scores. Then your softmax, over the keys.
    raise NotImplementedError("Exercise 1.4: attention weights")


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
    # Hint: the weights of exercise 1.4, then one more product: (..., seq_q, seq_k) with (..., seq_k, d_v).
    raise NotImplementedError("Exercise 1.5: scaled dot-product attention")


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
    # Hint: along the head dimension (-3), every key/value head must appear num_repeats times in a row, so
    # that head h of the result is input head h // num_repeats. Copying each head in place and tiling the
    # whole stack num_repeats times give different orders: check which one this is on a small example.
    raise NotImplementedError("Exercise 1.6: repeat key/value heads (GQA)")


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
        # Hint: call super().__init__() first, validate, then create the nn.Linear layers named above.
        raise NotImplementedError("Exercise 1.7: multi-head attention module")

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
        # Hint: project to queries, keys and values (fused or separate, laid out as the class docstring
        # says); split the feature dimension into heads, (batch, heads, seq, head_dim); let `positional`
        # rotate the queries and keys, or give a bias that joins the mask; share the key/value heads among
        # the query heads (exercise 1.6); attend with self.scale (exercise 1.5); merge the heads back and
        # apply the output projection.
        # With a cache, the new keys and values join the cached ones before attending; with
        # self.sdpa, torch's fused kernel does the attending (same mask convention).
        raise NotImplementedError("Exercise 1.7: multi-head attention module")

