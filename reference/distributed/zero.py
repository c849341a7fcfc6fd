"""ZeRO: the Zero Redundancy Optimizer's three stages, and offloading the optimizer to the host.

Survey section 2.4(a) and (c); Rajbhandari et al., 2020, "ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models", section 5; Ren et al., 2021, "ZeRO-Offload".

Plain data parallelism keeps n identical copies of everything a step needs. With Ψ parameters,
2-byte parameters and gradients and K bytes of optimizer state per parameter (K = 12 for
mixed-precision Adam: an fp32 master copy, momentum and variance), each rank holds (2 + 2 + K) Ψ
bytes. ZeRO cuts each piece into n shards, one per rank:

    stage 1 (P_os)       optimizer state sharded          4 Ψ + K Ψ / n
    stage 2 (P_os+g)     ... and the gradients            2 Ψ + (2 + K) Ψ / n
    stage 3 (P_os+g+p)   ... and the parameters           (2 + 2 + K) Ψ / n

The course trains in float32 with no master copy, so its own numbers are 4-byte parameters and
gradients and K = 8 (Adam's two moments): 16 Ψ, 8 Ψ + 8 Ψ / n, 4 Ψ + 12 Ψ / n and 16 Ψ / n.

Sharding is flat: the parameters of one unit (a bucket, or a layer in stage 3) are laid end to end
in one vector, padded with zeros to a multiple of n, and rank r owns elements [r S, (r + 1) S) with
S = ceil(numel / n). Padding costs at most n - 1 elements per unit.

    optimizer = ZeroOptimizer(model.parameters(), AdamW, lr=1e-3, stage=2)   # stages 1 and 2
    loss.backward(); optimizer.step()        # reduce-scatter, step on the shard, all-gather

    model = ShardedModule(model)                               # stage 3: parameters sharded too
    optimizer = AdamW(model.parameters(), lr=1e-3)             # its parameters are this rank's shards
    loss = loss_fn(model(x)); loss.backward(); optimizer.step()

Communication per rank and step (ring collectives, Ψ elements): data parallel's all-reduce and
stages 1 and 2 (a reduce-scatter of the gradients and an all-gather of the parameters) each send
2 (n - 1) / n Ψ elements; stage 3 gathers the parameters twice (forward and backward) and sends
3 (n - 1) / n Ψ: 1.5 times as much (paper, section 7).
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
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in numels):
        raise ValueError(f"numels must be non-negative ints, got {numels!r}")
    offsets, total = [], 0
    for n in numels:
        offsets.append(total)
        total += n
    shard = max(1, math.ceil(total / world_size))
    return offsets, shard, shard * world_size


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
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    n = world_size
    params = param_bytes * psi / (n if stage >= 3 else 1)
    grads = grad_bytes * psi / (n if stage >= 2 else 1)
    states = k * psi / (n if stage >= 1 else 1)
    return {"parameters": params, "gradients": grads, "optimizer_states": states, "total": params + grads + states}


def zero_communication_bytes(stage: int, psi: float, world_size: int, element_bytes: float = 4) -> float:
    """Bytes one rank sends per training step under ZeRO with ring collectives (paper, section 7).

    Stage 0 (all-reduce) and stages 1 and 2 (reduce-scatter + all-gather): 2 (n - 1) / n Ψ elements;
    stage 3 (all-gather in forward and in backward, reduce-scatter): 3 (n - 1) / n Ψ.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    passes = 3 if stage == 3 else 2
    return passes * (world_size - 1) / world_size * psi * element_bytes


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
        if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
            raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2 (stage 3 is ShardedModule), got {stage!r}")
        if bucket_size_mb is not None and not bucket_size_mb > 0:
            raise ValueError(f"bucket_size_mb must be > 0 or None, got {bucket_size_mb!r}")
        if not dist.is_initialized():
            raise ValueError("ZeroOptimizer needs an initialised process group (use reference.distributed.launch)")
        self.stage, self.offload, self.bucket_size_mb = stage, offload, bucket_size_mb
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.optimizer_cls, self.optimizer_defaults = optimizer_cls, defaults
        self.units: list[tuple[int, _Unit]] = []  # (group index, unit)
        self.inner: torch.optim.Optimizer | None = None
        super().__init__(params, defaults)
        self.inner = optimizer_cls(self._inner_groups(range(len(self.param_groups))), **defaults)

    def _inner_groups(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        groups = []
        for i in indices:
            options = {k: v for k, v in self.param_groups[i].items() if k != "params"}
            groups.append({**options, "params": [u.shard for g, u in self.units if g == i]})
        return groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as `torch.optim.Optimizer` does) and shard its trainable parameters."""
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        trainable = [p for p in self.param_groups[index]["params"] if p.requires_grad]
        limit = float("inf") if self.bucket_size_mb is None else self.bucket_size_mb * 2**20
        bucket: list[Tensor] = []
        size = 0
        with torch.no_grad():
            for p in trainable:  # every rank starts from rank 0's values
                volume.broadcast(p.data, 0)
        for p in reversed(trainable):
            nbytes = p.numel() * p.element_size()
            if bucket and (size + nbytes > limit or p.dtype != bucket[0].dtype or p.device != bucket[0].device):
                self._add_unit(index, bucket)
                bucket, size = [], 0
            bucket.append(p)
            size += nbytes
        if bucket:
            self._add_unit(index, bucket)
        if self.inner is not None:
            self.inner.add_param_group(self._inner_groups([index])[0])

    def _add_unit(self, group: int, params: list[Tensor]) -> None:
        unit = _Unit(params, self.rank, self.world_size, self.offload)
        self.units.append((group, unit))
        if self.stage == 2:
            for p in params:
                p.register_post_accumulate_grad_hook(lambda p, unit=unit: self._grad_ready(unit))

    def _grad_ready(self, unit: _Unit) -> None:
        """Stage 2 hook: once all of a bucket's gradients are in, reduce-scatter them and free them."""
        unit.ready += 1
        if unit.ready == len(unit.params):
            self._reduce_scatter(unit)

    def _reduce_scatter(self, unit: _Unit) -> None:
        """Average the unit's gradients over the ranks into its shard's gradient; free the full ones."""
        grad_in = unit.flat_grad(self.world_size)
        grad_out = torch.empty(unit.shard_size, dtype=unit.flat.dtype, device=unit.flat.device)
        volume.reduce_scatter(grad_out, grad_in)
        for p in unit.params:
            p.grad = None  # the full gradient is no longer needed: only the shard's survives
        grad = grad_out.to("cpu") if self.offload else grad_out  # ZeRO-Offload: gradients go to the host
        unit.shard.grad = grad if unit.shard.grad is None else unit.shard.grad.add_(grad)
        unit.reduced = True

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Average the gradients into this rank's shard, update the shard, all-gather the parameters."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):  # a changed lr (a schedule) reaches the inner optimizer
            for key, value in group.items():
                if key != "params":
                    self.inner.param_groups[index][key] = value
        for _, unit in self.units:  # the same units in the same order on every rank
            if not unit.reduced and any(p.grad is not None for p in unit.params):
                self._reduce_scatter(unit)
        self.inner.step()  # on this rank's shards only (on the host when offloading)
        for _, unit in self.units:
            if unit.reduced:
                own = unit.shard.detach().to(unit.flat.device).clone()
                volume.all_gather(unit.flat, own)
            unit.ready, unit.reduced = 0, False
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the model's gradients and the shards' gradients."""
        super().zero_grad(set_to_none=set_to_none)
        for _, unit in self.units:
            unit.shard.grad = None

    def host_tensors(self) -> list[Tensor]:
        """What lives on the host when offloading: the shards' master copies, gradients and optimizer state."""
        if not self.offload:
            return []
        out = []
        for _, unit in self.units:
            out.append(unit.shard)
            if unit.shard.grad is not None:
                out.append(unit.shard.grad)
        return out + [t for s in self.inner.state.values() for t in s.values() if isinstance(t, Tensor)]


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
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if not dist.is_initialized():
            raise ValueError("ShardedModule needs an initialised process group (use reference.distributed.launch)")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        broadcast_module(module)
        self.module = module
        name_of = {id(p): name for name, p in module.named_parameters()}  # a tied weight: its first name
        self._names = [name for name, p in module.named_parameters() if p.requires_grad]
        layers = [m for ml in module.modules() if isinstance(ml, nn.ModuleList) for m in ml]
        owner_of_module = {id(m): i for i, layer in enumerate(layers) for m in layer.modules()}
        root = len(layers)
        places_of: dict[int, list[tuple[nn.Module, str, int]]] = {}  # owner -> (module, name, param id)
        owners_of_param: dict[int, set[int]] = {}
        tensors: dict[int, Tensor] = {}
        for sub in module.modules():
            owner = owner_of_module.get(id(sub), root)
            for name, p in list(sub._parameters.items()):
                if p is None or not p.requires_grad:
                    continue
                tensors[id(p)] = p
                owners_of_param.setdefault(id(p), set()).add(owner)
                places_of.setdefault(owner, []).append((sub, name, id(p)))
        self._units: list[dict[str, Any]] = []
        shards = []
        for index in range(root + 1):
            params: list[Tensor] = []
            places = []
            for i in (range(root + 1) if index == root else [index]):
                for sub, name, pid in places_of.get(i, []):
                    home = root if len(owners_of_param[pid]) > 1 else next(iter(owners_of_param[pid]))
                    if home != index:
                        continue  # a weight used by two layers (or a layer and the root) belongs to the root
                    if all(q is not tensors[pid] for q in params):
                        params.append(tensors[pid])
                    places.append((sub, name, next(j for j, q in enumerate(params) if q is tensors[pid])))
            owner = module if index == root else layers[index]
            if not params:
                continue
            offsets, shard_size, padded = flat_shard_layout([p.numel() for p in params], self.world_size)
            flat = torch.zeros(padded, dtype=params[0].dtype, device=params[0].device)
            with torch.no_grad():
                for p, offset in zip(params, offsets):
                    flat[offset : offset + p.numel()].copy_(p.detach().reshape(-1))
            shard = nn.Parameter(flat[self.rank * shard_size : (self.rank + 1) * shard_size].clone())
            for sub, name, _ in places:
                del sub._parameters[name]
            unit = {"owner": owner, "root": owner is module, "places": places, "shapes": [p.shape for p in params], "names": [name_of[id(p)] for p in params],
                    "offsets": offsets, "shard_size": shard_size, "padded": padded, "shard": shard, "full": None}
            self._units.append(unit)
            shards.append(shard)
            self._bind(unit, flat.detach())  # attributes exist before the first forward
            if owner is not module:
                owner.register_forward_pre_hook(lambda m, args, unit=unit: self._gather(unit))
                owner.register_forward_hook(lambda m, args, out, unit=unit: self._after_forward(unit, out))
        self.shards = nn.ParameterList(shards)
        for unit in self._units:
            unit["full"] = None  # the initial values are in the shards now
            self._bind(unit, None)

    def _bind(self, unit: dict[str, Any], full: Tensor | None) -> None:
        """Point every place of the unit at its slice of `full` (or at an empty tensor when freed)."""
        for sub, name, i in unit["places"]:
            offset, shape = unit["offsets"][i], unit["shapes"][i]
            if full is None:
                value = torch.empty(0, dtype=unit["shard"].dtype, device=unit["shard"].device)
            else:
                value = full[offset : offset + math.prod(shape)].view(shape)
            setattr(sub, name, value)  # a plain attribute now: the module reads it like its parameter

    def _gather(self, unit: dict[str, Any]) -> None:
        """All-gather the unit's full parameters into a fresh leaf and bind them."""
        shard = unit["shard"]
        full = torch.empty(unit["padded"], dtype=shard.dtype, device=shard.device)
        with torch.no_grad():
            volume.all_gather(full, shard.detach())
        if torch.is_grad_enabled():
            full.requires_grad_(True)
            full.register_post_accumulate_grad_hook(lambda full, unit=unit: self._reduce_grad(unit, full))
        unit["full"] = full
        self._bind(unit, full)

    def _after_forward(self, unit: dict[str, Any], out: Any) -> Any:
        """Free the unit's full parameters; when backward reaches this unit's output, gather them again."""
        full = unit["full"]
        if full is None:
            return out
        full.untyped_storage().resize_(0)
        tensors = [out] if isinstance(out, Tensor) else [t for t in (out if isinstance(out, tuple | list) else ()) if isinstance(t, Tensor)]
        if full.requires_grad and any(t.requires_grad for t in tensors):
            fired = [False]

            def regather(grad: Tensor, unit=unit, full=full, fired=fired) -> None:
                if not fired[0]:
                    fired[0] = True
                    self._regather(unit, full)

            for t in tensors:
                if t.requires_grad:
                    t.register_hook(regather)
        else:
            unit["full"] = None
        return out

    def _regather(self, unit: dict[str, Any], full: Tensor) -> None:
        """Backward is about to need the unit's parameters: refill the storage autograd saved."""
        storage = full.untyped_storage()
        storage.resize_(full.numel() * full.element_size())
        # write through a fresh tensor on the same storage: it has its own version counter, so
        # autograd's saved views of `full` do not see an in-place change (the values are the same)
        target = torch.empty(0, dtype=full.dtype, device=full.device).set_(storage, 0, full.shape)
        with torch.no_grad():
            volume.all_gather(target, unit["shard"].detach())

    def _reduce_grad(self, unit: dict[str, Any], full: Tensor) -> None:
        """The unit's full gradient is complete: reduce-scatter it into the shard's gradient, free it all."""
        grad = full.grad.reshape(-1).div_(self.world_size)
        out = torch.empty(unit["shard_size"], dtype=grad.dtype, device=grad.device)
        volume.reduce_scatter(out, grad)
        shard = unit["shard"]
        shard.grad = out if shard.grad is None else shard.grad.add_(out)
        full.grad = None
        full.untyped_storage().resize_(0)
        unit["full"] = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        root = next((u for u in self._units if u["root"]), None)
        if root is not None:
            self._gather(root)
        out = self.module(*args, **kwargs)
        if root is not None and not (root["full"] is not None and root["full"].requires_grad):
            root["full"] = None
            self._bind(root, None)
        return out

    def gathered(self) -> list[Tensor]:
        """The units' full parameters that are gathered right now (what stage 3 holds beyond its shards)."""
        return [u["full"] for u in self._units if u["full"] is not None and u["full"].untyped_storage().nbytes() > 0]

    def full_parameters(self) -> dict[str, Tensor]:
        """{name: full value} of every trainable parameter, gathered from the shards (in the wrapped
        module's `named_parameters()` order; for checks and checkpoints, not for training)."""
        found = {}
        for unit in self._units:
            full = torch.empty(unit["padded"], dtype=unit["shard"].dtype, device=unit["shard"].device)
            volume.all_gather(full, unit["shard"].detach())
            for name, offset, shape in zip(unit["names"], unit["offsets"], unit["shapes"]):
                found[name] = full[offset : offset + math.prod(shape)].view(shape).clone()
        return {name: found[name] for name in self._names}


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
    seen: set[int] = set()
    inner = getattr(optimizer, "inner", None) or optimizer  # a ZeroOptimizer's state is its inner optimizer's
    host = optimizer.host_tensors() if hasattr(optimizer, "host_tensors") else []
    host_ids = {id(t) for t in host}
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    gathered = model.gathered() if hasattr(model, "gathered") else []  # stage 3: full layers held now
    params = _storage_bytes(trainable + frozen + gathered, seen)
    shard_params = [p for g in inner.param_groups for p in g["params"]]
    grads = _storage_bytes([p.grad for p in trainable + shard_params if p.grad is not None], seen)
    states = [t for s in inner.state.values() for t in s.values() if isinstance(t, Tensor) and t.dim() > 0]
    masters = [p for p in shard_params if id(p) in host_ids]
    opt = _storage_bytes(states + masters, seen)
    host_bytes = sum(t.numel() * t.element_size() for t in host if t.dim() > 0)
    return MemoryReport(parameters=params, gradients=grads, optimizer_states=opt, host=host_bytes)
