"""Coroutines on the event loop, one item at a time per worker: ``imap``, clusters, timeouts.

Each of up to ``limit`` workers takes the next item from the engine (under the window,
and the input lock for an async iterable), awaits ``fn`` on it (holding a cluster slot
if the run has a cluster, cancelled at the deadline if it has a timeout), and hands the
result back. Plain ``map`` over a plain iterable takes the fast path instead
(:mod:`._fast_loop`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._engine import Engine

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["Loop"]

#: A worker yields to the event loop at least every this many items, even if the
#: coroutines themselves never do.
_CHECKPOINT_EVERY = 128


class Loop:
    """Coroutine workers that each take one item at a time from the engine."""

    __slots__ = ("engine",)

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, task_group: TaskGroup) -> None:
        """Start the first worker; each starts the next until ``limit`` run."""
        task_group.start_soon(self.worker)

    def stop(self) -> None:
        """Nothing to do: workers test the engine's stop flag, and are cancelled."""

    async def worker(self) -> None:
        """Await ``fn`` on items until the input is exhausted or the run stops."""
        engine = self.engine
        fn = engine.fn
        timeout = engine.timeout
        cluster = engine.cluster
        progress = engine.progress
        done = 0
        while not engine.stopping:
            chunk = await engine.take(1)
            if not chunk:
                return
            [(index, item)] = chunk
            engine.spawn_more(self.worker)
            try:
                if cluster is not None:
                    async with cluster.slot():
                        value = await self._call(fn, item, timeout, index)
                elif timeout is not None:
                    value = await self._call(fn, item, timeout, index)
                else:
                    value = await fn(item)
            except Exception as exc:
                if not engine.failed_item(index, exc):
                    return
            else:
                engine.deliver(index, value)
            if progress is not None and not engine.report(1):
                return
            done += 1
            if done % _CHECKPOINT_EVERY == 0:
                await anyio.lowlevel.checkpoint()

    async def _call(
        self, fn: Callable[..., Any], item: Any, timeout: float | None, index: int
    ) -> Any:
        if timeout is None:
            return await fn(item)
        with anyio.move_on_after(timeout) as scope:
            return await fn(item)
        if scope.cancelled_caught:
            raise TimeoutError(self.engine.timeout_message(index))
        raise AssertionError("unreachable")  # pragma: no cover
