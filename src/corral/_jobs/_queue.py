"""The public queue, ``db.jobs``: enqueue jobs, and read what became of them."""

from __future__ import annotations

import builtins
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .._exceptions import DuplicateJobError, JobNotFoundError, JobStateError
from .._validate import check_text
from ._model import (
    ErrorCategory,
    Job,
    JobRecord,
    LastError,
    Priority,
    QueueDepth,
    State,
    dump_payload,
    load_json,
    timestamp,
)
from ._schema import (
    CHANNEL,
    FINISHED,
    JOBS,
    channel_for,
    ensure_schema,
    fetch,
    now_sql,
    stored_job,
)

if TYPE_CHECKING:
    from .._backends import Connection
    from .._database import Database

__all__ = ["JobQueue"]

T = TypeVar("T")

#: An enqueue of at least this many jobs refreshes the table's statistics (PostgreSQL).
_ANALYZE_AFTER = 1_000


def _record(row: Mapping[str, Any]) -> JobRecord:
    category = row["error_category"]
    error = None
    if category is not None:
        error = LastError(
            ErrorCategory(category),
            row["error_step"],
            row["error_message"] or "",
            int(row["error_attempt"] or 0),
        )
    created = timestamp(row["created_at"])
    updated = timestamp(row["updated_at"])
    run_at = timestamp(row["run_at"])
    assert created is not None
    assert updated is not None
    assert run_at is not None
    job = stored_job(row)
    return JobRecord(
        id=job.id,
        payload=job.payload,
        priority=Priority(job.priority),
        customer=job.customer,
        affinity=job.affinity,
        region=job.region,
        requires=frozenset(job.requires),
        max_retries=job.max_retries,
        state=State(row["state"]),
        attempts=int(row["attempts"]),
        cluster=row["cluster"],
        route_reason=row["route_reason"],
        steps_done=tuple(load_json(row["steps"], [])),
        progress=int(row["progress"]),
        last_error=error,
        lease_owner=row["lease_owner"],
        lease_expires_at=timestamp(row["lease_expires"]),
        created_at=created,
        started_at=timestamp(row["started_at"]),
        run_at=run_at,
        updated_at=updated,
        finished_at=timestamp(row["finished_at"]),
    )


def _depth(rows: Iterable[Mapping[str, Any]]) -> QueueDepth:
    counts = {str(row["state"]): int(row["n"]) for row in rows}
    return QueueDepth(**{state.name.lower(): counts.get(state.value, 0) for state in State})


