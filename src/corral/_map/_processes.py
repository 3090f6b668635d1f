"""Processes, with adaptive chunking: plain functions on a :class:`~corral.ProcessPool`.

Each of up to ``limit`` workers takes a chunk of items from the engine, sends it to a
worker process in one round trip (holding a cluster slot if the run has a cluster) and
hands the outcomes back. Unless ``chunksize`` fixes it, a chunk carries about
``_CHUNK_SECONDS`` of work, from a moving average of the seconds per item measured so
far (one item to start with), at most ``max_chunk`` items, tapering near the end of an
input of known length so that the last chunks spread over every worker. With a timeout,
items go one at a time and a worker process is killed at the deadline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._process import ProcessPool
from ._engine import Engine, adaptive_chunksize

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["Processes"]

#: Adaptive chunks aim for this much compute per round trip to a worker process
#: (and never carry more than the engine's ``max_chunk`` items).
_CHUNK_SECONDS = 0.02


class Processes:
    """Workers that each send chunks of items to the run's process pool."""

    __slots__ = ("engine", "pool", "seconds_per_item")

    def __init__(self, engine: Engine) -> None:
        assert engine.pool is not None
        self.engine = engine
        self.pool: ProcessPool = engine.pool
        self.seconds_per_item: float | None = None

    def start(self, task_group: TaskGroup) -> None:
        """Start the first worker; each starts the next until ``limit`` run."""
        task_group.start_soon(self.worker)

    def stop(self) -> None:
        """Nothing to do: workers test the engine's stop flag, and are cancelled."""

    def _next_chunksize(self) -> int:
        return adaptive_chunksize(self.engine, self.seconds_per_item, _CHUNK_SECONDS)

    async def worker(self) -> None:
        """Send chunks to the pool until the input is exhausted or the run stops."""
        engine = self.engine
        pool = self.pool
        fn = engine.fn
        cluster = engine.cluster
        progress = engine.progress
        timeout = engine.timeout
        while not engine.stopping:
            chunk = await engine.take(self._next_chunksize())
            if not chunk:
                return
            engine.spawn_more(self.worker)
            calls = [((item,), None) for _, item in chunk]
            try:
                if cluster is not None:
                    async with cluster.slot():
                        outcomes, seconds = await pool._run_calls_timed(fn, calls, timeout=timeout)
                else:
                    outcomes, seconds = await pool._run_calls_timed(fn, calls, timeout=timeout)
            except Exception as exc:  # the pool itself failed: closed, broken initializer
                engine.fail(exc, f"corral: raised by the process pool on items {chunk[0][0]}+")
                return
            if seconds > 0:
                per_item = seconds / len(chunk)
                previous = self.seconds_per_item
                self.seconds_per_item = (
                    per_item if previous is None else 0.7 * previous + 0.3 * per_item
                )
            for (index, _), (ok, value) in zip(chunk, outcomes, strict=True):
                if ok:
                    engine.deliver(index, value)
                elif not engine.failed_item(index, value):
                    return
            if progress is not None and not engine.report(len(chunk)):
                return
