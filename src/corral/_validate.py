"""Argument checks shared by the public entry points, with messages that say the fix.

One convention for every bad argument: a value of the wrong type raises ``TypeError``, a
value of the right type that is out of range (or not one of the choices) raises
``ValueError``. Every message has one format, naming the parameter, what it must be, what
was given, and (where it helps) how to fix it::

    limit must be an int >= 1, got float 2.5; pass a whole number such as 2

:func:`type_error` and :func:`value_error` build those messages for the checks that do not
fit the helpers (``fn`` is an async function, two clusters share a name ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, overload

from ._exceptions import UnstorableTextError

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_int",
    "check_number",
    "check_offload",
    "check_positive_int",
    "check_str",
    "check_text",
    "check_timeout",
    "check_type",
    "given",
    "storable_text",
    "type_error",
    "value_error",
]

T = TypeVar("T")

_OFFLOADS = ("thread", "process")


def given(value: object) -> str:
    """Describe ``value`` for an error message: its type and a short repr (``str 'x'``)."""
    if value is None or isinstance(value, bool):
        return repr(value)
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def _message(name: str, expected: str, value: object, fix: str) -> str:
    message = f"{name} must be {expected}, got {given(value)}"
    return f"{message}; {fix}" if fix else message


def type_error(name: str, expected: str, value: object, fix: str = "") -> TypeError:
    """Return the TypeError for ``name``: ``"<name> must be <expected>, got <value>; <fix>"``."""
    return TypeError(_message(name, expected, value, fix))


def value_error(name: str, expected: str, value: object, fix: str = "") -> ValueError:
    """Return the ValueError for ``name``: ``"<name> must be <expected>, got <value>; <fix>"``."""
    return ValueError(_message(name, expected, value, fix))


def _or_none(expected: str, optional: bool) -> str:
    return f"{expected} or None" if optional else expected


def _number_fix(value: object, kind: str) -> str:
    """Return a hint for a number of the wrong type: a bool, a str, a float for an int."""
    if isinstance(value, bool):
        return f"pass {kind}, not {value!r}"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        return f"pass the number {value.strip()}, not a str" if math.isfinite(number) else ""
    if kind == "an int" and isinstance(value, float) and math.isfinite(value):
        return f"pass a whole number such as {max(1, round(value))}"
    return ""


def check_type(
    name: str,
    value: object,
    types: type[T] | tuple[type[T], ...],
    expected: str,
    *,
    fix: str = "",
) -> T:
    """Return ``value`` if it is an instance of ``types``, else raise TypeError.

    ``expected`` says what it must be in words (``"a corral.Cluster"``).
    """
    if not isinstance(value, types):
        raise type_error(name, expected, value, fix)
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is True or False (not 0 or 1), else raise TypeError."""
    if not isinstance(value, bool):
        raise type_error(name, "True or False", value)
    return value


def check_callable(name: str, value: T, expected: str = "callable", fix: str = "") -> T:
    """Return ``value`` if it is callable, else raise TypeError."""
    if not callable(value):
        raise type_error(name, expected, value, fix)
    return value


def _bounds(minimum: float | None, maximum: float | None, above: float | None = None) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {above:g}")
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return " and ".join(parts)


