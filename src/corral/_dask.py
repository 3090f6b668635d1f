"""Dask offload: CPU work on a Dask distributed cluster, driven from asyncio or trio.

distributed's asynchronous client runs only on asyncio, so :class:`DaskPool` holds a
*synchronous* ``distributed.Client``: it runs its own event loop in a background thread.
Nothing here blocks the caller's loop on it. A future's outcome is fetched by a
coroutine posted to the client's loop (:func:`_settle`), which completes a
``concurrent.futures.Future``; :func:`wait_concurrent` awaits that from anyio through
the caller's loop's own thread-safe hook (asyncio's ``call_soon_threadsafe``, trio's
``run_sync_soon``). Cancelling a caller cancels its Dask futures on the scheduler, and
waits until the scheduler has forgotten them.

``distributed`` is imported when a pool is made, never when corral is imported: the
core depends on anyio alone (``pip install 'corral[dask]'`` adds distributed).

Functions and arguments cross the wire with cloudpickle (as Dask does), pickled here by
corral so that anything that cannot be sent is refused, naming it, before it is sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
from anyio.lowlevel import current_token

from ._exceptions import MissingDriverError, NotPicklableError, PoolClosedError, WorkerCrashed
from ._lowlevel import loop_scheduler
from ._pickling import describe
from ._validate import check_callable, check_int, type_error

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

__all__ = ["DaskPool", "DaskPoolStatistics", "wait_concurrent"]

P = ParamSpec("P")
T = TypeVar("T")

#: ``(True, value)`` or ``(False, exception)``, one per item of a chunk.
Outcome = tuple[bool, Any]

_INSTALL = "pip install 'corral[dask]'"


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise MissingDriverError(
            f"corral.dask.DaskPool needs Dask's distributed package, which is not "
            f"installed ({exc}); install it with {_INSTALL}"
        ) from exc
    return distributed


def _cloudpickle() -> Any:
    try:
        import cloudpickle  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - distributed depends on it
        raise MissingDriverError(f"cloudpickle is not installed; {_INSTALL}") from exc
    return cloudpickle


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Return ``fn`` pickled with cloudpickle, or raise :class:`NotPicklableError`."""
    try:
        return bytes(_cloudpickle().dumps(fn))
    except Exception as exc:
        raise NotPicklableError(
            f"fn {describe(fn)} cannot be pickled (with cloudpickle) to send it to the Dask "
            f"cluster ({type(exc).__name__}: {exc}); close over picklable objects only (no "
            f"locks, open files, sockets, database connections), or pass offload='thread'"
        ) from exc


def _dumps_value(fn: Callable[..., Any], where: str, value: object) -> bytes:
    try:
        return bytes(_cloudpickle().dumps(value))
    except Exception as exc:
        raise NotPicklableError(
            f"{where} of {getattr(fn, '__qualname__', fn)!s}, {describe(value)}, cannot be "
            f"pickled (with cloudpickle) to send it to the Dask cluster ({exc}); pass "
            f"something picklable, or pass offload='thread'"
        ) from exc


# -- what runs on the Dask workers --------------------------------------------------------


@lru_cache(maxsize=8)
def _loads_function(data: bytes) -> Callable[..., Any]:
    fn: Callable[..., Any] = _cloudpickle().loads(data)
    return fn


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """Return ``exc`` (or a RemoteError standing in, if it cannot be pickled) and its traceback."""
    text = "".join(traceback.format_exception(exc))
    try:
        _cloudpickle().dumps(exc)
    except Exception as problem:
        from ._exceptions import RemoteError

        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return RemoteError(
            f"{name}: {exc} (raised on a Dask worker; it cannot be pickled ({problem}), so "
            f"corral raises RemoteError in its place)",
            type_name=name,
            original_message=str(exc),
            remote_traceback=text,
        ), text
    return exc, text


