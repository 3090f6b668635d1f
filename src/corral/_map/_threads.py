"""Threads, one ``anyio.to_thread.run_sync`` per call: plain functions on a cluster.

Taken when a plain function runs in threads and the run shares a cluster: each call
holds one of the cluster's slots while its thread runs, so every call goes through the
event loop. Without a cluster, a crew of threads runs many calls per trip instead
(:mod:`._thread_crew`). A thread cannot be interrupted: with a timeout, each call is
timed in its thread and fails with ``TimeoutError`` when it returns late.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._engine import Engine

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["Threads"]


class Threads:
    """Workers that each run one item at a time in a thread, under one thread limiter."""

    __slots__ = ("engine", "limiter")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.limiter: anyio.CapacityLimiter | None = None

    def start(self, task_group: TaskGroup) -> None:
        """Start the first worker; each starts the next until ``limit`` run."""
        self.limiter = anyio.CapacityLimiter(self.engine.limit)
        task_group.start_soon(self.worker)

    def stop(self) -> None:
        """Nothing to do: workers test the engine's stop flag, and are cancelled."""

    async def worker(self) -> None:
        """Run ``fn`` on items in threads until the input is exhausted or the run stops."""
        engine = self.engine
        fn = engine.fn
        timeout = engine.timeout
        cluster = engine.cluster
        progress = engine.progress
        limiter = self.limiter
        run_sync = anyio.to_thread.run_sync
        call = fn if timeout is None else functools.partial(_timed_call, fn)
        while not engine.stopping:
            chunk = await engine.take(1)
            if not chunk:
                return
            [(index, item)] = chunk
            engine.spawn_more(self.worker)
            try:
                if cluster is not None:
                    async with cluster.slot():
                        value = await run_sync(call, item, limiter=limiter)
                else:
                    value = await run_sync(call, item, limiter=limiter)
                if timeout is not None:
                    value, seconds = value
                    if seconds > timeout:
                        raise TimeoutError(engine.timeout_message(index))
            except Exception as exc:
                if not engine.failed_item(index, exc):
                    return
            else:
                engine.deliver(index, value)
            if progress is not None and not engine.report(1):
                return


def _timed_call(fn: Callable[[Any], Any], item: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(item)
    return value, time.perf_counter() - started
