"""Floating-point formats and mixed-precision training: what each format holds, how a value is
rounded into it, loss scaling, and a training step with float32 master weights.

Survey section 2.4(b), "Mixed Precision Training". A binary floating-point number with e exponent
bits and m mantissa bits is (-1)^s * 1.f * 2^(E - bias) with bias = 2^(e-1) - 1 when its exponent
field E is not zero (normal), and (-1)^s * 0.f * 2^(1 - bias) when it is (subnormal; IEEE 754-2008).
fp32 is (8, 23), fp16 (5, 10), bf16 (8, 7; Kalamkar et al., 2019), and the two 8-bit formats of
Micikevicius et al., 2022, "FP8 Formats for Deep Learning": E5M2 (IEEE-like) and E4M3, which gives
up infinities to double its range (only S.1111.111 is NaN; PyTorch's `float8_e4m3fn`).

Mixed-precision training (Micikevicius et al., 2018, "Mixed Precision Training", figure 1): the
forward and backward passes run on a half-precision copy of the weights, the optimizer updates a
float32 master copy (an update 2^-11 times smaller than its weight vanishes in fp16), and the loss
is multiplied by a scale S before the backward pass so that small gradients do not flush to zero;
the gradients are divided by S in float32 before the update. The dynamic scaler halves S when a
gradient overflows (and skips that step) and doubles it after N steps without overflow, as
`torch.amp.GradScaler` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reference.validation import check_int

__all__ = [
    "FORMATS", "Decoded", "FloatFormat", "FormatLimits", "LossScaler", "MasterWeights", "StepResult", "adam_memory_bytes",
    "compare_training", "decode", "encode", "format_limits", "grads_below", "mixed_precision_step", "representable_values", "round_to_format",
]  # fmt: skip


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, `exponent_bits`, `mantissa_bits` (the stored fraction).

    `ieee` True: the all-ones exponent holds infinities (fraction 0) and NaNs, overflow rounds to
    infinity. False (fp8 E4M3 "fn", finite only): the all-ones exponent holds ordinary numbers except
    the all-ones fraction, which is NaN; out-of-range values saturate to +-max, as PyTorch's
    `float8_e4m3fn` conversion does.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    dtype: torch.dtype
    ieee: bool = True

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits


FORMATS: dict[str, FloatFormat] = {
    "fp32": FloatFormat("fp32", 8, 23, torch.float32),
    "fp16": FloatFormat("fp16", 5, 10, torch.float16),
    "bf16": FloatFormat("bf16", 8, 7, torch.bfloat16),
    "fp8_e5m2": FloatFormat("fp8_e5m2", 5, 2, torch.float8_e5m2),
    "fp8_e4m3": FloatFormat("fp8_e4m3", 4, 3, torch.float8_e4m3fn, ieee=False),
}
_INT_VIEW = {8: torch.uint8, 16: torch.int16, 32: torch.int32}


def _format(fmt: FloatFormat | str) -> FloatFormat:
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    raise ValueError(f"fmt must be a FloatFormat or one of {sorted(FORMATS)}, got {fmt!r}")


@dataclass(frozen=True)
class FormatLimits:
    """The numbers that describe a format's range and precision (all Python floats except the ints)."""

    bias: int  # exponent bias: stored field E means 2^(E - bias)
    min_exponent: int  # exponent of the smallest normal, 1 - bias
    max_exponent: int  # exponent of the largest finite number
    max: float  # largest finite value
    smallest_normal: float  # 2^(1 - bias), torch.finfo(...).tiny
    smallest_subnormal: float  # 2^(1 - bias - mantissa_bits)
    eps: float  # gap between 1 and the next number, 2^-mantissa_bits


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
    fmt = _format(fmt)
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    bias = 2 ** (e - 1) - 1
    if fmt.ieee:
        max_exponent = 2**e - 2 - bias
        top_fraction = 1 - 2.0**-m  # 1.111...1b - 1
    else:
        max_exponent = 2**e - 1 - bias
        top_fraction = 1 - 2.0 ** (1 - m)  # 1.11...10b - 1: the all-ones fraction is NaN
    return FormatLimits(
        bias=bias,
        min_exponent=1 - bias,
        max_exponent=max_exponent,
        max=(1 + top_fraction) * 2.0**max_exponent,
        smallest_normal=2.0 ** (1 - bias),
        smallest_subnormal=2.0 ** (1 - bias - m),
        eps=2.0**-m,
    )


