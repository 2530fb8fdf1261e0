"""Constructor-argument checks shared by the built-in environments: ``ValueError`` naming the argument.

``envs.registry.instantiate`` turns that ``ValueError`` into ``InvalidInput``, so ``arithmetic?level=9``
or ``countdown?count=0`` is refused when the environment is built, never at the first task.
"""

from __future__ import annotations

from typing import Any


def int_arg(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` if it is an integer in ``[lo, hi]``; else ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {span}, got {value!r}")
    return value


def size_arg(value: Any) -> int | None:
    """``size``: ``None`` (infinite) or a positive integer."""
    return None if value is None else int_arg("size", value, 1)


def float_arg(name: str, value: Any, lo: float, hi: float) -> float:
    """``value`` as a float in ``[lo, hi]``; else ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


__all__ = ["float_arg", "int_arg", "size_arg"]
