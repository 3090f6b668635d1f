"""Process offload: a persistent pool of worker processes driven from async code.

Each worker is a ``multiprocessing`` process (``forkserver`` where the platform has it,
else ``spawn``: never a bare fork of a possibly threaded parent) connected to the parent
by a socket pair. The parent reads and writes its end without blocking the event loop,
so a call costs one framed pickle each way and no thread hop.

Cancellation policy: cancelling a call that is running in a worker kills that worker at
once (SIGKILL) so that nothing keeps running behind the caller; the pool starts a
replacement when it next needs one. A worker that dies on its own fails the call it was
running with :class:`~corral.WorkerCrashed`; calls sent to it in the same chunk whose
results had not come back are run again one at a time, so only the culprit fails.

A call is run again only when it cannot have started: an idle worker is checked before it
is handed a call (a dead one has closed its end of the socket), and a call whose worker
died before it read the request (the send failed, or, on Linux, the kernel reports the
request unread with ``ECONNRESET``) goes to another worker. A call the worker may have
read is never run twice.

Each result (unless of a plain built-in type) and each exception comes back pickled on its
own (see :mod:`corral._worker`): one that cannot be unpickled here fails its own call only, with
:class:`~corral.NotPicklableError` for a result and :class:`~corral.RemoteError` for an
exception, and the worker lives on.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import socket
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any, ParamSpec, TypeVar

import anyio

from ._exceptions import (
    NotPicklableError,
    PoolClosedError,
    RemoteError,
    WorkerCrashed,
    WorkerInitializerError,
)
from ._pickling import check_process_function, dumps_args, pickled_globals
from ._sync import LoopSafeSemaphore
from ._validate import check_positive_int, check_type
from ._worker import HEADER, PICKLED, VALUE, EncodedError, worker_main

__all__ = [
    "Call",
    "Outcome",
    "ProcessPool",
    "ProcessPoolStatistics",
    "cpu_count",
    "default_pool",
    "to_process",
]

P = ParamSpec("P")
T = TypeVar("T")

#: One call: positional arguments and keyword arguments (None when there are none).
Call = tuple[tuple[Any, ...], dict[str, Any] | None]
#: ``(True, value)`` or ``(False, exception)``.
Outcome = tuple[bool, Any]
#: The exit code of a worker that was importing the main module when it was asked to start
#: workers itself: a script that starts processes without ``if __name__ == "__main__":``.
_UNGUARDED_MAIN_EXIT = 78


def _importing_main() -> bool:
    """Whether this process is a worker still re-importing its parent's main module."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _unguarded_main_message(context: BaseContext) -> str:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or "the main module"
    return (
        f"{path} starts processes when it is imported, and every worker process imports it "
        f"again ({context.get_start_method()} start method): put the code that runs the "
        f'script under `if __name__ == "__main__":`'
    )


