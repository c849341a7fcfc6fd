"""Argument checks shared by the reference modules and their exercise twins.

One convention: an argument of the wrong type raises `ArgumentTypeError` (a `TypeError`), one of
the right type with a wrong value raises `ValueError`; both name the argument and its value.
`ArgumentTypeError` is also a `ValueError`, so code written when every bad argument was a
ValueError keeps catching it. Python and numpy integers both count as ints, bools never do.

The tensor checks look at shapes and dtypes only, never at values: reading a value moves it to the
host (a synchronisation on a GPU). Models check values once, at their entry.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a TypeError, and a ValueError for older callers."""


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_bool(value: object) -> bool:
    """Whether `value` is a boolean: Python's, NumPy's, or a boolean tensor (which int() would take for 0 or 1)."""
    dtype = getattr(value, "dtype", None)
    return isinstance(value, bool) or type(value).__name__ == "bool_" or (dtype is not None and str(dtype) in ("bool", "torch.bool"))


def check_int(name: str, value: object, minimum: int | None = 0) -> int:
    """Return `value` as an int, after checking it is an integer (Python or numpy, never a bool) >= `minimum`.

    Raises ArgumentTypeError for another type (a float such as 2.0 included) and ValueError below `minimum`.
    """
    if not _is_int(value):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ArgumentTypeError(f"{name} must be an int{bound}, got {value!r} of type {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_optional_int(name: str, value: object, minimum: int | None = 0) -> int | None:
    """`check_int`, letting None through."""
    return None if value is None else check_int(name, value, minimum)


def check_float(
    name: str, value: object, *, minimum: float | None = None, positive: bool = False, maximum: float | None = None
) -> float:
    """Return `value` as a float, after checking it is a finite real number (int or float, never a bool)
    that is > 0 when `positive`, and within [minimum, maximum] when given."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or type(value).__name__ == "bool_":
        raise ArgumentTypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return `value`, after checking it is a bool (Python or numpy)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ArgumentTypeError(f"{name} must be a bool, got {value!r} of type {type(value).__name__}")
    return bool(value)


def check_tensor(name: str, value: object) -> Tensor:
    """Return `value`, after checking it is a torch.Tensor."""
    if not isinstance(value, Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_integer_tensor(name: str, value: object, dims: tuple[int, ...] | None = None) -> Tensor:
    """Return `value`, after checking it is a tensor of integers (not bool) with one of `dims` dimensions."""
    check_tensor(name, value)
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ArgumentTypeError(f"{name} must hold integers, got dtype {value.dtype}")
    if dims is not None and value.dim() not in dims:
        shapes = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {shapes}, got shape {tuple(value.shape)}")
    return value


def check_floating_tensor(name: str, value: object) -> Tensor:
    """Return `value`, after checking it is a floating-point tensor."""
    check_tensor(name, value)
    if not value.is_floating_point():
        raise ArgumentTypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_positions(name: str, positions: object) -> Tensor:
    """Return `positions`, after checking it is an integer tensor of shape (seq,) or (batch, seq); values unread."""
    return check_integer_tensor(name, positions, dims=(1, 2))


def value_range(values: Tensor) -> tuple[int, int]:
    """(min, max) of a non-empty integer tensor, read to the host in one transfer (one synchronisation)."""
    low, high = torch.stack(torch.aminmax(values)).tolist()
    return int(low), int(high)
