"""Exercises for Chapter 2: positional encodings, absolute (sinusoidal, learned) and relative
(T5 bias, RoPE in both layouts, ALiBi).

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 2`. Mirrors `reference/positional.py`.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from reference.validation import check_int



def sinusoidal_encoding(length: int, d_model: int, offset: int = 0, base: float = 10000.0) -> Tensor:
    """The sinusoidal table PE[pos, 2i] = sin(pos / base^(2i/d)), PE[pos, 2i+1] = cos(pos / base^(2i/d)).

    Vaswani et al., 2017, section 3.5. Dimension pair (2i, 2i+1) turns at angular frequency
    base^(-2i/d_model), from one radian per token down to 1/base. An odd `d_model` keeps the sine of
    its last, unpaired frequency.

    Args:
        length: number of positions (>= 0).
        d_model: width of the encoding (>= 1).
        offset: the first position (>= 0), e.g. the number of tokens already in a cache.
        base: the wavelength scale, 10000 in the paper.

    Returns:
        float32 tensor of shape (length, d_model) for positions offset .. offset + length - 1.
    """
    # Hint: pair i turns at omega_i = base^(-2i/d_model) radians per token, and position p has the angle
    # p * omega_i: one angle for every (position, pair), an outer product. Sines fill the even columns,
    # cosines the odd ones; with an odd d_model there is one more sine column than cosine columns.
    raise NotImplementedError("Exercise 2.1: sinusoidal encoding")


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position, as in BERT and GPT-2; knows nothing past `max_len`.

    Args:
        max_len: number of positions it has vectors for.
        d_model: width of each vector.
    """

    def __init__(self, max_len: int, d_model: int) -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 2.2: learned position embeddings")

    def forward(self, positions: Tensor) -> Tensor:
        """Vectors for integer `positions` of any shape (...) -> (..., d_model)."""
        raise NotImplementedError("Exercise 2.2: learned position embeddings")


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """T5's bucket of each relative position (key position - query position); integer tensor of the same shape.

    Raffel et al., 2020, section 2.1. Half the buckets (all of them when causal) hold exact small
    distances 0 .. num_buckets/2 - 1 (per direction when bidirectional); the rest cover larger
    distances on a logarithmic scale up to `max_distance`, beyond which everything shares the last
    bucket. Bidirectional: keys after the query use the upper half of the buckets. Causal: keys
    after the query all fall in bucket 0 (they are masked anyway).

    Args:
        relative_position: integer tensor of key minus query positions.
        bidirectional: whether keys may lie after the query (encoders) or not (decoders).
        num_buckets: total number of buckets (>= 2, even when bidirectional).
        max_distance: distance from which all positions share the last bucket.

    Returns:
        long tensor of bucket indices in [0, num_buckets).
    """
    # Hint: bidirectional: each direction gets half the buckets (keys after the query use the upper half)
    # and the distance is |j - i|; causal: every bucket is for the past, distance max(i - j, 0). Within a
    # direction, the first half of the buckets are exact distances; larger distances are placed by the
    # logarithm of distance / exact (the docstring's formula) and clamped to the direction's last bucket.
    # Take the logarithm only where the distance is large enough, so no log(0) or NaN leaks through.
    raise NotImplementedError("Exercise 2.3: T5 relative position buckets")


class RelativePositionBias(nn.Module):
    """T5's learned bias: one scalar per (bucket, head), added to the attention scores.

    Args:
        num_heads: number of attention heads.
        bidirectional: encoder (True) or decoder (False) bucketing.
        num_buckets: number of buckets.
        max_distance: distance from which all positions share the last bucket.
    """

    def __init__(self, num_heads: int, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128) -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 2.4: T5 relative position bias")

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """Additive bias (num_heads, seq_q, seq_k) for 1-D query and key positions."""
        raise NotImplementedError("Exercise 2.4: T5 relative position bias")


def rope_frequencies(head_dim: int, base: float = 10000.0) -> Tensor:
    """Angular frequency of each 2-D plane, theta_i = base^(-2i/head_dim); shape (head_dim // 2,).

    Su et al., 2021, eq. 15: the same frequencies as the sinusoidal table.
    """
    # Hint: one speed per plane, theta_i = base^(-2i/head_dim) for i = 0 .. head_dim/2 - 1, the frequencies
    # of the sinusoidal table. Compute them in float64 (angles m * theta_i for large m lose precision in
    # float32).
    raise NotImplementedError("Exercise 2.5: RoPE frequencies")


def interleaved_to_half(x: Tensor) -> Tensor:
    """Reorder the last dimension from interleaved pairs (2i, 2i+1) to halves (i, i + d/2).

    Applying RoPE in the half layout to the reordered vector, then `half_to_interleaved`, equals
    RoPE in the interleaved layout: this is how LLaMA checkpoints (interleaved) are converted to
    Hugging Face's `rotate_half` layout (its q and k projection rows are permuted the same way).
    """
    # Hint: even dimensions first, then odd ones.
    raise NotImplementedError("Exercise 2.6: RoPE layouts: interleaved to half")


