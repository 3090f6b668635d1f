"""More importable functions for tests that run them in worker processes.

``tests/helpers.py`` holds the shared ones; these serve test_process.py, test_pickling.py
and test_blocking.py.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import socket
import sys
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


class CodedError(Exception):
    """The common exception that pickles but does not unpickle.

    Its ``args`` are ``(message,)`` only, so unpickling calls ``CodedError(message)``,
    which lacks ``message`` and raises TypeError.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def coded_fail_on(x: int, bad: int = 3) -> int:
    """Raise a :class:`CodedError` for ``bad``, else return ``x``."""
    if x == bad:
        raise CodedError(x, f"bad item {x}")
    return x


def coded_result_on(x: int, bad: int = 3) -> object:
    """Return (not raise) a :class:`CodedError` for ``bad``, else ``x``."""
    if x == bad:
        return CodedError(x, f"bad item {x}")
    return x


def _rebuild_in_a_worker(message: str) -> WorkerOnlyError:
    if multiprocessing.parent_process() is None:
        raise RuntimeError("WorkerOnlyError unpickles in worker processes only")
    return WorkerOnlyError(message)


class WorkerOnlyError(Exception):
    """An exception that unpickles in a worker process but not in the test process."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_in_a_worker, (str(self),))


def raise_worker_only(_: object = None) -> None:
    raise WorkerOnlyError("only travels one way")


def stop_before_next_request(_: object = None) -> int:
    """Make this worker stop itself (SIGSTOP) just before it reads its next request.

    Returns the worker's pid. The worker then never reads another request: killing it
    afterwards kills a worker that has not received the call it was sent.
    """

    def hook(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and getattr(arg, "__name__", None) == "recv_into":
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGSTOP)

    sys.setprofile(hook)
    return os.getpid()


def length(data: bytes) -> int:
    return len(data)


def connect_then_wait(address: str) -> None:
    """Connect to the Unix socket at ``address`` (the call has started), then block forever."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        threading.Event().wait()
