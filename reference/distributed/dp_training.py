"""A few training steps of a small language model under every data-parallel strategy of Chapter 8.

Run on every rank (`Cluster.run(train_steps, "ddp_bucketed", ...)`). Each rank takes its 1/n of
the same global batch; the function also trains one plain replica on the whole global batch
locally (no communication), so every call carries its own single-process oracle.

The model is the course's `TransformerLM` with a tied embedding (vocabulary 37, so no parameter
size divides evenly among 2 or 4 ranks), wrapped with one trainable parameter that never gets a
gradient and one frozen parameter (`requires_grad=False`) that the forward uses.

Strategies: "single" (no communication), "ddp_individual", "ddp_bucketed", "torch_ddp"
(`torch.nn.parallel.DistributedDataParallel`), and the ZeRO ones of `reference.distributed.zero`
added below them.
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


class SmallLM(nn.Module):
    """`TransformerLM` plus a parameter that gets no gradient and a frozen one the forward uses."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.lm = TransformerLM(**{**CONFIG, **config})
        self.unused = nn.Parameter(torch.randn(5))  # trainable, never reached by the loss
        self.frozen_scale = nn.Parameter(torch.ones(1) + 0.5 * torch.rand(1), requires_grad=False)

    def forward(self, ids: Tensor) -> Tensor:
        return self.lm(ids) * self.frozen_scale


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


def flat_parameters(model: nn.Module) -> Tensor:
    """Every parameter of the unwrapped model (tied ones once), flattened and concatenated."""
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _single(steps: int, global_batch: int, lr: float, seed: int) -> tuple[list[float], Tensor]:
    model = build_model(seed)
    optimizer = AdamW(param_groups(model), lr=lr)
    losses = []
    for batch in batches(steps, global_batch, seed + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, flat_parameters(model)


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
    model = build_model(seed + 1000 * rank)  # different on every rank: the wrapper must broadcast rank 0's
    if strategy == "ddp_individual":
        wrapped, sync = ddp.DDPIndividualParameters(model), True
    elif strategy == "ddp_bucketed":
        wrapped, sync = ddp.DDPBucketed(model, bucket_size_mb=bucket_size_mb), True
    elif strategy == "torch_ddp":
        wrapped, sync = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True), False
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    optimizer = AdamW(param_groups(model), lr=lr)
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
    out: dict[str, Any] = {"losses": [_mean_over_ranks(x) for x in losses], "params": flat_parameters(model), "seconds": seconds}
    if oracle:
        out["single_losses"], out["single_params"] = _single(steps, global_batch, lr, seed)
    return out
