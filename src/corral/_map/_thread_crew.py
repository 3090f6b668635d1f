"""Threads fed in batches: a :class:`~corral._crew.ThreadCrew` runs plain functions.

Taken when a plain function runs in threads and the run has no cluster. A feeder task
queues items for up to ``limit`` threads, each running many calls per trip from the
event loop; a collector task takes their outcomes back in batches, hands them out,
reports progress and makes room for the feeder. A thread cannot be interrupted: with a
timeout, a call that returns late fails with ``TimeoutError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._crew import ThreadCrew
from ._engine import Engine

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["Crew"]


class Crew:
    """A feeder and a collector task around a crew of up to ``limit`` threads."""

    __slots__ = ("crew", "engine", "feeding", "in_flight", "limiter", "room_event")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.crew: ThreadCrew | None = None
        self.limiter: anyio.CapacityLimiter | None = None
        self.in_flight = 0
        self.feeding = True
        self.room_event: anyio.Event | None = None

    def start(self, task_group: TaskGroup) -> None:
        """Start the feeder and the collector; the feeder starts the threads."""
        self.limiter = anyio.CapacityLimiter(self.engine.limit)
        self.crew = ThreadCrew(self.engine.fn)
        task_group.start_soon(self._feeder)
        task_group.start_soon(self._collector)

    def stop(self) -> None:
        """Tell the crew's threads to start no queued call."""
        if self.crew is not None:
            self.crew.stop()

    async def _feeder(self) -> None:
        engine = self.engine
        crew = self.crew
        assert crew is not None
        assert engine.task_group is not None
        # Up to ``limit`` calls run; as many again wait in the queue, so that a thread
        # that finishes a call starts the next without waiting for the event loop.
        cap = 2 * engine.limit
        finished = False
        try:
            while not engine.stopping:
                while self.in_flight >= cap:
                    self.room_event = anyio.Event()
                    await self.room_event.wait()
                chunk = await engine.take(cap - self.in_flight)
                if not chunk:
                    break
                for index, item in chunk:
                    crew.submit(index, item)
                self.in_flight += len(chunk)
                while crew.started < engine.limit and crew.started < self.in_flight:
                    crew.started += 1
                    engine.task_group.start_soon(self._thread)
            finished = True
        finally:
            self.feeding = False
            if finished:
                crew.finish()
            else:
                crew.stop()
            crew.wake()

    async def _thread(self) -> None:
        assert self.crew is not None
        await anyio.to_thread.run_sync(
            self.crew.work, self.engine.timeout is not None, limiter=self.limiter
        )

    async def _collector(self) -> None:
        engine = self.engine
        crew = self.crew
        assert crew is not None
        timeout = engine.timeout
        progress = engine.progress
        try:
            while self.feeding or self.in_flight:
                batch = await crew.outcomes()
                if not batch:
                    continue
                for index, ok, value, seconds in batch:
                    if ok and timeout is not None and seconds > timeout:
                        ok, value = False, TimeoutError(engine.timeout_message(index))
                    if ok:
                        engine.deliver(index, value)
                    elif not isinstance(value, Exception):
                        engine.fail(value, None)  # KeyboardInterrupt, SystemExit: as is
                        return
                    elif not engine.failed_item(index, value):
                        return
                self.in_flight -= len(batch)
                if self.room_event is not None:
                    self.room_event.set()
                    self.room_event = None
                if progress is not None and not engine.report(len(batch)):
                    return
                await anyio.lowlevel.checkpoint()  # let the feeder refill the queue
        finally:
            crew.stop()  # normally a no-op; on cancellation, no queued call starts
