"""Positional information for attention: absolute encodings and relative schemes.

Survey section 1.2(a), "Positional Embedding": attention by itself is blind to order, so position
enters either as a vector added to each token's embedding (absolute: sinusoidal, Vaswani et al.,
2017, section 3.5; learned, as in BERT and GPT-2) or inside attention, as a function of the
distance between query and key (relative: the bucketed bias of T5, Raffel et al., 2020; rotary
embeddings, RoPE, Su et al., 2021; linear biases, ALiBi, Press et al., 2022).

Relative schemes plug into `reference.attention.MultiHeadAttention` through its `positional`
argument: an object with `rotate(q, k, q_positions, k_positions)` (RoPE) or
`bias(q_positions, k_positions)` (T5, ALiBi).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from reference.validation import check_bool, check_float, check_int, check_integer_tensor, check_positions, value_range



# ----------------------------------------------------------------------------------------------
# Absolute: sinusoidal and learned
# ----------------------------------------------------------------------------------------------


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
    check_int("length", length)
    check_int("d_model", d_model, 1)
    check_int("offset", offset)
    base = check_float("base", base, positive=True)
    positions = torch.arange(offset, offset + length, dtype=torch.float64)[:, None]  # (length, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d_model / 2),)
    angles = positions / base ** (two_i / d_model)  # (length, ceil(d_model / 2))
    table = torch.empty(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.float()


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position, as in BERT and GPT-2; knows nothing past `max_len`.

    Args:
        max_len: number of positions it has vectors for.
        d_model: width of each vector.
    """

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        check_int("max_len", max_len, 1)
        check_int("d_model", d_model, 1)
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, positions: Tensor) -> Tensor:
        """Vectors for integer `positions` of any shape (...) -> (..., d_model)."""
        check_integer_tensor("positions", positions)
        if positions.numel():
            low, high = value_range(positions)  # one read of the values
            if low < 0 or high >= self.max_len:
                bad = high if high >= self.max_len else low
                raise ValueError(f"position {bad} is outside the learned table of max_len={self.max_len}")
        return self.embedding(positions)


# ----------------------------------------------------------------------------------------------
# Relative: T5's bucketed bias
# ----------------------------------------------------------------------------------------------


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """T5's bucket of each relative position (key position - query position); integer tensor of the same shape.

    Raffel et al., 2020, section 2.1. Causal: the n = num_buckets buckets all describe keys at or
    before the query; buckets 0 .. n/2 - 1 hold the exact distances 0 .. n/2 - 1, buckets
    n/2 .. n - 1 cover larger distances on a logarithmic scale up to `max_distance`, beyond which
    everything shares bucket n - 1; keys after the query all fall in bucket 0 (they are masked
    anyway). Bidirectional: each direction gets n/2 buckets, split the same way, so the exact
    distances are only 0 .. n/4 - 1: keys at or before the query use buckets 0 .. n/2 - 1 (exact
    distances in 0 .. n/4 - 1), keys after it buckets n/2 + 1 .. n - 1 (exact distances 1 .. n/4 - 1
    in n/2 + 1 .. n/2 + n/4 - 1, bucket n/2 itself is never used).

    Args:
        relative_position: integer tensor of key minus query positions.
        bidirectional: whether keys may lie after the query (encoders) or not (decoders).
        num_buckets: total number of buckets (>= 2; when bidirectional, even and >= 4).
        max_distance: distance from which all positions share the last bucket (> the number of
            exact distances, n/2 causal and n/4 bidirectional).

    Returns:
        long tensor of bucket indices in [0, num_buckets).
    """
    _check_buckets(num_buckets, max_distance, bidirectional)
    check_integer_tensor("relative_position", relative_position)
    buckets = torch.zeros_like(relative_position, dtype=torch.long)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)  # how far back the key lies
    exact = num_buckets // 2
    is_small = distance < exact
    log_scaled = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    ).long()
    log_scaled = log_scaled.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, log_scaled)


def _check_buckets(num_buckets: object, max_distance: object, bidirectional: object) -> None:
    """T5's bucketing needs at least one exact and one logarithmic bucket per direction."""
    check_bool("bidirectional", bidirectional)
    check_int("num_buckets", num_buckets, 4 if bidirectional else 2)
    if bidirectional and num_buckets % 2:
        raise ValueError(f"num_buckets must be even when bidirectional (half per direction), got {num_buckets!r}")
    exact = num_buckets // 4 if bidirectional else num_buckets // 2
    check_int("max_distance", max_distance, exact + 1)


def _relative_positions(q_positions: object, k_positions: object) -> Tensor:
    """Key minus query positions for (seq,) or (batch, seq) positions: (seq_q, seq_k) or (batch, seq_q, seq_k)."""
    check_positions("q_positions", q_positions)
    check_positions("k_positions", k_positions)
    if q_positions.dim() == 2 and k_positions.dim() == 2 and q_positions.shape[0] != k_positions.shape[0]:
        raise ValueError(f"q_positions {tuple(q_positions.shape)} and k_positions {tuple(k_positions.shape)} "
                         "have different batch sizes")
    return k_positions[..., None, :] - q_positions[..., :, None]


