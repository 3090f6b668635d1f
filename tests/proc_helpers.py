"""More importable functions for tests that run them in worker processes.

``tests/helpers.py`` holds the shared ones; these serve test_process.py, test_pickling.py
and test_blocking.py.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any


def lock_on(x: int, bad: int = 3) -> object:
    """Return an unpicklable result (a lock) for ``bad``, else ``x``."""
    if x == bad:
        return threading.Lock()
    return x


class UnpicklableError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(_: object = None) -> None:
    raise UnpicklableError("cannot travel")


def keywords(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    """Return what it was called with."""
    return args, kwargs


def passthrough(f: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that keeps ``__wrapped__``, ``__qualname__`` and ``__module__``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(*args, **kwargs)

    return wrapper


@passthrough
def decorated_square(x: int) -> int:
    return x * x


class Multiplier:
    """A picklable callable object defined at module level."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, x: int) -> int:
        return self.factor * x
