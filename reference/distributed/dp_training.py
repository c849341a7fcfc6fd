"""A few training steps of a small language model under every data-parallel strategy of Chapter 8.

Run on every rank (`Cluster.run(train_steps, "ddp_bucketed", ...)`). Each rank takes its 1/n of
the same global batch; the function also trains one plain replica on the whole global batch
locally (no communication), so every call carries its own single-process oracle.

The model is the course's `TransformerLM` with a tied embedding (vocabulary 37, so no parameter
size divides evenly among 2 or 4 ranks), wrapped with one trainable parameter that never gets a
gradient and one frozen parameter (`requires_grad=False`) that the forward uses.

Strategies: "ddp_individual", "ddp_bucketed", "torch_ddp" (`torch.nn.parallel.DistributedDataParallel`),
"zero1", "zero2", "zero2_offload" (`ZeroOptimizer`), "zero3" (`ShardedModule`), and torch's own
"torch_zero1" (DDP + `ZeroRedundancyOptimizer`) and "fsdp2" (`fully_shard` on every layer and the root).
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from reference.models.llama import TransformerLM
from reference.training.numerics import AdamW, cross_entropy

CONFIG = dict(vocab_size=37, context_length=8, d_model=12, num_layers=2, num_heads=2, d_ff=20, tie_embeddings=True)


class BiasedLM(nn.Module):
    """`TransformerLM` (tied embedding) plus an output bias of vocab_size = 37 elements: 3,133
    parameters, a count no world size of 2 or 4 divides."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.lm = TransformerLM(**{**CONFIG, **config})
        self.logit_bias = nn.Parameter(0.1 * torch.randn(self.lm.vocab_size))

    def forward(self, ids: Tensor) -> Tensor:
        return self.lm(ids) + self.logit_bias


class SmallLM(BiasedLM):
    """`BiasedLM` plus a parameter that gets no gradient and a frozen one the forward uses."""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.unused = nn.Parameter(torch.randn(5))  # trainable, never reached by the loss
        self.frozen_scale = nn.Parameter(torch.ones(1) + 0.5 * torch.rand(1), requires_grad=False)

    def forward(self, ids: Tensor) -> Tensor:
        return super().forward(ids) * self.frozen_scale


def build_model(seed: int = 0, **config: Any) -> SmallLM:
    """The model of this module, initialised from `seed`."""
    torch.manual_seed(seed)
    return SmallLM(**config)


def batches(steps: int, global_batch: int, seed: int = 1, context_length: int = 8, vocab_size: int = 37) -> Tensor:
    """(steps, global_batch, context_length + 1) random token ids, the same on every rank."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (steps, global_batch, context_length + 1), generator=generator)


def param_groups(model: nn.Module, weight_decay: float = 0.1) -> list[dict[str, Any]]:
    """Two groups: matrices with weight decay, the rest (norm gains, vectors) without."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]


def loss_of(model: nn.Module, batch: Tensor) -> Tensor:
    """Mean next-token cross-entropy of `model` on a (batch, seq + 1) block of ids."""
    logits = model(batch[:, :-1])
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def flat_parameters(model: nn.Module, trainable_only: bool = True) -> Tensor:
    """The parameters of the unwrapped model (tied ones once, trainable ones only by default), flat."""
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters() if p.requires_grad or not trainable_only])


