"""A crew of worker threads that each run many calls per trip from the event loop.

``anyio.to_thread.run_sync`` costs one round trip per call: the event loop hands the
call to a thread, the thread wakes the loop with its result (together some 50 us on
this kind of machine). For a map of thousands of short blocking calls that overhead is
the bottleneck. A crew keeps up to ``limit`` anyio worker threads busy instead: each
runs one long ``run_sync`` call that takes items from a thread-safe queue, runs the
function on each, and appends the outcomes to a shared list. The loop is woken once for
whatever outcomes have piled up since it last looked, not once per call.

The threads are anyio's own worker threads, so ``anyio.from_thread.run`` and
``anyio.from_thread.check_cancelled`` work inside the function, and the function runs in
a copy of the caller's context variables (one copy per thread, as anyio makes it).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from ._lowlevel import loop_scheduler

__all__ = ["Outcome", "ThreadCrew"]

#: ``(index, ok, value or exception, seconds the call took)``
Outcome = tuple[int, bool, Any, float]


class ThreadCrew:
    """Worker threads fed through a queue; created and driven from one event loop."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn
        self._queue: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._wake_pending = False
        self._event: anyio.Event | None = None
        self._schedule = loop_scheduler(anyio.lowlevel.current_token())
        #: Threads asked for so far (each is one ``run_sync`` call).
        self.started = 0
        self._stopping = False

    # -- event loop side -------------------------------------------------------------

    def submit(self, index: int, item: Any) -> None:
        """Queue one call; a free thread picks it up."""
        self._queue.put((index, item))

    def finish(self) -> None:
        """No more calls will be submitted: threads exit once the queue is empty."""
        for _ in range(self.started):
            self._queue.put(None)

    def stop(self) -> None:
        """Start no further queued call; threads exit after the call they are running."""
        if not self._stopping:
            self._stopping = True
            self.finish()

    def wake(self) -> None:
        """Wake :meth:`outcomes` (called on the loop, or scheduled from a thread)."""
        if self._event is not None:
            self._event.set()

    async def outcomes(self) -> list[Outcome]:
        """Return the outcomes that arrived since the last call, waiting if none has.

        May return an empty list after a :meth:`wake` with nothing new.
        """
        batch = self._take()
        if batch:
            return batch
        self._event = event = anyio.Event()
        try:
            await event.wait()
        finally:
            self._event = None
        return self._take()

    def _take(self) -> list[Outcome]:
        with self._lock:
            batch = self._outcomes
            self._outcomes = []
            self._wake_pending = False
        return batch

    # -- worker thread side ----------------------------------------------------------

    def work(self, timed: bool) -> None:
        """Run queued calls until told to stop; the body of one worker thread."""
        get = self._queue.get
        fn = self._fn
        lock = self._lock
        clock = time.perf_counter
        while not self._stopping:
            task = get()
            if task is None or self._stopping:
                return
            index, item = task
            started = clock() if timed else 0.0
            try:
                outcome: Outcome = (index, True, fn(item), 0.0)
            except BaseException as exc:  # handed to the loop, which decides
                outcome = (index, False, exc, 0.0)
            if timed:
                outcome = (*outcome[:3], clock() - started)
            with lock:
                self._outcomes.append(outcome)
                if self._wake_pending:
                    continue
                self._wake_pending = True
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                self._schedule(self.wake)
