"""What a fine-tuning method costs: trainable parameters, optimizer state, training memory.

The memory of a training step is (Rajbhandari et al., 2020, ZeRO, section 3 count it the same way)

    weights (stored: 4 bytes a float32 weight, ~0.5 byte a 4-bit one)
  + gradients (one per trainable parameter)
  + optimizer state (AdamW: two moments per trainable parameter, 8 bytes in float32)
  + activations saved for the backward pass (depend on batch, sequence length, and method).

LoRA cuts the second and third terms to almost nothing; QLoRA cuts the first by ~7x. On the CPU
the step's memory is counted exactly from the tensors themselves (the saved activations through
`torch.autograd.graph.saved_tensors_hooks`, each storage counted once); on a CUDA device the
allocator's peak (`torch.cuda.max_memory_allocated`) is reported as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight counts once; quantized weights count as parameters of the total."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    total += sum(m.in_features * m.out_features for m in model.modules() if hasattr(m, "storage_bytes"))
    return trainable, total


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the stored weights: parameters (a tied one once) and buffers (quantized codes, scales)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen and not t.is_meta:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: exp_avg and exp_avg_sq per parameter)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor))


def adamw_state_bytes(model: nn.Module) -> int:
    """What AdamW's state will take before any step: two float32-sized moments per trainable element."""
    return sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def training_step_memory(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Run one training step (loss, backward, optimizer step) and count its memory in bytes.

    Returns:
        {"weights", "gradients", "optimizer", "activations" (saved for backward, each storage once),
         "total" (their sum), and "cuda_peak" on a CUDA device (allocator's peak during the step)}.
    """
    device = next(model.parameters()).device
    saved: dict[tuple[Any, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        if not t.is_meta and t.device.type != "meta":
            storage = t.untyped_storage()
            saved[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model)
    loss.backward()
    optimizer.step()
    params = {id(p): p for p in model.parameters()}
    weight_ptrs = {p.untyped_storage().data_ptr() for p in params.values()} | {b.untyped_storage().data_ptr() for b in model.buffers()}
    activations = sum(n for (ptr, _), n in saved.items() if ptr not in weight_ptrs)  # the weights are counted once, as weights
    result = {
        "weights": weight_bytes(model),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in params.values() if p.grad is not None),
        "optimizer": optimizer_state_bytes(optimizer),
        "activations": activations,
    }
    result["total"] = sum(result.values())
    if device.type == "cuda":
        result["cuda_peak"] = torch.cuda.max_memory_allocated(device)
    optimizer.zero_grad(set_to_none=True)
    return result