@dataclass(frozen=True)
class Decoded:
    """A bit pattern taken apart: its three fields, what kind of number it is, and its value."""

    sign: int  # 0 or 1
    exponent_field: int  # the stored (biased) exponent E
    mantissa_field: int  # the stored fraction bits f, an int in [0, 2^m)
    kind: str  # "zero", "subnormal", "normal", "inf" or "nan"
    value: float


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
    fmt = _format(fmt)
    check_int("bits", bits, 0)
    if bits >= 2**fmt.bits:
        raise ValueError(f"bits must be below 2^{fmt.bits} for {fmt.name}, got {bits}")
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    bias = 2 ** (e - 1) - 1
    sign = bits >> (e + m)
    exponent = (bits >> m) & (2**e - 1)
    fraction = bits & (2**m - 1)
    signed = -1.0 if sign else 1.0
    if exponent == 2**e - 1 and (fmt.ieee or fraction == 2**m - 1):
        if fmt.ieee and fraction == 0:
            return Decoded(sign, exponent, fraction, "inf", signed * math.inf)
        return Decoded(sign, exponent, fraction, "nan", math.nan)
    if exponent == 0:
        if fraction == 0:
            return Decoded(sign, exponent, fraction, "zero", signed * 0.0)
        return Decoded(sign, exponent, fraction, "subnormal", signed * fraction * 2.0 ** (1 - bias - m))
    return Decoded(sign, exponent, fraction, "normal", signed * (1 + fraction / 2**m) * 2.0 ** (exponent - bias))


def encode(value: float, fmt: FloatFormat | str) -> int:
    """The bit pattern of `value` rounded into `fmt` by PyTorch (`tensor.to(fmt.dtype)`), as an int."""
    fmt = _format(fmt)
    stored = torch.tensor([float(value)], dtype=torch.float32).to(fmt.dtype)
    return int(stored.view(_INT_VIEW[fmt.bits]).item()) % 2**fmt.bits


def representable_values(fmt: FloatFormat | str, *, finite: bool = True) -> Tensor:
    """Every value of an 8- or 16-bit format, sorted, as float64 (no duplicate zero; NaNs dropped)."""
    fmt = _format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"{fmt.name} has 2^{fmt.bits} values: too many to list")
    codes = torch.arange(2**fmt.bits, dtype=torch.int32)
    values = codes.to(_INT_VIEW[fmt.bits]).view(fmt.dtype).double()
    values = values[~values.isnan()]
    if finite:
        values = values[values.isfinite()]
    return torch.unique(values)  # sorted; +0 and -0 are one value


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
    fmt = _format(fmt)
    if not isinstance(x, Tensor) or x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be a float32 or float64 tensor, got {type(x).__name__} {getattr(x, 'dtype', '')}")
    limits = format_limits(fmt)
    magnitude = x.abs()
    finite = torch.isfinite(x) & (magnitude > 0)
    fraction, exponent = torch.frexp(torch.where(finite, magnitude, torch.ones_like(magnitude)))  # |x| = f * 2^E, f in [0.5, 1)
    power = torch.clamp(exponent - 1, min=limits.min_exponent)  # floor(log2 |x|), at least the normal minimum
    scaled = torch.ldexp(fraction, exponent - power + fmt.mantissa_bits)  # |x| / q, below 2^(m+1): exact, no overflow
    rounded = torch.ldexp(torch.round(scaled), power - fmt.mantissa_bits)  # torch.round rounds half to even
    rounded = torch.where(finite, rounded, magnitude)  # zero, inf and NaN pass through
    overflow = rounded > limits.max
    if fmt.ieee:
        rounded = torch.where(overflow, torch.full_like(rounded, math.inf), rounded)
    else:
        rounded = torch.where(overflow | torch.isinf(magnitude), torch.full_like(rounded, limits.max), rounded)
    return torch.copysign(rounded, x)


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
    check_int("num_parameters", num_parameters, 0)
    check_int("half_bytes", half_bytes, 1)
    parts = {
        "weights": half_bytes * num_parameters,
        "gradients": half_bytes * num_parameters,
        "master_weights": 4 * num_parameters if master_weights else 0,
        "adam_m": 4 * num_parameters,
        "adam_v": 4 * num_parameters,
    }
    parts["total"] = sum(parts.values())
    return parts