@overload
def check_int(
    name: str,
    value: object,
    *,
    minimum: int | None = ...,
    maximum: int | None = ...,
    optional: Literal[False] = ...,
) -> int: ...
@overload
def check_int(
    name: str,
    value: object,
    *,
    minimum: int | None = ...,
    maximum: int | None = ...,
    optional: bool,
) -> int | None: ...
def check_int(
    name: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
) -> int | None:
    """Return ``value`` if it is an int (not a bool) within the bounds, else raise.

    TypeError for another type, ValueError for an int out of bounds; with ``optional``,
    None is returned as it is.
    """
    if value is None and optional:
        return None
    bounds = _bounds(minimum, maximum)
    expected = f"an int {bounds}" if bounds else "an int"
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(name, _or_none(expected, optional), value, _number_fix(value, "an int"))
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise value_error(name, _or_none(expected, optional), value)
    return value


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise TypeError or ValueError."""
    return check_int(name, value, minimum=1)


@overload
def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = ...,
    above: float | None = ...,
    maximum: float | None = ...,
    unit: str = ...,
    optional: Literal[False] = ...,
    fix: str = ...,
) -> float: ...
@overload
def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = ...,
    above: float | None = ...,
    maximum: float | None = ...,
    unit: str = ...,
    optional: bool,
    fix: str = ...,
) -> float | None: ...
def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    unit: str = "",
    optional: bool = False,
    fix: str = "",
) -> float | None:
    """Return ``value`` as a float if it is a finite int or float within the bounds, else raise.

    ``minimum`` and ``maximum`` are inclusive, ``above`` exclusive; ``unit`` names what the
    number counts (``"seconds"``). TypeError for another type (a bool included),
    ValueError for NaN, an infinity or a number out of bounds (``fix`` is added to that
    message); with ``optional``, None is returned as it is.
    """
    if value is None and optional:
        return None
    noun = f"a number of {unit}" if unit else "a number"
    bounds = _bounds(minimum, maximum, above)
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = _or_none(noun, optional)
        raise type_error(name, expected, value, _number_fix(value, noun))
    expected = _or_none(f"a finite {noun[2:]} {bounds}".rstrip(), optional)
    if (
        not math.isfinite(value)
        or (minimum is not None and value < minimum)
        or (above is not None and not value > above)
        or (maximum is not None and value > maximum)
    ):
        raise value_error(name, expected, value, fix)
    return float(value)


@overload
def check_str(
    name: str,
    value: object,
    *,
    empty: bool = ...,
    max_length: int | None = ...,
    optional: Literal[False] = ...,
) -> str: ...
@overload
def check_str(
    name: str,
    value: object,
    *,
    empty: bool = ...,
    max_length: int | None = ...,
    optional: bool,
) -> str | None: ...
def check_str(
    name: str,
    value: object,
    *,
    empty: bool = False,
    max_length: int | None = None,
    optional: bool = False,
) -> str | None:
    """Return ``value`` if it is a str a database can store, non-empty unless ``empty``.

    TypeError for another type; ValueError for an empty str or one longer than
    ``max_length``; :class:`~corral.UnstorableTextError` (a ValueError) for a NUL or a
    lone surrogate. With ``optional``, None is returned as it is.
    """
    if value is None and optional:
        return None
    words = "a str" if empty else "a non-empty str"
    if max_length is not None:
        words += f" of at most {max_length} characters"
    expected = _or_none(words, optional)
    if not isinstance(value, str):
        raise type_error(name, expected, value)
    if not value and not empty:
        raise value_error(name, expected, value)
    if max_length is not None and len(value) > max_length:
        raise value_error(name, expected, f"{value[:40]}... ({len(value)} characters)")
    return check_text(name, value)


def check_choice(name: str, value: object, choices: Iterable[str], *, also: str = "") -> str:
    """Return ``value`` if it is one of the str ``choices``, else raise.

    TypeError for a value that is not a str, ValueError for a str that is not a choice.
    ``also`` names what else the caller accepts (``"a corral.ProcessPool or None"``).
    """
    options = tuple(choices)
    words = ", ".join(repr(c) for c in options)
    expected = f"one of {words}, {also}" if also else f"one of {words}"
    if not isinstance(value, str):
        raise type_error(name, expected, value)
    if value not in options:
        raise value_error(name, expected, value)
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
    return check_number(
        "timeout", value, above=0, unit="seconds", optional=True, fix="pass None for no timeout"
    )


_POOLS = "a corral.ProcessPool, a corral.dask.DaskPool"


def check_offload(value: Any, *, pools: str = _POOLS) -> None:
    """Raise unless ``value`` is one of the offload names (pools are checked by the caller)."""
    check_choice("offload", value, _OFFLOADS, also=f"{pools} or None")