class RelativePositionBias(nn.Module):
    """T5's learned bias: one scalar per (bucket, head), added to the attention scores.

    Args:
        num_heads: number of attention heads.
        bidirectional: encoder (True) or decoder (False) bucketing.
        num_buckets: number of buckets.
        max_distance: distance from which all positions share the last bucket.
    """

    def __init__(self, num_heads: int, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__()
        check_int("num_heads", num_heads, 1)
        _check_buckets(num_buckets, max_distance, bidirectional)
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """Additive bias for integer query and key positions, each (seq,) or (batch, seq).

        Returns (num_heads, seq_q, seq_k) when both are 1-D, (batch, num_heads, seq_q, seq_k) otherwise.
        """
        relative = _relative_positions(q_positions, k_positions)  # (..., seq_q, seq_k)
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return rearrange(self.relative_attention_bias(buckets), "... q k h -> ... h q k")


# ----------------------------------------------------------------------------------------------
# Relative: rotary position embedding (RoPE)
# ----------------------------------------------------------------------------------------------


def rope_frequencies(head_dim: int, base: float = 10000.0) -> Tensor:
    """Angular frequency of each 2-D plane, theta_i = base^(-2i/head_dim); shape (head_dim // 2,).

    Su et al., 2021, eq. 15: the same frequencies as the sinusoidal table.
    """
    check_int("head_dim", head_dim, 2)
    if head_dim % 2:
        raise ValueError(f"RoPE needs a positive even head_dim, got {head_dim!r}")
    base = check_float("base", base, positive=True)
    return base ** -(torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def interleaved_to_half(x: Tensor) -> Tensor:
    """Reorder the last dimension from interleaved pairs (2i, 2i+1) to halves (i, i + d/2).

    Applying RoPE in the half layout to the reordered vector, then `half_to_interleaved`, equals
    RoPE in the interleaved layout: this is how LLaMA checkpoints (interleaved) are converted to
    Hugging Face's `rotate_half` layout (its q and k projection rows are permuted the same way).
    """
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


def half_to_interleaved(x: Tensor) -> Tensor:
    """The inverse of `interleaved_to_half`: halves (i, i + d/2) back to pairs (2i, 2i+1)."""
    half = x.shape[-1] // 2
    return rearrange(torch.stack([x[..., :half], x[..., half:]], dim=-1), "... i two -> ... (i two)")


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
    _check_rope_inputs(x, cos, sin, layout)
    if layout == "half":
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).to(x.dtype)
    if layout == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
        return rearrange(rotated, "... i two -> ... (i two)").to(x.dtype)
    raise ValueError(f"layout must be 'half' or 'interleaved', got {layout!r}")


def _check_rope_inputs(x: object, cos: object, sin: object, layout: object) -> None:
    """Types, dtypes and shapes of `apply_rope`'s arguments (never their values)."""
    if layout not in ("half", "interleaved"):
        raise ValueError(f"layout must be 'half' or 'interleaved', got {layout!r}")
    for name, t in (("x", x), ("cos", cos), ("sin", sin)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if x.dim() < 2 or x.shape[-1] % 2:
        raise ValueError(f"RoPE needs x of shape (..., seq, head_dim) with an even head_dim, got {tuple(x.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must have the same shape")
    half = (*x.shape[:-1], x.shape[-1] // 2)
    # torch.broadcast_shapes(cos.shape, half) == half, written out: torch's imports sympy on first use (seconds)
    fits = cos.dim() <= len(half) and all(c in (1, h) for c, h in zip(reversed(cos.shape), reversed(half)))
    if not fits:
        raise ValueError(f"cos and sin of shape {tuple(cos.shape)} do not broadcast to x's planes {half} "
                         f"(x of shape {tuple(x.shape)})")


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
        super().__init__()
        if layout not in ("half", "interleaved"):
            raise ValueError(f"layout must be 'half' or 'interleaved', got {layout!r}")
        self.head_dim, self.base, self.layout = head_dim, base, layout
        self.register_buffer("inv_freq", rope_frequencies(head_dim, base), persistent=False)
        self.register_buffer("cos_cached", torch.empty(0, head_dim // 2, dtype=torch.float64), persistent=False)
        self.register_buffer("sin_cached", torch.empty(0, head_dim // 2, dtype=torch.float64), persistent=False)
        self._last: tuple | None = None  # (positions, its version, cos, sin): layers sharing positions read them once

    def _apply(self, fn, *args, **kwargs):
        """`.to()`, `.cuda()`, `.half()` move the tables but never lower their precision: the
        frequencies and angles stay float64 (float32 on MPS, which has no float64) whatever the
        model's dtype, and the tables are rebuilt on the new device when next needed."""
        super()._apply(fn, *args, **kwargs)
        device = self.inv_freq.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        if self.inv_freq.dtype != dtype:
            self.inv_freq = rope_frequencies(self.head_dim, self.base).to(device=device, dtype=dtype)
        if self.cos_cached.dtype != dtype:
            self.cos_cached = torch.empty(0, self.head_dim // 2, dtype=dtype, device=device)
            self.sin_cached = torch.empty(0, self.head_dim // 2, dtype=dtype, device=device)
        self._last = None
        return self

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin of the angles for integer `positions` of shape (...) -> each (..., head_dim // 2), float64."""
        check_integer_tensor("positions", positions)
        last = self._last
        if last is not None and last[0] is positions and last[1] == positions._version:
            return last[2], last[3]  # the same positions as the previous call (the next layer): no read
        if positions.numel():
            low, high = value_range(positions)  # one read of the values
            if low < 0:
                raise ValueError(f"positions must be >= 0, got {low}")
            needed = high + 1
        else:
            needed = 0
        if needed > self.cos_cached.shape[0]:
            length = max(needed, 2 * self.cos_cached.shape[0], 16)
            angles = torch.arange(length, dtype=self.inv_freq.dtype, device=self.inv_freq.device)[:, None] * self.inv_freq
            self.cos_cached, self.sin_cached = torch.cos(angles), torch.sin(angles)
        index = positions.to(self.cos_cached.device)
        cos, sin = self.cos_cached[index], self.sin_cached[index]
        self._last = (positions, positions._version, cos, sin)
        return cos, sin

    def rotate(self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate q (..., seq_q, head_dim) and k (..., seq_k, head_dim) by their positions, (seq,) or (batch, seq).

        Positions of shape (batch, seq) get a head axis inserted when q and k are 4-D,
        (batch, heads, seq, head_dim).
        """
        rotated = []
        for x, positions in ((q, q_positions), (k, k_positions)):
            check_positions("positions", positions)
            if x.shape[-1] != self.head_dim:
                raise ValueError(f"expected head_dim {self.head_dim}, got a tensor of shape {tuple(x.shape)}")
            cos, sin = self.cos_sin(positions)  # (..., seq, head_dim // 2)
            if positions.dim() == 2 and x.dim() == 4:
                cos, sin = cos[:, None], sin[:, None]  # (batch, 1, seq, head_dim // 2)
            rotated.append(apply_rope(x, cos.to(x.dtype), sin.to(x.dtype), self.layout))
        return rotated[0], rotated[1]


# ----------------------------------------------------------------------------------------------
# Relative: ALiBi
# ----------------------------------------------------------------------------------------------


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's head-specific slopes m_h; shape (num_heads,), float64.

    Press et al., 2022, section 3: for n heads, a power of two, the geometric sequence
    2^(-8/n), 2^(-16/n), ..., 2^(-8). Otherwise: the slopes of the nearest lower power of two p,
    followed by every other slope of 2p heads, until there are n.
    """
    check_int("num_heads", num_heads, 1)

    def geometric(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (h + 1) for h in range(n)]

    power = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(power)
    if power < num_heads:
        slopes += geometric(2 * power)[0::2][: num_heads - power]
    return torch.tensor(slopes, dtype=torch.float64)


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
    seq_k = seq_q if seq_k is None else seq_k
    check_int("seq_q", seq_q)
    check_int("seq_k", seq_k)
    if seq_k < seq_q:
        raise ValueError(f"seq_k ({seq_k}) must be >= seq_q ({seq_q})")
    query = torch.arange(seq_q, dtype=torch.float64)[:, None] + (seq_k - seq_q)
    key = torch.arange(seq_k, dtype=torch.float64)[None, :]
    distance = (query - key).clamp(min=0) if causal else (query - key).abs()
    return (-alibi_slopes(num_heads)[:, None, None] * distance).float()


class ALiBi(nn.Module):
    """ALiBi as a positional scheme for attention (no parameters).

    Args:
        num_heads: number of heads.
        causal: decoder (True) or encoder (False) form.
    """

    def __init__(self, num_heads: int, causal: bool = True) -> None:
        super().__init__()
        check_bool("causal", causal)
        self.register_buffer("slopes", alibi_slopes(num_heads).float(), persistent=False)
        self.causal = causal

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        """Additive bias for integer query and key positions, each (seq,) or (batch, seq).

        Returns (num_heads, seq_q, seq_k) when both are 1-D, (batch, num_heads, seq_q, seq_k) otherwise.
        """
        distance = -_relative_positions(q_positions, k_positions)  # query minus key, (..., seq_q, seq_k)
        distance = distance.clamp(min=0) if self.causal else distance.abs()
        slopes = self.slopes[:, None, None]  # (heads, 1, 1)
        return -slopes * distance.to(self.slopes.dtype)[..., None, :, :]  # (..., heads, seq_q, seq_k)