# --- loss scaling ------------------------------------------------------------------------------


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
        if not init_scale > 0 or not math.isfinite(init_scale):
            raise ValueError(f"init_scale must be a finite number > 0, got {init_scale!r}")
        if not growth_factor > 1:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor!r}")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        check_int("growth_interval", growth_interval, 1)
        self.dynamic = dynamic
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self._scale = torch.tensor(float(init_scale), dtype=torch.float32)
        self.growth_tracker = 0  # consecutive steps without overflow
        self._found_inf: bool | None = None  # this step's verdict, once the gradients are unscaled

    def get_scale(self) -> float:
        """The current scale, a Python float."""
        return float(self._scale)

    def scale(self, loss: Tensor) -> Tensor:
        """loss * scale, in the loss's dtype (call `.backward()` on it)."""
        return loss * self._scale.to(loss.dtype)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide the gradients of the optimizer's parameters by the scale, in place; return True if any
        gradient is inf or NaN (then the coming `step` skips). Call at most once per step."""
        if self._found_inf is not None:
            raise RuntimeError("unscale_ was already called since the last update()")
        inverse = self._scale.double().reciprocal().float()
        found = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                found = found or not bool(torch.isfinite(p.grad).all())
                p.grad.mul_(inverse.to(p.grad.dtype))
        self._found_inf = found
        return found

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale (if not done yet), then `optimizer.step()` unless a gradient overflowed; True if it stepped."""
        if self._found_inf is None:
            self.unscale_(optimizer)
        if self._found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Adapt the scale to this step's verdict (dynamic only) and get ready for the next step."""
        if self._found_inf is None:
            raise RuntimeError("update() needs a step: call step(optimizer) (or unscale_) first")
        if self.dynamic:
            if self._found_inf:
                self._scale = self._scale * self.backoff_factor
                self.growth_tracker = 0
            else:
                self.growth_tracker += 1
                if self.growth_tracker == self.growth_interval:
                    grown = self._scale * self.growth_factor
                    if torch.isfinite(grown):
                        self._scale = grown
                    self.growth_tracker = 0
        self._found_inf = None


# --- the mixed-precision training step -----------------------------------------------------------


class MasterWeights:
    """A model cast to half precision in place, with a float32 master copy of its parameters.

    `params` are the master copies (`nn.Parameter`s in float32): give them to the optimizer. The
    model's own parameters (`model_params`) hold their rounded half-precision copies and receive the
    gradients of the backward pass. Micikevicius et al., 2018, section 3.1.

    Args:
        model: the float32 model (its parameters are replaced by their `dtype` copies).
        dtype: torch.float16 or torch.bfloat16.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float16) -> None:
        """Copy the float32 parameters, then cast the model."""
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        self.model, self.dtype = model, dtype
        self.params = [nn.Parameter(p.detach().float().clone()) for p in model.parameters() if p.requires_grad]
        model.to(dtype)
        self.model_params = [p for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Round the master weights into the model's half-precision parameters."""
        for half, master in zip(self.model_params, self.params):
            half.copy_(master)


@dataclass(frozen=True)
class StepResult:
    loss: float  # the unscaled loss of this step
    stepped: bool  # False when the step was skipped for an overflowing gradient
    scale: float  # the loss scale used in this step


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
    scale = 1.0 if scaler is None else scaler.get_scale()
    loss = loss_fn(master.model)
    (loss if scaler is None else scaler.scale(loss)).backward()
    for half, full in zip(master.model_params, master.params):
        full.grad = None if half.grad is None else half.grad.float()
        half.grad = None
    if scaler is None:
        optimizer.step()
        stepped = True
    else:
        stepped = scaler.step(optimizer)
        scaler.update()
    if stepped:
        master.copy_to_model()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=float(loss.detach()), stepped=stepped, scale=scale)


def grads_below(params: Iterable[Tensor], threshold: float) -> float:
    """The fraction of non-zero gradient entries whose magnitude is below `threshold` (e.g. fp16's smallest subnormal)."""
    values = torch.cat([p.grad.detach().flatten().double() for p in params if p.grad is not None])
    values = values[values != 0]
    return float((values.abs() < threshold).double().mean()) if values.numel() else 0.0


# --- the comparison run: fp32, fp16 with master weights and loss scaling, bf16 autocast ---------


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


def main(argv: list[str] | None = None) -> int:
    """`python -m reference.precision [--steps N] [--out PATH]`: run `compare_training` and write its JSON."""
    import argparse

    from reference.runtime import machine_info, write_json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--init-scale", type=float, default=2.0**24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="chapters/results/10_mixed_precision.json")
    args = parser.parse_args(argv)
    import time

    start = time.perf_counter()
    result = compare_training(args.steps, args.batch_size, args.seq_len, seed=args.seed, init_scale=args.init_scale)
    result["command"] = (f"python -m reference.precision --steps {args.steps} --batch-size {args.batch_size} "
                         f"--seq-len {args.seq_len} --seed {args.seed} --init-scale {args.init_scale!r}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["machine"] = machine_info("cpu")
    write_json(args.out, result)
    print(f"wrote {args.out}: final losses {result['final_loss']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
