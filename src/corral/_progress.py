"""Progress tracking of runs and numbered subtasks, stored in the database.

The concepts are those of the task trackers people already use: a *run* (a type such
as ``"STATIC"`` and a name) holds numbered *subtasks*, each with ``items_total``,
``items_complete``, ``percent``, a ``status`` (RUNNING, COMPLETED, FAILED, SKIPPED), a
message, and start and end times.

Counting is exact and cheap: :meth:`Subtask.increment` adds to an in-memory tally under
a lock (it never blocks and is safe from any task or thread), and the database's writer
coroutine turns each tally into one atomic database-side addition
(``items_complete = items_complete + n``) per subtask per batch, at least once every
flush interval. Several processes or hosts sharing one database therefore never lose a
count, and a million increments cost a handful of statements.

The rules live here (checks, handles, the coalescing); the state lives in the
database's :class:`~corral._ports._progress.ProgressStore`, reached as
``session.progress`` in the writer. On SQL databases two tables hold it, created on
first use: ``corral_runs`` and ``corral_subtasks``, with columns of plain types so that
other tools can read them.

Runs end even when their program dies. While a run is open (started here and not
finished), the tracker keeps its *heartbeat*, the run's ``updated_at``: the writer's
batch that adds a run's counts stamps it (at most once a second), and an open, idle run
is touched once per heartbeat period (``connect(heartbeat=30)``). Nothing is written
per increment. Leaving ``connect`` on an exception ends the runs it started and left
open: FAILED with the exception's type, or INTERRUPTED for Ctrl-C
(``KeyboardInterrupt``) or a cancellation. A process killed outright (SIGKILL, a power
cut) ends nothing: its runs stay RUNNING, their heartbeat stops, and readers judge
them *abandoned* once it is older than :data:`ABANDONED_AFTER` (:func:`is_abandoned`:
a judgement computed by the reader, not a stored status).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from ._exceptions import ProgressNotFoundError
from ._ports._progress import RunProgress, Status, SubtaskProgress
from ._validate import check_choice, check_int, check_number, check_str, value_error

if TYPE_CHECKING:
    from ._database import Database
    from ._ports._session import Session

__all__ = [
    "ABANDONED_AFTER",
    "DEFAULT_HEARTBEAT",
    "ProgressTracker",
    "Run",
    "RunProgress",
    "Status",
    "Subtask",
    "SubtaskProgress",
    "is_abandoned",
    "last_update",
]

T = TypeVar("T")

#: Seconds between two heartbeats of an open, idle run (``connect(heartbeat=...)``).
DEFAULT_HEARTBEAT = 30.0
#: Seconds without a heartbeat after which a RUNNING run is judged abandoned: four
#: default heartbeat periods (``corral progress --abandoned-after``).
ABANDONED_AFTER = 4 * DEFAULT_HEARTBEAT
#: Seconds between two heartbeats of a run whose counts the writer adds, at least.
_COUNTED_HEARTBEAT = 1.0
#: A run's message when leaving ``connect`` ended it is cut to this many characters.
_MESSAGE_CHARS = 300


def _now() -> datetime:
    return datetime.now(UTC)


def last_update(run: RunProgress) -> datetime:
    """Return a run's heartbeat: its ``updated_at``, else (an older store) its start.

    Args:
        run: A snapshot of the run.

    Returns:
        When the run last showed it was alive.
    """
    return run.updated_at if run.updated_at is not None else run.started_at


def is_abandoned(
    run: RunProgress, *, after: float = ABANDONED_AFTER, now: datetime | None = None
) -> bool:
    """Return whether ``run`` is RUNNING with no heartbeat for more than ``after`` seconds.

    The reader's judgement that the process running it died (a SIGKILL, a crash, a
    lost host): nothing stores it.

    Args:
        run: A snapshot of the run.
        after: Seconds without a heartbeat after which a RUNNING run is abandoned.
        now: The time to judge at; the current time (UTC) if ``None``.

    Returns:
        Whether the run is RUNNING and its heartbeat older than ``after`` seconds.
    """
    if run.status is not Status.RUNNING:
        return False
    now = _now() if now is None else now
    return (now - last_update(run)).total_seconds() > after


def check_heartbeat(value: object) -> float:
    """Return ``value`` as a heartbeat period in seconds, or raise naming the fix."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"heartbeat must be seconds as a number, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"heartbeat must be a finite number of seconds > 0, got {value}")
    return float(value)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def ending(
    exc: BaseException, cancelled: type[BaseException], *, sigint: bool = False
) -> tuple[Status, str]:
    """Return the status and message of a run left open by ``exc`` leaving ``connect``.

    INTERRUPTED for a ``KeyboardInterrupt``, a ``SystemExit`` or a cancellation
    (``cancelled``: the event loop's class) anywhere in ``exc``, a cancellation counting
    as a ``KeyboardInterrupt`` when ``sigint`` (the event loop cancelled its main task
    for Ctrl-C, as asyncio's runner does); else FAILED, with the type and text of the
    first exception.
    """
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt | SystemExit):
            return Status.INTERRUPTED, f"interrupted: {type(leaf).__name__}"
    failures = [leaf for leaf in leaves if not isinstance(leaf, cancelled)]
    if not failures:
        return Status.INTERRUPTED, f"interrupted: {'KeyboardInterrupt' if sigint else 'cancelled'}"
    first = failures[0]
    text = str(first)
    message = f"{type(first).__name__}: {text}" if text else type(first).__name__
    if len(message) > _MESSAGE_CHARS:
        message = message[: _MESSAGE_CHARS - 1] + "…"
    return Status.FAILED, message