class JobQueue:
    """The jobs stored in one database: ``db.jobs``.

    Enqueue jobs here, and read what became of them from any process or host. The
    :class:`~corral.jobs.Processor` claims and runs them.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ready = False
        #: The NOTIFY channel of this queue (PostgreSQL), known once the table is.
        self.channel = CHANNEL
        #: Wake-up callbacks of this database's running processors, called when a job
        #: is enqueued or requeued here (other processes learn it by NOTIFY, or poll).
        self._watchers: set[Callable[[], None]] = set()

    def _wake(self) -> None:
        for wake in list(self._watchers):
            wake()

    def __repr__(self) -> str:
        return f"<corral.jobs.JobQueue of {self._db!r}>"

    async def _call(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` in the writer, creating the table first if need be."""

        async def op(conn: Connection) -> T:
            if not self._ready:
                await ensure_schema(conn)
                if conn.dialect == "postgresql":
                    schema = await conn.fetchval("SELECT current_schema()")
                    self.channel = channel_for(str(schema))
            return await fn(conn)

        result = await self._db._run(op)
        self._ready = True
        return result

    async def enqueue(self, job: Job) -> None:
        """Store ``job``, ready to run; returns once it is committed.

        Raises :class:`~corral.jobs.DuplicateJobError` if a job with its id exists.
        """
        await self.enqueue_many([job])

    async def enqueue_many(self, jobs: Iterable[Job]) -> int:
        """Store every job of ``jobs`` in one transaction; return how many.

        All or nothing: if one id exists already (or repeats), none is stored and
        :class:`~corral.jobs.DuplicateJobError` names it.
        """
        batch = list(jobs)
        for job in batch:
            if not isinstance(job, Job):
                raise TypeError(
                    f"enqueue takes corral.jobs.Job objects, got {type(job).__name__} "
                    f"{job!r:.80}; wrap it: jobs.Job(id=..., payload=...)"
                )
        seen: set[str] = set()
        for job in batch:
            if job.id in seen:
                raise DuplicateJobError(f"job id {job.id!r} appears twice in one enqueue")
            seen.add(job.id)
        if not batch:
            return 0
        rows = [
            (
                job.id,
                dump_payload(job.payload, job.id),
                Priority(job.priority).rank,
                job.customer,
                job.affinity,
                job.region,
                json.dumps(sorted(job.requires)),
                job.max_retries,
            )
            for job in batch
        ]

        async def insert(conn: Connection) -> None:
            now = now_sql(conn)
            ids = [row[0] for row in rows]
            columns = (
                "id, payload, priority, customer, affinity, region, requires, max_retries, "
                "state, created_at, run_at, updated_at"
            )
            if conn.dialect == "postgresql":
                # No check first: another connection may insert the same ids between a
                # check and the insert. A conflicting row waits for the other insert to
                # commit (or roll back), then is left out; raising rolls back the rest.
                stored = await fetch(
                    conn,
                    f"INSERT INTO {JOBS} ({columns}) SELECT v.*, 'ready', {now}, {now}, {now} "
                    f"FROM unnest(?::text[], ?::text[], ?::int[], ?::text[], ?::text[], "
                    f"?::text[], ?::text[], ?::int[]) AS v ON CONFLICT (id) DO NOTHING "
                    f"RETURNING id",
                    *(list(column) for column in zip(*rows, strict=True)),
                )
                if len(stored) < len(ids):
                    inserted = {row["id"] for row in stored}
                    raise _duplicates([i for i in ids if i not in inserted], len(ids))
                if len(rows) >= _ANALYZE_AFTER:
                    # Fresh statistics: a claim walks the queue's index, not a sort of
                    # every waiting row (autovacuum would analyze too, but later).
                    await conn.execute(f"ANALYZE {JOBS}")
                await conn.execute("SELECT pg_notify(?, '')", self.channel)
            else:
                # BEGIN IMMEDIATE: no other connection writes between the check and the
                # insert.
                existing = await _existing(conn, ids)
                if existing:
                    raise _duplicates(existing, len(ids))
                await conn.executemany(
                    f"INSERT INTO {JOBS} ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                    f"'ready', {now}, {now}, {now})",
                    rows,
                )

        await self._call(insert)
        self._wake()
        return len(batch)

    async def get(self, job_id: str) -> JobRecord:
        """Return a snapshot of job ``job_id``; :class:`~corral.jobs.JobNotFoundError` if none."""
        if not isinstance(job_id, str):
            raise TypeError(f"job id must be a str, got {job_id!r}")
        check_text("job id", job_id)

        async def read(conn: Connection) -> list[dict[str, Any]]:
            return await fetch(conn, f"SELECT * FROM {JOBS} WHERE id = ?", job_id)

        rows = await self._call(read)
        if not rows:
            raise JobNotFoundError(f"no job with id {job_id!r} in {self._db!r}")
        return _record(rows[0])

    async def depth(self) -> QueueDepth:
        """Count the jobs in each state."""

        async def read(conn: Connection) -> list[dict[str, Any]]:
            return await fetch(conn, f"SELECT state, COUNT(*) AS n FROM {JOBS} GROUP BY state")

        return _depth(await self._call(read))

    async def by_cluster(self, cluster: str) -> QueueDepth:
        """Count the jobs of one cluster in each state.

        A job belongs to the cluster its latest attempt ran on; a job that has not run
        yet belongs to the cluster it is pinned to (its ``affinity``), if any.
        """
        if not isinstance(cluster, str):
            raise TypeError(f"cluster must be a cluster's name (a str), got {cluster!r}")
        check_text("cluster name", cluster)

        async def read(conn: Connection) -> list[dict[str, Any]]:
            return await fetch(
                conn,
                f"SELECT state, COUNT(*) AS n FROM {JOBS} WHERE cluster = ? "
                f"OR (cluster IS NULL AND affinity = ?) GROUP BY state",
                cluster,
                cluster,
            )

        return _depth(await self._call(read))

    async def list(
        self, state: State | str | None = None, *, limit: int = 100
    ) -> builtins.list[JobRecord]:
        """Return up to ``limit`` jobs, in ``state`` if given, in claim order.

        Claim order: higher priority first, then oldest first.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise TypeError(f"limit must be an int >= 1, got {limit!r}")
        wanted = None if state is None else _state(state)

        async def read(conn: Connection) -> list[dict[str, Any]]:
            if wanted is None:
                return await fetch(
                    conn, f"SELECT * FROM {JOBS} ORDER BY priority, seq LIMIT ?", limit
                )
            return await fetch(
                conn,
                f"SELECT * FROM {JOBS} WHERE state = ? ORDER BY priority, seq LIMIT ?",
                wanted.value,
                limit,
            )

        return [_record(row) for row in await self._call(read)]

    async def dead(self, *, limit: int = 100) -> builtins.list[JobRecord]:
        """Return the dead letter queue: jobs whose retries are exhausted."""
        return await self.list(State.DEAD, limit=limit)

    async def purge(
        self, *, older_than: float, states: Iterable[State | str] = (State.COMPLETED,)
    ) -> int:
        """Delete finished jobs that finished more than ``older_than`` seconds ago.

        ``states``: which finished states to delete, ``completed`` by default
        (``failed`` and ``dead`` may be named too; a job not finished is never deleted).
        Returns how many were deleted. Keeps the table from growing without bound.
        """
        if isinstance(older_than, bool) or not isinstance(older_than, int | float):
            raise TypeError(f"older_than must be a number of seconds, got {older_than!r}")
        if not older_than >= 0:
            raise ValueError(f"older_than must be a number of seconds >= 0, got {older_than!r}")
        if isinstance(states, str):
            states = (states,)
        wanted = sorted({_state(state).value for state in states})
        unfinished = [state for state in wanted if state not in FINISHED]
        if unfinished:
            raise ValueError(
                f"purge deletes finished jobs only ({', '.join(FINISHED)}), not "
                f"{', '.join(unfinished)}"
            )
        if not wanted:
            return 0
        marks = ", ".join("?" * len(wanted))

        async def delete(conn: Connection) -> int:
            rows = await fetch(
                conn,
                f"DELETE FROM {JOBS} WHERE state IN ({marks}) "
                f"AND finished_at <= {now_sql(conn)} - ? RETURNING id",
                *wanted,
                float(older_than),
            )
            return len(rows)

        return await self._call(delete)

    async def requeue(self, job_id: str) -> JobRecord:
        """Put a dead or failed job back to ready, with its attempts reset to 0.

        Its finished steps are kept (it resumes where it failed) and so is its last
        error, for the record. Raises :class:`~corral.jobs.JobNotFoundError` if there is
        no such job, :class:`~corral.jobs.JobStateError` if it is not dead or failed.
        """
        if not isinstance(job_id, str):
            raise TypeError(f"job id must be a str, got {job_id!r}")
        check_text("job id", job_id)

        async def update(conn: Connection) -> str | None:
            now = now_sql(conn)
            changed = await conn.fetchval(
                f"UPDATE {JOBS} SET state = 'ready', attempts = 0, run_at = {now}, "
                f"updated_at = {now}, finished_at = NULL "
                f"WHERE id = ? AND state IN ('dead', 'failed') RETURNING id",
                job_id,
            )
            if changed is not None:
                if conn.dialect == "postgresql":
                    await conn.execute("SELECT pg_notify(?, '')", self.channel)
                return None
            state = await conn.fetchval(f"SELECT state FROM {JOBS} WHERE id = ?", job_id)
            return "missing" if state is None else str(state)

        refused = await self._call(update)
        if refused == "missing":
            raise JobNotFoundError(f"no job with id {job_id!r} in {self._db!r}")
        if refused is not None:
            raise JobStateError(
                f"job {job_id!r} is {refused}: only a dead or failed job can be requeued"
            )
        self._wake()
        return await self.get(job_id)


def _state(value: object) -> State:
    try:
        return State(str(value))
    except ValueError:
        raise ValueError(
            f"state must be one of {', '.join(s.value for s in State)}, got {value!r}"
        ) from None


def _duplicates(existing: list[str], of: int) -> DuplicateJobError:
    """Return the error for an enqueue of ``of`` ids, of which ``existing`` are stored."""
    return DuplicateJobError(
        f"job id {existing[0]!r} is already stored ({len(existing)} of the {of} ids are), "
        f"so no job of this call was stored; ids are unique: pick new ids (a stored job "
        f"that is dead or failed can be run again with db.jobs.requeue(id))"
    )


async def _existing(conn: Connection, ids: list[str]) -> list[str]:
    """Return which of ``ids`` are stored, sorted (SQLite)."""
    found: list[str] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = await fetch(conn, f"SELECT id FROM {JOBS} WHERE id IN ({marks})", *chunk)
        found.extend(str(row["id"]) for row in rows)
    return sorted(found)
