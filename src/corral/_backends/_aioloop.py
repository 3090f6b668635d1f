"""Running an asyncio-only driver (asyncpg, aioboto3) from any event loop (trio: a thread).

Under asyncio, :class:`Direct` awaits asyncpg where the caller is. Under trio,
:class:`LoopThread` runs one asyncio event loop in a dedicated thread, started when
the database opens and joined when it closes; each call is handed to that loop and
awaited from trio without blocking it, and a cancelled call waits (shielded) until the
task on the other loop has ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._lowlevel import loop_scheduler

__all__ = ["Direct", "LoopThread", "Runner"]

T = TypeVar("T")


class Direct:
    """On asyncio: await asyncpg where we are."""

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await fn(*args)

    async def close(self) -> None:
        pass


class LoopThread:
    """On trio: an asyncio event loop in one thread; calls are awaited from trio."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="corral-asyncio", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        # Not asyncio.run_coroutine_threadsafe: cancelling its future completes the future
        # at once, while the task goes on; here the future completes when the task has.
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        tasks: list[asyncio.Task[T]] = []

        async def run() -> T:
            return await fn(*args)

        def start() -> None:
            task = self._loop.create_task(run())
            task.add_done_callback(functools.partial(_settle, future))
            tasks.append(task)

        def cancel() -> None:  # runs after start: call_soon_threadsafe keeps the order
            tasks[0].cancel()

        self._loop.call_soon_threadsafe(start)
        return await _wait(future, lambda: self._loop.call_soon_threadsafe(cancel))

    async def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        await anyio.to_thread.run_sync(self._thread.join)


def _settle(future: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    """Complete ``future`` (made in another thread) as ``task`` completed."""
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


async def _wait(future: concurrent.futures.Future[T], cancel: Callable[[], object]) -> T:
    """Await a future completed in another thread, without blocking this event loop.

    If the caller is cancelled, ``cancel()`` asks the other thread to stop, and the
    wait goes on (shielded) until the future is complete.
    """
    event = anyio.Event()
    schedule = loop_scheduler(anyio.lowlevel.current_token())
    here = threading.get_ident()

    def done(_: object) -> None:
        if threading.get_ident() == here:
            event.set()
            return
        schedule(event.set)

    future.add_done_callback(done)
    try:
        await event.wait()
    except BaseException:
        cancel()
        with anyio.CancelScope(shield=True):
            await event.wait()
        raise
    return future.result()


#: What runs the connection's calls: on asyncio where the caller is, on trio a thread.
Runner = Direct | LoopThread
