"""Check every collective of the course against torch.distributed's, on real processes.

Two ways to run the same code:

    python -m reference.distributed.demo --world-size 4                    # gloo, processes started here
    torchrun --standalone --nproc_per_node=4 -m reference.distributed.demo  # NCCL with GPUs, else gloo

Prints one row per collective and size with the largest difference from torch's result, and
exits with status 1 if any differs by more than 1e-9 (float64 inputs).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch.distributed as dist

from reference.distributed.launch import Cluster, init_from_env
from reference.distributed.measure import check_against_torch

TOLERANCE = 1e-9


def report(rows: list[tuple[str, int, float]], world: int, backend: str) -> bool:
    print(f"{world} ranks, backend {backend}: our collectives against torch.distributed (float64)")
    print(f"{'collective':<30} {'elements':>9} {'max |ours - torch|':>20}")
    for name, numel, diff in rows:
        print(f"{name:<30} {numel:>9} {diff:>20.2e}")
    ok = all(diff <= TOLERANCE for _, _, diff in rows)
    print("all collectives agree" if ok else "MISMATCH: some collective differs from torch.distributed")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=4, help="ranks to start when not run by torchrun")
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # started by torchrun: this process is one rank
        rank, world = init_from_env()  # NCCL and one GPU per rank when there are GPUs, else gloo
        rows = check_against_torch()
        ok = report(rows, world, dist.get_backend()) if rank == 0 else True
        dist.destroy_process_group()
        return 0 if ok else 1
    with Cluster(args.world_size, backend="gloo") as cluster:
        rows = cluster.run(check_against_torch)[0]
    return 0 if report(rows, args.world_size, "gloo") else 1


if __name__ == "__main__":
    sys.exit(main())