def _single(steps: int, global_batch: int, lr: float, seed: int, weight_decay: float) -> tuple[list[float], Tensor]:
    model = build_model(seed)
    optimizer = AdamW(param_groups(model, weight_decay), lr=lr)
    losses = []
    for batch in batches(steps, global_batch, seed + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, flat_parameters(model, trainable_only=True)


def _mean_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def train_steps(
    strategy: str,
    package: str = "reference",
    steps: int = 4,
    global_batch: int = 8,
    lr: float = 1e-2,
    seed: int = 0,
    bucket_size_mb: float | None = 0.002,
    oracle: bool = True,
) -> dict[str, Any]:
    """Train `steps` steps with `strategy` on this rank's share of each global batch.

    Returns {"losses": global mean loss per step, "params": the full parameters at the end (flat),
    "single_losses" and "single_params": the same from one local replica on the whole batch
    (when `oracle`), "seconds": wall time of the steps}.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    if global_batch % world:
        raise ValueError(f"global_batch ({global_batch}) must be divisible by the world size ({world})")
    local = global_batch // world
    ddp = importlib.import_module(f"{package}.distributed.ddp")
    zero = importlib.import_module(f"{package}.distributed.zero")
    # stage 3 shards whole layers flat, so one shard mixes matrices and gains: a single group; and
    # without weight decay a zero gradient (flat sharding's stand-in for a missing one) changes nothing
    weight_decay = 0.0 if strategy in ("zero3", "fsdp2") else 0.1
    model = build_model(seed + 1000 * rank)  # different on every rank: the wrapper must broadcast rank 0's
    optimizer = None
    sync = False
    if strategy in ("zero1", "zero2", "zero2_offload"):
        stage = 1 if strategy == "zero1" else 2
        wrapped = model
        ddp.broadcast_module(model)  # the optimizer broadcasts what it updates; the frozen scale and buffers are ours to sync
        optimizer = zero.ZeroOptimizer(param_groups(model, weight_decay), AdamW, stage=stage, lr=lr, bucket_size_mb=bucket_size_mb,
                                       offload=strategy.endswith("offload"))
    elif strategy == "torch_zero1":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        wrapped = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        optimizer = ZeroRedundancyOptimizer(param_groups(model)[0]["params"], optimizer_class=AdamW, lr=lr, weight_decay=0.1)
        optimizer.add_param_group(param_groups(model)[1])
    elif strategy == "zero3":
        wrapped = zero.ShardedModule(model)
        optimizer = AdamW(wrapped.parameters(), lr=lr, weight_decay=weight_decay)
    elif strategy == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(str(next(model.parameters()).device.type), (world,))
        ddp.broadcast_module(model)
        for layer in model.lm.layers:
            fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
        optimizer = AdamW(param_groups(model, weight_decay), lr=lr)
    elif strategy == "ddp_individual":
        wrapped, sync = ddp.DDPIndividualParameters(model), True
    elif strategy == "ddp_bucketed":
        wrapped, sync = ddp.DDPBucketed(model, bucket_size_mb=bucket_size_mb), True
    elif strategy == "torch_ddp":
        wrapped, sync = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True), False
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    if optimizer is None:
        optimizer = AdamW(param_groups(model, weight_decay), lr=lr)
    losses = []
    start = time.perf_counter()
    for batch in batches(steps, global_batch, seed + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(wrapped, batch[rank * local : (rank + 1) * local])
        loss.backward()
        if sync:
            wrapped.finish_gradient_synchronization()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    if strategy == "zero3":
        params = torch.cat([t.reshape(-1) for t in wrapped.full_parameters().values()])
    elif strategy == "fsdp2":
        params = torch.cat([p.full_tensor().detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    else:
        params = flat_parameters(model, trainable_only=True)
    out: dict[str, Any] = {"losses": [_mean_over_ranks(x) for x in losses], "params": params, "seconds": seconds}
    if oracle:
        out["single_losses"], out["single_params"] = _single(steps, global_batch, lr, seed, weight_decay)
    return out


def _plain_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BiasedLM()


def memory_and_traffic(strategy: str, package: str = "reference", global_batch: int = 8, seed: int = 0,
                       course_collectives: bool = False, memory_package: str = "reference") -> dict[str, Any]:
    """Bytes this rank holds after the backward of a second step, and what one step sends.

    The model is `BiasedLM` (every parameter gets a gradient), one parameter
    group, one bucket per group. Strategies: "ddp" (our bucketed DDP with plain AdamW: stage 0),
    "zero1", "zero2", "zero2_offload", "zero3". Returns {"memory": MemoryReport fields, "bytes_sent":
    per step by the formula of `volume`, "calls": the collectives of that step, "p2p_bytes": bytes
    really sent (only with `course_collectives`: Chapter 7's counted ring collectives), "psi",
    "unit_numels": the element counts of the sharding units (layers first, then the root, for stage 3)}.
    """
    import contextlib

    from reference.distributed import p2p, volume
    memory_per_rank = importlib.import_module(f"{memory_package}.distributed.zero").memory_per_rank

    ddp = importlib.import_module(f"{package}.distributed.ddp")
    zero = importlib.import_module(f"{package}.distributed.zero")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = global_batch // world
    model = _plain_model(seed + rank)
    psi = sum(p.numel() for p in model.parameters())
    layer_numels = [sum(p.numel() for p in layer.parameters()) for layer in model.lm.layers]
    unit_numels = [psi]
    if strategy == "ddp":
        wrapped = ddp.DDPBucketed(model, bucket_size_mb=None)
        optimizer = AdamW(model.parameters(), lr=1e-2)
    elif strategy in ("zero1", "zero2", "zero2_offload"):
        wrapped = model
        optimizer = zero.ZeroOptimizer(model.parameters(), AdamW, stage=1 if strategy == "zero1" else 2, lr=1e-2,
                                       offload=strategy.endswith("offload"))
    elif strategy == "zero3":
        wrapped = zero.ShardedModule(model)
        optimizer = AdamW(wrapped.parameters(), lr=1e-2)
        unit_numels = layer_numels + [psi - sum(layer_numels)]
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    data = batches(2, global_batch, seed + 1)
    out: dict[str, Any] = {"psi": psi, "unit_numels": unit_numels}
    for step, batch in enumerate(data):
        optimizer.zero_grad(set_to_none=True)
        counting = volume.count_collectives() if step == 1 else contextlib.nullcontext()
        course = volume.use_course_collectives() if step == 1 and course_collectives else contextlib.nullcontext()
        traffic = p2p.count_traffic() if step == 1 else contextlib.nullcontext()
        with counting as log, course, traffic as sent:
            loss = loss_of(wrapped, batch[rank * local : (rank + 1) * local])
            if step == 1:
                report = memory_per_rank(wrapped, optimizer)
                out["after_forward"] = {"parameters": report.parameters, "gradients": report.gradients,
                                        "optimizer_states": report.optimizer_states, "host": report.host}
            loss.backward()
            if strategy == "ddp":
                wrapped.finish_gradient_synchronization()
            if step == 1:
                report = memory_per_rank(wrapped, optimizer)
                out["memory"] = {"parameters": report.parameters, "gradients": report.gradients,
                                 "optimizer_states": report.optimizer_states, "host": report.host}
            optimizer.step()
        if step == 1:
            out["bytes_sent"], out["calls"] = log.bytes_sent, log.calls
            out["p2p_bytes"] = sent.bytes_sent if course_collectives else None
    return out


BENCH_STRATEGIES = ("torch_ddp", "ddp_individual", "ddp_bucketed", "zero1", "zero2", "zero2_offload", "zero3")


def time_strategies(config: dict[str, Any], global_batch: int = 8, rounds: int = 6, seed: int = 0,
                    strategies: tuple[str, ...] = BENCH_STRATEGIES, bucket_size_mb: float = 25.0) -> dict[str, list[float]]:
    """Seconds of one training step (forward, backward, gradient communication, AdamW) per strategy.

    Every strategy gets its own copy of the same `TransformerLM(**config)` in this process; they
    take turns step by step in a fresh random order each round (the same order on every rank), so
    load changes of a shared machine fall on all alike. The first round warms up and is dropped.
    Returns {strategy: [seconds per round]} (this rank's clock, after a barrier per step).
    """
    import random

    from reference.distributed import ddp, zero

    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    local = global_batch // world
    runs: dict[str, tuple[nn.Module, torch.optim.Optimizer, bool]] = {}
    for name in strategies:
        torch.manual_seed(seed)
        model = TransformerLM(**config).to(device)
        if name == "torch_ddp":
            runs[name] = (nn.parallel.DistributedDataParallel(model), AdamW(model.parameters(), lr=1e-3), False)
        elif name == "ddp_individual":
            runs[name] = (ddp.DDPIndividualParameters(model), AdamW(model.parameters(), lr=1e-3), True)
        elif name == "ddp_bucketed":
            runs[name] = (ddp.DDPBucketed(model, bucket_size_mb), AdamW(model.parameters(), lr=1e-3), True)
        elif name in ("zero1", "zero2", "zero2_offload"):
            opt = zero.ZeroOptimizer(model.parameters(), AdamW, stage=1 if name == "zero1" else 2, lr=1e-3,
                                     bucket_size_mb=bucket_size_mb, offload=name.endswith("offload"))
            runs[name] = (model, opt, False)
        elif name == "zero3":
            sharded = zero.ShardedModule(model)
            runs[name] = (sharded, AdamW(sharded.parameters(), lr=1e-3), False)
        else:
            raise ValueError(f"unknown strategy {name!r}")
    generator = torch.Generator().manual_seed(seed + 1)
    order = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in strategies}
    for r in range(rounds + 1):
        ids = torch.randint(0, config["vocab_size"], (global_batch, config["context_length"] + 1), generator=generator)
        batch = ids[rank * local : (rank + 1) * local].to(device)
        names = list(strategies)
        order.shuffle(names)
        for name in names:
            model, optimizer, sync = runs[name]
            dist.barrier()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_of(model, batch).backward()
            if sync:
                model.finish_gradient_synchronization()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dist.barrier()
            if r:
                times[name].append(time.perf_counter() - start)
    return times
