"""Exercises for Chapter 15 (the key/value cache). Fill in each body that raises NotImplementedError; the
docstrings say what to do. Grade with `llm-course grade 15`. Mirrors `reference/inference/generate.py`.
"""

from __future__ import annotations

from torch import Tensor

from reference.inference.generate import KVCache


class LayerKVCache:
    """One attention layer's view of a `KVCache`: `update(k, v)` appends and returns all keys/values."""

    def __init__(self, cache: KVCache, layer: int) -> None:
        # Hint: Keep the cache and the layer index.
        raise NotImplementedError("Exercise 15.1: key/value cache update (preallocated and growing)")

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys and values (batch, kv_heads, new, head_dim) after the cached ones.

        Returns:
            All keys and values so far, each (batch, kv_heads, length + new, head_dim): views of
            the cache's buffers, no copy.
        """
        # Hint: Write the new positions after cache.length (grow the cache first if its capacity is short: cache.grow), then return views up to the end. Check shapes and the max_len limit.
        raise NotImplementedError("Exercise 15.1: key/value cache update (preallocated and growing)")