def _check_text(what: str, value: object, *, optional: bool = False) -> str | None:
    text = check_str(what, value, optional=optional)
    if text is not None and not text.strip():
        raise value_error(what, "a str that is not only whitespace", text)
    return text


def _check_count(what: str, value: object, *, optional: bool = False) -> int | None:
    return check_int(what, value, minimum=0, optional=optional)


class ProgressTracker:
    """Runs and subtasks in one database: ``db.progress``.

    Every write goes through the database's writer; increments are coalesced in memory
    and written as atomic additions, and the runs started here keep a heartbeat (see
    the module documentation).

    Args:
        db: The database whose runs these are (made by corral: use ``db.progress``).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        #: Seconds between two heartbeats of an open, idle run.
        self._heartbeat: float = getattr(db, "_progress_heartbeat", DEFAULT_HEARTBEAT)
        #: The time source of heartbeats and stamps (a test's fake clock replaces it).
        self._clock: Callable[[], datetime] = _now
        #: Runs started here and not finished: they get heartbeats, and are ended when
        #: ``connect`` is left on an exception.
        self._open: set[int] = set()
        #: When each run was last given a heartbeat, by this tracker.
        self._stamped: dict[int, datetime] = {}
        #: When the open runs' next heartbeat is due.
        self._next_beat: datetime | None = None
        self._lock = threading.Lock()
        self._tally: dict[tuple[int, int], int] = {}
        # Increments of 1, the common case, are counted without a lock: next() on an
        # itertools.count is atomic. Per subtask: [its counter, the value already
        # moved into the tally]. The writer reads a counter with next() too and skips
        # the one it drew itself.
        self._counters: dict[tuple[int, int], list[Any]] = {}
        self._schema_ready = False
        db._register_source(self)

    def __repr__(self) -> str:
        return f"<ProgressTracker of {self._db!r}>"

    def _counter(self, key: tuple[int, int]) -> itertools.count[int]:
        with self._lock:
            entry = self._counters.get(key)
            if entry is None:
                entry = self._counters[key] = [itertools.count(), 0]
            counter: itertools.count[int] = entry[0]
            return counter

    def _collect(self) -> None:
        """Move what the counters counted into the tally (on the writer's side)."""
        with self._lock:
            tally = self._tally
            for key, entry in self._counters.items():
                value = next(entry[0])  # also counts this read: skipped next time
                counted = value - entry[1]
                if counted:
                    tally[key] = tally.get(key, 0) + counted
                entry[1] = value + 1

    # -- the writer's source protocol ------------------------------------------------

    def pending(self) -> bool:
        """Return whether increments or a heartbeat wait to be written (for the writer)."""
        self._collect()
        if self._tally:
            return True
        beat = self._next_beat
        return beat is not None and bool(self._open) and self._clock() >= beat

    def _to_touch(self, tally: dict[tuple[int, int], int], now: datetime) -> set[int]:
        """Return the runs whose heartbeat is due: open ones, and counted ones."""
        touch: set[int] = set()
        if self._open and self._next_beat is not None and now >= self._next_beat:
            touch |= self._open
        every = timedelta(seconds=min(_COUNTED_HEARTBEAT, self._heartbeat))
        for run_id in {run_id for run_id, _ in tally}:
            stamped = self._stamped.get(run_id)
            if stamped is None or now - stamped >= every:
                touch.add(run_id)
        return touch

    def _beaten(self, touched: set[int], now: datetime) -> None:
        """Remember the heartbeats just written (those of open runs, and the others)."""
        if len(self._stamped) > 1000:  # runs counted here from elsewhere: keep it small
            self._stamped = {run_id: self._stamped[run_id] for run_id in self._open}
        for run_id in touched:
            self._stamped[run_id] = now
        if self._open and self._open <= touched:
            self._next_beat = now + timedelta(seconds=self._heartbeat)

    async def write(self, conn: Session) -> None:
        """Write the pending increments as atomic additions, and the heartbeats due.

        Called by the writer; one statement for the counts, and one for the runs'
        heartbeats when some are due (see the module documentation).

        Args:
            conn: The writer's session, in its batch's transaction.
        """
        self._collect()
        with self._lock:
            tally, self._tally = self._tally, {}
        now = self._clock()
        touch = self._to_touch(tally, now)
        if not tally and not touch:
            return
        try:
            if tally:
                await conn.progress.add(tally, now)
            if touch:
                await conn.progress.touch_runs(touch, now)
        except BaseException:
            self._add_back(tally)  # keep the counts: the next batch tries again
            raise
        self._beaten(touch, now)

    def _add_back(self, tally: dict[tuple[int, int], int]) -> None:
        with self._lock:
            for key, n in tally.items():
                self._tally[key] = self._tally.get(key, 0) + n

    # -- public ----------------------------------------------------------------------

    async def _call(self, fn: Callable[[Session], Awaitable[T]]) -> T:
        """Run ``fn(session)`` in the writer, creating the tables first if need be."""

        async def op(conn: Session) -> T:
            if not self._schema_ready:
                await conn.progress.ensure_schema()
            return await fn(conn)

        result = await self._db._run(op)
        self._schema_ready = True  # committed: the tables exist from now on
        return result

    async def _exists(self) -> bool:
        """Return whether the store holds progress; if so, read it as it is from now on.

        For the reading commands (``corral progress``), which create nothing: without
        the tables there is nothing to show, and with them the tracker reads them as they
        are (no :meth:`~corral._ports._progress.ProgressStore.ensure_schema`, no lock).
        """

        async def exists(conn: Session) -> bool:
            return await conn.progress.exists()

        found = await self._db._run(exists)
        if found:
            self._schema_ready = True
        return found

    async def start_run(self, type: str, name: str) -> Run:
        """Record a new run, RUNNING from now, and return a handle to it.

        Args:
            type: The run's type, such as ``"STATIC"``.
            name: The run's name.

        Returns:
            A handle to the new run.
        """
        _check_text("type", type)
        _check_text("name", name)
        started = self._clock()

        async def insert(conn: Session) -> int:
            return await conn.progress.start_run(type, name, started)

        run_id = await self._call(insert)
        self._open.add(run_id)
        self._stamped[run_id] = started
        if self._next_beat is None or len(self._open) == 1:
            self._next_beat = started + timedelta(seconds=self._heartbeat)
        return Run(self, run_id, type, name)

    async def _interrupt(self, run_id: int, message: str) -> bool:
        """Mark ``run_id`` INTERRUPTED if it is still RUNNING; return whether it was."""
        now = self._clock()

        async def end(conn: Session) -> list[int]:
            return await conn.progress.end_running([run_id], Status.INTERRUPTED, message, now)

        ended = await self._call(end)
        self._open.discard(run_id)
        return bool(ended)

    async def _end_open_runs(
        self, exc: BaseException, cancelled: type[BaseException], *, sigint: bool = False
    ) -> None:
        """End the runs started here and still open, as ``exc`` leaves ``connect``.

        FAILED or INTERRUPTED (see :func:`ending`), and only where the stored status is
        still RUNNING. Best effort: ``exc`` is what the caller sees, so a failure here
        (the writer stopped on an error) is not raised.
        """
        if not self._open:
            return
        status, message = ending(exc, cancelled, sigint=sigint)
        ids = set(self._open)
        now = self._clock()

        async def end(conn: Session) -> list[int]:
            return await conn.progress.end_running(ids, status, message, now)

        try:
            await self._call(end)
        except Exception as error:  # the writer has stopped: it says why, not this
            exc.add_note(f"corral: runs {sorted(ids)} left RUNNING: {error}")
            return
        self._open -= ids

    async def run(self, run_id: int) -> Run:
        """Return a handle to an existing run (from this or any other process or host).

        Args:
            run_id: The run's id.

        Returns:
            A handle to the run.

        Raises:
            ProgressNotFoundError: If there is no such run.
        """
        snapshot = await self.run_progress(run_id)
        return Run(self, snapshot.id, snapshot.type, snapshot.name)

    async def run_progress(self, run_id: int) -> RunProgress:
        """Return a snapshot of one run.

        Args:
            run_id: The run's id.

        Returns:
            The run as it is stored now.

        Raises:
            ProgressNotFoundError: If there is no such run.
        """
        _check_count("run_id", run_id)

        async def read(conn: Session) -> RunProgress | None:
            return await conn.progress.run(run_id)

        run = await self._call(read)
        if run is None:
            raise ProgressNotFoundError(f"no run with id {run_id} in {self._db.url}")
        return run

    async def runs(self, *, limit: int = 20) -> list[RunProgress]:
        """Return the latest ``limit`` runs, newest first.

        Args:
            limit: The most runs to return.

        Returns:
            Snapshots of the runs, newest first.
        """
        _check_count("limit", limit)

        async def read(conn: Session) -> list[RunProgress]:
            return await conn.progress.runs(limit)

        return await self._call(read)

    async def get(self, run_id: int) -> list[SubtaskProgress]:
        """Return a snapshot of every subtask of a run, by number.

        Increments accepted before the call are committed first, so the counts include
        every increment this process made.

        Args:
            run_id: The run's id.

        Returns:
            Snapshots of its subtasks, by number; an empty list for an unknown run.
        """
        _check_count("run_id", run_id)
        await self._db.flush()

        async def read(conn: Session) -> list[SubtaskProgress]:
            return await conn.progress.subtasks(run_id)

        return await self._call(read)

    async def subtask(self, run_id: int, number: int) -> Subtask:
        """Return a handle to an existing subtask, from this or any other process or host.

        Its increments add to the same database row as every other handle's.

        Args:
            run_id: The id of its run.
            number: Its number within the run.

        Returns:
            A handle to the subtask.

        Raises:
            ProgressNotFoundError: If there is no such subtask.
        """
        _check_count("run_id", run_id)
        _check_count("number", number)

        async def read(conn: Session) -> str | None:
            return await conn.progress.subtask_name(run_id, number)

        name = await self._call(read)
        if name is None:
            raise ProgressNotFoundError(
                f"no subtask {number} in run {run_id} in {self._db.url}; "
                f"start it first with run.start_subtask({number}, ...)"
            )
        return Subtask(self, run_id, number, name)


class Run:
    """A handle to one run; made by :meth:`ProgressTracker.start_run`.

    Args:
        tracker: The tracker of its database.
        run_id: The run's id in the database.
        type: Its type, such as ``"STATIC"``.
        name: Its name.
    """

    __slots__ = ("_tracker", "id", "name", "type")

    def __init__(self, tracker: ProgressTracker, run_id: int, type: str, name: str) -> None:
        self._tracker = tracker
        #: The run's id in the database.
        self.id: int = run_id
        #: Its type, such as ``"STATIC"``.
        self.type: str = type
        #: Its name.
        self.name: str = name

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.type} {self.name!r}>"

    async def start_subtask(
        self, number: int, name: str, *, items_total: int | None = None
    ) -> Subtask:
        """Record subtask ``number`` of this run, RUNNING from now, and return its handle.

        Starting a number that exists again restarts it: status RUNNING, its count
        kept (so that a resumed run goes on counting where it was).

        Args:
            number: The subtask's number within the run.
            name: Its name.
            items_total: How many items it has, if known.

        Returns:
            A handle to the subtask.
        """
        _check_count("number", number)
        _check_text("name", name)
        _check_count("items_total", items_total, optional=True)
        now = self._tracker._clock()

        async def insert(conn: Session) -> None:
            await conn.progress.start_subtask(self.id, number, name, items_total, now)

        await self._tracker._call(insert)
        return Subtask(self._tracker, self.id, number, name)

    async def subtasks(self) -> list[SubtaskProgress]:
        """Return a snapshot of this run's subtasks (see :meth:`ProgressTracker.get`).

        Returns:
            Snapshots of its subtasks, by number.
        """
        return await self._tracker.get(self.id)

    async def complete(self, *, message: str | None = None) -> None:
        """Mark the run COMPLETED now.

        Args:
            message: A message to store with it, such as why; ``None`` stores none.
        """
        await self._finish(Status.COMPLETED, message)

    async def fail(self, *, message: str | None = None) -> None:
        """Mark the run FAILED now.

        Args:
            message: A message to store with it, such as why; ``None`` stores none.
        """
        await self._finish(Status.FAILED, message)

    async def interrupt(self, *, message: str | None = None) -> None:
        """Mark the run INTERRUPTED now (stopped from outside before it finished).

        Args:
            message: A message to store with it, such as why; ``None`` stores none.
        """
        await self._finish(Status.INTERRUPTED, message)

    async def _finish(self, status: Status, message: str | None) -> None:
        _check_text("message", message, optional=True)
        now = self._tracker._clock()

        async def update(conn: Session) -> None:
            await conn.progress.finish_run(self.id, status, message, now)

        await self._tracker._call(update)
        self._tracker._open.discard(self.id)


