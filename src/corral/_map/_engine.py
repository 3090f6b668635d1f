"""The state of one ``map`` or ``imap`` run, shared by every strategy that makes the calls.

:class:`Engine` checks the arguments before any work starts and decides where ``fn``
runs (its mode: coroutines on the loop, threads or processes) and how many calls may be
in flight (``limit``). It then keeps what every strategy shares:

- the input, read lazily by :meth:`Engine.take` under a window of items taken and not yet
  handed back (``2 * limit``, times the chunk size for processes; unbounded for ``map``);
- the results, handed back by :meth:`Engine.deliver` in order or in completion order, to
  :meth:`Engine.collected` (``map``) or :meth:`Engine.next_result` (``imap``);
- the first failure, with a note naming the item (or the input, or the progress sink),
  which stops the run; or, under ``return_exceptions``, exceptions kept as results;
- progress reports, and the messages of timeouts.

A :class:`Strategy` (one module each in this package) starts the workers in the run's
task group and calls back into the engine for each item; every method runs on the event
loop.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .._cluster import Cluster, Offload
from .._dask import DaskPool, dumps_function
from .._pickling import check_process_function
from .._process import ProcessPool, cpu_count, default_pool
from .._validate import (
    check_bool,
    check_callable,
    check_int,
    check_offload,
    check_timeout,
    check_type,
    type_error,
)

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = [
    "adaptive_chunksize",
    "DEFAULT_LIMITS",
    "MAX_CHUNK",
    "Engine",
    "ProgressSink",
    "Strategy",
    "is_async_callable",
]

#: Default ``limit`` when none is given and no cluster is: coroutines on the event loop,
#: threads (anyio's default thread count), and processes (``None``: the pool's size,
#: one worker per CPU).
DEFAULT_LIMITS: dict[str, int | None] = {"loop": 100, "thread": 40, "process": None}

#: The most items one worker process is sent at once (unless ``chunksize`` says more), to
#: keep memory bounded; the window of items taken ahead is counted in such chunks.
MAX_CHUNK = 1024


class ProgressSink(Protocol):
    """Anything with ``increment(n)``: told how many items completed, as they complete."""

    def increment(self, n: int = 1, /) -> object:
        """Record that ``n`` more items completed.

        Args:
            n: How many items completed since the last call (at least 1).

        Returns:
            Anything; corral ignores it (so ``Subtask.increment`` fits as it is).
        """


class Strategy(Protocol):
    """How the calls of one run are made: started once, in the run's task group."""

    def start(self, task_group: TaskGroup) -> None:
        """Start the first workers in ``task_group`` (the engine's), without waiting."""

    def stop(self) -> None:
        """Start no call not yet started (the run's task group is cancelled as well)."""


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Return whether calling ``fn`` gives a coroutine (partials and async __call__ too)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with async __call__
    return not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


