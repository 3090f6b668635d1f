"""Thread offload for blocking calls."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio.lowlevel
import anyio.to_thread

from ._map import is_async_callable
from ._pickling import describe
from ._validate import check_callable

__all__ = ["to_thread"]

P = ParamSpec("P")
T = TypeVar("T")


async def to_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the blocking ``fn(*args, **kwargs)`` in a worker thread and return its result.

    Unlike ``anyio.to_thread.run_sync`` it takes keyword arguments. It shares anyio's
    default thread limiter (40 threads). Cancellation policy: a thread cannot be
    interrupted, so a cancelled caller waits for ``fn`` to return and then raises the
    cancellation; nothing keeps running behind it.

    Args:
        fn: A plain (blocking) function.
        *args: Positional arguments for ``fn``.
        **kwargs: Keyword arguments for ``fn``.

    Returns:
        What ``fn`` returned.

    Raises:
        TypeError: Before starting a thread if ``fn`` is an async function (a coroutine
            function, a partial of one, or an object with an async ``__call__``), as
            :func:`corral.map` and :func:`corral.to_process` do; and after the call if
            ``fn`` returned an awaitable anyway (a coroutine is closed first, so it
            never runs): a thread only makes the coroutine, it cannot run it; await it
            on the event loop.
        Exception: Whatever ``fn`` raised.
    """
    check_callable("fn", fn)
    if is_async_callable(fn):
        raise TypeError(
            f"fn {describe(fn)} is an async function: to_thread() runs blocking functions "
            f"in a thread, where calling it would only create its coroutine; await it on "
            f"the event loop instead (`await fn(...)`), or pass a plain function"
        )
    value = await anyio.to_thread.run_sync(functools.partial(_call, fn, args, kwargs))
    await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled meanwhile: raise it now
    return value


def _call(fn: Callable[..., T], args: tuple[object, ...], kwargs: dict[str, object]) -> T:
    """Call ``fn`` (in the worker thread); refuse an awaitable it returns, closed."""
    value = fn(*args, **kwargs)
    if inspect.isawaitable(value):
        coroutine = False
        if inspect.iscoroutine(value):
            value.close()  # it never ran: no "never awaited" warning either
            coroutine = True
        raise TypeError(
            f"fn {describe(fn)} returned {'a coroutine' if coroutine else 'an awaitable'} "
            f"({type(value).__name__}): to_thread() runs blocking functions and cannot run "
            f"what it returned{' (closed without running)' if coroutine else ''}; await it "
            f"on the event loop instead, or pass a function that does its work itself"
        )
    return value