def cpu_count() -> int:
    """Return how many CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, chained as its cause."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class _WorkerDied(Exception):
    def __init__(self, *, unread: bool = False) -> None:
        super().__init__()
        #: The worker died before it read the whole request: the call never started.
        self.unread = unread


#: Linux reports ECONNRESET, not EOF, to a reader whose peer closed with data unread.
_UNREAD_RESETS = sys.platform.startswith("linux")
#: How many times a call goes to another worker because its worker died before reading it.
_RESENDS = 3


@dataclass(frozen=True, slots=True)
class ProcessPoolStatistics:
    """A snapshot of a process pool."""

    max_workers: int
    """The most worker processes the pool runs at once."""
    workers: int
    """Worker processes alive now (started lazily, up to ``max_workers``)."""
    busy: int
    """Workers running a call right now."""
    waiting: int
    """Calls waiting for a free worker right now."""
    started: int
    """Worker processes started since the pool was created."""
    crashed: int
    """Workers that died on their own (signal, ``os._exit``, OOM killer)."""
    killed: int
    """Workers the pool killed because the call they ran was cancelled or timed out."""


class _Worker:
    __slots__ = ("pid", "process", "sock")

    def __init__(self, process: multiprocessing.process.BaseProcess, sock: socket.socket):
        self.process = process
        self.sock = sock
        self.pid: int | None = None

    async def send(self, data: bytes) -> None:
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                continue
            except OSError as exc:  # the worker closed its end: it died
                # The rest of the request was never sent: the call cannot have started.
                raise _WorkerDied(unread=True) from exc
            view = view[sent:]

    async def _recv_into(self, view: memoryview, *, first: bool = False) -> None:
        sock = self.sock
        got = 0
        size = len(view)
        while got < size:
            try:
                n = sock.recv_into(view[got:])
            except BlockingIOError:
                await anyio.wait_readable(sock)
                continue
            except OSError as exc:
                # A reset before any byte of the answer: the worker died with our
                # request still unread in its socket, so it never started the call.
                unread = (
                    first and got == 0 and _UNREAD_RESETS and isinstance(exc, ConnectionResetError)
                )
                raise _WorkerDied(unread=unread) from exc
            if n == 0:
                raise _WorkerDied
            got += n

    async def receive(self) -> Any:
        header = bytearray(HEADER.size)
        await anyio.wait_readable(self.sock)
        await self._recv_into(memoryview(header), first=True)
        (size,) = HEADER.unpack(header)
        payload = bytearray(size)
        await self._recv_into(memoryview(payload))
        return pickle.loads(payload)

    def seems_alive(self) -> bool:
        """Whether an idle worker still holds its end of the socket open.

        A worker that died while idle (a signal, the OOM killer) has closed its end: the
        socket reads as end-of-file or reset. An idle worker never sends anything, so
        bytes waiting here mean it cannot be trusted either.
        """
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def kill(self) -> None:
        """Kill the process at once (no-op if it already ended) and close our end."""
        try:
            if self.process.pid is not None and self.process.exitcode is None:
                self.process.kill()
        except (OSError, ValueError):  # already gone, or already closed
            pass
        self.sock.close()

    def describe_death(self) -> tuple[str, int | None]:
        self.process.join(1.0)
        code = self.process.exitcode
        if code is None:
            return "it closed its connection", None
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}", code
            except ValueError:
                return f"killed by signal {-code}", code
        return f"exit code {code}", code


class ProcessPool:
    """A persistent pool of worker processes for CPU-bound work.

    Workers start lazily, up to ``max_workers``, and are reused by every call; they are
    stopped by :meth:`close` (or leaving ``async with``/``with``), and in any case when
    the program exits. A worker also exits by itself if the parent process dies.

    Functions must be importable (module level, including a script's ``__main__``
    guarded by ``if __name__ == "__main__":``); arguments and results are pickled.
    Anything that cannot cross the process boundary is rejected with
    :class:`~corral.NotPicklableError` before it is sent.

    Args:
        max_workers: The most worker processes; defaults to the CPUs this process may use.
        initializer: Called as ``initializer(*initargs)`` once in every new worker.
        initargs: Arguments for ``initializer``.
        mp_context: A ``multiprocessing`` context; the default is ``forkserver`` where
            available, else ``spawn``. A ``fork`` context is refused: forking a parent
            that runs threads (as an event loop with thread offload does) can deadlock.

    Raises:
        TypeError, ValueError: ``max_workers`` is not a positive int, or ``mp_context``
            uses ``fork``.
        NotPicklableError: ``initializer`` or ``initargs`` cannot cross the process
            boundary.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        mp_context: BaseContext | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = cpu_count()
        check_positive_int("max_workers", max_workers)
        check_type("initargs", initargs, Sequence, "a tuple of arguments for initializer")
        if initializer is not None:
            check_process_function(initializer, "initializer")
            dumps_args(initializer, tuple(initargs), {})
        if mp_context is not None:
            check_type(
                "mp_context",
                mp_context,
                BaseContext,
                "a multiprocessing context or None",
                fix="write multiprocessing.get_context('spawn') (or 'forkserver')",
            )
        else:
            methods = multiprocessing.get_all_start_methods()
            mp_context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn"
            )
        if mp_context.get_start_method() == "fork":
            raise ValueError(
                "mp_context uses 'fork', which is unsafe in a program that runs threads; "
                "use multiprocessing.get_context('forkserver') or ('spawn')"
            )
        self._max_workers = max_workers
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._context = mp_context
        self._slots = LoopSafeSemaphore(max_workers)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._closed = False
        self._started = 0
        self._crashed = 0
        self._killed = 0
        _live_pools.add(self)

    @property
    def max_workers(self) -> int:
        """The most worker processes this pool runs at once."""
        return self._max_workers

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def statistics(self) -> ProcessPoolStatistics:
        """Return a frozen snapshot of workers, busy workers and waiting calls."""
        with self._lock:
            alive = len(self._workers)
            idle = len(self._idle)
        return ProcessPoolStatistics(
            max_workers=self._max_workers,
            workers=alive,
            busy=alive - idle,
            waiting=self._slots.waiting,
            started=self._started,
            crashed=self._crashed,
            killed=self._killed,
        )

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker process and return its result.

        Cancelling the caller kills the worker running the call. A worker found dead
        before it read the call is replaced, and the call sent again.

        Args:
            fn: An importable (module-level) plain function.
            *args: Positional arguments for ``fn``; picklable.
            **kwargs: Keyword arguments for ``fn``; picklable.

        Returns:
            What ``fn`` returned, unpickled in this process.

        Raises:
            Exception: Whatever ``fn`` raised, its remote traceback chained as
                ``__cause__``.
            RemoteError: In place of ``fn``'s exception when that exception cannot be
                pickled or unpickled.
            WorkerCrashed: The worker died while running the call.
            NotPicklableError: ``fn``, an argument or the result cannot be pickled or
                unpickled.
            PoolClosedError: The pool is closed.
        """
        check_process_function(fn)
        call: Call = (args, kwargs or None)
        [(ok, value)], _ = await self._run_calls_timed(fn, [call])
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    async def _run_calls_timed(
        self, fn: Callable[..., Any], calls: Sequence[Call], *, timeout: float | None = None
    ) -> tuple[list[Outcome], float]:
        """Run a chunk of calls in one worker round trip; one outcome per call.

        Also return the seconds the worker computed. ``fn`` must already have passed
        :func:`check_process_function`. Exceptions stand in place of results; an
        argument that cannot be pickled fails its own call only.

        With ``timeout``, a round trip that runs longer (once a worker is free) kills
        its worker and fails each of its calls with ``TimeoutError``.
        """
        try:
            data = pickle.dumps((fn, calls), pickle.HIGHEST_PROTOCOL)
        except Exception:
            return await self._run_picklable_part(fn, calls, timeout)
        try:
            return await self._round_trip(fn, len(calls), data, timeout)
        except _CrashedChunk:
            pass
        # The worker died during a chunk: run each call alone to find the culprit.
        outcomes: list[Outcome] = []
        seconds = 0.0
        for call in calls:
            part, spent = await self._run_calls_timed(fn, [call], timeout=timeout)
            outcomes += part
            seconds += spent
        return outcomes, seconds

    async def _run_picklable_part(
        self, fn: Callable[..., Any], calls: Sequence[Call], timeout: float | None
    ) -> tuple[list[Outcome], float]:
        outcomes: list[Outcome | None] = [None] * len(calls)
        sendable: list[int] = []
        for index, (args, kwargs) in enumerate(calls):
            try:
                dumps_args(fn, args, kwargs or {})
            except Exception as exc:
                outcomes[index] = (False, exc)
            else:
                sendable.append(index)
        seconds = 0.0
        if sendable:
            part, seconds = await self._run_calls_timed(
                fn, [calls[i] for i in sendable], timeout=timeout
            )
            for index, outcome in zip(sendable, part, strict=True):
                outcomes[index] = outcome
        return [o for o in outcomes if o is not None], seconds

    async def _round_trip(
        self, fn: Callable[..., Any], count: int, data: bytes, timeout: float | None
    ) -> tuple[list[Outcome], float]:
        if self._closed:
            raise PoolClosedError("this ProcessPool is closed; create a new one")
        await self._slots.acquire()
        try:
            resends = 0
            while True:
                worker = await self._checkout()
                try:
                    with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
                        await worker.send(HEADER.pack(len(data)) + data)
                        outcomes, seconds = await worker.receive()
                    if scope.cancelled_caught:
                        self._discard(worker, crashed=False)
                        name = getattr(fn, "__qualname__", repr(fn))
                        timed_out = TimeoutError(
                            f"{name} ran over the timeout of {timeout:g} s in worker process "
                            f"{worker.pid}, which was killed"
                        )
                        return [(False, timed_out)] * count, 0.0
                except _WorkerDied as died:
                    if self._closed:
                        worker.kill()
                        raise PoolClosedError(
                            "the ProcessPool was closed while this call was running in it"
                        ) from None
                    with anyio.CancelScope(shield=True):
                        how, code = await anyio.to_thread.run_sync(worker.describe_death)
                    self._discard(worker, crashed=True)
                    if died.unread and resends < _RESENDS:
                        resends += 1  # it never started: another worker runs it
                        continue
                    if count > 1:
                        raise _CrashedChunk from None
                    name = getattr(fn, "__qualname__", repr(fn))
                    when = "before it received" if died.unread else "while running"
                    error = WorkerCrashed(
                        f"worker process {worker.pid} died ({how}) {when} {name}; "
                        f"the pool replaces it, and only this call failed",
                        pid=worker.pid,
                        exitcode=code,
                    )
                    return [(False, error)], 0.0
                except BaseException:
                    # Cancelled or failed mid-call: the worker's state is unknown, and it
                    # may still be computing. Kill it so nothing runs behind the caller's
                    # back.
                    self._discard(worker, crashed=False)
                    raise
                self._checkin(worker)
                break
        finally:
            self._slots.release()
        if isinstance(outcomes, tuple):  # the worker could not load the request
            return [(False, _decode_error(outcomes[1:]))] * count, seconds
        return _decode_outcomes(fn, outcomes), seconds

    async def _checkout(self) -> _Worker:
        """Return an idle worker that is still alive, or start one."""
        while True:
            with self._lock:
                if not self._idle:
                    break
                worker = self._idle.pop()
            if worker.seems_alive():
                return worker
            self._discard(worker, crashed=True)  # it died while idle: no call is lost
        return await self._start_worker()

    def _checkin(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed:
                worker.kill()
                self._workers.discard(worker)
            else:
                self._idle.append(worker)

    def _discard(self, worker: _Worker, *, crashed: bool | None) -> None:
        """Kill and forget ``worker``; count it as crashed, killed, or (None) neither."""
        worker.kill()
        with self._lock:
            self._workers.discard(worker)
            if crashed:
                self._crashed += 1
            elif crashed is not None:
                self._killed += 1

    async def _start_worker(self) -> _Worker:
        if _importing_main():
            # A worker running its parent's unguarded script: multiprocessing would refuse
            # with a RuntimeError traceback in every worker; exit quietly, the parent says why.
            os._exit(_UNGUARDED_MAIN_EXIT)
        parent_sock, child_sock = socket.socketpair()
        process = self._context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(child_sock, self._initializer, self._initargs),
            name="corral-worker",
            daemon=False,
        )
        worker = _Worker(process, parent_sock)
        with self._lock:
            if self._closed:
                parent_sock.close()
                child_sock.close()
                raise PoolClosedError("this ProcessPool is closed; create a new one")
            self._workers.add(worker)
            self._started += 1
        try:
            try:
                await anyio.to_thread.run_sync(process.start)
            finally:
                child_sock.close()
            parent_sock.setblocking(False)
            kind, detail = await worker.receive()
        except _WorkerDied:
            with anyio.CancelScope(shield=True):
                how, code = await anyio.to_thread.run_sync(worker.describe_death)
            self._discard(worker, crashed=True)
            if code == _UNGUARDED_MAIN_EXIT:
                raise WorkerCrashed(_unguarded_main_message(self._context)) from None
            raise WorkerCrashed(f"a new worker process died during start-up ({how})") from None
        except BaseException:
            self._discard(worker, crashed=False)
            raise
        if kind == "init-error":
            self._discard(worker, crashed=None)  # it exits by itself; nothing was killed
            exc = _decode_error(detail)
            name = getattr(self._initializer, "__qualname__", repr(self._initializer))
            raise WorkerInitializerError(
                f"the pool's initializer {name} raised {type(exc).__name__}: {exc}; it runs "
                f"once in every new worker, so every call fails until it is fixed"
            ) from exc
        worker.pid = detail
        return worker

    def close(self) -> None:
        """Stop every worker and wait for them to exit; calls in flight are killed.

        Idle workers exit cleanly when their connection closes; a worker still running
        a call is killed. Safe to call more than once, and from any thread.
        """
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            idle = set(self._idle)
            self._idle.clear()
            self._workers.clear()
        for worker in workers:
            if worker in idle:
                worker.sock.close()  # the worker sees EOF and returns
            elif worker.process.pid is not None:
                # Busy: kill the process but leave the socket to the task that waits on
                # it (closing an fd under a waiter would leave the waiter hanging); it
                # sees EOF and fails its call with PoolClosedError.
                with contextlib.suppress(OSError, ValueError):
                    worker.process.kill()
        for worker in workers:
            if worker.process.pid is None:
                continue
            worker.process.join(5.0)
            if worker.process.exitcode is None:
                worker.kill()
                worker.process.join(5.0)
        _live_pools.discard(self)

    async def aclose(self) -> None:
        """Like :meth:`close`, waiting for the workers in a thread."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> ProcessPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._workers)} workers"
        return f"<ProcessPool max_workers={self._max_workers} {state}>"


