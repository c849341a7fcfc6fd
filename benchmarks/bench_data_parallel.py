"""Step time of the course's DDP and ZeRO stages against torch's DistributedDataParallel, in one run.

Every strategy trains its own copy of the same `TransformerLM` on the same batches in the same
processes (`reference.distributed.dp_training.time_strategies`), taking turns step by step in a
fresh random order each round. Reported per strategy: the median over rounds of the paired ratio
(its step time / torch DDP's in the same round), which cancels most of a shared machine's load
swings, with the spread (min-max) over rounds. The JSON goes to chapters/results/ for Chapter 8.

    python benchmarks/bench_data_parallel.py [--world-size 2] [--rounds 8] [--out chapters/results/08_step_time.json]
    python benchmarks/bench_data_parallel.py --world-size 2 --rounds 1 --config tiny --out /tmp/b.json   # quick

On GPUs (NCCL) run the same under torchrun: `torchrun --nproc_per_node=N benchmarks/bench_data_parallel.py --torchrun`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference.distributed import dp_training  # noqa: E402
from reference.distributed.launch import Cluster, default_backend, init_from_env  # noqa: E402
from reference.runtime import machine_info, write_json  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=64, context_length=16, d_model=16, num_layers=2, num_heads=2, d_ff=32, tie_embeddings=True),
    "small": dict(vocab_size=4096, context_length=128, d_model=128, num_layers=4, num_heads=4, d_ff=352, tie_embeddings=True),
}  # fmt: skip


def summarize(times: dict[str, list[float]], baseline: str = "torch_ddp") -> dict[str, dict[str, float]]:
    """{strategy: {"median_s", "ratio" (median of paired ratios to the baseline), "ratio_min", "ratio_max"}}."""
    out = {}
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, times[baseline])]
        out[name] = {"median_s": statistics.median(values), "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--bucket-size-mb", type=float, default=25.0)
    parser.add_argument("--torchrun", action="store_true", help="started by torchrun: join its group (NCCL on GPUs)")
    parser.add_argument("--out", default="chapters/results/08_step_time.json")
    args = parser.parse_args(argv)
    config = CONFIGS[args.config]
    kwargs = dict(global_batch=args.global_batch, rounds=args.rounds, bucket_size_mb=args.bucket_size_mb)
    if args.torchrun:
        import torch
        import torch.distributed as dist

        rank, world = init_from_env()
        times = dp_training.time_strategies(config, **kwargs)
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        if rank != 0:
            dist.destroy_process_group()
            return 0
    else:
        import torch

        world, backend, device = args.world_size, "gloo", torch.device("cpu")
        with Cluster(world, backend="gloo", timeout=1800) as cluster:
            times = cluster.run(dp_training.time_strategies, config, **kwargs)[0]
    summary = summarize(times)
    print(f"world size {world}, {backend}, config {args.config}, global batch {args.global_batch}, {args.rounds} rounds")
    print(f"{'strategy':<16}{'median step (ms)':>18}{'ratio to torch DDP':>20}{'min-max':>16}")
    for name, row in summary.items():
        print(f"{name:<16}{1000 * row['median_s']:>18.1f}{row['ratio']:>20.2f}{row['ratio_min']:>8.2f}-{row['ratio_max']:.2f}")
    write_json(args.out, {
        "command": "python benchmarks/bench_data_parallel.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": 0, "world_size": world, "backend": backend, "config": config, "config_name": args.config,
        "global_batch": args.global_batch, "rounds": args.rounds, "bucket_size_mb": args.bucket_size_mb,
        "times_s": times, "summary": summary, "machine": machine_info(device),
    })  # fmt: skip
    if args.torchrun:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
