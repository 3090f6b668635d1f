"""The writer: one coroutine per database owns its connection and commits in batches.

Producers (tasks, and threads through their event loop) append to one bounded queue;
only the writer takes from it and only the writer touches the store (the
:class:`~corral._ports.Store` port). A batch closes when it holds ``batch_size`` rows,
when ``flush_interval`` seconds have passed since its first item, when a flush or an
operation (``Database._run``) asks for a commit, or when the database closes; and
as soon as it holds ``_EAGER_ROWS`` rows (1,000), when the writer is free to write it:
so a producer's rows are written while it goes on putting more, and what it puts
meanwhile, however much, is the next batch (up to ``batch_size``). The
writer hands each batch to the store whole (``Store.apply``); the SQL stores make it
one transaction (``corral._backends._sql._batch``):

1. rows, grouped into runs (same table, same columns, in order) and upserted in bulk,
   each run in a savepoint; a run that fails is written again row by row, each row in
   its own savepoint, so that only the failing rows are left out;
2. operations, in queue order among the rows, each in its own savepoint (an operation
   alone in its batch runs in the transaction itself, rolled back if it fails); calls
   of one kind queued one after another (``run_grouped``: enqueues from many tasks)
   are one operation, so they share a statement and a commit (group commit);
3. the registered sources that have something pending, each in its own savepoint;
4. ``COMMIT``.

A row that fails becomes a :class:`~corral.WriteError`, raised by the next ``put`` or
``flush`` or when ``connect`` exits; at most ``_MAX_ERRORS`` wait to be raised, and
failures beyond them are only counted (``errors_dropped``, and a note on the next error
raised), so that any number of refused rows keeps the memory bounded. A failure
outside a row (the connection, the commit) is fatal: the batch and everything queued
behind it are counted as failed, the ``connect`` body is cancelled, and ``connect``
raises the error.

Except a lost connection (:class:`~corral.ConnectionLostError`, from a store that can
reconnect): the writer has the store reconnect (with backoff, for a bounded time) and
writes the batch again, since the server rolled it back. If ``COMMIT`` had been sent
when the connection broke, the batch may have committed: its operations are not run
again, their callers get :class:`~corral.CommitUnknownError`, and its rows are written
again only when the batch held nothing else (upserting the same rows twice leaves
what once would). What a lost transaction took from a source cannot be written again:
it is reported as a ``WriteError``.

Everything here runs on the event loop's thread; the writer's own loop is shielded
from cancellation and ends only when the database closes, after the queue is drained.
"""

from __future__ import annotations

import asyncio
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from ._exceptions import CommitUnknownError, ConnectionLostError, DatabaseClosedError, WriteError
from ._ports import Batch, Run, Segment, Session, Source, Store, TableSchema

__all__ = ["Source", "Writer"]

#: The session the store gives operations and sources.
S = TypeVar("S", bound=Session)


#: A row shown in an error message is cut to this many characters.
_ROW_REPR = 300
#: A batch of this many rows (or ``batch_size`` or ``max_pending``, if smaller) is
#: written at once, without waiting for the flush interval: the writer then writes while
#: its producers go on, and what they queue meanwhile is its next batch.
_EAGER_ROWS = 1_000
#: At most this many write errors wait to be raised; failures beyond them are counted
#: (``errors_dropped``), not kept, so that refused rows cannot fill the memory.
_MAX_ERRORS = 100


