"""Measurements of the collectives on real processes, run on every rank (`Cluster.run` or `torchrun`).

Correctness against `torch.distributed`'s own collectives, bytes and messages per rank, timings
of the all-reduce algorithms, and a trace of the messages of a ring all-reduce, for Chapter 7 and
for `python -m reference.distributed.demo`.

As a command it runs the timing sweep of Chapter 7, too long for the notebook, and writes JSON:

    python -m reference.distributed.measure --out chapters/results/07_all_reduce_timing.json
    python -m reference.distributed.measure --world-sizes 2 --max-bytes 4096 --rounds 2 --out /tmp/t.json  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
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


def time_all_reduce_rounds(numels: list[int], algorithms: tuple[str, ...] = tuple(ALL_REDUCE), rounds: int = 7,
                           warmup: int = 1) -> dict[str, list[list[float]]]:
    """Seconds per call of each all-reduce algorithm and size (float32), in interleaved rounds.

    Every round calls every (size, algorithm) pair once, in the same order on every rank, each
    call starting after a barrier; so a disturbance of a few milliseconds (another process, a
    browser redrawing) spoils one sample of many pairs rather than every sample of one. The time
    of a call is the slowest rank's. `warmup` untimed calls of every pair come first (buffers,
    connections, caches).

    Returns:
        algorithm -> one list per size of `rounds` samples in seconds, the same on every rank.
        Take the median over the rounds; the spread says how noisy the machine was.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds!r}, warmup={warmup!r}")
    unknown = [name for name in algorithms if name not in ALL_REDUCE]
    if unknown:
        raise ValueError(f"unknown all-reduce algorithm(s) {unknown}; choose from {list(ALL_REDUCE)}")
    device = device_for_rank(dist.get_rank(), dist.get_backend())
    buffers = [torch.ones(numel, device=device) for numel in numels]

    def call(name: str, x: Tensor) -> float:
        dist.barrier()
        start = time.perf_counter()
        ALL_REDUCE[name](x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        for x in buffers:
            for name in algorithms:
                call(name, x)
    samples = torch.zeros(len(algorithms), len(numels), rounds, dtype=torch.float64)
    for r in range(rounds):
        for j, x in enumerate(buffers):
            for i, name in enumerate(algorithms):
                samples[i, j, r] = call(name, x)
    samples = samples.to(device)
    dist.all_reduce(samples, op=dist.ReduceOp.MAX)  # the slowest rank's view of every call
    return {name: samples[i].cpu().tolist() for i, name in enumerate(algorithms)}


def time_all_reduce(numels: list[int], algorithms: tuple[str, ...] = tuple(ALL_REDUCE), repeats: int = 5) -> dict[str, list[float]]:
    """Median seconds per call of each all-reduce algorithm for each size (float32), slowest rank's view.

    `repeats` interleaved rounds after one warm-up call of each pair (`time_all_reduce_rounds`).
    """
    rounds = time_all_reduce_rounds(numels, algorithms, rounds=repeats, warmup=1)
    return {name: [statistics.median(samples) for samples in per_size] for name, per_size in rounds.items()}


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


# --- the timing sweep as a command ---------------------------------------------------------------


def sweep(world_sizes: tuple[int, ...] = (2, 4), max_bytes: int = 64 * 2**20, min_bytes: int = 64, rounds: int = 9,
          warmup: int = 1, algorithms: tuple[str, ...] = tuple(ALL_REDUCE), timeout: float = 900.0) -> dict:
    """Time every all-reduce algorithm on gloo clusters of each size, float32 tensors from `min_bytes`
    to `max_bytes` (powers of four), in interleaved rounds; returns what the command writes."""
    from reference.distributed.launch import Cluster

    if min_bytes < 4 or max_bytes < min_bytes:
        raise ValueError(f"need 4 <= min_bytes <= max_bytes, got {min_bytes} and {max_bytes}")
    numels, numel = [], min_bytes // 4
    while 4 * numel <= max_bytes:
        numels.append(numel)
        numel *= 4
    results = {}
    for world in world_sizes:
        began = time.perf_counter()
        with Cluster(world, backend="gloo", timeout=timeout) as cluster:
            samples = cluster.run(time_all_reduce_rounds, numels, tuple(algorithms), rounds, warmup)[0]
        results[str(world)] = {
            "numels": numels,
            "bytes": [4 * n for n in numels],
            "median_s": {name: [statistics.median(s) for s in per_size] for name, per_size in samples.items()},
            "samples_s": samples,
            "seconds_to_measure": round(time.perf_counter() - began, 1),
        }
    return {
        "what": "seconds per all-reduce of float32 tensors on gloo processes of one machine; slowest rank's view; "
                "median over interleaved rounds (samples_s holds every round)",
        "command": None,
        "config": {"world_sizes": list(world_sizes), "min_bytes": min_bytes, "max_bytes": max_bytes, "rounds": rounds,
                   "warmup": warmup, "algorithms": list(algorithms), "backend": "gloo", "dtype": "float32"},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    from reference.runtime import atomic_write

    parser = argparse.ArgumentParser(prog="python -m reference.distributed.measure",
                                     description="Time the all-reduce algorithms of Chapter 7 and write JSON.")
    parser.add_argument("--out", required=True, help="the JSON file to write (atomically)")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--min-bytes", type=int, default=64)
    parser.add_argument("--max-bytes", type=int, default=64 * 2**20)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    if any(w < 2 for w in args.world_sizes):
        parser.error(f"--world-sizes must all be >= 2, got {args.world_sizes}")
    # Through the module's own name: the ranks import the timed function by name, and as a command this file is __main__.
    from reference.distributed import measure

    report = measure.sweep(tuple(args.world_sizes), args.max_bytes, args.min_bytes, args.rounds, args.warmup)
    report["command"] = "python -m reference.distributed.measure " + " ".join(argv if argv is not None else sys.argv[1:])
    with atomic_write(args.out, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=1)
        file.write("\n")
    for world, result in report["results"].items():
        print(f"{world} ranks ({result['seconds_to_measure']} s): median ms at {result['bytes'][-1]:,} bytes: "
              + ", ".join(f"{name} {times[-1] * 1e3:.1f}" for name, times in result["median_s"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
