"""The loop that runs inside each worker process of a :class:`~corral.ProcessPool`.

Wire format, both ways: an 8-byte big-endian length, then a pickle. The parent sends
``(fn, calls)`` with ``calls`` a list of ``(args, kwargs)``; the worker answers
``(outcomes, seconds)`` with one ``(True, value)`` or ``(False, exception, traceback)``
per call, in order, and the seconds it spent computing; when the request itself cannot
be unpickled, ``outcomes`` is a single ``(False, exception, traceback)`` for all calls.
The worker's first message is ``("ready", pid)`` or ``("init-error", (exception,
traceback))``.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["HEADER", "recv_message_blocking", "send_message_blocking", "worker_main"]

HEADER = struct.Struct("!Q")
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def send_message_blocking(sock: socket.socket, obj: object) -> None:
    """Pickle ``obj`` and write it as one framed message."""
    data = pickle.dumps(obj, _PROTOCOL)
    sock.sendall(HEADER.pack(len(data)) + data)


def _recv_exactly(sock: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer


def _recv_raw(sock: socket.socket) -> bytearray | None:
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    return _recv_exactly(sock, size)


def recv_message_blocking(sock: socket.socket) -> Any:
    """Read one framed message; return None when the other side has gone."""
    payload = _recv_raw(sock)
    return None if payload is None else pickle.loads(payload)


def _die_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns once the parent process has gone, however it ended
        os._exit(1)

    threading.Thread(target=watch, name="corral-parent-watch", daemon=True).start()


def _portable_error(exc: BaseException) -> tuple[bool, BaseException, str]:
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.dumps(exc, _PROTOCOL)
    except Exception as why:
        from ._exceptions import CorralError

        exc = CorralError(
            f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
            f"(the worker could not pickle the original exception: {why})"
        )
    return (False, exc, text)


def _run_calls(
    fn: Callable[..., Any], calls: Sequence[tuple[tuple[Any, ...], dict[str, Any] | None]]
) -> list[tuple[Any, ...]]:
    outcomes: list[tuple[Any, ...]] = []
    append = outcomes.append
    for args, kwargs in calls:
        try:
            value = fn(*args, **kwargs) if kwargs else fn(*args)
        except Exception as exc:
            append(_portable_error(exc))
        else:
            append((True, value))
    return outcomes


def _encode_outcomes(outcomes: list[tuple[Any, ...]], seconds: float) -> bytes:
    try:
        return pickle.dumps((outcomes, seconds), _PROTOCOL)
    except Exception:
        from ._exceptions import NotPicklableError

        fixed: list[tuple[Any, ...]] = []
        for outcome in outcomes:
            try:
                pickle.dumps(outcome, _PROTOCOL)
            except Exception as exc:
                error = NotPicklableError(
                    f"the return value {type(outcome[1]).__qualname__} cannot be pickled to "
                    f"send it back from the worker process ({exc}); return something "
                    f"picklable, or pass offload='thread'"
                )
                fixed.append((False, error, ""))
            else:
                fixed.append(outcome)
        return pickle.dumps((fixed, seconds), _PROTOCOL)


def worker_main(
    sock: socket.socket,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    """Serve calls from the parent over ``sock`` until it closes the connection."""
    _die_with_parent()
    sock.setblocking(True)
    if initializer is not None:
        try:
            initializer(*initargs)
        except Exception as exc:
            send_message_blocking(sock, ("init-error", _portable_error(exc)[1:]))
            return
    send_message_blocking(sock, ("ready", os.getpid()))
    clock = time.perf_counter
    while True:
        payload = _recv_raw(sock)
        if payload is None:
            return
        try:
            fn, calls = pickle.loads(payload)
        except Exception as exc:  # e.g. fn's module cannot be imported here
            data = pickle.dumps((_portable_error(exc), 0.0), _PROTOCOL)
        else:
            started = clock()
            outcomes = _run_calls(fn, calls)
            data = _encode_outcomes(outcomes, clock() - started)
            del fn, calls, outcomes
        sock.sendall(HEADER.pack(len(data)) + data)