def run_chunk(fn_data: bytes, items_data: bytes) -> bytes:
    """Run a chunk on a Dask worker: ``fn`` on each item; the outcome, pickled.

    The outcome is the values (``None`` where an item failed), the failures as
    ``(position, exception, traceback text)`` (an exception fails its own item only),
    and the seconds spent. corral pickles it here, so that a value that cannot be
    pickled fails its own item (with NotPicklableError), not the chunk; Dask then
    sends the bytes as they are.
    """
    cloudpickle = _cloudpickle()
    fn = _loads_function(fn_data)
    items = cloudpickle.loads(items_data)
    values: list[Any] = []
    failures: list[tuple[int, BaseException, str]] = []
    append = values.append
    start = time.perf_counter()
    for position, item in enumerate(items):
        try:
            append(fn(item))
        except Exception as exc:
            append(None)
            failures.append((position, *_portable(exc)))
    seconds = time.perf_counter() - start
    try:
        return bytes(cloudpickle.dumps((values, failures, seconds)))
    except Exception:
        pass
    for position, value in enumerate(values):
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            values[position] = None
            error = NotPicklableError(
                f"a return value of {getattr(fn, '__qualname__', fn)!s}, {describe(value)}, "
                f"cannot be pickled to send it back from the Dask worker ({exc}); return "
                f"something picklable"
            )
            failures.append((position, error, ""))
    return bytes(cloudpickle.dumps((values, failures, seconds)))


def run_call(data: bytes) -> Any:
    """Run one ``fn(*args, **kwargs)`` on a Dask worker (for :meth:`DaskPool.run`)."""
    fn, args, kwargs = _cloudpickle().loads(data)
    return fn(*args, **kwargs)


# -- awaiting the client's futures from anyio ------------------------------------------------


