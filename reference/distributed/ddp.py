"""Data parallelism from scratch: every rank holds the whole model and averages its gradients.

Survey section 2.4(a), data parallel, and the data-parallel side of 2.4(d), overlapping. Each of n
ranks runs forward and backward on its own 1/n of the global batch; averaging the gradients over
the ranks gives exactly the gradient of the global batch (the loss is a mean), so after the same
optimizer step every replica holds the same parameters as one process that saw the whole batch.

Two wrappers, both `nn.Module`s whose forward is the wrapped module's:

    model = DDPBucketed(TransformerLM(...), bucket_size_mb=1.0)   # or DDPIndividualParameters(...)
    loss = loss_fn(model(x_local), y_local)
    loss.backward()                                   # all-reduces start while backward runs
    model.finish_gradient_synchronization()           # wait for them: p.grad is the global average
    optimizer.step()

- `DDPIndividualParameters`: one asynchronous all-reduce per parameter, launched by a hook the
  moment that parameter's gradient has been accumulated (`register_post_accumulate_grad_hook`), so
  communication of the last layers overlaps the backward pass of the first ones.
- `DDPBucketed`: gradients packed, in reverse order of `module.parameters()` (roughly the order in
  which backward produces them), into buckets of about `bucket_size_mb`; one all-reduce per bucket
  once all its gradients are ready. Fewer, larger messages pay the per-message latency (alpha in
  Chapter 7's alpha-beta model) fewer times (Li et al., 2020, "PyTorch Distributed", section 3.2).

Both broadcast rank 0's parameters and buffers at construction. A tied parameter (the same tensor
in two places, e.g. a tied embedding) is one parameter: `module.parameters()` yields it once and
its hook fires once, after both uses have been accumulated. A parameter with `requires_grad=False`
is left alone; a trainable parameter that gets no gradient in a step (unused on every rank) keeps
`grad = None`, and a bucket that waits for it is reduced by `finish_gradient_synchronization()`.
A parameter used on some ranks but not others is outside the contract (as in torch's DDP without
`find_unused_parameters`).
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
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if not dist.is_initialized():
            raise ValueError("DDP needs an initialised process group (use reference.distributed.launch)")
        self.module = module
        self.world_size = dist.get_world_size()
        self._pending: list[tuple[Any, Tensor]] = []
        broadcast_module(module)
        for p in module.parameters():  # each tensor once, tied ones included
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._reduce)

    def _reduce(self, p: Tensor) -> None:
        """Hook: this gradient is final for this backward; start averaging it over the ranks."""
        p.grad.div_(self.world_size)  # sum of g / n over the ranks = the mean
        self._pending.append((volume.all_reduce(p.grad, async_op=True), p.grad))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def finish_gradient_synchronization(self) -> None:
        """Wait for every all-reduce started in this backward; afterwards each p.grad is the average."""
        for handle, _ in self._pending:
            handle.wait()
        self._pending.clear()


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
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if bucket_size_mb is not None and (isinstance(bucket_size_mb, bool) or not isinstance(bucket_size_mb, int | float)):
            raise TypeError(f"bucket_size_mb must be a number or None, got {type(bucket_size_mb).__name__}")
        if bucket_size_mb is not None and not bucket_size_mb > 0:
            raise ValueError(f"bucket_size_mb must be > 0 or None, got {bucket_size_mb!r}")
        if not dist.is_initialized():
            raise ValueError("DDP needs an initialised process group (use reference.distributed.launch)")
        self.module = module
        self.world_size = dist.get_world_size()
        self.bucket_size_mb = bucket_size_mb
        broadcast_module(module)
        limit = float("inf") if bucket_size_mb is None else bucket_size_mb * 2**20
        self.buckets: list[_Bucket] = []
        current: list[Tensor] = []
        size = 0
        for p in reversed([p for p in module.parameters() if p.requires_grad]):
            nbytes = p.numel() * p.element_size()
            if current and (size + nbytes > limit or p.dtype != current[0].dtype or p.device != current[0].device):
                self.buckets.append(_Bucket(current))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            self.buckets.append(_Bucket(current))
        self._bucket_of: dict[int, _Bucket] = {}
        for bucket in self.buckets:
            for p in bucket.params:
                self._bucket_of[id(p)] = bucket
                p.register_post_accumulate_grad_hook(self._ready)

    def _ready(self, p: Tensor) -> None:
        """Hook: one more gradient of its bucket is final; launch the bucket's all-reduce when it is full."""
        bucket = self._bucket_of[id(p)]
        bucket.ready += 1
        if bucket.ready == len(bucket.params):
            self._launch(bucket)

    def _launch(self, bucket: _Bucket) -> None:
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                 for p in bucket.params]
        bucket.buffer = torch.cat(grads).div_(self.world_size)
        bucket.handle = volume.all_reduce(bucket.buffer, async_op=True)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def finish_gradient_synchronization(self) -> None:
        """Reduce the buckets still waiting (parameters without a gradient), wait for all, unpack.

        Afterwards each p.grad that exists is the average over the ranks; the counters are reset
        for the next backward.
        """
        for bucket in self.buckets:  # the same buckets, in the same order, on every rank
            if bucket.handle is None and 0 < bucket.ready:
                self._launch(bucket)
        for bucket in self.buckets:
            if bucket.handle is not None:
                bucket.handle.wait()
                offset = 0
                for p in bucket.params:
                    if p.grad is not None:
                        p.grad.copy_(bucket.buffer[offset : offset + p.numel()].view_as(p.grad))
                    offset += p.numel()
            bucket.ready, bucket.handle, bucket.buffer = 0, None, None
