"""Tensor-parallel decoding: every rank holds a shard of each layer and runs the same decoding loop.

Survey section 3.3. Chapter 9's `TensorParallelLM` splits each attention layer's heads and each
feed-forward layer's columns over t processes (Megatron-LM; Shoeybi et al., 2019) with one
all-reduce after the attention and one after the MLP; its forward takes `TransformerLM`'s
arguments, so `reference.inference.generate` runs on it unchanged, each rank with a KV cache of its
own key/value heads (1/t of the memory per token). Every rank sees the same gathered logits, so with
the same seeded generator every rank chooses the same tokens, and they equal single-process decoding.

    from reference.inference.parallel import tensor_parallel_generate
    out = tensor_parallel_generate(model, [[1, 2, 3]], 16, world_size=2)   # rank 0's Generation
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from reference.validation import check_int


def _decode_on_rank(state: dict[str, torch.Tensor], config: dict[str, Any], prompts, max_new_tokens: int,
                    options: dict[str, Any], seed: int | None) -> dict[str, Any]:  # fmt: skip
    """Runs in each process: build the dense model, shard it, decode."""
    import torch.distributed as dist

    from reference.distributed.tensor_parallel import TensorParallelLM
    from reference.inference.generate import KVCache, generate
    from reference.models.llama import TransformerLM

    torch.set_num_threads(1)
    dense = TransformerLM(**config)
    dense.load_state_dict(state)
    sharded = TensorParallelLM.from_dense(dense.eval()).eval()
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    out = generate(sharded, prompts, max_new_tokens, generator=generator, return_scores=True, **options)
    cache = KVCache.for_model(sharded, 1, 1)
    return {"rank": dist.get_rank(), "new_tokens": out.new_tokens, "logits": out.logits,
            "cache_bytes_per_token": cache.bytes_per_token}  # fmt: skip


def tensor_parallel_generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    world_size: int = 2,
    seed: int | None = None,
    cluster=None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Decode with `model` split over `world_size` gloo processes; one result per rank.

    Args:
        model: a `reference.models.llama.TransformerLM` whose heads, key/value heads and d_ff
            `world_size` divides.
        prompts: lists of ids (as for `generate`).
        max_new_tokens: tokens to add.
        world_size: processes (tensor-parallel degree).
        seed: seeds each rank's generator alike (sampling), None for greedy.
        cluster: a started `reference.distributed.launch.Cluster` to reuse (else one is started and closed).
        options: other `generate` keyword arguments (temperature, top_k, ...).
    Returns:
        Per rank: {"rank", "new_tokens", "logits" (batch, steps, vocab), "cache_bytes_per_token"}.
    """
    check_int("world_size", world_size, 1)
    from reference.distributed.launch import Cluster

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    args = (state, dict(model.config), [list(p) for p in prompts], max_new_tokens, options, seed)
    if cluster is not None:
        return cluster.run(_decode_on_rank, *args)
    own = Cluster(world_size, backend="gloo")
    try:
        return own.run(_decode_on_rank, *args)
    finally:
        own.close()
