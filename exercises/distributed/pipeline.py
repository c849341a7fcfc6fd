"""Exercises for Chapter 9: pipeline schedules and their bubble.

Fill in each body that raises NotImplementedError. The rest (stages, Delay, run_pipeline, which
runs your schedules on real processes) is an exact copy of the reference. Grade with
`llm-course grade 9`. Mirrors `reference/distributed/pipeline.py`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from reference.attention import causal_mask
from reference.distributed import p2p
from reference.distributed.launch import Cluster, device_for_rank, init_from_env

SCHEDULE_NAMES = ("gpipe", "1f1b", "interleaved")


# ----------------------------------------------------------------------------------------------
# Schedules: the order of forwards and backwards on one stage
# ----------------------------------------------------------------------------------------------


def _check_pipeline(num_stages: int, num_microbatches: int, stage: int) -> None:
    for name, value in (("num_stages", num_stages), ("num_microbatches", num_microbatches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < num_stages:
        raise ValueError(f"stage must be an int in [0, {num_stages}), got {stage!r}")


def gpipe_order(num_stages: int, num_microbatches: int, stage: int) -> list[tuple[str, int]]:
    """GPipe's actions on `stage`: [("F", 0), ..., ("F", m - 1), ("B", 0), ..., ("B", m - 1)].

    Huang et al., 2019: every micro-batch goes forward through the pipeline, then every one backward.
    """
    # Hint: every forward first, then every backward, both in micro-batch order.
    raise NotImplementedError("Exercise 9.7: GPipe schedule")


def one_f_one_b_order(num_stages: int, num_microbatches: int, stage: int) -> list[tuple[str, int]]:
    """1F1B (PipeDream-Flush) actions on `stage` of `num_stages`, for `num_microbatches` micro-batches.

    Warm-up: w = min(p - stage - 1, m) forwards F_0 .. F_{w-1}; steady state: for i = 0 .. m - w - 1,
    F_{w+i} then B_i; cool-down: the backwards B_{m-w} .. B_{m-1}. Backwards run in micro-batch
    order, each as early as the schedule allows, so at most w + 1 <= p micro-batches are stashed.
    Narayanan et al., 2021, figure 4 (top).
    """
    # Hint: how many forwards can a stage run before the first backward reaches it? After the warm-up, alternate; at the end, drain.
    raise NotImplementedError("Exercise 9.8: 1F1B (PipeDream-Flush) schedule")


def _check_chunks(num_stages: int, num_microbatches: int, num_chunks: int) -> None:
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 2:
        raise ValueError(f"num_chunks must be an int >= 2 (one chunk per rank is plain 1F1B), got {num_chunks!r}")
    if num_microbatches % num_stages:
        raise ValueError(f"num_microbatches={num_microbatches} must be a multiple of num_stages={num_stages}: "
                         "the interleaved schedule runs micro-batches in groups of p")


def interleaved_order(num_stages: int, num_microbatches: int, stage: int, num_chunks: int) -> list[tuple[str, int, int]]:
    """Interleaved 1F1B actions on rank `stage` of p = `num_stages`: [(kind, micro-batch, chunk), ...].

    The rank holds `num_chunks` = v model chunks; its chunk c is virtual stage c p + stage of p v.
    Counting the rank's m v forwards k = 0, 1, ..., forward k runs chunk (k mod p v) // p on
    micro-batch (k // p v) p + k mod p: a group of p micro-batches through chunk 0, the same group
    through chunk 1, ..., then the next group. Backward k takes the chunks the other way round,
    v - 1 - (k mod p v) // p, on the same micro-batch. Warm-up: w = min((v - 1) p + 2 (p - stage - 1), m v)
    forwards; steady state: forward w + k then backward k; cool-down: the remaining backwards.
    Narayanan et al., 2021, section 2.2.2 and figure 4 (bottom); the same actions as
    `torch.distributed.pipelining.ScheduleInterleaved1F1B` when m is a multiple of p.
    """
    # Hint: number the rank's m v forwards k = 0, 1, ...; from k alone follow its chunk and its micro-batch (the docstring
    # gives both); the backwards walk the chunks the other way. The warm-up is longer than 1F1B's: a
    # micro-batch must pass every rank v times before its first backward comes back.
    raise NotImplementedError("Exercise 9.10: interleaved 1F1B schedule")


SCHEDULES: dict[str, Callable[[int, int, int], list[tuple[str, int]]]] = {"gpipe": gpipe_order, "1f1b": one_f_one_b_order}


def peak_stashed(order: list[tuple[str, int]] | list[tuple[str, int, int]]) -> int:
    """The most micro-batches (of any chunk) whose forward has run and whose backward has not, along `order`."""
    live = peak = 0
    for kind, *_ in order:
        live += 1 if kind == "F" else -1
        peak = max(peak, live)
    return peak


# ----------------------------------------------------------------------------------------------
# Timelines and the bubble
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One computation on one stage: micro-batch `microbatch`'s forward ("F") or backward ("B").

    `chunk` is the rank's model chunk (interleaved schedule: virtual stage chunk * p + rank; else 0).
    """

    rank: int
    microbatch: int
    kind: str
    start: float  # seconds since the common barrier
    end: float
    chunk: int = 0


def bubble_fraction(events: list[Event], num_stages: int | None = None) -> float:
    """The idle fraction of a pipeline run: 1 - (sum of busy time) / (p * makespan).

    The makespan is from the earliest start to the latest end over all stages; a stage is busy
    while one of its events runs. Compare with (p - 1) / (m + p - 1) for balanced stages.

    Args:
        events: the timeline of every stage (e.g. the concatenated `PipelineResult.events`).
        num_stages: p; defaults to the number of distinct ranks in `events`.
    """
    # Hint: idle time is what is left of p stages times the makespan (first start to last end, over all stages) once the events' durations are taken out.
    raise NotImplementedError("Exercise 9.9: bubble fraction from a timeline")


def bubble_formula(num_stages: int, num_microbatches: int, interleave: int = 1) -> float:
    """(p - 1) / (v m + p - 1): the idle fraction of the whole run for balanced stages (v = 1: GPipe and 1F1B).

    Equivalently (p - 1) / (v m) of the ideal time (Narayanan et al., 2021, section 2.2).
    """
    _check_pipeline(num_stages, num_microbatches, 0)
    return (num_stages - 1) / (interleave * num_microbatches + num_stages - 1)


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, forward_s: float, backward_s: float) -> Tensor:
        ctx.backward_s = backward_s
        time.sleep(forward_s)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        time.sleep(ctx.backward_s)
        return grad, None, None