class _CrashedChunk(Exception):
    pass


def _decode_outcomes(fn: Callable[..., Any], outcomes: list[tuple[Any, ...]]) -> list[Outcome]:
    """Unpickle each call's value or exception on its own: a bad one fails itself only."""
    loads = pickle.loads
    result: list[Outcome] = []
    append = result.append
    for outcome in outcomes:
        kind = outcome[0]
        if kind == VALUE:
            append((True, outcome[1]))
        elif kind == PICKLED:
            try:
                append((True, loads(outcome[1])))
            except Exception as exc:
                append((False, _undecodable_value(fn, outcome[1], exc)))
        else:
            append((False, _decode_error(outcome[1:])))
    return result


def _decode_error(error: EncodedError) -> BaseException:
    """Rebuild an exception raised in a worker, or a RemoteError that stands in for it."""
    data, text, type_name, message, why = error
    exc: object = None
    if data is not None:
        try:
            exc = pickle.loads(data)
        except Exception as problem:
            why = f"this process could not unpickle it ({type(problem).__name__}: {problem})"
        else:
            if not isinstance(exc, BaseException):
                why = f"it unpickles here as a {type(exc).__qualname__}"
    if not isinstance(exc, BaseException):
        short = type_name.rpartition(".")[2]
        exc = RemoteError(
            f"{type_name}: {message} (raised in a worker process; {why}, so corral raises "
            f"RemoteError in its place; make {short} picklable, for instance by passing "
            f"every argument of its __init__ on to super().__init__(), or give it a "
            f"__reduce__)",
            type_name=type_name,
            original_message=message,
            remote_traceback=text,
        )
    if text:
        exc.__cause__ = _RemoteTraceback(text)
    return exc