def half_to_interleaved(x: Tensor) -> Tensor:
    """The inverse of `interleaved_to_half`: halves (i, i + d/2) back to pairs (2i, 2i+1)."""
    # Hint: the inverse permutation of interleaved_to_half: coordinate i of the first half goes back to slot
    # 2i, coordinate i of the second half to slot 2i + 1. Check the round trip on torch.arange(8).
    raise NotImplementedError("Exercise 2.7: RoPE layouts: half to interleaved")


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, layout: str = "half") -> Tensor:
    """Rotate each 2-D plane of `x` by its angle: (x_a, x_b) -> (x_a cos - x_b sin, x_a sin + x_b cos).

    Su et al., 2021, eq. 34. The planes are dimension pairs (i, i + d/2) in the "half" layout
    (GPT-NeoX, Hugging Face's `rotate_half`) and (2i, 2i+1) in the "interleaved" layout (RoFormer,
    Meta's LLaMA).

    Args:
        x: queries or keys, (..., seq, head_dim), e.g. (batch, heads, seq, head_dim).
        cos: cosines of the angles, broadcastable to (..., seq, head_dim // 2).
        sin: sines of the angles, the same shape as `cos`.
        layout: "half" or "interleaved".

    Returns:
        Tensor of x's shape and dtype.
    """
    # Hint: pick the two members of each plane (halves or even/odd), rotate, put them back in place.
    raise NotImplementedError("Exercise 2.8: apply a rotation (both layouts)")


class RotaryEmbedding(nn.Module):
    """RoPE for attention: rotates queries and keys by angles proportional to their positions.

    After the rotation, q_m . k_n depends on the positions only through m - n (Su et al., 2021).
    Keeps a cos/sin table that grows (doubling) when a position beyond it is asked for.

    Args:
        head_dim: width of each head (even).
        base: frequency base, 10000 in RoFormer and LLaMA.
        layout: "half" or "interleaved" (see `apply_rope`).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, layout: str = "half") -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 2.9: rotary embedding with a growing cache")

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin of the angles for integer `positions` of shape (...) -> each (..., head_dim // 2), float64."""
        raise NotImplementedError("Exercise 2.9: rotary embedding with a growing cache")

    def rotate(self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate q (..., seq_q, head_dim) and k (..., seq_k, head_dim) by their positions, (seq,) or (batch, seq).

        Positions of shape (batch, seq) get a head axis inserted when q and k are 4-D,
        (batch, heads, seq, head_dim).
        """
        raise NotImplementedError("Exercise 2.9: rotary embedding with a growing cache")


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's head-specific slopes m_h; shape (num_heads,), float64.

    Press et al., 2022, section 3: for n heads, a power of two, the geometric sequence
    2^(-8/n), 2^(-16/n), ..., 2^(-8). Otherwise: the slopes of the nearest lower power of two p,
    followed by every other slope of 2p heads, until there are n.
    """
    # Hint: for n a power of two, a geometric sequence whose first term and ratio are both 2^(-8/n). For
    # other n: the slopes of the largest power of two p below n, then every other slope of the 2p-head
    # sequence until there are n (Press et al., 2022, section 3).
    raise NotImplementedError("Exercise 2.10: ALiBi slopes")


def alibi_bias(num_heads: int, seq_q: int, seq_k: int | None = None, causal: bool = True) -> Tensor:
    """ALiBi's additive bias -m_h * distance(query, key); shape (num_heads, seq_q, seq_k), float32.

    Queries are the last `seq_q` of `seq_k` positions (as with a key/value cache). Causal: the
    distance is i - j for keys j at or before query i; keys after the query get 0 here and must be
    removed by the causal mask. Bidirectional: the distance is |i - j|.

    Args:
        num_heads: number of heads.
        seq_q: number of queries.
        seq_k: number of keys (>= seq_q); defaults to `seq_q`.
        causal: decoder (True) or encoder (False) form.
    """
    # Hint: distances between query positions (the last seq_q of seq_k) and key positions, times -slope.
    raise NotImplementedError("Exercise 2.11: ALiBi bias")


class ALiBi(nn.Module):
    """ALiBi as a positional scheme for attention (no parameters).

    Args:
        num_heads: number of heads.
        causal: decoder (True) or encoder (False) form.
    """

    def __init__(self, num_heads: int, causal: bool = True) -> None:
        # Hint: super().__init__(), validate, then build what the class docstring describes.
        raise NotImplementedError("Exercise 2.12: ALiBi as an attention scheme")

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """Additive bias (num_heads, seq_q, seq_k) for 1-D query and key positions."""
        raise NotImplementedError("Exercise 2.12: ALiBi as an attention scheme")

