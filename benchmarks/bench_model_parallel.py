"""Chapter 9: the course's pipeline schedules and tensor-parallel layers against PyTorch's, as ratios.

1. Pipeline: one training step of `reference.distributed.pipeline.run_pipeline` against
   `torch.distributed.pipelining`'s ScheduleGPipe / Schedule1F1B / ScheduleInterleaved1F1B on the
   same stages (a linear layer and a fixed sleep of --forward-ms / 2x that in the backward, so the
   stage cost is the same for both and the ratio shows the schedules' own overhead: sends,
   receives, bookkeeping; interleaved: 2 chunks per rank of half that cost each, m rounded down
   to a multiple of p).
2. Tensor parallel: one sharded `TransformerLM` layer's forward + backward with the course's
   counted ring collectives (`comm="ring"`, Chapter 7) against gloo's own all-reduce (`comm="torch"`).

The two sides take turns repeat by repeat (who goes first alternates), in the same processes;
the ratio is the median over repeats of (ours / PyTorch's) time: < 1 means ours is faster.

    python benchmarks/bench_model_parallel.py [--world 4] [--microbatches 8] [--forward-ms 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn import functional as F

from reference.distributed import pipeline, tensor_parallel
from reference.distributed.launch import Cluster


def pipeline_times(schedule: str, m: int, forward_s: float, repeats: int) -> list[tuple[float, float]]:
    """(ours, torch's) seconds of one step, per repeat, on every rank (rank 0's are reported)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = torch.randn(m, 8), torch.randn(m, 8)
    cpu, v = torch.device("cpu"), 2
    out = []
    for r in range(repeats):
        times = {}
        for side in (("ours", "torch") if r % 2 == 0 else ("torch", "ours")):
            if schedule == "interleaved":
                stage = [pipeline.timed_stage(8, forward_s / v, 2 * forward_s / v, seed=c * world + rank) for c in range(v)]
            else:
                stage = pipeline.timed_stage(8, forward_s, 2 * forward_s, seed=rank)
            dist.barrier()
            start = time.perf_counter()
            if side == "ours":
                pipeline.run_pipeline(stage, schedule, m, (1, 8), inputs=x, targets=y, loss_fn=F.mse_loss)
            else:
                if schedule == "interleaved":
                    stages = [PipelineStage(part, c * world + rank, world * v, cpu) for c, part in enumerate(stage)]
                    sched = ScheduleInterleaved1F1B(stages, m, loss_fn=F.mse_loss)
                else:
                    kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
                    sched = kind(PipelineStage(stage, rank, world, cpu), m, loss_fn=F.mse_loss)
                if rank == 0:
                    sched.step(x)
                elif rank == world - 1:
                    sched.step(target=y)
                else:
                    sched.step()
            dist.barrier()
            times[side] = time.perf_counter() - start
        out.append((times["ours"], times["torch"]))
    return out


def tp_times(batch: int, seq: int, repeats: int) -> list[tuple[float, float]]:
    """(ring, torch) seconds of one sharded layer's forward + backward, per repeat."""
    from reference.attention import causal_mask
    from reference.models.llama import TransformerLM

    torch.manual_seed(0)
    dense = TransformerLM(vocab_size=64, context_length=seq, d_model=256, num_layers=1, num_heads=8, d_ff=512)
    layers = {comm: tensor_parallel.TensorParallelLM.from_dense(dense, comm=comm).layers[0] for comm in ("ring", "torch")}
    x = torch.randn(batch, seq, 256, requires_grad=True)
    mask = causal_mask(seq)
    out = []
    for r in range(repeats):
        times = {}
        for comm in (("ring", "torch") if r % 2 == 0 else ("torch", "ring")):
            dist.barrier()
            start = time.perf_counter()
            layers[comm](x, mask=mask).sum().backward()
            dist.barrier()
            times[comm] = time.perf_counter() - start
        out.append((times["ring"], times["torch"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--forward-ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with Cluster(args.world, backend="gloo", timeout=600) as cluster:
        print(f"{args.world} gloo processes; median of {args.repeats} repeats; ratio = ours / PyTorch's time")
        print(f"{'what':<44}{'ours (s)':>10}{'torch (s)':>11}{'ratio':>8}")
        for schedule in ("gpipe", "1f1b", "interleaved"):
            m = args.microbatches - args.microbatches % args.world if schedule == "interleaved" else args.microbatches
            rows = cluster.run(pipeline_times, schedule, m, args.forward_ms / 1e3, args.repeats)[0]
            ours, theirs = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
            ratio = statistics.median(r[0] / r[1] for r in rows)
            print(f"{f'pipeline {schedule}, m={m}, p={args.world}':<44}{ours:>10.3f}{theirs:>11.3f}{ratio:>8.2f}")
        for batch, seq in ((1, 64), (8, 128)):
            rows = cluster.run(tp_times, batch, seq, args.repeats)[0]
            ours, theirs = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
            ratio = statistics.median(r[0] / r[1] for r in rows)
            print(f"{f'TP layer fwd+bwd, ring vs gloo, b={batch} s={seq}':<44}{ours:>10.4f}{theirs:>11.4f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
