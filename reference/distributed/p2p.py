"""Point-to-point messages, counted: the only communication the course's collectives may use.

Survey section 2.4(a). Thin wrappers over `torch.distributed.send`, `recv`, `isend` and `irecv`
that add each message to the current `Traffic` counter, so a chapter can check that ring
all-reduce really sends 2 (n - 1) / n * S bytes per rank.

    with count_traffic() as traffic:
        all_reduce_ring(x)
    traffic.bytes_sent, traffic.messages_sent    # this rank's share
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class Traffic:
    """What this rank sent while the counter was active.

    `log`, when kept, lists each message as (destination rank, a copy of the data sent).
    """

    bytes_sent: int = 0
    messages_sent: int = 0
    log: list[tuple[int, Tensor]] | None = None


_counters: list[Traffic] = []


@contextlib.contextmanager
def count_traffic(keep_messages: bool = False) -> Iterator[Traffic]:
    """Count the bytes and messages this rank sends inside the `with` block (counters nest).

    Args:
        keep_messages: also keep a copy of every message in `Traffic.log` (for small demos).
    """
    traffic = Traffic(log=[] if keep_messages else None)
    _counters.append(traffic)
    try:
        yield traffic
    finally:
        _counters.remove(traffic)


def _record(tensor: Tensor, dst: int) -> None:
    for traffic in _counters:
        traffic.bytes_sent += tensor.numel() * tensor.element_size()
        traffic.messages_sent += 1
        if traffic.log is not None:
            traffic.log.append((dst, tensor.detach().clone()))


def rank_and_world() -> tuple[int, int]:
    """(this rank, world size) of the initialised process group; ValueError when there is none."""
    if not dist.is_initialized():
        raise ValueError("collectives need an initialised process group (use reference.distributed.launch)")
    return dist.get_rank(), dist.get_world_size()


def check_root(root: int, world: int, name: str) -> None:
    """Raise ValueError unless `root` is a rank of a group of `world` processes."""
    if not isinstance(root, int) or not 0 <= root < world:
        raise ValueError(f"{name} must be a rank in [0, {world}), got {root!r}")


def check_list(tensors: list[Tensor], world: int, name: str) -> None:
    """Raise ValueError unless `tensors` holds one tensor per rank."""
    if len(tensors) != world:
        raise ValueError(f"{name} must hold one tensor per rank ({world}), got {len(tensors)}")


def _check(tensor: Tensor, peer: int, what: str) -> None:
    if not tensor.is_contiguous():
        raise ValueError(f"{what} needs a contiguous tensor (call .contiguous() first), got strides {tensor.stride()}")
    world = dist.get_world_size()
    if not 0 <= peer < world or peer == dist.get_rank():
        raise ValueError(f"{what}: peer rank {peer} must be another rank in [0, {world})")


def send(tensor: Tensor, dst: int) -> None:
    """Send `tensor` to rank `dst`, blocking until it has been handed over."""
    _check(tensor, dst, "send")
    _record(tensor, dst)
    dist.send(tensor, dst)


def recv(tensor: Tensor, src: int) -> None:
    """Receive into `tensor` (whose shape and dtype must match the message) from rank `src`."""
    _check(tensor, src, "recv")
    dist.recv(tensor, src)


def isend(tensor: Tensor, dst: int) -> dist.Work:
    """Start sending `tensor` to `dst`; call `.wait()` on the result before reusing `tensor`."""
    _check(tensor, dst, "isend")
    _record(tensor, dst)
    return dist.isend(tensor, dst)


def irecv(tensor: Tensor, src: int) -> dist.Work:
    """Start receiving into `tensor` from `src`; call `.wait()` on the result before reading it."""
    _check(tensor, src, "irecv")
    return dist.irecv(tensor, src)


def exchange(send_tensor: Tensor, dst: int, recv_tensor: Tensor, src: int) -> None:
    """Send to `dst` and receive from `src` at the same time (no deadlock when every rank does it)."""
    requests = [isend(send_tensor, dst), irecv(recv_tensor, src)]
    for request in requests:
        request.wait()


REDUCE_OPS = ("sum", "product", "max", "min")


def combine_(accumulator: Tensor, incoming: Tensor, op: str = "sum") -> Tensor:
    """accumulator <- accumulator (op) incoming, in place; op is one of "sum", "product", "max", "min"."""
    if op == "sum":
        return accumulator.add_(incoming)
    if op == "product":
        return accumulator.mul_(incoming)
    if op == "max":
        return torch.maximum(accumulator, incoming, out=accumulator)
    if op == "min":
        return torch.minimum(accumulator, incoming, out=accumulator)
    raise ValueError(f"op must be one of {REDUCE_OPS}, got {op!r}")
