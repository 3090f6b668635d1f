"""``map`` and ``imap``, the functions users call, and the results ``imap`` hands out.

Both check their arguments at once (building an ``Engine``) and pick the
strategy that makes the calls: the fast path or one item at a time per worker for
coroutines, a crew of threads or a thread per call (with a cluster) for plain functions,
chunks sent to a process pool with ``offload="process"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

import anyio

from .._cluster import Cluster, Offload
from .._dask import DaskPool
from .._process import ProcessPool
from ._dask import DaskChunks
from ._engine import Engine as _Engine  # private: IMap and MapResults are made by imap only
from ._engine import ProgressSink, Strategy
from ._fast_loop import FastLoop
from ._loop import Loop
from ._processes import Processes
from ._thread_crew import Crew
from ._threads import Threads

__all__ = ["IMap", "MapResults", "imap", "map"]

T = TypeVar("T")
R = TypeVar("R")


def _strategy(engine: _Engine) -> Strategy:
    """Return the strategy that makes the calls of ``engine``'s run."""
    if engine.mode == "loop":
        if (
            engine.collect
            and engine.iterator is not None
            and engine.cluster is None
            and not engine.timeout
        ):
            return FastLoop(engine)
        return Loop(engine)
    if engine.mode == "thread":
        return Threads(engine) if engine.cluster is not None else Crew(engine)
    if engine.mode == "dask":
        return DaskChunks(engine)
    return Processes(engine)


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
    """The async context manager returned by :func:`imap`; made by :func:`imap` only.

    ``async with`` it once: entering starts the workers and returns the
    :class:`MapResults` to iterate; leaving cancels what is still in flight. Iterating
    it directly (without ``async with``) raises ``TypeError``.
    """

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
        self._task_group.start_soon(self._engine.run, _strategy(self._engine))
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
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = None,
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
            cluster is given, else 100 coroutines, 40 threads, one per worker of the
            process pool (the CPU count), or one per worker thread of a DaskPool.
        offload: Where a plain function runs: ``"thread"`` (the default), ``"process"``
            (the default process pool), a :class:`~corral.ProcessPool`, or a
            :class:`corral.dask.DaskPool` (a Dask cluster).
        ordered: ``True`` returns results in input order, ``False`` in completion order.
        return_exceptions: ``False`` raises the first exception (itself, not an
            ExceptionGroup) after cancelling the rest; ``True`` runs every item and puts
            exceptions in place of results.
        chunksize: Items per round trip to a worker process (processes only), or per
            Dask task. ``None`` adapts it so each carries about 20 ms of work (50 ms
            for Dask).
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
    await engine.run(_strategy(engine))
    if engine.error is not None:
        raise engine.error
    return engine.collected()


@overload
def imap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | None = ...,
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = ...,
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
    offload: Offload | ProcessPool | DaskPool | None = None,
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

    Args:
        fn: A coroutine function, or a plain function (threads, or processes with
            ``offload="process"``), as for :func:`map`.
        items: Any iterable or async iterable, even endless; pulled lazily.
        limit: The most calls in flight at once (defaults as for :func:`map`).
        offload: Where a plain function runs: ``"thread"``, ``"process"``, a
            :class:`~corral.ProcessPool` or a :class:`corral.dask.DaskPool`.
        ordered: ``True`` hands out results in input order, ``False`` in completion
            order.
        return_exceptions: ``False`` hands out the results completed before the first
            exception, then raises it; ``True`` hands out exceptions in place of results.
        chunksize: Items per round trip to a worker process, or per Dask task; ``None``
            adapts it.
        timeout: Seconds per item; an item that overruns fails with ``TimeoutError``.
        cluster: A :class:`~corral.Cluster` whose capacity this stream shares.
        progress: Anything with ``increment(n)``; told as items complete.

    Returns:
        An async context manager; entering it starts the workers and gives a
        :class:`MapResults` to iterate.

    Raises:
        TypeError, ValueError: Bad arguments, at once when ``imap`` is called.
        NotPicklableError: ``fn`` cannot run in a process, at once.
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
