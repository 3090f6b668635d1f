"""The loop that runs inside each worker process of a :class:`~corral.ProcessPool`.

Wire format, both ways: an 8-byte big-endian length, then a pickle. The parent sends
``(fn, calls)`` with ``calls`` a list of ``(args, kwargs)``; the worker answers
``(outcomes, seconds)`` with one outcome per call, in order, and the seconds it spent
computing. A value that could fail to unpickle in the parent is pickled on its own, so
that it fails its own call only: an outcome is ``(VALUE, value)`` for a value of a plain
built-in type (``int``, ``str``...), ``(PICKLED, pickled value)`` for any other value, or
``(ERROR, *error)``, where an error is ``(pickled exception or None, traceback, type
name, message, why)`` (see :func:`encode_error`). When the request itself cannot be
unpickled, ``outcomes`` is a single ``(ERROR, *error)`` for all calls. The worker's
first message is ``("ready", pid)`` or ``("init-error", error)``.
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

__all__ = [
    "ERROR",
    "HEADER",
    "PICKLED",
    "VALUE",
    "EncodedError",
    "encode_error",
    "recv_message_blocking",
    "send_message_blocking",
    "worker_main",
]

HEADER = struct.Struct("!Q")
_PROTOCOL = pickle.HIGHEST_PROTOCOL

#: The kinds of outcome (see the module docstring).
VALUE, PICKLED, ERROR = 0, 1, 2
#: Types whose values always unpickle: sent as they are, in the answer's own pickle.
_PLAIN = frozenset({int, float, complex, bool, str, bytes, type(None)})

#: An exception on the wire: its pickle (``None`` when it cannot travel as itself), its
#: formatted traceback, the qualified name of its class, ``str()`` of it, and why it
#: cannot travel ("" when it can).
EncodedError = tuple[bytes | None, str, str, str, str]


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


def encode_error(exc: BaseException, text: str | None = None) -> EncodedError:
    """Encode ``exc`` for the parent, checking that its pickle also unpickles.

    ``text`` is its formatted traceback (formatted here when omitted).
    """
    if text is None:
        text = "".join(traceback.format_exception(exc))
    cls = type(exc)
    name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        message = str(exc)
    except Exception as why:
        message = f"<str() failed: {type(why).__name__}>"
    try:
        data = pickle.dumps(exc, _PROTOCOL)
    except Exception as why:
        return (None, text, name, message, f"the worker could not pickle it ({_name(why)})")
    try:
        copy = pickle.loads(data)
    except Exception as why:
        return (None, text, name, message, f"it pickles but does not unpickle ({_name(why)})")
    if not isinstance(copy, BaseException):
        return (None, text, name, message, f"it unpickles as a {type(copy).__qualname__}")
    return (data, text, name, message, "")


def _name(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _run_calls(
    fn: Callable[..., Any], calls: Sequence[tuple[tuple[Any, ...], dict[str, Any] | None]]
) -> list[tuple[Any, ...]]:
    outcomes: list[tuple[Any, ...]] = []
    append = outcomes.append
    for args, kwargs in calls:
        try:
            value = fn(*args, **kwargs) if kwargs else fn(*args)
        except Exception as exc:
            append((ERROR, *encode_error(exc)))
        else:
            append((VALUE, value))
    return outcomes


def _encode_outcomes(outcomes: list[tuple[Any, ...]], seconds: float) -> bytes:
    """Pickle each value that is not plain on its own (see the module docstring)."""
    dumps = pickle.dumps
    plain = _PLAIN
    encoded: list[tuple[Any, ...]] = []
    append = encoded.append
    for outcome in outcomes:
        if outcome[0] == VALUE and type(outcome[1]) not in plain:
            try:
                outcome = (PICKLED, dumps(outcome[1], _PROTOCOL))
            except Exception as exc:
                from ._exceptions import NotPicklableError

                error = NotPicklableError(
                    f"the return value {type(outcome[1]).__qualname__} cannot be pickled to "
                    f"send it back from the worker process ({exc}); return something "
                    f"picklable, or pass offload='thread'"
                )
                outcome = (ERROR, *encode_error(error, ""))
        append(outcome)
    return dumps((encoded, seconds), _PROTOCOL)


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
            send_message_blocking(sock, ("init-error", encode_error(exc)))
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
            data = pickle.dumps(((ERROR, *encode_error(exc)), 0.0), _PROTOCOL)
        else:
            started = clock()
            outcomes = _run_calls(fn, calls)
            data = _encode_outcomes(outcomes, clock() - started)
            del fn, calls, outcomes
        sock.sendall(HEADER.pack(len(data)) + data)