class Engine:
    """The state of one map or imap run; every method runs on the event loop."""

    def __init__(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        limit: int | None,
        offload: Offload | ProcessPool | DaskPool | None,
        ordered: bool,
        return_exceptions: bool,
        chunksize: int | None,
        timeout: float | None,
        cluster: Cluster | None,
        progress: ProgressSink | None,
        collect: bool,
    ) -> None:
        check_callable("fn", fn)
        self.iterator: Iterator[Any] | None = None
        self.aiterator: AsyncIterator[Any] | None = None
        if isinstance(items, AsyncIterable):
            self.aiterator = aiter(items)
        elif isinstance(items, Iterable):
            self.iterator = iter(items)
        else:
            raise type_error("items", "an iterable or an async iterable", items)
        if cluster is not None:
            check_type("cluster", cluster, Cluster, "a corral.Cluster or None")
        if progress is not None and not callable(getattr(progress, "increment", None)):
            raise type_error(
                "progress",
                "an object with an increment(n) method or None",
                progress,
                "pass db.progress's run or subtask, or anything with increment(n)",
            )
        check_bool("ordered", ordered)
        check_bool("return_exceptions", return_exceptions)
        self.timeout: float | None = check_timeout(timeout)
        check_int("chunksize", chunksize, minimum=1, optional=True)
        check_int("limit", limit, minimum=1, optional=True)

        self.pool: ProcessPool | None = None
        self.dask: DaskPool | None = None
        self.dask_fn: bytes = b""
        is_async = is_async_callable(fn)
        if offload is not None and not isinstance(offload, ProcessPool | DaskPool):
            check_offload(offload)
        self.mode: str
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
            elif isinstance(where, DaskPool):
                where._open_client()  # raises unless the pool is open
                self.dask_fn = dumps_function(fn)
                self.dask = where
                self.mode = "dask"
            else:
                self.mode = "thread"
        chunked = self.mode in ("process", "dask")
        if chunksize is not None and not chunked:
            raise ValueError(
                f"chunksize applies to offload='process' only (and to a DaskPool), and fn runs "
                f"{'on the event loop' if self.mode == 'loop' else 'in threads'}; drop chunksize"
            )
        if chunked and self.timeout is not None and (chunksize or 1) > 1:
            raise ValueError(
                "timeout is per item, so with offload='process' (or a DaskPool) items are "
                "sent one at a time; drop chunksize (or set it to 1), or drop timeout"
            )

        if limit is None:
            if cluster is not None:
                limit = cluster.capacity
            elif self.pool is not None:
                limit = self.pool.max_workers
            elif self.dask is not None:
                limit = self.dask.threads
            else:
                limit = DEFAULT_LIMITS[self.mode] or cpu_count()
        self.fn: Callable[..., Any] = fn
        self.limit: int = limit
        self.ordered: bool = ordered
        self.return_exceptions: bool = return_exceptions
        self.cluster: Cluster | None = cluster
        self.progress: ProgressSink | None = progress
        self.collect: bool = collect

        self.chunksize: int | None = chunksize
        self.max_chunk: int = 1 if not chunked else (chunksize or MAX_CHUNK)
        if chunked and self.timeout is not None:
            self.chunksize = self.max_chunk = 1
        self.length_hint: int = operator.length_hint(items) if self.iterator is not None else 0
        self.window: float = math.inf if collect else 2 * limit * self.max_chunk

        self.taken: int = 0
        self.yielded: int = 0
        self.spawned: int = 0
        self.exhausted: bool = False
        self.stopping: bool = False
        self.finished: bool = False
        self.error: BaseException | None = None
        self.error_raised: bool = False
        self.results: dict[int, Any] = {}
        self.arrivals: deque[tuple[int, Any]] = deque()
        self.next_index: int = 0
        self.consumer_event: anyio.Event | None = None
        self.window_event: anyio.Event | None = None
        self.input_lock: anyio.Lock | None = None
        self.strategy: Strategy | None = None
        self.task_group: TaskGroup | None = None

    # -- running ---------------------------------------------------------------------

    async def run(self, strategy: Strategy) -> None:
        """Run ``strategy``'s workers until the input is exhausted, a failure, or cancellation."""
        if self.aiterator is not None:
            self.input_lock = anyio.Lock()
        self.strategy = strategy
        try:
            async with anyio.create_task_group() as tg:
                self.task_group = tg
                self.spawned = 1
                strategy.start(tg)
        finally:
            self.finished = True
            self.wake_consumer()

    def stop(self) -> None:
        """Cancel every call in flight and stop pulling input."""
        self.stopping = True
        if self.strategy is not None:
            self.strategy.stop()
        if self.task_group is not None:
            self.task_group.cancel_scope.cancel()

    def fail(self, exc: BaseException, note: str | None) -> None:
        """Keep ``exc`` (with ``note``) as the run's error unless one is kept; stop the run."""
        if self.error is None:
            if note is not None:
                exc.add_note(note)
            self.error = exc
            self.wake_consumer()
        self.stop()

    def spawn_more(self, worker: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start one more ``worker`` unless ``limit`` run, the input is done or the run stops."""
        if self.spawned < self.limit and not self.exhausted and not self.stopping:
            self.spawned += 1
            assert self.task_group is not None
            self.task_group.start_soon(worker)

    # -- input -----------------------------------------------------------------------

    def input_failed(self, exc: Exception) -> None:
        """Fail the run with ``exc``, raised by the input iterable."""
        self.exhausted = True
        self.fail(exc, f"corral: raised by the input iterable after {self.taken} items")

    async def _wait_for_window(self) -> None:
        while self.taken - self.yielded >= self.window and not self.stopping:
            if self.window_event is None:
                self.window_event = anyio.Event()
            await self.window_event.wait()

    async def take(self, count: int) -> list[tuple[int, Any]]:
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
                self.input_failed(exc)
                return []
            taken.append((self.taken, item))
            self.taken += 1
        return taken

    # -- output ----------------------------------------------------------------------

    def deliver(self, index: int, value: Any) -> None:
        """Hand out the result (or kept exception) ``value`` of item ``index``."""
        if self.collect:
            self.results[index] = value
        elif self.ordered:
            self.results[index] = value
            if index == self.next_index:
                self.wake_consumer()
        else:
            self.arrivals.append((index, value))
            self.wake_consumer()

    def failed_item(self, index: int, exc: BaseException) -> bool:
        """Handle a failed call; return whether the worker should go on."""
        if self.return_exceptions:
            self.deliver(index, exc)
            return True
        self.fail(exc, f"corral: raised by {self.fn_name()} on item {index} of the input")
        return False

    def report(self, count: int) -> bool:
        """Tell the progress sink; return whether the worker should go on."""
        if self.progress is None:
            return True
        try:
            self.progress.increment(count)
        except Exception as exc:
            self.fail(exc, "corral: raised by progress.increment")
            return False
        return True

    def fn_name(self) -> str:
        """Return how messages name ``fn``."""
        # A wrapper may name what it runs (the blocking facade: "a Task").
        name = getattr(self.fn, "_corral_name", None) or getattr(self.fn, "__qualname__", None)
        return str(name) if name else repr(self.fn)

    def timeout_message(self, index: int) -> str:
        """Return the message of the ``TimeoutError`` of item ``index``."""
        name = self.fn_name()
        return f"{name} ran over the timeout of {self.timeout:g} s on item {index}"

    def wake_consumer(self) -> None:
        """Wake ``imap``'s consumer, if it waits for a result."""
        if self.consumer_event is not None:
            self.consumer_event.set()
            self.consumer_event = None

    def collected(self) -> list[Any]:
        """Return a finished map's results, in input order (or completion order)."""
        if self.ordered:
            results = self.results
            return list(map(results.__getitem__, range(self.taken)))
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


def adaptive_chunksize(engine: Engine, seconds_per_item: float | None, target: float) -> int:
    """Return the next chunk's size: ``target`` seconds of work, as measured so far.

    The caller's ``chunksize`` if it gave one; one item until a chunk has been timed;
    then as many items as take ``target`` seconds, tapered near the end of an input of
    known length (so that the last chunks spread over every worker), at most
    ``max_chunk``.
    """
    if engine.chunksize is not None:
        return engine.chunksize
    if seconds_per_item is None:
        return 1
    size = target / max(seconds_per_item, 1e-7)
    if engine.length_hint:
        remaining = max(engine.length_hint - engine.taken, 0)
        size = min(size, remaining / (2 * engine.limit))
    return max(1, min(int(size), engine.max_chunk))
