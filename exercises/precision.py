"""Exercises for Chapter 10, floating-point formats and mixed-precision training: a format's range
and precision, decoding a bit pattern, rounding into a format, the loss scaler, the mixed-precision
step with float32 master weights, and the memory of mixed-precision Adam.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 10`. Mirrors `reference/precision.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from reference.precision import (  # noqa: F401  (the formats and helpers the exercises use)
    FORMATS,
    Decoded,
    FloatFormat,
    FormatLimits,
    MasterWeights,
    StepResult,
    _format,
    encode,
    grads_below,
    representable_values,
)
from reference.validation import check_int


def format_limits(fmt: FloatFormat | str) -> FormatLimits:
    """Range and precision of a format, computed from its bit counts (and checked against `torch.finfo`).

    bias = 2^(e-1) - 1; the largest normal exponent is (2^e - 2) - bias for IEEE formats (the
    all-ones field is inf/NaN) and (2^e - 1) - bias for E4M3, whose largest fraction is 1.110b
    (1.111b at the top exponent is NaN). eps = 2^-m, smallest normal 2^(1 - bias), smallest
    subnormal 2^(1 - bias - m).

    Args:
        fmt: a `FloatFormat` or a name of `FORMATS` ("fp32", "fp16", "bf16", "fp8_e5m2", "fp8_e4m3").

    Returns:
        A `FormatLimits`.
    """
    # Hint: bias = 2^(e-1) - 1. Which exponent field is the largest finite one, and is the top fraction all ones in E4M3?
    raise NotImplementedError("Exercise 10.1: range and precision of a float format")


def decode(bits: int, fmt: FloatFormat | str) -> Decoded:
    """The number that a bit pattern of `fmt` stands for (IEEE 754 layout: sign, exponent, fraction).

    normal (0 < E < all ones):  (-1)^s * (1 + f / 2^m) * 2^(E - bias)
    subnormal (E = 0, f != 0):  (-1)^s * (f / 2^m) * 2^(1 - bias)
    zero (E = 0, f = 0):        +-0.0
    E all ones: inf (f = 0) or NaN in IEEE formats; in E4M3 a normal number unless f is all ones (NaN).

    Args:
        bits: the pattern as a non-negative int below 2^fmt.bits (the sign is the top bit).
        fmt: a `FloatFormat` or a name of `FORMATS`.

    Returns:
        A `Decoded`; `value` is a Python float (exact: every format here fits in a float64).
    """
    # Hint: shift and mask out the three fields; the exponent field 0 has no implicit leading 1 and the exponent of the smallest normal.
    raise NotImplementedError("Exercise 10.2: decode a bit pattern")


def round_to_format(x: Tensor, fmt: FloatFormat | str) -> Tensor:
    """Round every element of `x` to the nearest value of `fmt`, ties to even; the same as
    `x.to(fmt.dtype).to(x.dtype)` for float32 input.

    With p = max(floor(log2|x|), 1 - bias) (subnormals share the smallest normal's quantum), the
    spacing of `fmt` near x is q = 2^(p - m), and the result is round_half_even(x / q) * q. A result
    above the largest finite value becomes +-inf in IEEE formats (what lies within half a gap of
    max still rounds down to max) and saturates to +-max in E4M3, whose infinities map to +-max too;
    NaN stays NaN; the sign of a zero is kept.

    Args:
        x: a float32 or float64 tensor of any shape.
        fmt: a `FloatFormat` or a name of `FORMATS`.

    Returns:
        A tensor of x's shape and dtype holding only values of `fmt`.
    """
    # Hint: torch.frexp gives the exponent; below the smallest normal the gap stays the same; torch.round already rounds half to even; torch.ldexp scales by powers of two exactly.
    raise NotImplementedError("Exercise 10.3: round into a format (ties to even)")


def adam_memory_bytes(num_parameters: int, *, half_bytes: int = 2, master_weights: bool = True) -> dict[str, int]:
    """Bytes of model state per mixed-precision Adam run, by part (Rajbhandari et al., 2020, ZeRO, section 3.1).

    Half-precision weights and gradients (`half_bytes` each per parameter), and in float32 (4 bytes
    each) the master weights (when `master_weights`) and Adam's two moments m and v:
    2 + 2 + 4 + 4 + 4 = 16 bytes per parameter. Activations are not counted.

    Args:
        num_parameters: how many parameters (>= 0).
        half_bytes: bytes of the low-precision copy (2 for fp16/bf16, 1 for fp8).
        master_weights: whether a float32 master copy is kept.

    Returns:
        {"weights", "gradients", "master_weights", "adam_m", "adam_v", "total"} -> bytes.
    """
    raise NotImplementedError("Exercise 10.6: memory of mixed-precision Adam")


class LossScaler:
    """Static or dynamic loss scaling, step for step the same as `torch.amp.GradScaler`.

    Use: `scaler.scale(loss).backward()`, then `scaler.step(optimizer)` (unscales the gradients
    unless `unscale_` was called, and skips the update when a gradient is inf or NaN), then
    `scaler.update()`. Dynamic: an overflow multiplies the scale by `backoff_factor` and restarts
    the count of good steps; after `growth_interval` consecutive good steps the scale is multiplied by
    `growth_factor` (unless that overflows float32) and the count restarts. Static (`dynamic=False`):
    the scale never changes, but steps with non-finite gradients are still skipped. The scale is
    kept in float32, like GradScaler's.

    Args:
        init_scale: the first scale (> 0).
        dynamic: whether the scale adapts.
        growth_factor: > 1.
        backoff_factor: in (0, 1).
        growth_interval: good steps before growing (>= 1).
    """

    def __init__(self, init_scale: float = 2.0**16, *, dynamic: bool = True, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        """Check the settings; no step has been seen yet."""
        raise NotImplementedError("Exercise 10.4: static and dynamic loss scaler")

    def get_scale(self) -> float:
        """The current scale, a Python float."""
        raise NotImplementedError("Exercise 10.4: static and dynamic loss scaler")

    def scale(self, loss: Tensor) -> Tensor:
        """loss * scale, in the loss's dtype (call `.backward()` on it)."""
        raise NotImplementedError("Exercise 10.4: static and dynamic loss scaler")

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide the gradients of the optimizer's parameters by the scale, in place; return True if any
        gradient is inf or NaN (then the coming `step` skips). Call at most once per step."""
        raise NotImplementedError("Exercise 10.4: static and dynamic loss scaler")

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale (if not done yet), then `optimizer.step()` unless a gradient overflowed; True if it stepped."""
        raise NotImplementedError("Exercise 10.4: static and dynamic loss scaler")

    def update(self) -> None:
        """Adapt the scale to this step's verdict (dynamic only) and get ready for the next step."""
        # Hint: an overflow backs off and restarts the count; growth comes after growth_interval good steps in a row, and restarts the count too.
        raise NotImplementedError("Exercise 10.4: static and dynamic loss scaler")


def mixed_precision_step(master: MasterWeights, optimizer: torch.optim.Optimizer, loss_fn: Callable[[nn.Module], Tensor],
                         scaler: LossScaler | None = None) -> StepResult:
    """One mixed-precision training step (Micikevicius et al., 2018, figure 1).

    1. forward and backward on the half-precision model, the loss multiplied by the scale;
    2. the half gradients copied into float32 `.grad` of the master weights (the model's are cleared);
    3. the scaler unscales them there, in float32 (in half precision tiny gradients would flush to
       zero again), and skips the update if any is inf or NaN; otherwise the optimizer, built over
       `master.params`, updates the float32 weights;
    4. the master weights are rounded back into the model, the scaler updates its scale and the
       master gradients are cleared.
    Without a scaler (bf16), the loss is not scaled and every step is taken.

    Args:
        master: the model and its float32 master weights.
        optimizer: an optimizer over `master.params`.
        loss_fn: model -> scalar loss (a float32 loss is best: the course's cross_entropy computes in float32).
        scaler: a `LossScaler`, or None.

    Returns:
        A `StepResult`.
    """
    # Hint: where do the gradients have to be divided by the scale so that the small ones survive: in half precision or in float32?
    raise NotImplementedError("Exercise 10.5: mixed-precision step with fp32 master weights")


def _course_tokens(tokenizer: Any, length: int) -> Tensor:
    """Token ids of text that ships with the course (the source of Chapter 6's numerics module), repeated to `length`."""
    from pathlib import Path

    text = (Path(__file__).parent / "training" / "numerics.py").read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    return ids.repeat(length // ids.numel() + 1)[:length]


def compare_training(steps: int = 30, batch_size: int = 4, seq_len: int = 64, lr: float = 1e-3, seed: int = 0,
                     init_scale: float = 2.0**16, growth_interval: int = 10,
                     runs: tuple[str, ...] = ("fp32", "fp16_master", "bf16_autocast", "fp16_pure")) -> dict[str, Any]:
    """Fine-tune llama-tiny for `steps` steps four ways from the same start and batches, on the CPU.

    "fp32": plain float32. "fp16_master": fp16 model, float32 master weights, dynamic `LossScaler`
    (`mixed_precision_step`). "bf16_autocast": float32 weights, forward and backward under
    `torch.autocast("cpu", dtype=torch.bfloat16)`. "fp16_pure": the fp16 model updated in fp16 (no
    master copy, same scaler): the lost-update failure. `runs` picks which. Returns their loss curves,
    the scale trajectory and skipped steps of fp16_master, and the final losses (mean of the last 5 steps).
    """
    from reference.pretrained import load_pretrained
    from reference.training.numerics import AdamW, cross_entropy

    check_int("steps", steps, 1)
    _, tokenizer = load_pretrained("llama-tiny")
    tokens = _course_tokens(tokenizer, steps * batch_size * (seq_len + 1))
    batches = tokens.view(steps, batch_size, seq_len + 1)

    def loss_of(model: nn.Module, batch: Tensor) -> Tensor:
        return cross_entropy(model(batch[:, :-1]), batch[:, 1:])

    unknown = sorted(set(runs) - {"fp32", "fp16_master", "bf16_autocast", "fp16_pure"})
    if unknown:
        raise ValueError(f"unknown runs {unknown}")
    results: dict[str, Any] = {}
    for name in runs:
        torch.manual_seed(seed)
        model, _ = load_pretrained("llama-tiny")
        model.train()
        losses, scales, skipped = [], [], []
        if name == "fp16_master":
            master = MasterWeights(model, torch.float16)
            optimizer = AdamW(master.params, lr=lr, weight_decay=0.0)
            scaler = LossScaler(init_scale, growth_interval=growth_interval)
            for i, batch in enumerate(batches):
                result = mixed_precision_step(master, optimizer, lambda m, b=batch: loss_of(m, b), scaler)
                losses.append(result.loss)
                scales.append(result.scale)
                if not result.stepped:
                    skipped.append(i)
        else:
            if name == "fp16_pure":
                model.half()
                scaler = LossScaler(init_scale, growth_interval=growth_interval)
            optimizer = AdamW(model.parameters(), lr=lr, weight_decay=0.0, eps=1e-4 if name == "fp16_pure" else 1e-8)
            for batch in batches:
                if name == "bf16_autocast":
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        loss = loss_of(model, batch)
                    loss.backward()
                    optimizer.step()
                elif name == "fp16_pure":
                    loss = loss_of(model, batch)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss = loss_of(model, batch)
                    loss.backward()
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
        results[name] = {"losses": [round(v, 5) for v in losses]}
        if name == "fp16_master":
            results[name] |= {"scales": scales, "skipped_steps": skipped}
    return {
        "config": {"model": "llama-tiny", "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "seed": seed,
                   "init_scale": init_scale, "growth_interval": growth_interval, "optimizer": "reference AdamW, weight_decay 0"},
        "runs": results,
        "final_loss": {name: round(sum(r["losses"][-5:]) / len(r["losses"][-5:]), 5) for name, r in results.items()},
    }