async def wait_concurrent(future: concurrent.futures.Future[T]) -> T:
    """Await a ``concurrent.futures.Future`` without blocking the event loop.

    Its done callback (which runs in whatever thread completes it) wakes this loop
    through the loop's thread-safe hook; nothing polls. Works on asyncio and trio, and
    for the futures of ``client.get_executor()`` as well. Cancelling the caller cancels
    ``future`` (which stops it only if it has not started).

    Args:
        future: The future to wait for, completed by any thread.

    Returns:
        The future's result.

    Raises:
        Exception: The future's exception, if it failed.
    """
    if not future.done():
        event = anyio.Event()
        schedule = loop_scheduler(current_token())

        def wake(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: its waiter is gone
                schedule(event.set)

        future.add_done_callback(wake)
        try:
            await event.wait()
        except BaseException:
            future.cancel()
            raise
    return future.result()


async def _settle(future: Any, done: concurrent.futures.Future[tuple[str, Any]]) -> None:
    """On the client's loop: wait for ``future``, then put ``(status, outcome)`` in ``done``."""
    try:
        outcome = await future._result(raiseit=False)
    except BaseException as exc:  # a failed gather: the data was lost with its worker
        outcome = (type(exc), exc, exc.__traceback__)
        status = "error"
    else:
        status = future.status
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # its waiter left
        done.set_result((status, outcome))


@dataclass(frozen=True, slots=True)
class DaskPoolStatistics:
    """A snapshot of a :class:`DaskPool`."""

    address: str
    """The scheduler's address."""
    workers: int
    """Dask workers connected to the scheduler (as of the client's last refresh, which it
    makes every few seconds; :meth:`DaskPool.refresh` makes one now)."""
    threads: int
    """Worker threads across those workers: the default ``limit`` of a map."""
    in_flight: int
    """Dask tasks this pool submitted that have not settled yet."""
    submitted: int
    """Dask tasks this pool submitted (one per chunk of a map, one per :meth:`DaskPool.run`)."""
    completed: int
    """Tasks that settled with a result (a chunk whose items failed counts here too)."""
    cancelled: int
    """Tasks cancelled because their caller was cancelled, left early or timed out."""
    crashed: int
    """Tasks that failed because the Dask workers running them died."""


class DaskPool:
    """CPU offload to a Dask distributed cluster: ``offload=pool`` in :func:`corral.map`.

    Use it as ``async with DaskPool(...) as pool``. With no address it starts a
    ``LocalCluster`` of ``n_workers`` worker processes for the block and closes it
    after; with an address (``"tcp://scheduler:8786"``) it connects a client for the
    block; with a ``distributed.Client`` it uses that client and leaves it open.

    Functions, arguments and results cross the wire with cloudpickle, so lambdas and
    closures work (unlike :class:`~corral.ProcessPool`); the Dask workers need the
    modules your functions import, corral among them. Works on asyncio and on trio.

    Args:
        address: A scheduler address, a ``distributed.Client``, or ``None`` for a
            ``LocalCluster`` of processes.
        n_workers: Worker processes of the ``LocalCluster`` (only without an address).
        threads_per_worker: Threads per worker of the ``LocalCluster``; ``None`` lets
            Dask divide the CPUs among the workers.
        retries: How many times Dask reruns a :meth:`run` task whose ``fn`` raised,
            before the exception is raised here (Dask's ``retries``). Map chunks catch
            each item's exception, so they are not rerun. A task whose worker dies is
            rerun by the scheduler up to its ``distributed.scheduler.allowed-failures``
            (3 by default), whatever ``retries`` says.

    """

    def __init__(
        self,
        address: str | Client | None = None,
        *,
        n_workers: int = 2,
        threads_per_worker: int | None = None,
        retries: int = 0,
    ) -> None:
        distributed = _import_distributed()
        if address is not None and not isinstance(address, str | distributed.Client):
            raise type_error(
                "address", "a scheduler address (str), a distributed.Client or None", address
            )
        if isinstance(address, distributed.Client) and address.asynchronous:
            raise ValueError(
                "address is an asynchronous distributed.Client, which runs on asyncio only; "
                "pass a synchronous one (the default: Client(address)), or the address"
            )
        check_int("n_workers", n_workers, minimum=1)
        check_int("threads_per_worker", threads_per_worker, minimum=1, optional=True)
        check_int("retries", retries, minimum=0)
        self._address = address
        self._n_workers = n_workers
        self._threads_per_worker = threads_per_worker
        self._retries = retries
        # Typed Any: distributed's own annotations are partial (its loop may be None).
        self._client: Any = address if isinstance(address, distributed.Client) else None
        self._owns_client = self._client is None
        self._cluster: LocalCluster | None = None
        self._closed = False
        self._scheduler_address = ""
        self._in_flight = 0
        self._submitted = 0
        self._completed = 0
        self._cancelled = 0
        self._crashed = 0

    # -- lifetime --------------------------------------------------------------------

    def _open(self) -> None:
        distributed = _import_distributed()
        if self._client is None:
            if self._address is None:
                self._cluster = distributed.LocalCluster(
                    n_workers=self._n_workers,
                    threads_per_worker=self._threads_per_worker,
                    processes=True,
                    dashboard_address=None,
                    # No dashboard, and the scheduler's HTTP routes on a free port rather
                    # than 8787 (taken by a second cluster on the same host).
                    scheduler_kwargs={"dashboard_address": ":0"},
                )
                self._client = distributed.Client(self._cluster)
                self._client.wait_for_workers(self._n_workers)
            else:
                self._client = distributed.Client(self._address)
        self._client.scheduler_info(n_workers=-1)  # refresh the worker and thread counts
        self._scheduler_address = str(self._client.scheduler.address)

    def _close(self) -> None:
        self._closed = True
        if self._owns_client and self._client is not None:
            self._client.close()
            if self._cluster is not None:
                self._cluster.close()

    async def __aenter__(self) -> DaskPool:
        if self._closed:
            raise PoolClosedError("this DaskPool is closed; create a new one")
        try:
            await anyio.to_thread.run_sync(self._open)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close)

    @property
    def client(self) -> Client:
        """The ``distributed.Client`` (synchronous) the pool submits to."""
        if self._client is None:
            raise RuntimeError("the DaskPool is not open: use it as 'async with DaskPool()'")
        client: Client = self._client
        return client

    def _open_client(self) -> Any:
        """Return the client, or raise unless the pool is open (checked when a map starts)."""
        if self._closed:
            raise PoolClosedError("this DaskPool is closed; create a new one")
        if self._client is None:
            raise RuntimeError("the DaskPool is not open: use it as 'async with DaskPool()'")
        return self._client

    @property
    def threads(self) -> int:
        """Worker threads on the cluster (at least 1), as of the client's last refresh."""
        return max(1, self._counts()[1])

    def _counts(self) -> tuple[int, int]:
        """Workers and threads, from the scheduler's identity the client keeps (no I/O)."""
        client = self._client
        if client is None or client.status != "running":
            return 0, 0
        info = client._scheduler_identity or {}
        return int(info.get("n_workers", 0)), int(info.get("total_threads", 0))

    async def refresh(self) -> None:
        """Fetch the worker and thread counts from the scheduler (without blocking the loop)."""
        client = self._open_client()
        await self._on_client_loop(client._update_scheduler_info(n_workers=-1))

    def statistics(self) -> DaskPoolStatistics:
        """Return a frozen snapshot of workers, threads and tasks (no I/O)."""
        workers, threads = self._counts()
        return DaskPoolStatistics(
            address=self._scheduler_address,
            workers=workers,
            threads=threads,
            in_flight=self._in_flight,
            submitted=self._submitted,
            completed=self._completed,
            cancelled=self._cancelled,
            crashed=self._crashed,
        )

    def __repr__(self) -> str:
        where = "closed" if self._closed else ("not open" if self._client is None else "open")
        return f"<DaskPool {where} threads={self.threads if self._client else '?'}>"

    # -- calls -----------------------------------------------------------------------

    async def _on_client_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop: asyncio.AbstractEventLoop = self._open_client().loop.asyncio_loop
        return await wait_concurrent(asyncio.run_coroutine_threadsafe(coro, loop))

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise PoolClosedError("this DaskPool is closed; create a new one")
        future = self._open_client().submit(fn, *args, pure=False, retries=self._retries or None)
        self._submitted += 1
        self._in_flight += 1
        return future

    async def _outcome(self, future: Any) -> tuple[str, Any]:
        """Wait for ``future``: ``(status, value or (type, exc, tb))``; cancel it if cancelled."""
        done: concurrent.futures.Future[tuple[str, Any]] = concurrent.futures.Future()
        client = self._open_client()
        client.loop.add_callback(_settle, future, done)
        try:
            status, outcome = await wait_concurrent(done)
        except BaseException:
            self._in_flight -= 1
            self._cancelled += 1
            with anyio.CancelScope(shield=True):
                await self._cancel([future])
            raise
        self._in_flight -= 1
        if status == "error" and isinstance(outcome[1], _killed_worker()):
            self._crashed += 1
        elif status == "finished":
            self._completed += 1
        return status, outcome

    async def _cancel(self, futures: Sequence[Any]) -> None:
        """Cancel ``futures`` and wait until the scheduler has released their tasks."""
        client = self._open_client()
        keys = [f.key for f in futures]
        with contextlib.suppress(Exception):  # the client closed: nothing is left to cancel
            await self._on_client_loop(client._cancel(futures, reason="corral: cancelled"))
            await self._on_client_loop(_until_released(client, keys))

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` as one Dask task and return its result.

        Cancelling the caller cancels the task on the cluster.

        Args:
            fn: Any function cloudpickle can send (lambdas and closures too).
            *args: Positional arguments for ``fn``.
            **kwargs: Keyword arguments for ``fn``.

        Returns:
            What ``fn`` returned on the Dask worker.

        Raises:
            Exception: Whatever ``fn`` raised, after the pool's ``retries`` reruns.
            NotPicklableError: ``fn`` or an argument cannot be pickled, before anything
                is sent.
            WorkerCrashed: The workers running it died (once the scheduler's allowed
                failures are spent).
        """
        check_callable("fn", fn)
        dumps_function(fn)  # refuse an unpicklable fn by name, before anything is sent
        for position, value in enumerate(args):
            _dumps_value(fn, f"argument {position}", value)
        for key, value in kwargs.items():
            _dumps_value(fn, f"keyword argument {key!r}", value)
        payload = _cloudpickle().dumps((fn, args, kwargs))
        status, outcome = await self._outcome(self._submit(run_call, payload))
        if status == "finished":
            return outcome  # type: ignore[no-any-return]
        raise self._failure(fn, status, outcome, "the call")

    def _failure(
        self, fn: Callable[..., Any], status: str, outcome: Any, what: str
    ) -> BaseException:
        name = getattr(fn, "__qualname__", repr(fn))
        if status == "cancelled":
            return PoolClosedError(
                f"the Dask task running {name} was cancelled on the cluster (the client or "
                f"cluster closed, or another client cancelled it)"
            )
        _, exc, tb = outcome
        if isinstance(exc, _killed_worker()):
            crashed = WorkerCrashed(
                f"the Dask workers running {name} died while running {what} ({exc}); the "
                f"scheduler gave up after its allowed failures (the setting "
                f"distributed.scheduler.allowed-failures)"
            )
            crashed.__cause__ = exc
            return crashed
        return exc.with_traceback(tb)  # type: ignore[no-any-return]

    async def _map_chunk(
        self,
        fn: Callable[..., Any],
        fn_data: bytes,
        items: Sequence[Any],
        *,
        timeout: float | None = None,
        timeout_message: str = "",
    ) -> tuple[list[Outcome], float]:
        """Run ``fn`` on each of ``items`` in one Dask task; one outcome per item.

        Also return the seconds the worker computed. An item that cannot be pickled
        fails itself only; a chunk whose worker died is run again one item per task, so
        that only the item that kills its worker fails, with WorkerCrashed (the items
        are rerun one at a time: worker deaths are rare, and this finds the culprit). With
        ``timeout`` (for one item), a task that runs longer is cancelled and the item
        fails with ``TimeoutError(timeout_message)``.
        """
        try:
            data = _cloudpickle().dumps(list(items))
        except Exception:
            return await self._map_picklable_part(fn, fn_data, items, timeout, timeout_message)
        future = self._submit(run_chunk, fn_data, data)
        with anyio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
            status, outcome = await self._outcome(future)
        if scope.cancelled_caught:
            return [(False, TimeoutError(timeout_message))] * len(items), 0.0
        if status == "finished":
            try:
                values, failures, seconds = _cloudpickle().loads(outcome)
            except Exception as problem:
                undecodable = NotPicklableError(
                    f"the results of a chunk of {len(items)} items of "
                    f"{getattr(fn, '__qualname__', fn)!s} were pickled on the Dask worker "
                    f"but cannot be unpickled here ({type(problem).__name__}: {problem})"
                )
                undecodable.__cause__ = problem
                return [(False, undecodable)] * len(items), 0.0
            outcomes: list[Outcome] = [(True, value) for value in values]
            for position, failure, text in failures:
                outcomes[position] = (False, _with_remote_traceback(failure, text))
            return outcomes, seconds
        if len(items) > 1 and status == "error" and isinstance(outcome[1], _killed_worker()):
            return await self._map_one_by_one(fn, fn_data, items, timeout, timeout_message)
        error = self._failure(fn, status, outcome, f"a chunk of {len(items)} items")
        return [(False, error)] * len(items), 0.0

    async def _map_one_by_one(
        self,
        fn: Callable[..., Any],
        fn_data: bytes,
        items: Sequence[Any],
        timeout: float | None,
        timeout_message: str,
    ) -> tuple[list[Outcome], float]:
        # One at a time, so that only an item that kills its worker can fail: an item
        # running beside it on the same worker would fail with it.
        outcomes: list[Outcome] = []
        seconds = 0.0
        for item in items:
            part, spent = await self._map_chunk(
                fn, fn_data, [item], timeout=timeout, timeout_message=timeout_message
            )
            outcomes += part
            seconds += spent
        return outcomes, seconds

    async def _map_picklable_part(
        self,
        fn: Callable[..., Any],
        fn_data: bytes,
        items: Sequence[Any],
        timeout: float | None,
        timeout_message: str,
    ) -> tuple[list[Outcome], float]:
        outcomes: list[Outcome | None] = [None] * len(items)
        sendable: list[int] = []
        for position, item in enumerate(items):
            try:
                _dumps_value(fn, "argument 0", item)
            except NotPicklableError as exc:
                outcomes[position] = (False, exc)
            else:
                sendable.append(position)
        seconds = 0.0
        if sendable:
            part, seconds = await self._map_chunk(
                fn,
                fn_data,
                [items[i] for i in sendable],
                timeout=timeout,
                timeout_message=timeout_message,
            )
            for position, outcome in zip(sendable, part, strict=True):
                outcomes[position] = outcome
        return [o for o in outcomes if o is not None], seconds


def _killed_worker() -> type[BaseException]:
    killed: type[BaseException] = _import_distributed().KilledWorker
    return killed


def _with_remote_traceback(exc: BaseException, text: str) -> BaseException:
    if text:
        from ._process import _RemoteTraceback

        exc.__cause__ = _RemoteTraceback(text)
    return exc


async def _until_released(client: Any, keys: list[Any]) -> None:
    """On the client's loop: return once the scheduler has forgotten every one of ``keys``.

    A key the scheduler does not hold may also be one whose task it has not received
    yet (tasks and cancellations come on the client's stream, this question on another
    connection): it counts as forgotten only once the scheduler's transition log shows
    it arrived.
    """

    def pending(dask_scheduler: Any, keys: list[Any]) -> int:
        seen = {entry[0] for entry in dask_scheduler.transition_log}
        return sum(1 for key in keys if key in dask_scheduler.tasks or key not in seen)

    for _ in range(200):  # at most about 2 s: the scheduler handles a cancel at once
        if not await client._run_on_scheduler(pending, keys=keys):
            return
        await asyncio.sleep(0.01)