class _Op(Generic[S]):
    """A queued call of ``fn(session)``, answered once its batch is committed.

    The :class:`~corral._ports.Operation` the store runs inside its batch.
    """

    __slots__ = ("cancelled", "error", "event", "fn", "kept", "result", "scope")

    #: Its statements need the batch's transaction (see :attr:`_Group.autocommit`).
    autocommit = False

    def __init__(self, fn: Callable[[S], Awaitable[Any]]) -> None:
        self.fn = fn
        self.event = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        #: The caller was cancelled: skip the call, or cancel it if it is running.
        self.cancelled = False
        #: ``fn`` returned before its caller was cancelled, if it was: its work is
        #: committed with its batch, and is written again if the batch is lost before
        #: its commit (``Database._run``'s promise), whether or not its caller waits.
        self.kept = False
        self.scope: anyio.CancelScope | None = None

    @property
    def abandoned(self) -> bool:
        """Whether its caller was cancelled before ``fn`` returned: skip it."""
        return self.cancelled and not self.kept

    async def run(self, session: S) -> bool:
        """Call ``fn``; return whether its work is to be kept (it succeeded, not abandoned).

        Its error is the caller's, kept in :attr:`error`; a lost connection is the
        batch's, raised. Cancelled if its caller is, until ``fn`` has returned once.
        """
        if self.abandoned:
            return False
        with anyio.CancelScope() as self.scope:
            try:
                self.result = await self.fn(session)
            except Exception as exc:
                self.error = exc
                lost = _lost_connection(exc)
                if lost is not None:  # not the operation's error: the batch's
                    raise lost from None
        self.scope = None
        if self.error is None and not self.abandoned:
            self.kept = True
            return True
        return False

    def answer(self) -> None:
        """Tell the caller: its batch is committed (or it failed, :attr:`error` says)."""
        self.event.set()

    def fail(self, error: BaseException) -> None:
        """Answer the caller with ``error``."""
        self.error = error
        self.event.set()

    def reset(self) -> None:
        """Forget what a lost transaction made of the call: it runs again.

        If it was kept, it runs again even for a caller that was cancelled since.
        """
        self.result = self.error = None

    def pending(self) -> int:
        """How many callers wait on it (and were not cancelled): 1 or 0."""
        return 0 if self.cancelled else 1


class _Call:
    """One caller's part of a :class:`_Group`: its argument, and what it gets back."""

    __slots__ = ("abandoned", "arg", "error", "event", "one_statement", "result")

    def __init__(self, arg: object, one_statement: bool) -> None:
        self.arg = arg
        #: The call's work alone is one statement, atomic without a transaction.
        self.one_statement = one_statement
        self.event = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        #: The caller was cancelled before its group ran: left out of it.
        self.abandoned = False


class _Group(Generic[S]):
    """Calls of one kind queued one after another, run as one operation: group commit.

    ``fn(session, args)`` gets the argument of every call still wanted, in order, and
    returns one answer per call: an exception instance is raised to that caller alone,
    anything else is its result. If ``fn`` raises, every call gets the error and the
    group's work is undone. The :class:`~corral._ports.Operation` the store runs.
    """

    __slots__ = ("calls", "fn", "key", "running", "started")

    def __init__(self, key: object, fn: Callable[[S, list[Any]], Awaitable[list[Any]]]) -> None:
        self.key = key
        self.fn = fn
        self.calls: list[_Call] = []
        #: The store has begun to run it: no call joins or leaves it any more.
        self.started = False
        #: The calls it runs, fixed when it first begins: run again after a lost
        #: connection, it runs the same ones (a call that had begun stays in).
        self.running: list[_Call] | None = None

    @property
    def abandoned(self) -> bool:
        """Whether every caller gave up before it began: skip it."""
        if self.running is not None:
            return not self.running
        return all(call.abandoned for call in self.calls)

    @property
    def autocommit(self) -> bool:
        """Whether it is one call whose work is one statement.

        Alone in its batch, the store may then run it outside a transaction (one round
        trip and one commit).
        """
        calls = self.calls
        return len(calls) == 1 and calls[0].one_statement

    async def run(self, session: S) -> bool:
        """Call ``fn`` with the calls still wanted; return whether its work is kept."""
        self.started = True
        calls = self.running
        if calls is None:
            calls = self.running = [call for call in self.calls if not call.abandoned]
        if not calls:
            return False
        try:
            answers = await self.fn(session, [call.arg for call in calls])
        except Exception as exc:
            lost = _lost_connection(exc)
            if lost is not None:  # not the calls' error: the batch's
                raise lost from None
            for call in calls:
                call.error = exc
            return False
        for call, answer in zip(calls, answers, strict=True):
            if isinstance(answer, BaseException):
                call.error = answer
            else:
                call.result = answer
        return True

    def answer(self) -> None:
        """Tell every caller: the batch is committed."""
        for call in self.calls:
            call.event.set()

    def fail(self, error: BaseException) -> None:
        """Answer every caller with ``error``."""
        for call in self.calls:
            call.error = error
            call.event.set()

    def reset(self) -> None:
        """Forget what a lost transaction made of the calls: the same calls run again."""
        self.started = False
        for call in self.calls:
            call.result = call.error = None

    def pending(self) -> int:
        """How many callers wait on it (and are not abandoned)."""
        return sum(1 for call in self.calls if not call.abandoned)


