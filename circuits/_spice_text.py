"""Number formatting for netlists: every value is checked finite before it becomes text."""

from __future__ import annotations

import math


class NetlistValueError(ValueError):
    """A value destined for a netlist is not a finite number (or violates its bounds)."""


def spice_number(name: str, value: float, *, positive: bool = False, nonnegative: bool = False) -> str:
    """Format ``value`` for a netlist after checking it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NetlistValueError(f"{name}={value!r} is not a number")
    v = float(value)
    if not math.isfinite(v):
        raise NetlistValueError(f"{name}={value!r} is not finite")
    if positive and v <= 0:
        raise NetlistValueError(f"{name}={value!r} must be > 0")
    if nonnegative and v < 0:
        raise NetlistValueError(f"{name}={value!r} must be >= 0")
    return f"{v:.12g}"