class Delay(nn.Module):
    """Identity that sleeps `forward_s` seconds in the forward and `backward_s` in the backward.

    Makes a stage's cost known and the same on every stage (sleeping needs no CPU, so a loaded
    machine does not unbalance it): the bubble measured with it can be compared with the formula.
    """

    def __init__(self, forward_s: float, backward_s: float) -> None:
        super().__init__()
        if not forward_s >= 0 or not backward_s >= 0:
            raise ValueError(f"forward_s and backward_s must be >= 0, got {forward_s!r}, {backward_s!r}")
        self.forward_s, self.backward_s = float(forward_s), float(backward_s)

    def forward(self, x: Tensor) -> Tensor:
        return _Sleep.apply(x, self.forward_s, self.backward_s)


def timed_stage(width: int, forward_s: float, backward_s: float, seed: int = 0) -> nn.Module:
    """A stage of known cost: Linear(width, width), tanh, then `Delay(forward_s, backward_s)`."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, width), nn.Tanh(), Delay(forward_s, backward_s))


class LMStage(nn.Module):
    """A slice of a `TransformerLM`: optional embedding, blocks [first, last), optional final norm and head.

    forward: token ids (batch, seq) on the first stage, else hidden states (batch, seq, d_model)
    -> hidden states, or logits (batch, seq, vocab_size) on the last stage. The causal mask and
    positions 0 .. seq - 1 are rebuilt on each stage. The modules are the model's own (no copy).
    """

    def __init__(self, model: nn.Module, first: int, last: int, embed: bool, head: bool) -> None:
        super().__init__()
        self.token_embeddings = model.token_embeddings if embed else None
        self.layers = nn.ModuleList(model.layers[first:last])
        self.ln_final = model.ln_final if head else None
        self.lm_head = model.lm_head if head else None

    def forward(self, x: Tensor) -> Tensor:
        if self.token_embeddings is not None:
            x = self.token_embeddings(x)
        seq = x.shape[1]
        mask, positions = causal_mask(seq, device=x.device), torch.arange(seq, device=x.device)
        for layer in self.layers:
            x = layer(x, mask=mask, positions=positions)
        if self.lm_head is not None:
            x = self.lm_head(self.ln_final(x))
        return x


def split_transformer(model: nn.Module, num_stages: int) -> list[LMStage]:
    """Cut a `TransformerLM` into `num_stages` stages of consecutive blocks (as even as possible).

    The first stage also embeds, the last also applies the final norm and the output layer. A tied
    output layer would need its gradient summed across the first and last stage: refused.
    """
    layers = len(model.layers)
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or not 1 <= num_stages <= layers:
        raise ValueError(f"num_stages must be an int in [1, num_layers={layers}], got {num_stages!r}")
    if num_stages > 1 and model.lm_head.weight is model.token_embeddings.weight:
        raise ValueError("tied embeddings span the first and last stage; untie them to pipeline this model")
    bounds = [round(i * layers / num_stages) for i in range(num_stages + 1)]
    return [LMStage(model, bounds[i], bounds[i + 1], i == 0, i == num_stages - 1) for i in range(num_stages)]


# ----------------------------------------------------------------------------------------------
# Running a schedule
# ----------------------------------------------------------------------------------------------


@dataclass
class PipelineResult:
    """What one rank saw: the loss (last stage; None elsewhere), its events, its peak stash (in
    micro-batch activations of one chunk), and the point-to-point messages and bytes it sent."""

    loss: float | None
    events: list[Event] = field(default_factory=list)
    peak_stashed: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0


def _tag(to_stage: int, microbatch: int, kind: str, num_microbatches: int) -> int:
    """A message's tag: the virtual stage it goes to, forward or backward, which micro-batch.

    With p = 2 ranks and interleaving, activations and gradients both travel from rank 0 to rank 1
    and would otherwise be matched in the order sent, not the order received.
    """
    return (2 * to_stage + (kind == "B")) * num_microbatches + microbatch


def _isend(tensor: Tensor, dst: int, tag: int) -> Any:
    p2p._check(tensor, dst, "isend")  # the counted send of `p2p`, with a tag
    p2p._record(tensor, dst)
    return dist.isend(tensor, dst, tag=tag)


def _recv(tensor: Tensor, src: int, tag: int) -> None:
    p2p._check(tensor, src, "recv")
    dist.recv(tensor, src, tag=tag)


def run_pipeline(
    stage: nn.Module | list[nn.Module],
    schedule: str,
    num_microbatches: int,
    activation_shape: tuple[int, ...],
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> PipelineResult:
    """Run one training step's forwards and backwards of a pipeline; call on every rank at once.

    Rank r of the world runs `stage` (stage r of p = world size). Gradients accumulate in the
    stage's parameters as for the mean of the micro-batches' losses, i.e. the full batch's mean
    loss when the micro-batches are equal: each micro-batch's loss is divided by m.

    Args:
        stage: this rank's stage; for "interleaved", the list of its v >= 2 chunks, chunk c being
            virtual stage c p + r of p v (e.g. `split_transformer(model, p * v)[r::p]`).
        schedule: "gpipe", "1f1b" or "interleaved".
        num_microbatches: m; must divide the batch (and, interleaved, be a multiple of p).
        activation_shape: the shape of one micro-batch's activation between two stages.
        inputs: the whole batch, on the first stage (ignored elsewhere).
        targets: the whole batch's targets, on the last stage (ignored elsewhere).
        loss_fn: loss(output, targets) of one micro-batch, on the last stage.
        dtype: the activations' dtype (they are made on the device of the stage's parameters).
    """
    if schedule not in SCHEDULE_NAMES:
        raise ValueError(f"schedule must be one of {SCHEDULE_NAMES}, got {schedule!r}")
    rank, p = p2p.rank_and_world()
    if schedule == "interleaved":
        if isinstance(stage, nn.Module) or len(stage) < 2:
            raise ValueError("the interleaved schedule needs this rank's chunks as a list of >= 2 modules")
        if p < 2:
            raise ValueError("the interleaved schedule needs at least 2 ranks")
        chunks = list(stage)
        order = interleaved_order(p, num_microbatches, rank, len(chunks))
    else:
        if not isinstance(stage, nn.Module):
            raise ValueError(f"schedule {schedule!r} runs one stage per rank: pass a module, got {type(stage).__name__}")
        chunks = [stage]
        order = [(kind, i, 0) for kind, i in SCHEDULES[schedule](p, num_microbatches, rank)]
    v = len(chunks)
    has_first, has_last = rank == 0, rank == p - 1  # chunk 0 of rank 0 and chunk v - 1 of rank p - 1
    if has_first and (inputs is None or inputs.shape[0] % num_microbatches):
        raise ValueError(f"the first stage needs inputs whose batch is divisible by num_microbatches={num_microbatches}")
    if has_last and (targets is None or loss_fn is None or targets.shape[0] % num_microbatches):
        raise ValueError("the last stage needs targets (batch divisible by num_microbatches) and a loss_fn")
    params = [q for chunk in chunks for q in chunk.parameters()]
    device = params[0].device if params else torch.device("cpu")
    micro_in = inputs.to(device).chunk(num_microbatches) if has_first else None
    micro_tg = targets.to(device).chunk(num_microbatches) if has_last else None
    stash: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}  # (chunk, micro-batch) -> (its input, its output or loss)
    sends: list[tuple[Any, Tensor]] = []  # pending isends, with their buffers kept alive
    events: list[Event] = []
    total, peak = 0.0, 0
    dist.barrier()
    with p2p.count_traffic() as traffic:
        t0 = time.monotonic()
        for kind, i, c in order:
            virtual = c * p + rank  # this chunk's place among the p v stages
            first, last = virtual == 0, virtual == p * v - 1
            if kind == "F":
                if first:
                    x = micro_in[i]
                else:
                    x = torch.empty(activation_shape, dtype=dtype, device=device)
                    _recv(x, (rank - 1) % p, _tag(virtual, i, "F", num_microbatches))
                    x.requires_grad_()
                start = time.monotonic() - t0
                out = chunks[c](x)
                if last:
                    out = loss_fn(out, micro_tg[i]) / num_microbatches
                    total += float(out.detach())
                end = time.monotonic() - t0
                if not last:
                    buffer = out.detach().contiguous()
                    sends.append((_isend(buffer, (rank + 1) % p, _tag(virtual + 1, i, "F", num_microbatches)), buffer))
                stash[c, i] = (x, out)
                peak = max(peak, len(stash))
            else:
                x, out = stash.pop((c, i))
                if last:
                    grad = None
                else:
                    grad = torch.empty(activation_shape, dtype=dtype, device=device)
                    _recv(grad, (rank + 1) % p, _tag(virtual, i, "B", num_microbatches))
                start = time.monotonic() - t0
                out.backward(grad)
                end = time.monotonic() - t0
                if not first:
                    buffer = x.grad.contiguous()
                    sends.append((_isend(buffer, (rank - 1) % p, _tag(virtual - 1, i, "B", num_microbatches)), buffer))
            events.append(Event(rank, i, kind, start, end, c))
        for work, _ in sends:
            work.wait()
    return PipelineResult(total if has_last else None, events, peak, traffic.messages_sent, traffic.bytes_sent)


def measure_schedule(schedule: str, num_microbatches: int, forward_s: float, backward_s: float, width: int = 8,
                     num_chunks: int = 2) -> PipelineResult:
    """Run `schedule` on slept stages of equal cost (`timed_stage`), one per rank; this rank's result.

    For notebooks and benchmarks (the function travels to the ranks by name): the timeline, from
    which `bubble_fraction` measures the bubble, and the peak stash. "interleaved" gives each rank
    `num_chunks` chunks of forward_s / v and backward_s / v each, so that a rank's work is the same
    as with one stage.
    """
    rank, p = p2p.rank_and_world()
    device = device_for_rank(rank, dist.get_backend())  # its GPU under NCCL
    if schedule == "interleaved":
        v = num_chunks
        stage: nn.Module | list[nn.Module] = [timed_stage(width, forward_s / v, backward_s / v, seed=c * p + rank).to(device)
                                              for c in range(v)]
    else:
        stage = timed_stage(width, forward_s, backward_s, seed=rank).to(device)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(num_microbatches, width, generator=g), torch.randn(num_microbatches, width, generator=g)
    return run_pipeline(stage, schedule, num_microbatches, (1, width), inputs=x, targets=y, loss_fn=nn.functional.mse_loss)


def schedule_report(num_microbatches: int, num_chunks: int, forward_s: float, backward_s: float) -> list[dict[str, Any]]:
    """Run GPipe, 1F1B and interleaved 1F1B on slept stages (`measure_schedule`) on every rank; the
    same list on every rank: per schedule its measured bubble, the formula's, the stashes and the
    messages of every rank (the timelines are gathered with `all_gather_object`)."""
    p = p2p.rank_and_world()[1]
    measure_schedule("interleaved", p * 2, 0.0, 0.0, num_chunks=2)  # warm-up: the first message between two ranks is slow
    rows = []
    for name in SCHEDULE_NAMES:
        result = measure_schedule(name, num_microbatches, forward_s, backward_s, num_chunks=num_chunks)
        gathered: list[Any] = [None] * p
        dist.all_gather_object(gathered, (result.events, result.peak_stashed, result.messages_sent))
        v = num_chunks if name == "interleaved" else 1
        rows.append(dict(schedule=name, bubble=bubble_fraction([e for events, _, _ in gathered for e in events], p),
                         formula=bubble_formula(p, num_microbatches, v), peaks=[g[1] for g in gathered],
                         messages=sum(g[2] for g in gathered)))
    return rows


def main(argv: list[str] | None = None) -> int:
    """The three schedules on slept stages, measured bubble against (p - 1) / (v m + p - 1).

        python -m reference.distributed.pipeline --world-size 4 --microbatches 8 --chunks 2
        torchrun --standalone --nproc_per_node=4 -m reference.distributed.pipeline   # NCCL with GPUs, else gloo
    """
    parser = argparse.ArgumentParser(description="GPipe, 1F1B and interleaved 1F1B: measured bubble against the formula")
    parser.add_argument("--world-size", type=int, default=4, help="ranks to start when not run by torchrun")
    parser.add_argument("--microbatches", type=int, default=8, help="m (a multiple of the world size)")
    parser.add_argument("--chunks", type=int, default=2, help="v, chunks per rank of the interleaved schedule")
    parser.add_argument("--forward-ms", type=float, default=40.0,
                        help="a stage's forward per micro-batch; the backward takes twice as long")
    args = parser.parse_args(argv)
    f, b = args.forward_ms / 1e3, 2 * args.forward_ms / 1e3
    if "RANK" in os.environ:  # started by torchrun: this process is one rank
        rank, world = init_from_env()
        rows = schedule_report(args.microbatches, args.chunks, f, b)
        backend = dist.get_backend()
        dist.destroy_process_group()
        if rank:
            return 0
    else:
        world, backend = args.world_size, "gloo"
        with Cluster(world, backend="gloo", timeout=600) as cluster:
            rows = cluster.run(schedule_report, args.microbatches, args.chunks, f, b)[0]
    print(f"p={world} ranks ({backend}), m={args.microbatches}, v={args.chunks}, "
          f"{args.forward_ms:g} ms forward / {2 * args.forward_ms:g} ms backward")
    print(f"{'schedule':<12}{'bubble':>8}{'formula':>9}{'messages':>10}  peak stash by rank")
    for row in rows:
        print(f"{row['schedule']:<12}{row['bubble']:>8.3f}{row['formula']:>9.3f}{row['messages']:>10}  {row['peaks']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
