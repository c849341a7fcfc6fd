"""Exercises for Chapter 8: ZeRO stages 1, 2 and 3, offloading, and their memory and communication.

Fill in each body that raises NotImplementedError; the docstrings say what to build. Communicate
through `reference.distributed.volume` (all_reduce, reduce_scatter, all_gather, broadcast), which
forwards to torch.distributed and counts the bytes for the tests. The formulas are in Rajbhandari
et al. (2020), sections 5 and 7. Grade with `llm-course grade 8`. Mirrors
`reference/distributed/zero.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from reference.distributed import volume
from reference.distributed.ddp import broadcast_module


def flat_shard_layout(numels: list[int], world_size: int) -> tuple[list[int], int, int]:
    """Where each tensor of a unit sits in its flat vector, and how the vector is cut into n shards.

    Args:
        numels: element counts of the unit's tensors, in order.
        world_size: number of ranks n (>= 1).

    Returns:
        (offsets, shard_size, padded): tensor i occupies [offsets[i], offsets[i] + numels[i]);
        shard_size S = ceil(total / n) (at least 1), padded = n * S >= total; rank r owns
        [r S, (r + 1) S).
    """
    # Hint: offsets are running sums; the shard size rounds up, never down; what is the smallest shard?
    raise NotImplementedError("Exercise 8.3: flat shards with padding")


def zero_memory_bytes(stage: int, psi: float, world_size: int, k: float = 12, param_bytes: float = 2,
                      grad_bytes: float = 2) -> dict[str, float]:
    """Bytes per rank of parameters, gradients and optimizer states under ZeRO (paper, figure 1).

    Args:
        stage: 0 (plain data parallel), 1, 2 or 3.
        psi: number of parameters Ψ.
        world_size: data-parallel degree n.
        k: bytes of optimizer state per parameter (12 for mixed-precision Adam, 8 for fp32 Adam).
        param_bytes, grad_bytes: bytes per parameter and per gradient element (2 in fp16, 4 in fp32).

    Returns:
        {"parameters", "gradients", "optimizer_states", "total"} in bytes.
    """
    # Hint: each stage divides one more of the three parts by n; write the baseline first.
    raise NotImplementedError("Exercise 8.4: ZeRO memory per rank")


def zero_communication_bytes(stage: int, psi: float, world_size: int, element_bytes: float = 4) -> float:
    """Bytes one rank sends per training step under ZeRO with ring collectives (paper, section 7).

    Stage 0 (all-reduce) and stages 1 and 2 (reduce-scatter + all-gather): 2 (n - 1) / n Ψ elements;
    stage 3 (all-gather in forward and in backward, reduce-scatter): 3 (n - 1) / n Ψ.
    """
    # Hint: count how many ring passes of (n - 1) / n of the parameters each stage makes.
    raise NotImplementedError("Exercise 8.5: ZeRO communication per rank")


class _Unit:
    """A bucket of parameters (stages 1 and 2) sharing one padded flat buffer."""

    def __init__(self, params: list[Tensor], rank: int, world: int, offload: bool) -> None:
        self.params = params
        self.offsets, self.shard_size, padded = flat_shard_layout([p.numel() for p in params], world)
        first = params[0]
        self.flat = torch.zeros(padded, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for p, offset in zip(params, self.offsets):
                self.flat[offset : offset + p.numel()].copy_(p.detach().reshape(-1))
                p.data = self.flat[offset : offset + p.numel()].view_as(p)  # the model reads the flat buffer
        own = self.flat[rank * self.shard_size : (rank + 1) * self.shard_size]
        # the optimizer's parameter: a view of this rank's slice, or (offload) a copy on the host
        self.shard = nn.Parameter(own.detach().to("cpu", copy=True) if offload else own.detach())
        self.ready = 0
        self.reduced = False  # this step's gradient is already in the shard

    def flat_grad(self, world: int) -> Tensor:
        """The unit's local gradients end to end (zeros for missing ones and the padding), divided by n."""
        g = torch.zeros_like(self.flat)
        for p, offset in zip(self.params, self.offsets):
            if p.grad is not None:
                g[offset : offset + p.numel()] = p.grad.reshape(-1)
        return g.div_(world)


