"""Low-level helpers below every layer: reaching an event loop from another thread.

The engine (thread crews, the loop-safe semaphore) and the backends (asyncpg's loop
thread) both wake a task on its own event loop from a thread that is not that loop's;
this module is the one place that knows how, for asyncio and trio alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from anyio.lowlevel import EventLoopToken

__all__ = ["loop_scheduler"]


def loop_scheduler(token: EventLoopToken) -> Callable[[Callable[[], object]], object]:
    """Return a function that, from any thread, schedules a callback on ``token``'s loop.

    It is the loop's own thread-safe hook (asyncio's ``call_soon_threadsafe``, trio's
    ``run_sync_soon``): it never blocks the calling thread. It raises ``RuntimeError``
    once that loop has closed.
    """
    native = token.native_token
    schedule = getattr(native, "call_soon_threadsafe", None)  # an asyncio loop
    if schedule is None:
        schedule = native.run_sync_soon  # type: ignore[attr-defined]  # a trio token
    return cast("Callable[[Callable[[], object]], object]", schedule)
