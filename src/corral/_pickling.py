"""Checks that a function and its arguments can cross a process boundary."""

from __future__ import annotations

import inspect
import pickle
import pickletools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._exceptions import NotPicklableError
from ._validate import check_callable

__all__ = [
    "check_process_function",
    "describe",
    "dumps_args",
    "is_picklable",
    "pickled_globals",
]

_FIX = "define it at module level, or pass offload='thread'"


def is_picklable(obj: object) -> bool:
    """Return whether ``obj`` survives ``pickle.dumps``, as a process pool needs.

    Args:
        obj: A function, an argument or a result that would cross a process boundary.

    Returns:
        ``True`` if ``pickle.dumps(obj)`` succeeds, ``False`` if it raises.
    """
    try:
        pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


def describe(obj: object) -> str:
    """Describe ``obj`` in a few words for an error message."""
    name = getattr(obj, "__qualname__", None)
    if callable(obj) and isinstance(name, str):
        return f"{name} ({type(obj).__name__} from {getattr(obj, '__module__', '?')})"
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (a {type(obj).__module__}.{type(obj).__qualname__})"


def check_process_function(fn: Callable[..., Any], name: str = "fn") -> None:
    """Raise :class:`NotPicklableError` or TypeError unless ``fn`` can run in a worker process.

    Checked before any work starts, with a message that names the problem and the fix.
    """
    check_callable(name, fn)
    target = inspect.unwrap(fn) if not isinstance(fn, type) else fn
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"{name} {describe(fn)} is an async function: it runs on the event loop and cannot "
            f"be sent to a process; pass a plain function, or leave offload unset to run "
            f"it on the event loop"
        )
    qualname = getattr(target, "__qualname__", "")
    if getattr(target, "__name__", None) == "<lambda>":
        raise NotPicklableError(
            f"{name} {describe(fn)} is a lambda: processes can only run importable "
            f"functions; {_FIX}"
        )
    if "<locals>" in qualname:
        raise NotPicklableError(
            f"{name} {describe(fn)} is defined inside another function (a closure): processes "
            f"can only run importable functions; {_FIX}"
        )
    module = getattr(target, "__module__", None)
    if module == "__main__" and not getattr(sys.modules.get("__main__"), "__file__", None):
        raise NotPicklableError(
            f"{name} {describe(fn)} is defined in an interactive session (__main__ has no "
            f"file), so worker processes cannot import it; move it into a module, or pass "
            f"offload='thread'"
        )
    try:
        pickle.dumps(fn, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise NotPicklableError(
            f"{name} {describe(fn)} cannot be pickled to send it to a worker process "
            f"({exc}); {_FIX}"
        ) from exc


def dumps_args(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Raise :class:`NotPicklableError` naming the first argument that cannot be pickled."""
    for position, value in enumerate(args):
        _check_value(fn, f"argument {position}", value)
    for key, value in kwargs.items():
        _check_value(fn, f"keyword argument {key!r}", value)


def _check_value(fn: Callable[..., Any], where: str, value: object) -> None:
    try:
        pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise NotPicklableError(
            f"{where} of {getattr(fn, '__qualname__', fn)!s}, {describe(value)}, cannot be "
            f"pickled to send it to a worker process ({exc}); pass offload='thread' to run "
            f"it in a thread, or pass something picklable"
        ) from exc


_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})


def pickled_globals(data: bytes, limit: int = 3) -> list[str]:
    """Return the first ``limit`` classes and functions (``module.name``) a pickle names.

    Read from the opcodes without unpickling anything, to name what a pickle that fails
    to unpickle was made of. Best effort: an unreadable pickle yields what was read.
    """
    found: list[str] = []
    memo: dict[int, object] = {}
    last: list[object] = [None, None]  # the two values pushed last (strings or None)
    try:
        for opcode, arg, _ in pickletools.genops(data):
            op = opcode.name
            pushed: object = None
            if op in _STRINGS:
                pushed = arg
            elif op == "MEMOIZE":
                memo[len(memo)] = last[-1]
                continue
            elif op in _PUTS and isinstance(arg, int):
                memo[arg] = last[-1]
                continue
            elif op in _GETS and isinstance(arg, int):
                pushed = memo.get(arg)
            elif op == "FRAME" or op == "PROTO":
                continue
            elif op == "GLOBAL" or op == "INST":
                name = str(arg).replace(" ", ".")
                if name not in found:
                    found.append(name)
            elif op == "STACK_GLOBAL":
                module, qualname = last
                if isinstance(module, str) and isinstance(qualname, str):
                    name = f"{module}.{qualname}"
                    if name not in found:
                        found.append(name)
            if len(found) >= limit:
                break
            last = [last[-1], pushed]
    except Exception:  # a truncated or foreign pickle: keep what was read
        pass
    return found
