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
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ._exceptions import ProgressNotFoundError
from ._ports._progress import RunProgress, Status, SubtaskProgress

if TYPE_CHECKING:
    from ._database import Database
    from ._ports._session import Session

__all__ = [
    "ProgressTracker",
    "Run",
    "RunProgress",
    "Status",
    "Subtask",
    "SubtaskProgress",
]

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def _check_text(what: str, value: object, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _check_count(what: str, value: object, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{what} must be an int >= 0, got {value!r}")
    return value


class ProgressTracker:
    """Runs and subtasks in one database: ``db.progress``.

    Every write goes through the database's writer; increments are coalesced in memory
    and written as atomic additions (see the module documentation).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
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
        """Return whether increments wait to be written (for the writer)."""
        self._collect()
        return bool(self._tally)

    async def write(self, conn: Session) -> None:
        """Write the pending increments as atomic additions (called by the writer)."""
        self._collect()
        with self._lock:
            tally, self._tally = self._tally, {}
        if not tally:
            return
        try:
            await conn.progress.add(tally, _now())
        except BaseException:
            self._add_back(tally)  # keep the counts: the next batch tries again
            raise

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
        """Record a new run, RUNNING from now, and return a handle to it."""
        _check_text("type", type)
        _check_text("name", name)
        started = _now()

        async def insert(conn: Session) -> int:
            return await conn.progress.start_run(type, name, started)

        run_id = await self._call(insert)
        return Run(self, run_id, type, name)

    async def run(self, run_id: int) -> Run:
        """Return a handle to an existing run (from this or any other process or host).

        Raises :class:`~corral.ProgressNotFoundError` if there is no such run.
        """
        snapshot = await self.run_progress(run_id)
        return Run(self, snapshot.id, snapshot.type, snapshot.name)

    async def run_progress(self, run_id: int) -> RunProgress:
        """Return a snapshot of one run."""
        _check_count("run_id", run_id)

        async def read(conn: Session) -> RunProgress | None:
            return await conn.progress.run(run_id)

        run = await self._call(read)
        if run is None:
            raise ProgressNotFoundError(f"no run with id {run_id} in {self._db.url}")
        return run

    async def runs(self, *, limit: int = 20) -> list[RunProgress]:
        """Return the latest ``limit`` runs, newest first."""
        _check_count("limit", limit)

        async def read(conn: Session) -> list[RunProgress]:
            return await conn.progress.runs(limit)

        return await self._call(read)

    async def get(self, run_id: int) -> list[SubtaskProgress]:
        """Return a snapshot of every subtask of a run, by number.

        Increments accepted before the call are committed first, so the counts include
        every increment this process made. An unknown run gives an empty list.
        """
        _check_count("run_id", run_id)
        await self._db.flush()

        async def read(conn: Session) -> list[SubtaskProgress]:
            return await conn.progress.subtasks(run_id)

        return await self._call(read)

    async def subtask(self, run_id: int, number: int) -> Subtask:
        """Return a handle to an existing subtask, from this or any other process or host.

        Its increments add to the same database row as every other handle's. Raises
        :class:`~corral.ProgressNotFoundError` if there is no such subtask.
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
    """A handle to one run; made by :meth:`ProgressTracker.start_run`."""

    __slots__ = ("_tracker", "id", "name", "type")

    def __init__(self, tracker: ProgressTracker, run_id: int, type: str, name: str) -> None:
        self._tracker = tracker
        #: The run's id in the database.
        self.id = run_id
        #: Its type, such as ``"STATIC"``.
        self.type = type
        #: Its name.
        self.name = name

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.type} {self.name!r}>"

    async def start_subtask(
        self, number: int, name: str, *, items_total: int | None = None
    ) -> Subtask:
        """Record subtask ``number`` of this run, RUNNING from now, and return its handle.

        Starting a number that exists again restarts it: status RUNNING, its count
        kept (so that a resumed run goes on counting where it was).
        """
        _check_count("number", number)
        _check_text("name", name)
        _check_count("items_total", items_total, optional=True)
        now = _now()

        async def insert(conn: Session) -> None:
            await conn.progress.start_subtask(self.id, number, name, items_total, now)

        await self._tracker._call(insert)
        return Subtask(self._tracker, self.id, number, name)

    async def subtasks(self) -> list[SubtaskProgress]:
        """Return a snapshot of this run's subtasks (see :meth:`ProgressTracker.get`)."""
        return await self._tracker.get(self.id)

    async def complete(self, *, message: str | None = None) -> None:
        """Mark the run COMPLETED now."""
        await self._finish(Status.COMPLETED, message)

    async def fail(self, *, message: str | None = None) -> None:
        """Mark the run FAILED now."""
        await self._finish(Status.FAILED, message)

    async def _finish(self, status: Status, message: str | None) -> None:
        _check_text("message", message, optional=True)
        now = _now()

        async def update(conn: Session) -> None:
            await conn.progress.finish_run(self.id, status, message, now)

        await self._tracker._call(update)


class Subtask:
    """A handle to one subtask; a progress sink for :func:`corral.map`.

    Made by :meth:`Run.start_subtask` or :meth:`ProgressTracker.subtask`.
    ``corral.map(..., progress=subtask)`` counts every completed item.
    """

    __slots__ = ("_count", "_key", "_tracker", "_writer", "name", "number", "run_id")

    def __init__(self, tracker: ProgressTracker, run_id: int, number: int, name: str) -> None:
        self._tracker = tracker
        self._writer = tracker._db._writer
        self._key = (run_id, number)
        self._count = tracker._counter(self._key)
        #: The run it belongs to.
        self.run_id = run_id
        #: Its number within the run.
        self.number = number
        #: Its name.
        self.name = name

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
        """Set any of status, percent, message and items_total; the rest stay as they are."""
        checked = None if status is None else _check_status(status)
        if percent is not None:
            if isinstance(percent, bool) or not isinstance(percent, int | float):
                raise TypeError(f"percent must be a number, got {percent!r}")
            if not 0 <= percent <= 100:
                raise ValueError(f"percent must be between 0 and 100, got {percent}")
            percent = float(percent)
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
        """Mark the subtask COMPLETED (percent 100) now."""
        await self._end(Status.COMPLETED, message, percent=100.0)

    async def fail(self, *, message: str | None = None) -> None:
        """Mark the subtask FAILED now."""
        await self._end(Status.FAILED, message)

    async def skip(self, *, message: str | None = None) -> None:
        """Mark the subtask SKIPPED now."""
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
        now = _now()
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
    try:
        return Status(str(status))
    except ValueError:
        names = ", ".join(s.value for s in Status)
        raise ValueError(f"status must be one of {names}, got {status!r}") from None
