"""Measurements of the collectives on real processes, run on every rank (`Cluster.run` or `torchrun`).

Correctness against `torch.distributed`'s own collectives, bytes and messages per rank, timings
of the all-reduce algorithms, and a trace of the messages of a ring all-reduce, for Chapter 7 and
for `python -m reference.distributed.demo`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from reference.distributed import collectives
from reference.distributed.launch import device_for_rank
from reference.distributed.p2p import count_traffic

ALL_REDUCE: dict[str, Callable[[Tensor], None]] = {
    "naive": collectives.all_reduce_naive,
    "ring": collectives.all_reduce_ring,
    "recursive doubling": collectives.all_reduce_recursive_doubling,
    "torch (gloo)": dist.all_reduce,
}


def _data(numel: int, salt: int = 0) -> Tensor:
    """This rank's test data: float64 values that differ between ranks, on the rank's device."""
    generator = torch.Generator().manual_seed(1000 * dist.get_rank() + salt)
    values = torch.randn(numel, generator=generator, dtype=torch.float64)
    return values.to(device_for_rank(dist.get_rank(), dist.get_backend()))


def check_against_torch(numels: tuple[int, ...] = (0, 1, 7, 1000)) -> list[tuple[str, int, float]]:
    """Every collective of `reference.distributed.collectives` against torch's on the same inputs.

    Returns rows (collective, numel, largest absolute difference over all ranks), the same rows on
    every rank.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    for numel in numels:
        x = _data(numel)
        blocks = [_data(numel, salt=i + 1) for i in range(world)]
        pairs: dict[str, tuple[Tensor, Tensor]] = {}
        for name in ("naive", "ring", "recursive doubling"):
            ours, theirs = x.clone(), x.clone()
            ALL_REDUCE[name](ours)
            dist.all_reduce(theirs)
            pairs[f"all_reduce ({name})"] = ours, theirs
        ours, theirs = x.clone(), x.clone()
        collectives.broadcast(ours, src=world - 1)
        dist.broadcast(theirs, src=world - 1)
        pairs["broadcast"] = ours, theirs
        ours, theirs = x.clone(), x.clone()
        collectives.reduce(ours, dst=0)
        dist.reduce(theirs, dst=0)
        pairs["reduce"] = (ours, theirs) if rank == 0 else (x, x)
        ours, theirs = torch.empty_like(x), torch.empty_like(x)
        collectives.reduce_scatter(ours, blocks)
        dist.reduce_scatter(theirs, blocks)
        pairs["reduce_scatter"] = ours, theirs
        ours_list, theirs_list = [torch.empty_like(x) for _ in range(world)], [torch.empty_like(x) for _ in range(world)]
        collectives.all_gather(ours_list, x)
        dist.all_gather(theirs_list, x)
        pairs["all_gather"] = torch.cat(ours_list), torch.cat(theirs_list)
        ours_list, theirs_list = [torch.empty_like(x) for _ in range(world)], [torch.empty_like(x) for _ in range(world)]
        collectives.all_to_all(ours_list, blocks)
        dist.all_to_all(theirs_list, blocks)
        pairs["all_to_all"] = torch.cat(ours_list), torch.cat(theirs_list)
        for name, (ours, theirs) in pairs.items():
            diff = torch.tensor((ours - theirs).abs().max().item() if numel else 0.0, dtype=torch.float64, device=x.device)
            dist.all_reduce(diff, op=dist.ReduceOp.MAX)
            rows.append((name, numel, diff.item()))
    return rows


def traffic(algorithm: str, numel: int, dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    """(bytes, messages) this rank sends in one call of an all-reduce algorithm on `numel` elements."""
    x = torch.ones(numel, dtype=dtype)
    with count_traffic() as counted:
        ALL_REDUCE[algorithm](x)
    return counted.bytes_sent, counted.messages_sent


def message_log(collective: str, numel: int) -> list[tuple[int, int]]:
    """The messages this rank sends, in order, as (destination rank, bytes), for one call of `collective`.

    `collective` is "broadcast" (from rank 0), "reduce" (to rank 0) or an all-reduce algorithm of
    `ALL_REDUCE` except torch's; the data are `numel` float32 ones on the rank's device.
    """
    x = torch.ones(numel, device=device_for_rank(dist.get_rank(), dist.get_backend()))
    run = {"broadcast": collectives.broadcast, "reduce": collectives.reduce}.get(collective) or ALL_REDUCE.get(collective)
    if run is None or run is dist.all_reduce:
        raise ValueError(f"no logged collective {collective!r}; choose broadcast, reduce, naive, ring or recursive doubling")
    with count_traffic(keep_messages=True) as counted:
        run(x)
    assert counted.log is not None
    return [(dst, sent.numel() * sent.element_size()) for dst, sent in counted.log]


def time_all_reduce(numels: list[int], algorithms: tuple[str, ...] = tuple(ALL_REDUCE), repeats: int = 5) -> dict[str, list[float]]:
    """Median seconds per call of each all-reduce algorithm for each size (float32), slowest rank's view.

    Every timing starts after a barrier; the time of one call is the largest over the ranks.
    """
    device = device_for_rank(dist.get_rank(), dist.get_backend())
    results: dict[str, list[float]] = {name: [] for name in algorithms}
    for numel in numels:
        x = torch.ones(numel, device=device)
        for name in algorithms:
            samples = []
            for _ in range(repeats + 1):  # the first call warms up
                dist.barrier()
                start = time.perf_counter()
                ALL_REDUCE[name](x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                samples.append(time.perf_counter() - start)
            seconds = torch.tensor(statistics.median(samples[1:]), dtype=torch.float64, device=device)
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            results[name].append(seconds.item())
    return results


def trace_ring_all_reduce(elements_per_chunk: int = 1) -> list[tuple[int, list[int]]]:
    """The messages this rank sends in a ring all-reduce where rank r contributes 2**r everywhere.

    Every value in flight is then a bit mask of the ranks whose contributions it already holds,
    so the trace shows the partial sums travelling around the ring. Returns, in order, pairs of
    (destination rank, values sent).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.full((world * elements_per_chunk,), 2**rank, dtype=torch.int64)
    with count_traffic(keep_messages=True) as counted:
        collectives.all_reduce_ring(x)
    assert counted.log is not None
    return [(dst, sent.tolist()) for dst, sent in counted.log]
