"""Thread offload for blocking calls."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio.lowlevel
import anyio.to_thread

__all__ = ["to_thread"]

P = ParamSpec("P")
T = TypeVar("T")


async def to_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the blocking ``fn(*args, **kwargs)`` in a worker thread and return its result.

    Unlike ``anyio.to_thread.run_sync`` it takes keyword arguments. It shares anyio's
    default thread limiter (40 threads). Cancellation policy: a thread cannot be
    interrupted, so a cancelled caller waits for ``fn`` to return and then raises the
    cancellation; nothing keeps running behind it.
    """
    if kwargs:
        value = await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    else:
        value = await anyio.to_thread.run_sync(fn, *args)
    await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled meanwhile: raise it now
    return value
