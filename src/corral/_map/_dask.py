"""Dask, with adaptive chunking: plain functions on a :class:`~corral.dask.DaskPool`.

The model is ``_processes``: each of up to ``limit`` workers (tasks on the caller's
loop) takes a chunk of items from the engine, runs it as one Dask task (holding a
cluster slot if the run has a cluster) and hands the outcomes back. Dask's own cost per
task is a millisecond or two here, so unless ``chunksize`` fixes it a chunk carries
about ``_CHUNK_SECONDS`` of work, from a moving average of the seconds per item measured
on the workers (one item to start with), at most ``max_chunk`` items, tapering near the
end of an input of known length so that the last chunks spread over every worker
thread. With a timeout, items go one at a time. Cancelling a worker cancels its Dask
task on the scheduler (see :class:`~corral.dask.DaskPool`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._dask import DaskPool
from ._engine import Engine, adaptive_chunksize

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["DaskChunks"]

#: Adaptive chunks aim for this much compute per Dask task (and never carry more than
#: the engine's ``max_chunk`` items): about 100 times Dask's own cost per task. Each
#: chunk's round trip leaves its worker thread idle and takes CPU from the scheduler
#: and the client: 0.2 s ran the benchmark's map 15-20% faster than 0.05 s, in every
#: round on 2 cores (a chunk already running when its map is cancelled still finishes,
#: so this is also how long a cancelled map can leave a thread busy).
_CHUNK_SECONDS = 0.2


class DaskChunks:
    """Workers that each run chunks of items as Dask tasks on the run's DaskPool."""

    __slots__ = ("engine", "pool", "seconds_per_item")

    def __init__(self, engine: Engine) -> None:
        assert engine.dask is not None
        self.engine = engine
        self.pool: DaskPool = engine.dask
        self.seconds_per_item: float | None = None

    def start(self, task_group: TaskGroup) -> None:
        """Start the first worker; each starts the next until ``limit`` run."""
        task_group.start_soon(self.worker)

    def stop(self) -> None:
        """Nothing to do: cancelled workers cancel their Dask tasks themselves."""

    def _next_chunksize(self) -> int:
        return adaptive_chunksize(self.engine, self.seconds_per_item, _CHUNK_SECONDS)

    async def worker(self) -> None:
        """Run chunks on the cluster until the input is exhausted or the run stops."""
        engine = self.engine
        pool = self.pool
        fn = engine.fn
        fn_data = engine.dask_fn
        cluster = engine.cluster
        progress = engine.progress
        timeout = engine.timeout
        while not engine.stopping:
            chunk = await engine.take(self._next_chunksize())
            if not chunk:
                return
            engine.spawn_more(self.worker)
            items = [item for _, item in chunk]
            message = engine.timeout_message(chunk[0][0]) if timeout is not None else ""
            try:
                if cluster is not None:
                    async with cluster.slot():
                        outcomes, seconds = await pool._map_chunk(
                            fn, fn_data, items, timeout=timeout, timeout_message=message
                        )
                else:
                    outcomes, seconds = await pool._map_chunk(
                        fn, fn_data, items, timeout=timeout, timeout_message=message
                    )
            except Exception as exc:  # the pool itself failed: closed, client lost
                engine.fail(exc, f"corral: raised by the DaskPool on items {chunk[0][0]}+")
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
