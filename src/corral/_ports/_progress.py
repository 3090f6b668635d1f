"""The progress port: :class:`ProgressStore`, and the plain data types that cross it.

Progress (:mod:`corral._progress`) keeps the rules: runs and numbered subtasks, the
checks of what a caller passes, and the in-memory coalescing of increments. A
:class:`ProgressStore` keeps the state: one record per run, one per subtask of a run,
and the exact count of each subtask's items complete. The data types here are what the
store hands back: snapshots, never live objects.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Protocol

__all__ = ["ProgressStore", "RunProgress", "Status", "SubtaskProgress"]


class Status(enum.StrEnum):
    """The state of a run or a subtask, stored as its name."""

    #: Started and not finished.
    RUNNING = "RUNNING"
    #: Finished successfully.
    COMPLETED = "COMPLETED"
    #: Finished with an error.
    FAILED = "FAILED"
    #: Not done, on purpose.
    SKIPPED = "SKIPPED"
    #: Stopped from outside before it finished: Ctrl-C (``KeyboardInterrupt``) or a
    #: cancellation that left the ``connect`` block that started the run.
    INTERRUPTED = "INTERRUPTED"


@dataclasses.dataclass(frozen=True, slots=True)
class SubtaskProgress:
    """One subtask as read from the database (a snapshot)."""

    #: The run it belongs to.
    run_id: int
    #: Its number within the run (chosen by the caller).
    number: int
    #: What it does, for people.
    name: str
    #: RUNNING, COMPLETED, FAILED or SKIPPED.
    status: Status
    #: How many items it has in all, if known.
    items_total: int | None
    #: How many items have been counted complete (exact, committed).
    items_complete: int
    #: Percent done: set by ``update(percent=...)``, else from the counts when
    #: ``items_total`` is known; ``None`` when neither is.
    percent: float | None
    #: The latest message, if any.
    message: str | None
    #: When it was started (UTC).
    started_at: datetime
    #: When it completed, failed or was skipped (UTC); ``None`` while running.
    ended_at: datetime | None
    #: When it was last written (UTC).
    updated_at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class RunProgress:
    """One run as read from the database (a snapshot)."""

    #: Its id, unique in the database.
    id: int
    #: Its type, such as ``"STATIC"``.
    type: str
    #: Its name, for people.
    name: str
    #: RUNNING, COMPLETED, FAILED, SKIPPED or INTERRUPTED, as stored. A RUNNING run
    #: whose heartbeat (``updated_at``) stopped is *abandoned*: a reader's judgement,
    #: computed from ``updated_at`` (see :func:`corral._progress.is_abandoned`), not a
    #: stored status.
    status: Status
    #: The latest message, if any.
    message: str | None
    #: When it was started (UTC).
    started_at: datetime
    #: When it ended (UTC); ``None`` while running.
    ended_at: datetime | None
    #: Its heartbeat (UTC): when it was started, last touched by the process running it
    #: (:meth:`ProgressStore.touch_runs`) or ended. ``None`` for a run recorded by a
    #: version of corral without heartbeats. Not compared: two snapshots of one state
    #: are equal whatever their heartbeat.
    updated_at: datetime | None = dataclasses.field(default=None, compare=False)


class ProgressStore(Protocol):
    """The storage of runs and subtasks; every method runs inside the caller's batch.

    A store is bound to the writer's one connection (or client) and reached as
    ``session.progress`` inside a writer operation (``Database._run``) or a writer
    source's ``write``. What a method writes is committed with that batch or not at
    all; what it reads includes everything written before it in the batch.

    Every backend guarantees:

    - **Exact counts.** :meth:`add` adds each count to the stored one in the store
      itself (``items_complete = items_complete + n``), atomically with respect to every
      other writer, in this or any other process or host sharing the store: no count is
      lost or applied twice within a committed batch.
    - **Identity.** Run ids are unique in the store and never reused while the run is
      kept; a subtask is known by ``(run_id, number)``, unique per run.
    - **Times** are timezone-aware UTC datetimes going in and coming out, whatever the
      store keeps (PostgreSQL timestamps, SQLite ISO-8601 text).
    - :meth:`ensure_schema` may be called by several processes at once; :meth:`exists`
      and the reads create nothing.
    - **Heartbeat.** A run's ``updated_at`` is set to ``started_at`` by
      :meth:`start_run`, to ``ended_at`` by :meth:`finish_run` and :meth:`end_running`,
      and to the time given by :meth:`touch_runs` while it is RUNNING; readers judge a
      RUNNING run whose heartbeat is old abandoned (its process died).
    """

    async def ensure_schema(self) -> None:
        """Create what runs and subtasks are kept in, where it is missing.

        Safe to call again, and from several processes or hosts at once (they do not
        collide: PostgreSQL takes a transaction-scoped lock for it). A store made by an
        earlier version is brought up to date here: what it lacks (the runs'
        ``updated_at``) is added, existing runs and subtasks kept.
        """
        ...

    async def exists(self) -> bool:
        """Return whether the store holds runs and subtasks, creating nothing.

        A read-only caller (``corral progress``) asks this first, and reads the store as
        it is (without :meth:`ensure_schema`) when it does.
        """
        ...

    async def start_run(self, type: str, name: str, started_at: datetime) -> int:
        """Record a new run, RUNNING since ``started_at``; return its new, unique id."""
        ...

    async def finish_run(
        self, run_id: int, status: Status, message: str | None, ended_at: datetime
    ) -> None:
        """Set a run's status and end time, and its message unless ``message`` is None.

        ``updated_at`` is set to ``ended_at`` too. An unknown ``run_id`` changes nothing
        and is no error.
        """
        ...

    async def end_running(
        self,
        run_ids: Collection[int],
        status: Status,
        message: str | None,
        ended_at: datetime,
    ) -> list[int]:
        """Finish those of ``run_ids`` that are still RUNNING; return their ids, sorted.

        As :meth:`finish_run` does (status, end time, ``updated_at``, and the message
        unless None), in one statement or request batch, and only where the stored
        status is RUNNING at that moment: a run that another process finished keeps its
        status. Unknown ids are skipped. Used when a program leaves ``connect`` on an
        exception, to end the runs it had started.
        """
        ...

    async def touch_runs(self, run_ids: Collection[int], updated_at: datetime) -> None:
        """Set the heartbeat (``updated_at``) of those of ``run_ids`` that are RUNNING.

        One statement or request batch for all of them; finished and unknown runs are
        left as they are. The tracker calls it at most once per heartbeat period while a
        run is open and idle, and at most once a second for runs whose counts it adds:
        never per increment.
        """
        ...

    async def start_subtask(
        self,
        run_id: int,
        number: int,
        name: str,
        items_total: int | None,
        started_at: datetime,
    ) -> None:
        """Record subtask ``number`` of a run, RUNNING since ``started_at``.

        If that number exists in the run, it is restarted instead: name, items_total
        and status set, ``updated_at`` to ``started_at``, end time cleared; its count,
        start time, percent and message kept (a resumed run goes on counting where it
        was).
        """
        ...

    async def update_subtask(
        self,
        run_id: int,
        number: int,
        *,
        updated_at: datetime,
        ended: bool,
        status: Status | None = None,
        percent: float | None = None,
        message: str | None = None,
        items_total: int | None = None,
    ) -> None:
        """Set the fields given (not None) of one subtask, the others kept, in one write.

        ``updated_at`` is stored too, and as the end time when ``ended``. An unknown
        subtask changes nothing and is no error.
        """
        ...

    async def add(self, counts: Mapping[tuple[int, int], int], updated_at: datetime) -> None:
        """Add ``counts[(run_id, number)]`` to each subtask's items complete, in one batch.

        Each addition is exact and atomic (see the class documentation) and sets the
        subtask's ``updated_at``; an unknown subtask is skipped. The whole mapping is
        one statement or request batch, not one round trip per subtask, as it is the
        hot path of counting. ``counts`` holds positive ints only.
        """
        ...

    async def run(self, run_id: int) -> RunProgress | None:
        """Return a snapshot of one run, or None if there is none with that id."""
        ...

    async def runs(self, limit: int) -> list[RunProgress]:
        """Return the latest ``limit`` runs (by id), newest first."""
        ...

    async def subtasks(self, run_id: int) -> list[SubtaskProgress]:
        """Return a snapshot of every subtask of a run, by number (empty if none).

        A subtask's ``percent`` is the one stored by :meth:`update_subtask`, else
        ``100 * items_complete / items_total`` (at most 100) when items_total is known
        and not 0, else None.
        """
        ...

    async def subtask_name(self, run_id: int, number: int) -> str | None:
        """Return the name of subtask ``number`` of a run, or None if there is none."""
        ...
