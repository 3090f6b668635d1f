"""Importable functions for tests that run them in worker processes."""

from __future__ import annotations

import os
import signal
import threading
import time

_initialized: list[object] = []


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def die_on(x: int, bad: int = 3) -> int:
    """Kill the worker process running this call when x == bad."""
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def exit_on(x: int, bad: int = 3) -> int:
    if x == bad:
        os._exit(7)
    return x


def pid(_: object = None) -> int:
    return os.getpid()


def remember(value: object) -> None:
    _initialized.append(value)


def initialized(_: object = None) -> list[object]:
    return list(_initialized)


def broken_initializer() -> None:
    raise RuntimeError("initializer is broken")


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def wait_forever(_: object = None) -> None:
    threading.Event().wait()


def return_lock(_: object = None) -> object:
    return threading.Lock()
