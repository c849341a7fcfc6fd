"""Attention that reads keys and values through block tables (PagedAttention).

Survey section 3.4; Kwon et al., 2023, section 4.1, eq. 4. With the cache split into blocks of B
slots, a sequence's keys are no longer one contiguous (len, head_dim) matrix: its logical block j
(positions jB .. jB + B - 1) sits in physical block table[j] of a shared pool
    key_cache: (num_blocks, B, kv_heads, head_dim)
and attention for query q_i becomes a sum over the sequence's blocks:
    a_ij = exp(q_i . k_j / sqrt(d)) / sum_t exp(q_i . k_t / sqrt(d)),   o_i = sum_j a_ij v_j,
the keys k_j and values v_j being read from key_cache[table[j // B], j % B]. vLLM's CUDA kernel
reads the blocks in place; in PyTorch we *gather* them into a padded (batch, kv_heads, len, d)
tensor and mask the positions past each sequence's length, which gives the same numbers as
Chapter 1's contiguous attention on that sequence alone (the test's oracle).

One call serves both phases of serving: decoding (one query per sequence, at its last position)
and prefill (several queries per sequence, the last `query_lens[b]` positions of its context,
causal among themselves), for a batch of sequences of different lengths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reference.attention import repeat_kv, softmax
from reference.validation import ArgumentTypeError


def _check_tables(cache: Tensor, block_tables: Tensor, context_lens: Tensor) -> None:
    if not isinstance(cache, Tensor) or cache.dim() != 4:
        raise ValueError(f"the cache must be (num_blocks, block_size, kv_heads, head_dim), got {getattr(cache, 'shape', cache)!r}")
    for name, t, dims in (("block_tables", block_tables, 2), ("context_lens", context_lens, 1)):
        if not isinstance(t, Tensor) or t.is_floating_point() or t.dtype == torch.bool:
            raise ArgumentTypeError(f"{name} must be an integer tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() != dims:
            raise ValueError(f"{name} must have {dims} dimension(s), got shape {tuple(t.shape)}")
    if block_tables.shape[0] != context_lens.shape[0]:
        raise ValueError(f"block_tables {tuple(block_tables.shape)} and context_lens {tuple(context_lens.shape)} disagree on the batch")


def gather_kv(cache: Tensor, block_tables: Tensor, context_lens: Tensor, max_len: int | None = None) -> Tensor:
    """Each sequence's keys (or values) read through its block table, as one padded tensor.

    Position p of sequence b is cache[block_tables[b, p // B], p % B] (B = cache.shape[1]).

    Args:
        cache: the block pool of one layer, (num_blocks, B, kv_heads, head_dim).
        block_tables: (batch, max_blocks) physical block ids; entries past a sequence's last block
            may hold any valid id (they are not read into the result).
        context_lens: (batch,) number of positions of each sequence (<= max_blocks * B).
        max_len: the result's length; default max_blocks * B.

    Returns:
        (batch, kv_heads, max_len, head_dim): sequence b's states at positions < context_lens[b],
        zeros after.
    """
    _check_tables(cache, block_tables, context_lens)
    block_size = cache.shape[1]
    max_len = block_tables.shape[1] * block_size if max_len is None else max_len
    if max_len > block_tables.shape[1] * block_size:
        raise ValueError(f"max_len={max_len} is more than the block tables cover ({block_tables.shape[1]} x {block_size})")
    positions = torch.arange(max_len, device=cache.device)  # (max_len,)
    blocks = block_tables.to(cache.device)[:, positions // block_size]  # (batch, max_len)
    slots = blocks * block_size + positions % block_size
    states = cache.flatten(0, 1)[slots]  # (batch, max_len, kv_heads, head_dim)
    valid = positions[None, :] < context_lens.to(cache.device)[:, None]  # (batch, max_len)
    states = torch.where(valid[:, :, None, None], states, torch.zeros((), dtype=cache.dtype, device=cache.device))
    return states.transpose(1, 2)


def paged_attention(
    q: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    query_lens: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """softmax(q K^T * scale + causal mask) V for each sequence, K and V read through its block table.

    Query i of sequence b sits at position context_lens[b] - query_lens[b] + i and attends to the
    positions up to and including its own (decoding: one query, at the last position, sees all).

    Args:
        q: (batch, num_heads, seq_q, head_dim), each sequence's queries first, padding after.
        key_cache: (num_blocks, block_size, kv_heads, head_dim); num_heads is a multiple of
            kv_heads (grouped-query attention: query head h reads key/value head h // group).
        value_cache: the same shape as key_cache.
        block_tables: (batch, max_blocks) physical block ids.
        context_lens: (batch,) positions in each sequence, the queries' own included.
        query_lens: (batch,) real queries per sequence (<= seq_q and <= context_lens); default seq_q.
        scale: multiplier of the scores; default 1 / sqrt(head_dim).

    Returns:
        (batch, num_heads, seq_q, head_dim); rows of padding queries are zeros.
    """
    if not isinstance(q, Tensor) or not q.is_floating_point() or q.dim() != 4:
        raise ValueError(f"q must be a floating-point (batch, num_heads, seq_q, head_dim) tensor, got {getattr(q, 'shape', q)!r}")
    if key_cache.shape != value_cache.shape:
        raise ValueError(f"key_cache {tuple(key_cache.shape)} and value_cache {tuple(value_cache.shape)} differ")
    batch, num_heads, seq_q, head_dim = q.shape
    kv_heads = key_cache.shape[2]
    if num_heads % kv_heads or key_cache.shape[3] != head_dim:
        raise ValueError(f"q {tuple(q.shape)} does not fit a cache of (blocks, B, kv_heads, head_dim) = {tuple(key_cache.shape)}")
    query_lens = torch.full((batch,), seq_q, device=q.device) if query_lens is None else query_lens.to(q.device)
    context_lens = context_lens.to(q.device)
    max_len = block_tables.shape[1] * key_cache.shape[1]
    k = repeat_kv(gather_kv(key_cache, block_tables, context_lens), num_heads // kv_heads)  # (batch, heads, max_len, d)
    v = repeat_kv(gather_kv(value_cache, block_tables, context_lens), num_heads // kv_heads)
    scale = head_dim**-0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (batch, heads, seq_q, max_len)
    i = torch.arange(seq_q, device=q.device)[None, :]  # (1, seq_q)
    query_pos = (context_lens - query_lens)[:, None] + i  # (batch, seq_q): each query's position
    keys = torch.arange(max_len, device=q.device)
    allowed = (keys[None, None, :] <= query_pos[:, :, None]) & (i < query_lens[:, None])[:, :, None]  # (batch, seq_q, max_len)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return softmax(scores, dim=-1) @ v  # a row with no allowed key (padding) gives zeros