def _undecodable_value(fn: Callable[..., Any], data: bytes, exc: Exception) -> NotPicklableError:
    name = getattr(fn, "__qualname__", repr(fn))
    refers = ", ".join(pickled_globals(data)) or "no class"
    error = NotPicklableError(
        f"a return value of {name} was pickled in the worker process but cannot be "
        f"unpickled in this one ({type(exc).__name__}: {exc}; its pickle refers to "
        f"{refers}); return something that unpickles (an exception's __init__ must pass "
        f"every argument on to super().__init__()), or pass offload='thread'"
    )
    error.__cause__ = exc
    return error


_live_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()
_default: ProcessPool | None = None
_default_lock = threading.Lock()


def default_pool() -> ProcessPool:
    """Return the process-wide pool behind :func:`to_process` and ``offload="process"``.

    It has one worker per CPU, starts them on first use, and is closed at exit.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = ProcessPool()
        return _default


async def to_process(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` in the default process pool and return its result.

    The pool is persistent: workers are started once and reused by every call.
    Cancelling the caller kills the worker running the call (nothing keeps running
    behind it).

    Args:
        fn: An importable (module-level) plain function.
        *args: Positional arguments for ``fn``; picklable.
        **kwargs: Keyword arguments for ``fn``; picklable.

    Returns:
        What ``fn`` returned.

    Raises:
        Exception: Whatever ``fn`` raised, its remote traceback chained as ``__cause__``
            (:class:`~corral.RemoteError` in its place if it cannot be pickled).
        NotPicklableError: ``fn``, an argument or the result cannot cross the process
            boundary; checked for ``fn`` before work starts.
        WorkerCrashed: The worker died while running the call.
    """
    return await default_pool().run(fn, *args, **kwargs)


@atexit.register
def _close_pools_at_exit() -> None:
    # Registered after multiprocessing.util's own exit hook (imported above), so it runs
    # first: our non-daemonic workers are stopped before multiprocessing joins children.
    for pool in list(_live_pools):
        pool.close()


assert multiprocessing.util  # imported for the atexit ordering above
