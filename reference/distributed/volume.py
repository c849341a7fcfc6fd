"""Collectives that count their bytes: the communication volume of data parallelism and ZeRO.

Survey section 2.4(a). Data-parallel DDP and the ZeRO stages (`ddp.py`, `zero.py`) issue their
collectives through this module, which forwards them to `torch.distributed` and, inside
`count_collectives()`, records each one with the bytes this rank sends under the bandwidth-optimal
ring algorithms of Chapter 7 (Rajbhandari et al., 2020, section 7; Patarasuk and Yuan, 2009):

    all-reduce of S bytes on n ranks       2 (n - 1) / n * S     (a reduce-scatter, then an all-gather)
    reduce-scatter / all-gather of S bytes   (n - 1) / n * S     (S the size of the full, unsharded tensor)
    broadcast of S bytes (pipelined chain)   (n - 1) / n * S on average (n - 1 ranks forward S each)

    with count_collectives() as log:
        loss.backward(); model.finish_gradient_synchronization()
    log.bytes_sent, log.calls            # [(op, full size in bytes), ...]

`use_course_collectives()` sends everything through Chapter 7's ring collectives instead, built from
counted point-to-point messages (`reference.distributed.p2p`), so the formula above can be checked
against bytes that really left the rank (`p2p.count_traffic`). They are synchronous: an
"asynchronous" call then returns a finished handle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch.distributed as dist
from torch import Tensor


@dataclass
class CollectiveLog:
    """The collectives this rank issued inside `count_collectives()` and the bytes it sent for them."""

    world_size: int = 1
    calls: list[tuple[str, int]] = field(default_factory=list)  # (op, bytes of the full tensor)
    bytes_sent: float = 0.0

    def bytes_by_op(self) -> dict[str, float]:
        """Bytes sent per kind of collective."""
        out: dict[str, float] = {}
        for op, size in self.calls:
            out[op] = out.get(op, 0.0) + ring_bytes_sent(op, size, self.world_size)
        return out


_logs: list[CollectiveLog] = []
_course: list[bool] = []


def ring_bytes_sent(op: str, size: int, world_size: int) -> float:
    """Bytes one rank sends for a collective on a tensor of `size` bytes (the full, unsharded size)."""
    n = world_size
    if op == "all_reduce":
        return 2 * (n - 1) / n * size
    if op in ("reduce_scatter", "all_gather"):
        return (n - 1) / n * size
    if op == "broadcast":
        return (n - 1) / n * size  # a pipelined chain: n - 1 of the n ranks forward S, so (n - 1) / n S on average
    raise ValueError(f"op must be all_reduce, reduce_scatter, all_gather or broadcast, got {op!r}")


@contextlib.contextmanager
def count_collectives() -> Iterator[CollectiveLog]:
    """Record every collective issued through this module inside the block (logs nest)."""
    log = CollectiveLog(world_size=dist.get_world_size() if dist.is_initialized() else 1)
    _logs.append(log)
    try:
        yield log
    finally:
        _logs.remove(log)


@contextlib.contextmanager
def use_course_collectives() -> Iterator[None]:
    """Inside the block, run the collectives with Chapter 7's counted ring algorithms (synchronous)."""
    _course.append(True)
    try:
        yield
    finally:
        _course.pop()


def _record(op: str, tensor: Tensor) -> None:
    size = tensor.numel() * tensor.element_size()
    for log in _logs:
        log.calls.append((op, size))
        log.bytes_sent += ring_bytes_sent(op, size, log.world_size)


class _Done:
    """The handle of a collective that has already finished."""

    def wait(self) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def all_reduce(tensor: Tensor, async_op: bool = False):
    """Sum `tensor` over the ranks, in place; with `async_op` returns a handle to `.wait()` on."""
    _record("all_reduce", tensor)
    if _course:
        from reference.distributed.collectives import all_reduce_ring

        all_reduce_ring(tensor)
        return _Done() if async_op else None
    return dist.all_reduce(tensor, async_op=async_op)


def reduce_scatter(output: Tensor, flat: Tensor, async_op: bool = False):
    """Sum the ranks' `flat` (n * len(output) elements) and keep this rank's 1/n slice in `output`."""
    _record("reduce_scatter", flat)
    if _course:
        from reference.distributed.collectives import reduce_scatter as course_reduce_scatter

        course_reduce_scatter(output, list(flat.chunk(dist.get_world_size())), "sum")
        return _Done() if async_op else None
    return getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)(output, flat, async_op=async_op)


def all_gather(flat: Tensor, shard: Tensor, async_op: bool = False):
    """Concatenate every rank's `shard` into `flat` (n * len(shard) elements), rank order."""
    _record("all_gather", flat)
    if _course:
        from reference.distributed.collectives import all_gather as course_all_gather

        pieces = list(flat.chunk(dist.get_world_size()))
        course_all_gather(pieces, shard.contiguous())
        return _Done() if async_op else None
    return getattr(dist, "all_gather_single", dist.all_gather_into_tensor)(flat, shard, async_op=async_op)


def broadcast(tensor: Tensor, src: int = 0, async_op: bool = False):
    """Copy rank `src`'s `tensor` to every rank, in place."""
    _record("broadcast", tensor)
    if _course:
        from reference.distributed.collectives import broadcast as course_broadcast

        course_broadcast(tensor, src)
        return _Done() if async_op else None
    return dist.broadcast(tensor, src, async_op=async_op)
