"""Overlapping communication with computation: how much of the gradient all-reduce hides behind backward.

Survey section 2.4(d), "Overlapping". Chapter 8's `DDPBucketed` launches each bucket's all-reduce
asynchronously from a gradient hook as soon as the bucket is full, so the last layers' gradients
travel while the backward pass of the first layers still runs (Li et al., 2020, "PyTorch
Distributed", section 3.2.3). The measurement on every rank, interleaved (`time_interleaved`):

    compute     forward + backward, no communication
    sequential  forward + backward, then the same buckets all-reduced one after another
    overlapped  forward + backward through DDPBucketed, then finish_gradient_synchronization()
    communication = sequential - compute
    overlap fraction = (sequential - overlapped) / communication   (1: fully hidden, 0: none)

    python -m reference.overlap [--world-size 2] [--bucket-mb 0.25 1 None] [--out chapters/results/10_overlap.json]

On a GPU the same idea hides host-device copies: a copy issued on a side CUDA stream runs while the
default stream computes (`benchmarks/bench_precision.py` measures that).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
import torch.distributed as dist

from reference.runtime import time_interleaved

__all__ = ["measure_overlap", "overlap_worker"]


def _model(d_model: int, num_layers: int, seed: int) -> torch.nn.Module:
    from reference.models.llama import TransformerLM

    torch.manual_seed(seed)
    return TransformerLM(vocab_size=512, context_length=64, d_model=d_model, num_layers=num_layers, num_heads=4,
                         num_kv_heads=2, d_ff=4 * d_model)


def overlap_worker(bucket_sizes_mb: list[float | None], d_model: int = 128, num_layers: int = 6, batch_size: int = 4,
                   seq_len: int = 64, rounds: int = 7, seed: int = 0) -> dict[str, Any]:
    """Run on every rank of a process group: the three timings of the module docstring, per bucket size.

    Returns {"params": n, "grad_bytes": b, "compute_s": [...], "by_bucket": {str(size): {"sequential_s",
    "overlapped_s", "buckets"}}}, each a list of `rounds` samples in seconds.
    """
    from reference.distributed.ddp import DDPBucketed
    from reference.training.numerics import cross_entropy

    torch.set_num_threads(1)
    rank = dist.get_rank()
    ids = torch.randint(0, 512, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(seed + rank))

    def step(model: torch.nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        cross_entropy(model(ids[:, :-1]), ids[:, 1:]).backward()

    plain = _model(d_model, num_layers, seed)
    params = [p for p in plain.parameters() if p.requires_grad]
    result: dict[str, Any] = {"params": sum(p.numel() for p in params), "grad_bytes": sum(p.numel() * 4 for p in params),
                              "by_bucket": {}}
    functions: dict[str, Any] = {"compute": lambda: step(plain)}
    for size in bucket_sizes_mb:
        wrapped = DDPBucketed(_model(d_model, num_layers, seed), bucket_size_mb=size)
        layout = [list(bucket.params) for bucket in wrapped.buckets]
        index = {id(p): i for i, p in enumerate(wrapped.module.parameters())}
        plain_params = list(plain.parameters())
        groups = [[plain_params[index[id(p)]] for p in bucket] for bucket in layout]

        def sequential(groups: list[list[torch.Tensor]] = groups) -> None:
            step(plain)
            for group in groups:
                buffer = torch.cat([p.grad.reshape(-1) for p in group])
                dist.all_reduce(buffer)

        def overlapped(wrapped: DDPBucketed = wrapped) -> None:
            step(wrapped)
            wrapped.finish_gradient_synchronization()

        functions[f"sequential:{size}"] = sequential
        functions[f"overlapped:{size}"] = overlapped
        result["by_bucket"][str(size)] = {"buckets": len(layout)}
    dist.barrier()
    samples = time_interleaved(functions, rounds=rounds, warmup=2, sync=dist.barrier)
    result["compute_s"] = samples["compute"]
    for size in bucket_sizes_mb:
        result["by_bucket"][str(size)] |= {"sequential_s": samples[f"sequential:{size}"], "overlapped_s": samples[f"overlapped:{size}"]}
    return result


def summarize(rank_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds, the slowest rank per round (a step ends when the last rank finishes), and the overlap fraction."""
    def per_round(key_fn) -> float:
        rounds = zip(*[key_fn(r) for r in rank_results])
        return statistics.median(max(values) for values in rounds)

    compute = per_round(lambda r: r["compute_s"])
    summary: dict[str, Any] = {"compute_s": compute, "by_bucket": {}}
    for size, first in rank_results[0]["by_bucket"].items():
        sequential = per_round(lambda r, s=size: r["by_bucket"][s]["sequential_s"])
        overlapped = per_round(lambda r, s=size: r["by_bucket"][s]["overlapped_s"])
        communication = sequential - compute
        summary["by_bucket"][size] = {
            "buckets": first["buckets"], "sequential_s": sequential, "overlapped_s": overlapped,
            "communication_s": communication,
            "overlap_fraction": (sequential - overlapped) / communication if communication > 0 else None,
        }
    return summary


def measure_overlap(world_size: int = 2, bucket_sizes_mb: tuple[float | None, ...] = (0.25, 1.0, None), **kwargs: Any) -> dict[str, Any]:
    """Start `world_size` gloo processes, run `overlap_worker` on each, and summarize."""
    from reference.distributed.launch import launch

    results = launch(overlap_worker, world_size, list(bucket_sizes_mb), backend="gloo", timeout=600.0, **kwargs)
    return {"ranks": results, "summary": summarize(results)}


def main(argv: list[str] | None = None) -> int:
    from reference.runtime import machine_info, write_json

    parser = argparse.ArgumentParser(description="Measure how much gradient all-reduce DDPBucketed hides behind backward.")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--bucket-mb", nargs="+", default=["0.25", "1", "None"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default="chapters/results/10_overlap.json")
    args = parser.parse_args(argv)
    sizes = tuple(None if s == "None" else float(s) for s in args.bucket_mb)
    measured = measure_overlap(args.world_size, sizes, rounds=args.rounds)
    payload = {
        "command": f"python -m reference.overlap --world-size {args.world_size} --bucket-mb {' '.join(args.bucket_mb)} --rounds {args.rounds}",
        "config": {"world_size": args.world_size, "bucket_sizes_mb": list(args.bucket_mb), "rounds": args.rounds, "backend": "gloo",
                   "model": "TransformerLM d_model 128, 6 layers, batch 4 x 64", "seed": 0},
        **measured,
        "machine": machine_info("cpu"),
    }
    write_json(args.out, payload)
    print({k: round(v["overlap_fraction"], 3) if v["overlap_fraction"] is not None else None
           for k, v in measured["summary"]["by_bucket"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