class Subtask:
    """A handle to one subtask; a progress sink for :func:`corral.map`.

    Made by :meth:`Run.start_subtask` or :meth:`ProgressTracker.subtask`.
    ``corral.map(..., progress=subtask)`` counts every completed item.

    Args:
        tracker: The tracker of its database.
        run_id: The run it belongs to.
        number: Its number within the run.
        name: Its name.
    """

    __slots__ = ("_count", "_key", "_tracker", "_writer", "name", "number", "run_id")

    def __init__(self, tracker: ProgressTracker, run_id: int, number: int, name: str) -> None:
        self._tracker = tracker
        self._writer = tracker._db._writer
        self._key = (run_id, number)
        self._count = tracker._counter(self._key)
        #: The run it belongs to.
        self.run_id: int = run_id
        #: Its number within the run.
        self.number: int = number
        #: Its name.
        self.name: str = name

    def __repr__(self) -> str:
        return f"<Subtask {self.number} of run {self.run_id} {self.name!r}>"

    def increment(self, n: int = 1, /) -> None:
        """Count ``n`` more items complete.

        A plain call that never blocks and is safe from any task or thread. The count is
        added in memory and written by the database's writer as one atomic addition,
        within one flush interval; it is never lost while the database is open, and
        the writer writes what is left when ``connect`` exits. Once the ``connect``
        block has ended (or its writer stopped on an error), it raises
        :class:`~corral.DatabaseClosedError` and counts nothing, as every other write
        does.

        Args:
            n: How many more items are complete (an int >= 0).

        Raises:
            DatabaseClosedError: Once the ``connect`` block has ended.
            TypeError: If ``n`` is not an int.
            ValueError: If ``n`` is negative.
        """
        if self._writer.closed:
            self._writer._raise_closed()
        if n == 1 and n.__class__ is int:
            next(self._count)  # atomic: no lock needed
            return
        if n.__class__ is not int:  # exact int: bool and floats are refused
            raise TypeError(f"increment takes an int, got {n!r}")
        if n <= 0:
            if n == 0:
                return
            raise ValueError(f"increment takes a count >= 0, got {n}")
        tracker = self._tracker
        key = self._key
        with tracker._lock:
            tally = tracker._tally
            tally[key] = tally.get(key, 0) + n

    async def update(
        self,
        *,
        status: Status | str | None = None,
        percent: float | None = None,
        message: str | None = None,
        items_total: int | None = None,
    ) -> None:
        """Set any of status, percent, message and items_total; the rest stay as they are.

        Args:
            status: The new status (a :class:`~corral.Status` or its value).
            percent: The new percent done, from 0 to 100.
            message: The new message.
            items_total: The new number of items.

        Raises:
            TypeError: If none of them is given.
        """
        checked = None if status is None else _check_status(status)
        if percent is not None:
            percent = check_number("percent", percent, minimum=0, maximum=100)
        if message is not None:
            _check_text("message", message)
        if items_total is not None:
            _check_count("items_total", items_total)
        if checked is None and percent is None and message is None and items_total is None:
            raise TypeError("update() needs at least one of status, percent, message, items_total")
        ended = checked is not None and checked is not Status.RUNNING
        await self._write(
            ended=ended, status=checked, percent=percent, message=message, items_total=items_total
        )

    async def complete(self, *, message: str | None = None) -> None:
        """Mark the subtask COMPLETED (percent 100) now.

        Args:
            message: A message to store with it, such as why; ``None`` stores none.
        """
        await self._end(Status.COMPLETED, message, percent=100.0)

    async def fail(self, *, message: str | None = None) -> None:
        """Mark the subtask FAILED now.

        Args:
            message: A message to store with it, such as why; ``None`` stores none.
        """
        await self._end(Status.FAILED, message)

    async def skip(self, *, message: str | None = None) -> None:
        """Mark the subtask SKIPPED now.

        Args:
            message: A message to store with it, such as why; ``None`` stores none.
        """
        await self._end(Status.SKIPPED, message)

    async def _end(self, status: Status, message: str | None, percent: float | None = None) -> None:
        if message is not None:
            _check_text("message", message)
        await self._write(ended=True, status=status, percent=percent, message=message)

    async def _write(
        self,
        *,
        ended: bool,
        status: Status | None,
        percent: float | None,
        message: str | None,
        items_total: int | None = None,
    ) -> None:
        now = self._tracker._clock()
        run_id, number = self._key

        async def update(conn: Session) -> None:
            await conn.progress.update_subtask(
                run_id,
                number,
                updated_at=now,
                ended=ended,
                status=status,
                percent=percent,
                message=message,
                items_total=items_total,
            )

        await self._tracker._call(update)


def _check_status(status: object) -> Status:
    return Status(check_choice("status", status, [s.value for s in Status]))
