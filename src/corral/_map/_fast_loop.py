"""The fast path of ``map`` over coroutines: the common case, the fewest operations per item.

Taken by ``map`` (not ``imap``) of a coroutine function over a plain iterable, with no
cluster and no timeout. Up to ``limit`` workers share one ``zip(count(), iterator)`` and
store each result straight into the engine's results; none takes the input lock, tests
a stop flag or counts the items taken until it ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

from ._engine import Engine

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["FastLoop"]

#: The workers yield at every item whose index is a multiple of this (shared by all of
#: them, so the cost is per 1024 items in all), even if the coroutines never do.
_CHECKPOINT_EVERY = 1024


class FastLoop:
    """Coroutine workers pulling ``(index, item)`` from one shared enumeration of the input."""

    __slots__ = ("counter", "engine", "enumerated")

    def __init__(self, engine: Engine) -> None:
        assert engine.iterator is not None
        self.engine = engine
        self.counter = itertools.count()
        self.enumerated: Iterator[tuple[int, Any]] = zip(
            self.counter, engine.iterator, strict=False
        )

    def start(self, task_group: TaskGroup) -> None:
        """Start the first worker; each starts the next until ``limit`` run."""
        task_group.start_soon(self.worker)

    def stop(self) -> None:
        """Nothing to do: cancelling the task group stops every worker."""

    async def worker(self) -> None:
        """Call ``fn`` on items until the input is exhausted or the run fails."""
        # No stop flag is tested: stop() cancels this task at its next checkpoint, and an
        # exhausted iterator keeps raising StopIteration to every worker. ``engine.taken``
        # is kept up to date only when a worker ends (the largest index any worker took,
        # plus 1).
        engine = self.engine
        fn = engine.fn
        results = engine.results
        progress = engine.progress
        checkpoint = anyio.lowlevel.checkpoint
        spawning = True
        index = -1
        try:
            for index, item in self.enumerated:
                if spawning:
                    engine.spawn_more(self.worker)
                    spawning = engine.spawned < engine.limit
                try:
                    results[index] = await fn(item)
                except Exception as exc:
                    if not engine.failed_item(index, exc):
                        return
                if progress is not None and not engine.report(1):
                    return
                if not index % _CHECKPOINT_EVERY:
                    await checkpoint()
        except Exception as exc:  # only the input iterator can raise here
            # zip() drew the failed item's index from the counter before the input
            # raised: the next number it gives is one past that index.
            engine.taken = next(self.counter) - 1
            engine.input_failed(exc)
            return
        finally:
            engine.taken = max(engine.taken, index + 1)
        engine.exhausted = True
