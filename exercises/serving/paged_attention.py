"""Exercises for Chapter 16: attention through block tables.

Fill in each body that raises NotImplementedError. Chapter 1's `repeat_kv` and `softmax` are yours
to use (imported below); `F.scaled_dot_product_attention` is not. Grade with `llm-course grade 16`.
Mirrors `reference/serving/paged_attention.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reference.attention import repeat_kv, softmax


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
    # Hint: build the slot index of every (sequence, position) at once from block_tables, index the flattened pool, then zero what lies past each length.
    raise NotImplementedError("Exercise 16.4: gather keys/values through block tables")


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
    # Hint: gather, share the kv heads among query heads, then mask by each query's own position and by the padding queries; a fully masked row must give zeros, not NaN.
    raise NotImplementedError("Exercise 16.5: paged attention (decode and prefill)")
