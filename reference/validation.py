"""Argument checks shared by the reference modules and their exercise twins: bad input raises a
`ValueError` that names the argument and its value."""

from __future__ import annotations


def check_int(name: str, value: object, minimum: int = 0) -> None:
    """Raise ValueError unless `value` is an int (not a bool) >= `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