class _Flush:
    """A barrier: set once everything queued before it is committed."""

    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: BaseException | None = None


class _SpaceWaiter:
    """A producer waiting for room in the queue; ``granted`` reserves its slot."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


#: What the queue holds: runs of rows (a row joins its table's newest run when it has
#: the same columns), operations and flush barriers, in order.
_Item = Run | _Op[Any] | _Group[Any] | _Flush
#: An operation of the queue: one call, or a group of calls.
_Operation = _Op[Any] | _Group[Any]


def _no_task() -> object:
    return None


def _native_current_task() -> Callable[[], object]:
    """Return the event loop's own ``current_task`` (asyncio's, or trio's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio (anyio runs on nothing else)
        import trio.lowlevel

        return trio.lowlevel.current_task
    return asyncio.current_task


def _counted(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _lost_connection(exc: BaseException) -> ConnectionLostError | None:
    """Return the ConnectionLostError that ``exc`` is, or was raised from, if any."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        if isinstance(error, ConnectionLostError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _row_repr(columns: tuple[str, ...], values: tuple[object, ...]) -> str:
    text = repr(dict(zip(columns, values, strict=True)))
    return text if len(text) <= _ROW_REPR else text[: _ROW_REPR - 5] + " ...}"


class Writer(Generic[S]):
    """The queue and the batching loop of one database; see the module docstring."""

    def __init__(
        self,
        store: Store[S],
        *,
        batch_size: int,
        flush_interval: float,
        max_pending: int,
        cancel_body: Callable[[], None],
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        #: A batch this large is worth its commit: it is written without waiting for
        #: ``flush_interval``, so that a producer's rows are written while it goes on.
        self._eager = min(batch_size, max_pending, _EAGER_ROWS)
        #: A row queued wakes the waiting writer once this many slots are in use: the
        #: first row when it is idle, enough rows for a batch when it is collecting.
        self._wake_at = 1
        self._cancel_body = cancel_body
        #: Rows accepted, committed and failed; batches committed.
        self.accepted: int = 0
        self.committed: int = 0
        self.failed: int = 0
        self.batches: int = 0
        self._queue: deque[_Item] = deque()
        #: Bumped by every operation queued: later rows start new runs, after it.
        self._epoch = 0
        #: Queue slots in use: rows queued, plus slots granted to waiting producers.
        self._used = 0
        self._space_waiters: deque[_SpaceWaiter] = deque()
        self._wakeup: anyio.Event | None = None
        self._closing = False
        self._final_sources = False
        #: No more puts: the database closed or the writer stopped.
        self.closed: bool = False
        #: The error that stopped the writer, if one did.
        self.fatal: BaseException | None = None
        #: Write errors waiting to be raised, at most _MAX_ERRORS of them.
        self._errors: deque[WriteError] = deque()
        #: Write errors not kept (the queue of errors was full): all, and those not
        #: told of yet in a note of a raised error.
        self.errors_dropped: int = 0
        self._dropped_untold = 0
        self._sources: list[Source[S]] = []
        self._inflight: list[_Item] = []
        #: The sources whose write() ran in the current transaction.
        self._written: list[Source[S]] = []
        self._done = anyio.Event()
        #: The writer's task (the event loop's own object), once it runs; and how to get
        #: the current one (cheaper than anyio.get_current_task(), on every operation).
        self._task: object = None
        self._current_task: Callable[[], object] = _no_task

    # -- producers -------------------------------------------------------------------------

    def check_open(self) -> None:
        """Raise the oldest unreported write error, or if the database is closed."""
        if self._errors:
            raise self._next_error()
        if self.closed:
            self._raise_closed()

    def _check_not_writer(self, what: str) -> None:
        if self._task is not None and self._current_task() is self._task:
            raise RuntimeError(
                f"{what} was called from inside the writer (a Database._run function or a "
                f"source's write), where it would wait for the writer itself: write through "
                f"the connection it was given instead"
            )

    def _raise_closed(self) -> None:
        if self.fatal is not None:
            raise DatabaseClosedError(
                "the database's writer stopped on an error (chained below); nothing more "
                "can be written through it"
            ) from self.fatal
        raise DatabaseClosedError(
            "the database is closed: its `async with corral.connect(...)` block has ended"
        )

    def _append(
        self, table: TableSchema, columns: tuple[str, ...], values: tuple[object, ...]
    ) -> None:
        run = table.tail
        if run is not None and run.open and run.columns is columns and run.epoch == self._epoch:
            run.rows.append(values)
        else:
            run = table.tail = Run(table, columns, [values], epoch=self._epoch)
            self._queue.append(run)
        self.accepted += 1
        if self._wakeup is not None and self._used >= self._wake_at:
            self._wakeup.set()
            self._wakeup = None

    def put_nowait(
        self, table: TableSchema, columns: tuple[str, ...], values: tuple[object, ...]
    ) -> bool:
        """Queue a row if there is room and nobody waits; return whether it was queued.

        Raises as :meth:`check_open` does. ``columns`` must be the same tuple object for
        rows with the same columns (the table's canonical one), and ``values`` in that
        order, checked and converted.
        """
        if self._used >= self._max_pending or self._space_waiters or self._errors or self.closed:
            self.check_open()
            return False
        self._used += 1
        run = table.tail
        if run is not None and run.open and run.columns is columns and run.epoch == self._epoch:
            run.rows.append(values)  # the common case, inlined
            self.accepted += 1
            if self._wakeup is not None and self._used >= self._wake_at:
                self._wakeup.set()
                self._wakeup = None
        else:
            self._append(table, columns, values)
        return True

    async def put(
        self, table: TableSchema, columns: tuple[str, ...], values: tuple[object, ...]
    ) -> None:
        """Queue a row, waiting (first come, first served) while the queue is full.

        Raises the cancellation only while it waits, and then the row was not queued;
        once it is queued, it returns (trio's rule: what raised ``Cancelled`` did not
        happen).
        """
        if self.put_nowait(table, columns, values):
            await anyio.lowlevel.cancel_shielded_checkpoint()  # accepted: no Cancelled
            return
        self._check_not_writer("put() on a full queue")
        waiter = _SpaceWaiter()
        self._space_waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if not waiter.granted:
                if waiter in self._space_waiters:  # else: refused at close meanwhile
                    self._space_waiters.remove(waiter)
            elif self.fatal is None:  # pass the slot on: this row was not accepted
                self._used -= 1
                self._grant()
                self._wake()
            raise
        if not waiter.granted or self.fatal is not None:
            self._raise_closed()
        self._append(table, columns, values)

    async def flush(self) -> None:
        """Wait until everything accepted before this call is committed."""
        self._check_not_writer("flush()")
        self.check_open()
        marker = _Flush()
        self._queue.append(marker)
        self._wake()
        await marker.event.wait()
        if marker.error is not None:
            raise marker.error
        if self._errors:
            raise self._next_error()

    async def run_op(self, fn: Callable[[S], Awaitable[Any]]) -> Any:
        """Queue ``fn``; return its result once its batch is committed."""
        self._check_not_writer("Database._run()")
        if self.closed:
            self._raise_closed()
        op: _Op[S] = _Op(fn)
        self._queue.append(op)
        self._epoch += 1
        self._wake()
        try:
            await op.event.wait()
        except BaseException:
            op.cancelled = True
            if op.scope is not None and not op.kept:
                op.scope.cancel()
            raise
        if op.error is not None:
            raise op.error
        return op.result

    async def run_grouped(
        self,
        key: object,
        fn: Callable[[S, list[Any]], Awaitable[list[Any]]],
        arg: object,
        *,
        one_statement: bool = False,
    ) -> Any:
        """Queue a call of ``fn`` with ``arg``, grouped with the calls of ``key`` beside it.

        A call joins the group of ``key`` at the tail of the queue, if there is one that
        has not begun (so the order among rows and operations is kept): every call that
        arrives while the writer is busy goes into one operation, ``fn(session, args)``,
        of one batch (see :class:`_Group`). Returns this call's answer once its batch is
        committed, or raises it. A caller cancelled before its group has begun is left
        out of it; once it has begun, the call's work is committed with the others'.
        ``one_statement``: ``fn`` called with this argument alone runs one statement,
        atomic by itself (see :attr:`_Group.autocommit`).
        """
        self._check_not_writer("Database._run_grouped()")
        if self.closed:
            self._raise_closed()
        queue = self._queue
        group = queue[-1] if queue else None
        if type(group) is not _Group or group.key != key or len(group.calls) >= self._batch_size:
            group = _Group(key, fn)
            queue.append(group)
            self._epoch += 1
            self._wake()
        call = _Call(arg, one_statement)
        group.calls.append(call)
        try:
            await call.event.wait()
        except BaseException:
            call.abandoned = True
            raise
        if call.error is not None:
            raise call.error
        return call.result

    def register(self, source: Source[S]) -> None:
        """Call ``source.write`` in every batch while ``source.pending()``."""
        self._sources.append(source)
        self._wake()

    def take_errors(self) -> list[WriteError]:
        """Return (and forget) every write error not raised yet."""
        errors = list(self._errors)
        self._errors.clear()
        return errors

    def take_dropped_note(self) -> str | None:
        """Return (and forget) a note on the write errors not kept and not told of yet."""
        n, self._dropped_untold = self._dropped_untold, 0
        if not n:
            return None
        return (
            f"corral: also, {n} more writes failed whose errors were not kept (at most "
            f"{_MAX_ERRORS} wait to be raised); statistics().failed counts every failed row"
        )

    def _next_error(self) -> WriteError:
        """Pop the oldest write error, with a note on those not kept since the last one."""
        error = self._errors.popleft()
        note = self.take_dropped_note()
        if note is not None:
            error.add_note(note)
        return error

    def _room_for_error(self) -> bool:
        """Return whether one more write error can be kept; if not, count it as dropped."""
        if len(self._errors) < _MAX_ERRORS:
            return True
        self.errors_dropped += 1
        self._dropped_untold += 1
        return False

    def _keep(self, error: WriteError) -> None:
        """Keep ``error`` to be raised, unless _MAX_ERRORS wait already (then count it)."""
        if self._room_for_error():
            self._errors.append(error)

    async def close(self) -> None:
        """Stop accepting rows, drain and commit the queue, and wait for the writer."""
        self.closed = True
        self._closing = True
        self._refuse_waiters()
        self._wake()
        await self._done.wait()

    # -- the writer --------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def _grant(self) -> None:
        while self._space_waiters and self._used < self._max_pending and not self.closed:
            waiter = self._space_waiters.popleft()
            waiter.granted = True
            self._used += 1
            waiter.event.set()

    def _refuse_waiters(self) -> None:
        while self._space_waiters:
            self._space_waiters.popleft().event.set()

    async def _wait(self, timeout: float | None) -> bool:
        """Wait for an item, a close or ``timeout`` seconds; return whether time ran out."""
        event = self._wakeup = anyio.Event()
        if timeout is None:
            await event.wait()
            return False
        with anyio.move_on_after(timeout) as scope:
            await event.wait()
        self._wakeup = None
        return scope.cancelled_caught

    def _sources_pending(self) -> bool:
        return any(source.pending() for source in self._sources)

    async def run(self) -> None:
        """Collect a batch and commit it, over and over, until closed and drained."""
        self._current_task = _native_current_task()
        self._task = self._current_task()
        with anyio.CancelScope(shield=True):
            try:
                while True:
                    items = await self._collect()
                    if items is None:
                        break
                    await self._commit_reconnecting(items)
            except BaseException as exc:
                self._stop(exc)
            finally:
                self._done.set()

    async def _collect(self) -> list[_Item] | None:
        """Return the next batch ([] for sources only), or None when closed and drained."""
        self._wake_at = 1
        spun = False
        while not self._queue:
            if self._closing:
                if self._used:  # producers granted a slot have yet to queue their row
                    await self._wait(None)
                    continue
                if self._final_sources or not self._sources_pending():
                    return None
                self._final_sources = True  # one last batch for the sources, then stop
                return []
            if not spun:
                # Let the callers just answered run first: one that queues its next
                # call at once (a loop of enqueues) finds the writer awake, not asleep
                # to be woken, which costs the event loop a turn per call.
                spun = True
                await anyio.lowlevel.checkpoint()  # shielded: run() is
                continue
            # Without sources, nothing is due until something is queued (register()
            # wakes the writer for a new source).
            timeout = self._flush_interval if self._sources else None
            if await self._wait(timeout) and self._sources_pending():
                return []
        deadline = anyio.current_time() + self._flush_interval
        items: list[_Item] = []
        rows = 0
        urgent = timed_out = False
        queue = self._queue
        while True:
            taken = 0
            room = self._batch_size - rows
            while queue and taken < room:
                item = queue[0]
                if type(item) is Run:
                    size = len(item.rows)
                    if size <= room - taken:
                        queue.popleft()
                        item.open = False
                        if item.table.tail is item:  # let its rows go once written
                            item.table.tail = None
                        items.append(item)
                        taken += size
                    else:  # split: the rest stays at the head of the queue, still open
                        part = room - taken
                        items.append(Run(item.table, item.columns, item.rows[:part]))
                        item.rows = item.rows[part:]
                        taken += part
                else:
                    queue.popleft()
                    items.append(item)
                    urgent = True
            if taken:
                rows += taken
                self._used -= taken
                self._grant()
            if rows >= self._eager or urgent or self._closing or timed_out:
                return items
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return items
            self._wake_at = self._eager - rows
            timed_out = await self._wait(remaining)

    async def _commit_reconnecting(self, items: list[_Item]) -> None:
        """Commit ``items``; after a lost connection, reconnect and retry what is safe to."""
        while True:
            try:
                await self._commit(items)
                return
            except ConnectionLostError as exc:
                # reconnect() raises (fatally) once it gives up.
                if not self._store.reconnects:
                    raise
                items = self._inflight = self._after_loss(items, exc)
                await self._store.reconnect()
                if not items:
                    return

    def _after_loss(self, items: list[_Item], lost: ConnectionLostError) -> list[_Item]:
        """Answer what the lost transaction cannot retry; return what it can, in order."""
        ops = [item for item in items if isinstance(item, _Op | _Group)]
        written, self._written = self._written, []
        if lost.commit_sent and (ops or written):
            # It may have committed: run nothing of it again.
            rows = sum(len(item.rows) for item in items if type(item) is Run)
            error = CommitUnknownError(
                f"{lost}: the batch may or may not have committed; read back what this "
                f"operation wrote before doing it again"
            )
            error.__cause__ = lost
            for op in ops:
                op.fail(error)
            if rows:
                self.failed += rows
                failure = WriteError(
                    f"{rows} rows were written in a batch whose COMMIT was sent when the "
                    f"connection was lost ({lost}): they may or may not be committed"
                )
                failure.__cause__ = lost
                self._keep(failure)
            self._report_sources(written, lost, "may or may not have been committed")
            for item in items:
                if isinstance(item, _Flush):
                    item.event.set()
            return []
        self._report_sources(written, lost, "were rolled back and are lost")
        for op in ops:
            op.reset()
        return items

    def _report_sources(
        self, sources: list[Source[S]], lost: ConnectionLostError, what: str
    ) -> None:
        for source in sources:
            error = WriteError(
                f"what {source!r}.write() wrote in a transaction that lost its connection "
                f"{what}: {lost}"
            )
            error.__cause__ = lost
            self._keep(error)

    async def _commit(self, items: list[_Item]) -> None:
        """Have the store write one batch, then answer and count what it held.

        See the module docstring for what the store does with it.
        """
        batch, ops, flushes, rows = self._batch(items)
        self._inflight = items
        self._written = batch.written
        try:
            await self._store.apply(batch)
        finally:
            self._keep_source_errors(batch)
        self._inflight = []
        if batch.segments or batch.sources:
            self.batches += 1
        failures = batch.failures
        self.committed += rows - len(failures)
        self.failed += len(failures)
        if failures:
            self._keep_row_failures(failures)
        for op in ops:
            op.answer()
        for marker in flushes:
            marker.event.set()

    def _batch(self, items: list[_Item]) -> tuple[Batch[S], list[_Operation], list[_Flush], int]:
        """Return the batch of ``items``, its operations and flushes, and its row count.

        Consecutive runs make one segment; each operation is one; flushes are answered
        once the batch is committed; the sources with something pending are added.
        """
        segments: list[Segment[S]] = []
        runs: list[Run] = []
        flushes: list[_Flush] = []
        ops: list[_Operation] = []
        rows = 0
        for item in items:
            if type(item) is Run:
                runs.append(item)
                rows += len(item.rows)
            elif isinstance(item, _Op | _Group):
                if runs:
                    segments.append(runs)
                    runs = []
                segments.append(item)
                ops.append(item)
            else:
                assert isinstance(item, _Flush)
                flushes.append(item)
        if runs:
            segments.append(runs)
        sources = [source for source in self._sources if source.pending()]
        return Batch(segments, sources), ops, flushes, rows

    def _keep_source_errors(self, batch: Batch[S]) -> None:
        """Keep a ``WriteError`` for each source whose write raised (it was rolled back)."""
        for source, exc in batch.source_errors:
            error = WriteError(f"{source!r}.write() failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._keep(error)

    def _keep_row_failures(self, failures: list[tuple[Run, int, Exception]]) -> None:
        """Keep a ``WriteError`` naming the table and the row for each row left out."""
        for run, index, exc in failures:
            if not self._room_for_error():
                continue  # counted: statistics().failed and errors_dropped
            values = run.rows[index]
            row = dict(zip(run.columns, values, strict=True))
            error = WriteError(
                f"could not write row {_row_repr(run.columns, values)} to table "
                f"{run.table.name!r}: {type(exc).__name__}: {exc}",
                table=run.table.name,
                row=row,
            )
            # Its traceback's frames would keep the whole batch (and every failure of
            # it) alive: keep the lines, drop their locals.
            traceback.clear_frames(exc.__traceback__)
            error.__cause__ = exc
            self._errors.append(error)

    def _stop(self, exc: BaseException) -> None:
        """Stop for good: fail everything queued, and cancel the body of ``connect``."""
        lost = [*self._inflight, *self._queue]
        self._inflight = []
        self._queue.clear()
        rows = sum(len(item.rows) for item in lost if isinstance(item, Run))
        ops = sum(item.pending() for item in lost if isinstance(item, _Op | _Group))
        fatal: BaseException = exc
        if isinstance(exc, Exception):
            fatal = WriteError(
                f"the database writer stopped: {type(exc).__name__}: {exc}; "
                f"{_counted(rows, 'row')} and {_counted(ops, 'operation')} of its current "
                f"batch and queue were not committed"
            )
            fatal.__cause__ = exc
        self.fatal = fatal
        self.closed = True
        self.failed += rows
        self._used = 0
        for item in lost:
            if isinstance(item, _Op | _Group):
                item.fail(fatal)
            elif isinstance(item, _Flush):
                item.error = fatal
                item.event.set()
        self._refuse_waiters()
        self._cancel_body()
