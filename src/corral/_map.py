"""``map`` and ``imap``: a bounded worker pool over lazy input.

One engine serves both. At most ``limit`` workers (tasks) run; each pulls the next
item from the input only when it is free, so the input is read lazily and never more
than O(limit) items are taken and not yet handed back. ``imap`` in order also stops
pulling when the next result in order is slow (a window of ``2 * limit`` items, times
the chunk size for processes), rather than buffer without bound.

Failures: with ``return_exceptions=False`` the first exception cancels the remaining
calls and is raised itself (never wrapped in an ExceptionGroup), with a note naming the
item; results that had already completed are still handed out first by ``imap``. With
``return_exceptions=True`` every item runs and exceptions stand in place of results.
An exception from the input iterable is always raised.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import itertools
import math
import operator
import time
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar, overload

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._cluster import Cluster, Offload
from ._crew import ThreadCrew
from ._pickling import check_process_function
from ._process import ProcessPool, cpu_count, default_pool
from ._validate import check_offload, check_positive_int, check_timeout

__all__ = [
    "DEFAULT_LIMITS",
    "MapResults",
    "ProgressSink",
    "imap",
    "map",
]

T = TypeVar("T")
R = TypeVar("R")

#: Default ``limit`` when none is given and no cluster is: coroutines on the event loop,
#: threads (anyio's default thread count), and processes (``None``: the pool's size,
#: one worker per CPU).
DEFAULT_LIMITS: dict[str, int | None] = {"loop": 100, "thread": 40, "process": None}

#: Adaptive chunks aim for this much compute per round trip to a worker process.
_CHUNK_SECONDS = 0.02
#: ...and never carry more items than this, to keep memory bounded.
_MAX_CHUNK = 1024
#: A worker running coroutines yields to the event loop at least every this many items,
#: even if the coroutines themselves never do.
_CHECKPOINT_EVERY = 128
#: The fast path of ``map`` over coroutines yields at every item whose index is a
#: multiple of this (shared by all its workers, so the cost is per 1024 items in all).
_FAST_CHECKPOINT_EVERY = 1024


class ProgressSink(Protocol):
    """Anything with ``increment(n)``: told how many items completed, as they complete."""

    def increment(self, n: int = 1, /) -> object:
        """Record that ``n`` more items completed."""


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Return whether calling ``fn`` gives a coroutine (partials and async __call__ too)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with async __call__
    return not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


class _Engine:
    """The state of one map or imap run; every method runs on the event loop."""

    def __init__(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        limit: int | None,
        offload: Offload | ProcessPool | None,
        ordered: bool,
        return_exceptions: bool,
        chunksize: int | None,
        timeout: float | None,
        cluster: Cluster | None,
        progress: ProgressSink | None,
        collect: bool,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__} {fn!r}")
        self.iterator: Iterator[Any] | None = None
        self.aiterator: AsyncIterator[Any] | None = None
        if isinstance(items, AsyncIterable):
            self.aiterator = aiter(items)
        elif isinstance(items, Iterable):
            self.iterator = iter(items)
        else:
            raise TypeError(
                f"items must be an iterable or an async iterable, got "
                f"{type(items).__name__} {items!r:.60}"
            )
        if cluster is not None and not isinstance(cluster, Cluster):
            raise TypeError(f"cluster must be a corral.Cluster or None, got {cluster!r}")
        if progress is not None and not callable(getattr(progress, "increment", None)):
            raise TypeError(
                f"progress must have an increment(n) method, got {type(progress).__name__}"
            )
        if not isinstance(ordered, bool) or not isinstance(return_exceptions, bool):
            raise TypeError("ordered and return_exceptions must be True or False")
        self.timeout = check_timeout(timeout)
        if chunksize is not None:
            check_positive_int("chunksize", chunksize)
        if limit is not None:
            check_positive_int("limit", limit)

        self.pool: ProcessPool | None = None
        is_async = is_async_callable(fn)
        if offload is not None and not isinstance(offload, ProcessPool):
            check_offload(offload)
        if is_async:
            if offload is not None:
                raise TypeError(
                    f"fn {getattr(fn, '__qualname__', fn)!s} is an async function: it runs on "
                    f"the event loop, so offload={offload!r} does not apply; pass a plain "
                    f"function to offload it, or leave offload unset"
                )
            self.mode = "loop"
        else:
            where = offload if offload is not None else (cluster and cluster.offload)
            if isinstance(where, ProcessPool) or where == "process":
                check_process_function(fn)
                self.pool = where if isinstance(where, ProcessPool) else default_pool()
                self.mode = "process"
            else:
                self.mode = "thread"
        if chunksize is not None and self.mode != "process":
            raise ValueError(
                f"chunksize applies to offload='process' only, and fn runs "
                f"{'on the event loop' if self.mode == 'loop' else 'in threads'}; drop chunksize"
            )
        if self.mode == "process" and self.timeout is not None and (chunksize or 1) > 1:
            raise ValueError(
                "timeout is per item, so with offload='process' items are sent one at a "
                "time; drop chunksize (or set it to 1), or drop timeout"
            )

        if limit is None:
            if cluster is not None:
                limit = cluster.capacity
            elif self.pool is not None:
                limit = self.pool.max_workers
            else:
                limit = DEFAULT_LIMITS[self.mode] or cpu_count()
        self.fn = fn
        self.limit = limit
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.cluster = cluster
        self.progress = progress
        self.collect = collect

        self.chunksize = chunksize
        self.max_chunk = 1 if self.mode != "process" else (chunksize or _MAX_CHUNK)
        if self.mode == "process" and self.timeout is not None:
            self.chunksize = self.max_chunk = 1
        self.length_hint = operator.length_hint(items) if self.iterator is not None else 0
        self.seconds_per_item: float | None = None
        self.window = math.inf if collect else 2 * limit * self.max_chunk

        self.taken = 0
        self.yielded = 0
        self.spawned = 0
        self.exhausted = False
        self.stopping = False
        self.finished = False
        self.error: BaseException | None = None
        self.error_raised = False
        self.results: dict[int, Any] = {}
        self.arrivals: deque[tuple[int, Any]] = deque()
        self.next_index = 0
        self.consumer_event: anyio.Event | None = None
        self.window_event: anyio.Event | None = None
        self.input_lock: anyio.Lock | None = None
        self.counter = itertools.count()
        self.enumerated: Iterator[tuple[int, Any]] = iter(())
        self.thread_limiter: anyio.CapacityLimiter | None = None
        self.crew: ThreadCrew | None = None
        self.in_flight = 0
        self.feeding = True
        self.room_event: anyio.Event | None = None
        self.task_group: anyio.abc.TaskGroup | None = None

    # -- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run workers until the input is exhausted, a failure, or cancellation."""
        if self.aiterator is not None:
            self.input_lock = anyio.Lock()
        if self.mode == "thread":
            self.thread_limiter = anyio.CapacityLimiter(self.limit)
        fast = (
            self.collect and self.iterator is not None and self.cluster is None and not self.timeout
        )
        if fast:
            assert self.iterator is not None
            self.enumerated = zip(self.counter, self.iterator, strict=False)
        worker = {
            "loop": self._fast_loop_worker if fast else self._loop_worker,
            "thread": self._thread_worker,
            "process": self._process_worker,
        }[self.mode]
        try:
            async with anyio.create_task_group() as tg:
                self.task_group = tg
                self.spawned = 1
                if self.mode == "thread" and self.cluster is None:
                    self.crew = ThreadCrew(self.fn)
                    tg.start_soon(self._crew_feeder)
                    tg.start_soon(self._crew_collector)
                else:
                    tg.start_soon(worker)
        finally:
            self.finished = True
            self._wake_consumer()

    def stop(self) -> None:
        """Cancel every call in flight and stop pulling input."""
        self.stopping = True
        if self.crew is not None:
            self.crew.stop()
        if self.task_group is not None:
            self.task_group.cancel_scope.cancel()

    def _fail(self, exc: BaseException, note: str | None) -> None:
        if self.error is None:
            if note is not None:
                exc.add_note(note)
            self.error = exc
            self._wake_consumer()
        self.stop()

    def _spawn_more(self, worker: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self.spawned < self.limit and not self.exhausted and not self.stopping:
            self.spawned += 1
            assert self.task_group is not None
            self.task_group.start_soon(worker)

    # -- input -----------------------------------------------------------------------

    def _input_failed(self, exc: Exception) -> None:
        self.exhausted = True
        self._fail(exc, f"corral: raised by the input iterable after {self.taken} items")

    async def _wait_for_window(self) -> None:
        while self.taken - self.yielded >= self.window and not self.stopping:
            if self.window_event is None:
                self.window_event = anyio.Event()
            await self.window_event.wait()

    async def _take(self, count: int) -> list[tuple[int, Any]]:
        """Pull up to ``count`` items (at least one unless the input is done)."""
        if self.input_lock is not None:
            async with self.input_lock:
                return await self._take_locked(count)
        return await self._take_locked(count)

    async def _take_locked(self, count: int) -> list[tuple[int, Any]]:
        await self._wait_for_window()
        room = self.window - (self.taken - self.yielded)
        if room < count:
            count = max(1, int(room))
        taken: list[tuple[int, Any]] = []
        while len(taken) < count and not self.exhausted and not self.stopping:
            try:
                if self.aiterator is not None:
                    item = await self.aiterator.__anext__()
                else:
                    assert self.iterator is not None
                    item = next(self.iterator)
            except (StopIteration, StopAsyncIteration):
                self.exhausted = True
                break
            except Exception as exc:
                self._input_failed(exc)
                return []
            taken.append((self.taken, item))
            self.taken += 1
        return taken

    # -- output ----------------------------------------------------------------------

    def _deliver(self, index: int, value: Any) -> None:
        if self.collect:
            self.results[index] = value
        elif self.ordered:
            self.results[index] = value
            if index == self.next_index:
                self._wake_consumer()
        else:
            self.arrivals.append((index, value))
            self._wake_consumer()

    def _failed_item(self, index: int, exc: BaseException) -> bool:
        """Handle a failed call; return whether the worker should go on."""
        if self.return_exceptions:
            self._deliver(index, exc)
            return True
        self._fail(exc, f"corral: raised by {self._fn_name()} on item {index} of the input")
        return False

    def _report(self, count: int) -> bool:
        """Tell the progress sink; return whether the worker should go on."""
        if self.progress is None:
            return True
        try:
            self.progress.increment(count)
        except Exception as exc:
            self._fail(exc, "corral: raised by progress.increment")
            return False
        return True

    def _wake_consumer(self) -> None:
        if self.consumer_event is not None:
            self.consumer_event.set()
            self.consumer_event = None

    def collected(self) -> list[Any]:
        """Return a finished map's results, in input order (or completion order)."""
        if self.ordered:
            results = self.results
            return list(builtins.map(results.__getitem__, range(self.taken)))
        return list(self.results.values())

    async def next_result(self) -> tuple[int, Any]:
        """Return the next ``(index, value)`` for imap, in order if ``ordered``."""
        while True:
            if self.ordered:
                index = self.next_index
                if index in self.results:
                    value = self.results.pop(index)
                    self.next_index = index + 1
                    break
            elif self.arrivals:
                index, value = self.arrivals.popleft()
                break
            if self.error is not None and not self.error_raised:
                self.error_raised = True
                raise self.error
            if self.finished:
                raise StopAsyncIteration
            event = self.consumer_event = anyio.Event()
            await event.wait()
        self.yielded += 1
        if self.window_event is not None:
            self.window_event.set()
            self.window_event = None
        return index, value

    # -- workers ---------------------------------------------------------------------

    async def _fast_loop_worker(self) -> None:
        # map() of a coroutine function over a plain iterator, with no cluster and no
        # timeout: the common case, kept to the fewest operations per item. No stop flag
        # is tested: stop() cancels this task at its next checkpoint, and an exhausted
        # iterator keeps raising StopIteration to every worker. ``self.taken`` is kept
        # up to date only when a worker ends (the largest index any worker took, plus 1).
        fn = self.fn
        results = self.results
        progress = self.progress
        checkpoint = anyio.lowlevel.checkpoint
        spawning = True
        index = -1
        try:
            for index, item in self.enumerated:
                if spawning:
                    self._spawn_more(self._fast_loop_worker)
                    spawning = self.spawned < self.limit
                try:
                    results[index] = await fn(item)
                except Exception as exc:
                    if not self._failed_item(index, exc):
                        return
                if progress is not None and not self._report(1):
                    return
                if not index % _FAST_CHECKPOINT_EVERY:
                    await checkpoint()
        except Exception as exc:  # only the input iterator can raise here
            # zip() drew the failed item's index from the counter before the input
            # raised: the next number it gives is one past that index.
            self.taken = next(self.counter) - 1
            self._input_failed(exc)
            return
        finally:
            self.taken = max(self.taken, index + 1)
        self.exhausted = True

    async def _loop_worker(self) -> None:
        fn = self.fn
        timeout = self.timeout
        cluster = self.cluster
        progress = self.progress
        done = 0
        while not self.stopping:
            chunk = await self._take(1)
            if not chunk:
                return
            [(index, item)] = chunk
            self._spawn_more(self._loop_worker)
            try:
                if cluster is not None:
                    async with cluster.slot():
                        value = await self._call_coroutine(fn, item, timeout, index)
                elif timeout is not None:
                    value = await self._call_coroutine(fn, item, timeout, index)
                else:
                    value = await fn(item)
            except Exception as exc:
                if not self._failed_item(index, exc):
                    return
            else:
                self._deliver(index, value)
            if progress is not None and not self._report(1):
                return
            done += 1
            if done % _CHECKPOINT_EVERY == 0:
                await anyio.lowlevel.checkpoint()

    async def _call_coroutine(
        self, fn: Callable[..., Any], item: Any, timeout: float | None, index: int
    ) -> Any:
        if timeout is None:
            return await fn(item)
        with anyio.move_on_after(timeout) as scope:
            return await fn(item)
        if scope.cancelled_caught:
            raise TimeoutError(self._timeout_message(index))
        raise AssertionError("unreachable")  # pragma: no cover

    def _fn_name(self) -> str:
        # A wrapper may name what it runs (the blocking facade: "a Task").
        name = getattr(self.fn, "_corral_name", None) or getattr(self.fn, "__qualname__", None)
        return str(name) if name else repr(self.fn)

    def _timeout_message(self, index: int) -> str:
        name = self._fn_name()
        return f"{name} ran over the timeout of {self.timeout:g} s on item {index}"

    async def _thread_worker(self) -> None:
        fn = self.fn
        timeout = self.timeout
        cluster = self.cluster
        progress = self.progress
        limiter = self.thread_limiter
        run_sync = anyio.to_thread.run_sync
        call = fn if timeout is None else functools.partial(_timed_call, fn)
        while not self.stopping:
            chunk = await self._take(1)
            if not chunk:
                return
            [(index, item)] = chunk
            self._spawn_more(self._thread_worker)
            try:
                if cluster is not None:
                    async with cluster.slot():
                        value = await run_sync(call, item, limiter=limiter)
                else:
                    value = await run_sync(call, item, limiter=limiter)
                if timeout is not None:
                    value, seconds = value
                    if seconds > timeout:
                        raise TimeoutError(self._timeout_message(index))
            except Exception as exc:
                if not self._failed_item(index, exc):
                    return
            else:
                self._deliver(index, value)
            if progress is not None and not self._report(1):
                return

    # A thread crew (no cluster): a feeder task queues items for up to ``limit`` threads,
    # a collector task takes their outcomes back in batches.

    async def _crew_feeder(self) -> None:
        crew = self.crew
        assert crew is not None
        assert self.task_group is not None
        # Up to ``limit`` calls run; as many again wait in the queue, so that a thread
        # that finishes a call starts the next without waiting for the event loop.
        cap = 2 * self.limit
        finished = False
        try:
            while not self.stopping:
                while self.in_flight >= cap:
                    self.room_event = anyio.Event()
                    await self.room_event.wait()
                chunk = await self._take(cap - self.in_flight)
                if not chunk:
                    break
                for index, item in chunk:
                    crew.submit(index, item)
                self.in_flight += len(chunk)
                while crew.started < self.limit and crew.started < self.in_flight:
                    crew.started += 1
                    self.task_group.start_soon(self._crew_thread)
            finished = True
        finally:
            self.feeding = False
            if finished:
                crew.finish()
            else:
                crew.stop()
            crew.wake()

    async def _crew_thread(self) -> None:
        assert self.crew is not None
        await anyio.to_thread.run_sync(
            self.crew.work, self.timeout is not None, limiter=self.thread_limiter
        )

    async def _crew_collector(self) -> None:
        crew = self.crew
        assert crew is not None
        timeout = self.timeout
        progress = self.progress
        try:
            while self.feeding or self.in_flight:
                batch = await crew.outcomes()
                if not batch:
                    continue
                for index, ok, value, seconds in batch:
                    if ok and timeout is not None and seconds > timeout:
                        ok, value = False, TimeoutError(self._timeout_message(index))
                    if ok:
                        self._deliver(index, value)
                    elif not isinstance(value, Exception):
                        self._fail(value, None)  # KeyboardInterrupt, SystemExit: as is
                        return
                    elif not self._failed_item(index, value):
                        return
                self.in_flight -= len(batch)
                if self.room_event is not None:
                    self.room_event.set()
                    self.room_event = None
                if progress is not None and not self._report(len(batch)):
                    return
                await anyio.lowlevel.checkpoint()  # let the feeder refill the queue
        finally:
            crew.stop()  # normally a no-op; on cancellation, no queued call starts

    def _next_chunksize(self) -> int:
        if self.chunksize is not None:
            return self.chunksize
        if self.seconds_per_item is None:
            return 1
        size = _CHUNK_SECONDS / max(self.seconds_per_item, 1e-7)
        if self.length_hint:
            # Taper near the end so that the last chunks spread over every worker.
            remaining = max(self.length_hint - self.taken, 0)
            size = min(size, remaining / (2 * self.limit))
        return max(1, min(int(size), self.max_chunk))

    async def _process_worker(self) -> None:
        pool = self.pool
        assert pool is not None
        fn = self.fn
        cluster = self.cluster
        progress = self.progress
        timeout = self.timeout
        while not self.stopping:
            chunk = await self._take(self._next_chunksize())
            if not chunk:
                return
            self._spawn_more(self._process_worker)
            calls = [((item,), None) for _, item in chunk]
            try:
                if cluster is not None:
                    async with cluster.slot():
                        outcomes, seconds = await pool._run_calls_timed(fn, calls, timeout=timeout)
                else:
                    outcomes, seconds = await pool._run_calls_timed(fn, calls, timeout=timeout)
            except Exception as exc:  # the pool itself failed: closed, broken initializer
                self._fail(exc, f"corral: raised by the process pool on items {chunk[0][0]}+")
                return
            if seconds > 0:
                per_item = seconds / len(chunk)
                previous = self.seconds_per_item
                self.seconds_per_item = (
                    per_item if previous is None else 0.7 * previous + 0.3 * per_item
                )
            for (index, _), (ok, value) in zip(chunk, outcomes, strict=True):
                if ok:
                    self._deliver(index, value)
                elif not self._failed_item(index, value):
                    return
            if progress is not None and not self._report(len(chunk)):
                return


def _timed_call(fn: Callable[[Any], Any], item: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(item)
    return value, time.perf_counter() - started


class MapResults(Generic[R]):
    """The async iterator of ``(index, result)`` pairs that ``imap`` hands out.

    ``index`` is the item's position in the input. Iterate it inside the ``async with``
    block; leaving the block cancels whatever is still in flight.
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine

    def __aiter__(self) -> MapResults[R]:
        return self

    async def __anext__(self) -> tuple[int, R]:
        return await self._engine.next_result()


class IMap(Generic[R]):
    """The async context manager returned by :func:`imap`."""

    __slots__ = ("_engine", "_entered", "_task_group")

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine
        self._task_group: anyio.abc.TaskGroup | None = None
        self._entered = False

    async def __aenter__(self) -> MapResults[R]:
        if self._entered:
            raise RuntimeError("an imap(...) can be entered only once; call imap again")
        self._entered = True
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._engine.run)
        return MapResults(self._engine)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._engine.stop()
        if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
            # The body failed: stop the workers, then let that exception propagate
            # as it is, not wrapped in an ExceptionGroup by the task group.
            await self._task_group.__aexit__(None, None, None)
            return None
        return await self._task_group.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> None:
        raise TypeError(
            "imap(...) is an async context manager: write "
            "'async with corral.imap(fn, items) as results: async for i, r in results: ...'"
        )


@overload
async def map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: Literal[False] = ...,
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> list[R]: ...
@overload
async def map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: Literal[True],
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> list[R | Exception]: ...
@overload
async def map(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: Literal[False] = ...,
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> list[R]: ...
@overload
async def map(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: Literal[True],
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> list[R | Exception]: ...
@overload
async def map(
    fn: Callable[[T], Any],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: bool,
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> list[Any]: ...
async def map(
    fn: Callable[[Any], Any],
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    limit: int | None = None,
    offload: Offload | ProcessPool | None = None,
    ordered: bool = True,
    return_exceptions: bool = False,
    chunksize: int | None = None,
    timeout: float | None = None,
    cluster: Cluster | None = None,
    progress: ProgressSink | None = None,
) -> list[Any]:
    """Call ``fn`` on every item, at most ``limit`` at once, and return the results.

    Args:
        fn: A coroutine function (runs on the event loop) or a plain function (runs in a
            thread, or in a process with ``offload="process"``). It takes one item.
        items: Any iterable or async iterable; pulled lazily, one item per free worker.
        limit: The most calls in flight at once. Defaults: the cluster's capacity if a
            cluster is given, else 100 coroutines, 40 threads, or one per worker of the
            process pool (the CPU count).
        offload: Where a plain function runs: ``"thread"`` (the default), ``"process"``
            (the default process pool), or a :class:`~corral.ProcessPool`.
        ordered: ``True`` returns results in input order, ``False`` in completion order.
        return_exceptions: ``False`` raises the first exception (itself, not an
            ExceptionGroup) after cancelling the rest; ``True`` runs every item and puts
            exceptions in place of results.
        chunksize: Items per round trip to a worker process (processes only). ``None``
            adapts it so each round trip carries about 20 ms of work.
        timeout: Seconds per item. An item that overruns fails with ``TimeoutError``.
            Coroutines are cancelled and process workers killed at the deadline; a
            thread cannot be interrupted, so its call fails when it returns late.
        cluster: A :class:`~corral.Cluster` whose capacity this map shares: each call in
            flight holds one of its slots.
        progress: Anything with ``increment(n)``; told as items complete (successes, and
            failures under ``return_exceptions=True``).

    Returns:
        One result per item.

    Raises:
        TypeError, ValueError: Bad arguments, before any work starts.
        NotPicklableError: ``fn`` cannot run in a process (before any work starts).

    """
    engine = _Engine(
        fn,
        items,
        limit=limit,
        offload=offload,
        ordered=ordered,
        return_exceptions=return_exceptions,
        chunksize=chunksize,
        timeout=timeout,
        cluster=cluster,
        progress=progress,
        collect=True,
    )
    await engine.run()
    if engine.error is not None:
        raise engine.error
    return engine.collected()


@overload
def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: Literal[False] = ...,
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> IMap[R]: ...
@overload
def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: Literal[True],
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> IMap[R | Exception]: ...
@overload
def imap(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: Literal[False] = ...,
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> IMap[R]: ...
@overload
def imap(
    fn: Callable[[T], R],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: Literal[True],
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> IMap[R | Exception]: ...
@overload
def imap(
    fn: Callable[[T], Any],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | None = ...,
    ordered: bool = ...,
    return_exceptions: bool,
    chunksize: int | None = ...,
    timeout: float | None = ...,
    cluster: Cluster | None = ...,
    progress: ProgressSink | None = ...,
) -> IMap[Any]: ...
def imap(
    fn: Callable[[Any], Any],
    items: Iterable[Any] | AsyncIterable[Any],
    *,
    limit: int | None = None,
    offload: Offload | ProcessPool | None = None,
    ordered: bool = True,
    return_exceptions: bool = False,
    chunksize: int | None = None,
    timeout: float | None = None,
    cluster: Cluster | None = None,
    progress: ProgressSink | None = None,
) -> IMap[Any]:
    """Stream ``(index, result)`` pairs as calls of ``fn`` complete, in bounded memory.

    Takes the same arguments as :func:`map`. Use it as
    ``async with corral.imap(fn, items) as results: async for index, value in results``.
    Arguments are checked at once, when ``imap`` is called. Memory stays bounded
    whatever the size of the input: in order (the default), input is not pulled more
    than ``2 * limit`` items (times the chunk size for processes) ahead of the next
    result to hand out. Leaving the block early (``break``, an exception,
    cancellation) cancels the calls in flight and stops pulling input.
    """
    engine = _Engine(
        fn,
        items,
        limit=limit,
        offload=offload,
        ordered=ordered,
        return_exceptions=return_exceptions,
        chunksize=chunksize,
        timeout=timeout,
        cluster=cluster,
        progress=progress,
        collect=False,
    )
    return IMap(engine)