class ZeroOptimizer(torch.optim.Optimizer):
    """ZeRO stage 1 or 2 around any optimizer: each rank keeps and updates only its shard.

    Each parameter group's trainable parameters are cut into buckets (reverse order, about
    `bucket_size_mb` each; None: one bucket per group) whose flat padded buffers back the model's
    parameters. `step()` averages the gradients with a reduce-scatter (so the model must NOT also
    be wrapped in DDP), runs `optimizer_cls` on this rank's shard, and all-gathers the updated
    shards into every rank's parameters. Stage 1 reduce-scatters in `step()` from full local
    gradients; stage 2 runs each bucket's reduce-scatter from a backward hook as soon as the
    bucket is complete (blocking that hook: backward resumes when it is done) and frees the full
    gradients at once, so only the 1/n shard of the gradient outlives backward. With `offload=True` the shard's master copy, its gradient, the optimizer
    state and the step live on the host (ZeRO-Offload; on a CPU-only machine host and device are
    the same memory, but the copies and the path are the same).

    A trainable parameter without a gradient in a bucket that has some is updated with a zero
    gradient (as flat sharding in DeepSpeed and FSDP does); a bucket with no gradient is skipped.

    Args:
        params: parameters or parameter-group dicts (their options override `defaults`).
        optimizer_cls: the optimizer to run on the shards, e.g. `AdamW`.
        stage: 1 or 2.
        bucket_size_mb: bucket size in MiB, or None.
        offload: keep optimizer state and step on the host.
        **defaults: the optimizer's hyper-parameters (lr, weight_decay, ...).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], optimizer_cls: type[torch.optim.Optimizer], *,
                 stage: int = 1, bucket_size_mb: float | None = None, offload: bool = False, **defaults: Any) -> None:
        # Hint: call super().__init__ (it calls add_param_group for each group) and build the inner optimizer on
        # this rank's shards only. Back each bucket's parameters by one flat padded buffer so that an all-gather
        # writes straight into them; average with a reduce-scatter; in stage 2 do it from a hook and drop the
        # full gradients.
        raise NotImplementedError("Exercise 8.6: ZeRO stages 1 and 2 (and offloading)")

    def _inner_groups(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        raise NotImplementedError("Exercise 8.6: ZeRO stages 1 and 2 (and offloading)")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as `torch.optim.Optimizer` does) and shard its trainable parameters."""
        raise NotImplementedError("Exercise 8.6: ZeRO stages 1 and 2 (and offloading)")

    def _add_unit(self, group: int, params: list[Tensor]) -> None:
        raise NotImplementedError("Exercise 8.6: ZeRO stages 1 and 2 (and offloading)")

    def _grad_ready(self, unit: _Unit) -> None:
        """Stage 2 hook: once all of a bucket's gradients are in, reduce-scatter them and free them."""
        raise NotImplementedError("Exercise 8.6: ZeRO stages 1 and 2 (and offloading)")

    def _reduce_scatter(self, unit: _Unit) -> None:
        """Average the unit's gradients over the ranks into its shard's gradient; free the full ones."""
        raise NotImplementedError("Exercise 8.6: ZeRO stages 1 and 2 (and offloading)")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Average the gradients into this rank's shard, update the shard, all-gather the parameters."""
        raise NotImplementedError("Exercise 8.6: ZeRO stages 1 and 2 (and offloading)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the model's gradients and the shards' gradients."""
        raise NotImplementedError("Exercise 8.6: ZeRO stages 1 and 2 (and offloading)")

    def host_tensors(self) -> list[Tensor]:
        """What lives on the host when offloading: the shards' master copies, gradients and optimizer state."""
        raise NotImplementedError("Exercise 8.6: ZeRO stages 1 and 2 (and offloading)")


class ShardedModule(nn.Module):
    """ZeRO stage 3: the module's trainable parameters sharded flat, unit by unit.

    Units: every element of every `nn.ModuleList` in `module` (the transformer's layers), and the
    root for the rest (embeddings, final norm, output head; a tied weight belongs to the root).
    Each unit keeps only its 1/n shard (`self.shards`, the module's only trainable parameters). A
    unit's full parameters are all-gathered just before its forward and freed right after it
    (their storage resized to zero, so what autograd saved costs nothing), gathered again just
    before its backward, and after its backward the full gradient is reduce-scattered into the
    shard's gradient and freed. The root's parameters stay gathered from its forward to its backward.

    Frozen parameters and buffers stay whole on every rank (broadcast from rank 0 at the start).

    Args:
        module: the model; rank 0's values are the starting point.
    """

    def __init__(self, module: nn.Module) -> None:
        # Hint: units are the layers of every ModuleList plus the root; a weight used in two units belongs to
        # the root. Replace the parameters by plain attributes, gather into a leaf that requires grad before
        # forward, free its storage after (resize, don't reallocate: autograd saved views of it), refill it when
        # backward reaches the unit's output, and reduce-scatter its gradient from a hook.
        raise NotImplementedError("Exercise 8.7: ZeRO stage 3 (sharded parameters)")

    def _bind(self, unit: dict[str, Any], full: Tensor | None) -> None:
        """Point every place of the unit at its slice of `full` (or at an empty tensor when freed)."""
        raise NotImplementedError("Exercise 8.7: ZeRO stage 3 (sharded parameters)")

    def _gather(self, unit: dict[str, Any]) -> None:
        """All-gather the unit's full parameters into a fresh leaf and bind them."""
        raise NotImplementedError("Exercise 8.7: ZeRO stage 3 (sharded parameters)")

    def _after_forward(self, unit: dict[str, Any], out: Any) -> Any:
        """Free the unit's full parameters; when backward reaches this unit's output, gather them again."""
        raise NotImplementedError("Exercise 8.7: ZeRO stage 3 (sharded parameters)")

    def _regather(self, unit: dict[str, Any], full: Tensor) -> None:
        """Backward is about to need the unit's parameters: refill the storage autograd saved."""
        raise NotImplementedError("Exercise 8.7: ZeRO stage 3 (sharded parameters)")

    def _reduce_grad(self, unit: dict[str, Any], full: Tensor) -> None:
        """The unit's full gradient is complete: reduce-scatter it into the shard's gradient, free it all."""
        raise NotImplementedError("Exercise 8.7: ZeRO stage 3 (sharded parameters)")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Exercise 8.7: ZeRO stage 3 (sharded parameters)")

    def gathered(self) -> list[Tensor]:
        """The units' full parameters that are gathered right now (what stage 3 holds beyond its shards)."""
        raise NotImplementedError("Exercise 8.7: ZeRO stage 3 (sharded parameters)")

    def full_parameters(self) -> dict[str, Tensor]:
        """{name: full value} of every trainable parameter, gathered from the shards (in the wrapped
        module's `named_parameters()` order; for checks and checkpoints, not for training)."""
        raise NotImplementedError("Exercise 8.7: ZeRO stage 3 (sharded parameters)")


@dataclass
class MemoryReport:
    """Bytes one rank holds, by kind (each storage counted once, padding included)."""

    parameters: int
    gradients: int
    optimizer_states: int
    host: int = 0  # of the above, what lives on the host when offloading

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states


def _storage_bytes(tensors: Iterable[Tensor], seen: set[int]) -> int:
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def memory_per_rank(model: nn.Module, optimizer: torch.optim.Optimizer) -> MemoryReport:
    """Bytes of parameters, gradients and optimizer states that this rank holds right now.

    Counted from the tensors themselves: every storage reachable from the model's parameters
    (with ZeroOptimizer, the flat padded buffers behind them; with ShardedModule, the shards and the
    units gathered at the moment), the
    gradients of those and of the optimizer's shards, and every tensor in the optimizer's state
    (the inner optimizer's for ZeroOptimizer; offloaded master copies count as optimizer state).
    """
    # Hint: count storages, not tensors: views and tied weights share one; look inside the inner optimizer of a
    # ZeroOptimizer.
    raise NotImplementedError("Exercise 8.8: memory per rank, counted from the tensors")
