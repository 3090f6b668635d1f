"""Argument checks shared by the public entry points, with messages that say the fix."""

from __future__ import annotations

from typing import Any

from ._exceptions import UnstorableTextError

__all__ = ["check_offload", "check_positive_int", "check_text", "check_timeout", "storable_text"]

_OFFLOADS = ("thread", "process")


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise TypeError or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (1 or more), got {value}")
    return value


def check_text(what: str, value: str) -> str:
    """Return ``value`` unless it holds what no database stores as text: NUL, lone surrogates."""
    if "\x00" in value:
        raise UnstorableTextError(
            f"{what} {value!r} holds a NUL character ('\\x00'), which PostgreSQL cannot "
            f"store in text (SQLite would, so the two would disagree); remove it"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UnstorableTextError(
                f"{what} {value!r} holds a lone surrogate ({value[exc.start]!r} at index "
                f"{exc.start}), which is not UTF-8, so no database can store it; decode "
                f"the bytes it came from with errors='replace', or remove it"
            ) from None
    return value


def storable_text(value: str) -> str:
    r"""Return ``value`` with NUL and lone surrogates escaped (``\x00``, ``\ud800``).

    For text corral stores but does not check, such as an exception's message.
    """
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


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
