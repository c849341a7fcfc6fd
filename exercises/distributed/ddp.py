"""Exercises for Chapter 8: data parallelism from scratch (DDP).

Fill in each body that raises NotImplementedError; the docstrings say what to build. Communicate
through `reference.distributed.volume` (all_reduce, broadcast, ...), which forwards to
torch.distributed and counts the bytes for the tests. Grade with `llm-course grade 8`. Mirrors
`reference/distributed/ddp.py`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from reference.distributed import volume


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's `module`, in place."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            volume.broadcast(tensor.data, src)


class DDPIndividualParameters(nn.Module):
    """Data parallel with one asynchronous all-reduce per parameter, launched as its gradient is ready.

    Args:
        module: the model, the same architecture on every rank (rank 0's values win).
    """

    def __init__(self, module: nn.Module) -> None:
        # Hint: broadcast rank 0's module first; register a hook that fires once a parameter's gradient is final
        # (torch has one for exactly that) and starts an asynchronous all-reduce of the averaged gradient;
        # remember the handles.
        raise NotImplementedError("Exercise 8.1: DDP with one all-reduce per parameter")

    def _reduce(self, p: Tensor) -> None:
        """Hook: this gradient is final for this backward; start averaging it over the ranks."""
        raise NotImplementedError("Exercise 8.1: DDP with one all-reduce per parameter")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Exercise 8.1: DDP with one all-reduce per parameter")

    def finish_gradient_synchronization(self) -> None:
        """Wait for every all-reduce started in this backward; afterwards each p.grad is the average."""
        raise NotImplementedError("Exercise 8.1: DDP with one all-reduce per parameter")


class _Bucket:
    """Parameters whose gradients travel together in one flat buffer."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.ready = 0  # gradients accumulated so far in this backward
        self.handle: Any = None
        self.buffer: Tensor | None = None


class DDPBucketed(nn.Module):
    """Data parallel with gradients packed into buckets, each all-reduced as soon as it is full.

    Args:
        module: the model, the same architecture on every rank (rank 0's values win).
        bucket_size_mb: about how many MiB (2^20 bytes) of gradients one bucket holds; a parameter
            larger than that gets a bucket of its own. None: a single bucket for all parameters.
    """

    def __init__(self, module: nn.Module, bucket_size_mb: float | None = 25.0) -> None:
        # Hint: group the trainable parameters into buckets in reverse order, closing a bucket before it would
        # exceed the size; count ready gradients per bucket and launch one flat all-reduce when the count is
        # full; unpack after waiting.
        raise NotImplementedError("Exercise 8.2: bucketed DDP")

    def _ready(self, p: Tensor) -> None:
        """Hook: one more gradient of its bucket is final; launch the bucket's all-reduce when it is full."""
        raise NotImplementedError("Exercise 8.2: bucketed DDP")

    def _launch(self, bucket: _Bucket) -> None:
        raise NotImplementedError("Exercise 8.2: bucketed DDP")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Exercise 8.2: bucketed DDP")

    def finish_gradient_synchronization(self) -> None:
        """Reduce the buckets still waiting (parameters without a gradient), wait for all, unpack.

        Afterwards each p.grad that exists is the average over the ranks; the counters are reset
        for the next backward.
        """
        raise NotImplementedError("Exercise 8.2: bucketed DDP")
