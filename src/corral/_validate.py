"""Argument checks shared by the public entry points, with messages that say the fix."""

from __future__ import annotations

from typing import Any

__all__ = ["check_offload", "check_positive_int", "check_timeout"]

_OFFLOADS = ("thread", "process")


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise TypeError or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (1 or more), got {value}")
    return value


def check_timeout(value: object) -> float | None:
    """Return ``value`` as a float of seconds (> 0) or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"timeout must be seconds as a number or None, got {value!r}")
    if not value > 0:  # also rejects NaN
        raise ValueError(f"timeout must be > 0 seconds, got {value}; pass None for no timeout")
    return float(value)


def check_offload(value: Any) -> None:
    """Raise unless ``value`` is one of the offload names."""
    if value not in _OFFLOADS:
        raise ValueError(
            f"offload must be 'thread', 'process', a corral.ProcessPool or None, got {value!r}"
        )
