"""The job queue's table, and every statement that reads or changes it.

One table, ``corral_jobs``, created on first use. Times are epoch seconds taken from
the database's clock (so hosts with skewed clocks agree on leases). Every change goes
through the database's writer (``Database._run``): one transaction per batch.

Claims are serialized (PostgreSQL: a transaction-level advisory lock, taken before
the in-progress jobs are counted; SQLite: the write lock every batch takes), so that
the limits, counted from the jobs in progress, hold across every worker process and
host. Candidates are read ``FOR UPDATE SKIP LOCKED`` on PostgreSQL.

Every change a worker makes to a job it claimed names the claim's lease token: a
worker whose lease was taken over (it stopped renewing, another worker reclaimed the
job) matches no row, so its late completion or heartbeat is refused: the token fences.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .._exceptions import DuplicateJobError, JobNotFoundError, JobStateError
from ._model import (
    PRIORITY_BY_RANK,
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

if TYPE_CHECKING:
    from .._backends import Connection
    from .._database import Database

__all__ = ["JOBS", "Claimed", "JobQueue", "Outcome"]

T = TypeVar("T")

JOBS = "corral_jobs"
#: The PostgreSQL channel a job's arrival (or a freed slot) is announced on, followed
#: by the table's schema: queues in two schemas of one database do not wake each other.
CHANNEL = "corral_jobs"
#: pg_advisory_xact_lock keys: one serializes claims, one creating the table.
_CLAIM_LOCK = 7262018
_SCHEMA_LOCK = 7262019

_NOW = {
    "postgresql": "(extract(epoch from clock_timestamp())::float8)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
_WAITING = "state IN ('ready', 'retrying')"
#: A claim reads at most this many waiting jobs that it cannot place (jobs needing
#: labels no free cluster here has) before it gives up until the next claim.
MAX_SCAN = 5_000
#: An enqueue of at least this many jobs refreshes the table's statistics (PostgreSQL).
_ANALYZE_AFTER = 1_000
_FINISHED = ("completed", "failed", "dead")


def now_sql(conn: Connection) -> str:
    """Return the SQL expression for the database's clock, in epoch seconds."""
    return _NOW[conn.dialect]


async def _fetch(conn: Connection, sql: str, *args: object) -> list[dict[str, Any]]:
    return await conn.fetch(sql, *args)


async def _custom_plans(conn: Connection) -> None:
    """Plan this transaction's statements for their actual arguments (PostgreSQL).

    asyncpg prepares statements; after five runs the server may switch to a generic
    plan, which for an ``UPDATE ... FROM unnest(...)`` of a few rows can scan every job
    in progress once per row. ``SET LOCAL`` lasts until the batch commits.
    """
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")


async def ensure_schema(conn: Connection) -> None:
    """Create the jobs table and its indexes if they are missing."""
    if conn.dialect == "postgresql":
        await conn.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
        seq = "seq BIGINT GENERATED ALWAYS AS IDENTITY, id TEXT PRIMARY KEY"
        real = "DOUBLE PRECISION"
    else:
        seq = "seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE"
        real = "REAL"
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {JOBS} ({seq}, payload TEXT NOT NULL, "
        f"priority INTEGER NOT NULL, customer TEXT, affinity TEXT, region TEXT, "
        f"requires TEXT NOT NULL, max_retries INTEGER NOT NULL, state TEXT NOT NULL, "
        f"attempts INTEGER NOT NULL DEFAULT 0, cluster TEXT, route_reason TEXT, "
        f"steps TEXT NOT NULL DEFAULT '[]', progress BIGINT NOT NULL DEFAULT 0, "
        f"error_category TEXT, error_step TEXT, error_message TEXT, error_attempt INTEGER, "
        f"lease_token BIGINT, lease_owner TEXT, lease_expires {real}, "
        f"created_at {real} NOT NULL, started_at {real}, run_at {real} NOT NULL, "
        f"updated_at {real} NOT NULL, finished_at {real})"
    )
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {JOBS}_waiting ON {JOBS} (priority, seq) WHERE {_WAITING}"
    )
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {JOBS}_leases ON {JOBS} (lease_expires) "
        f"WHERE state = 'in_progress'"
    )


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
    return JobRecord(
        id=row["id"],
        payload=load_json(row["payload"]),
        priority=PRIORITY_BY_RANK[int(row["priority"])],
        customer=row["customer"],
        affinity=row["affinity"],
        region=row["region"],
        requires=frozenset(load_json(row["requires"], [])),
        max_retries=int(row["max_retries"]),
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


# -- what the processor claims and reports ---------------------------------------------------


@dataclass(slots=True)
class Claimed:
    """A job claimed by a worker: the job, its attempt and its lease."""

    job: Job
    attempt: int
    cluster: str
    route_reason: str
    token: int
    steps_done: list[str]
    created_at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, to be written fenced by the claim's lease token."""

    id: str
    token: int
    state: State
    delay: float = 0.0
    category: ErrorCategory | None = None
    step: str | None = None
    message: str | None = None
    progress: int = 0


_NO_LABELS = "[]"


def _job(row: Mapping[str, Any]) -> Job:
    """Rebuild a stored job, without checking it again (it was checked when enqueued)."""
    job = object.__new__(Job)
    requires = row["requires"]
    for name, value in (
        ("id", row["id"]),
        ("payload", load_json(row["payload"])),
        ("priority", PRIORITY_BY_RANK[int(row["priority"])]),
        ("customer", row["customer"]),
        ("affinity", row["affinity"]),
        ("region", row["region"]),
        ("requires", frozenset() if requires == _NO_LABELS else frozenset(load_json(requires))),
        ("max_retries", int(row["max_retries"])),
    ):
        object.__setattr__(job, name, value)
    return job


@dataclass(slots=True)
class ClaimRequest:
    """What one claim may take: how many jobs, within which limits, routed how."""

    owner: str
    limit: int
    window: int
    max_concurrent: int
    per_customer: int | None
    #: Capacity of each of this worker's clusters, counted over every worker.
    capacity: dict[str, int]
    #: Jobs this worker may still start on each cluster (its own free slots).
    local_free: dict[str, int]
    lease_seconds: float
    route: Callable[[Job, Mapping[str, int]], tuple[str, str] | None]
    tokens: Callable[[], int]
    #: Wait for another worker's claim to commit (else claim nothing if one is running).
    wait: bool = True


async def claim(conn: Connection, req: ClaimRequest) -> tuple[list[Claimed], list[dict[str, Any]]]:
    """Reclaim expired leases, then claim up to ``req.limit`` jobs within the limits.

    Returns the claimed jobs and the reclaimed ones (id, previous owner, new state).
    """
    now = now_sql(conn)
    pg = conn.dialect == "postgresql"
    if pg:
        await _custom_plans(conn)
        # Keyed by the table's oid: queues in other schemas do not wait for this one.
        key = f"{_CLAIM_LOCK}, '{JOBS}'::regclass::oid::int"
        if not req.wait:
            if not await conn.fetchval(f"SELECT pg_try_advisory_xact_lock({key})"):
                return [], []  # another worker is claiming: leave it to the claimer
        else:
            await conn.execute(f"SELECT pg_advisory_xact_lock({key})")
    # SKIP LOCKED: a row another worker is writing (its late outcome) is left for the
    # next claim, so that a claim (holding the claim lock) never waits for a row lock.
    skip = " FOR UPDATE SKIP LOCKED" if pg else ""
    reclaimed = await _fetch(
        conn,
        f"UPDATE {JOBS} SET state = CASE WHEN attempts > max_retries THEN 'dead' "
        f"ELSE 'ready' END, error_category = 'TRANSIENT', error_step = NULL, "
        f"error_message = 'lease expired: worker ' || COALESCE(lease_owner, '?') || "
        f"' stopped renewing it (killed or stuck)', error_attempt = attempts, "
        f"lease_token = NULL, lease_owner = NULL, lease_expires = NULL, run_at = {now}, "
        f"updated_at = {now}, finished_at = CASE WHEN attempts > max_retries THEN {now} END "
        f"WHERE id IN (SELECT id FROM {JOBS} WHERE state = 'in_progress' "
        f"AND lease_expires < {now}{skip}) "
        f"RETURNING id, state, error_message, attempts, cluster",
    )
    if req.limit <= 0:
        return [], reclaimed
    busy = await _fetch(
        conn,
        f"SELECT cluster, customer, COUNT(*) AS n FROM {JOBS} "
        f"WHERE state = 'in_progress' GROUP BY cluster, customer",
    )
    total = 0
    by_cluster: dict[str, int] = {}
    by_customer: dict[str, int] = {}
    for row in busy:
        n = int(row["n"])
        total += n
        if row["cluster"] is not None:
            by_cluster[row["cluster"]] = by_cluster.get(row["cluster"], 0) + n
        if row["customer"] is not None:
            by_customer[row["customer"]] = by_customer.get(row["customer"], 0) + n
    room = min(req.limit, req.max_concurrent - total)
    free = {
        name: min(req.local_free.get(name, 0), cap - by_cluster.get(name, 0))
        for name, cap in req.capacity.items()
    }
    if room <= 0 or max(free.values(), default=0) <= 0:
        return [], reclaimed
    # Leave out in SQL the jobs no claim of this transaction can take (pinned to a full
    # cluster, of a customer at its limit), and page on past the window: jobs held back
    # at the head of the queue (by a limit, or needing labels no cluster here has) must
    # not hide the runnable jobs behind them.
    names = [name for name, n in free.items() if n > 0]
    held = sorted(
        c for c, n in by_customer.items() if req.per_customer is not None and n >= req.per_customer
    )
    where = f"{_WAITING} AND run_at <= {now} "
    where += f"AND (affinity IS NULL OR affinity IN ({', '.join('?' * len(names))})) "
    if held:
        where += f"AND (customer IS NULL OR customer NOT IN ({', '.join('?' * len(held))})) "
    chosen: list[Claimed] = []
    after: tuple[int, int] | None = None
    scanned = 0
    while len(chosen) < room and scanned < MAX_SCAN:
        page = "" if after is None else "AND (priority, seq) > (?, ?) "
        rows = await _fetch(
            conn,
            f"SELECT seq, id, payload, priority, customer, affinity, region, requires, "
            f"max_retries, attempts, steps, created_at FROM {JOBS} WHERE {where}{page}"
            f"ORDER BY priority, seq LIMIT ?" + (" FOR UPDATE SKIP LOCKED" if pg else ""),
            *names,
            *held,
            *(after or ()),
            req.window,
        )
        for row in rows:
            if len(chosen) >= room:
                break
            _choose(req, row, free, by_customer, chosen)
        scanned += len(rows)
        if len(rows) < req.window:
            break
        after = (int(rows[-1]["priority"]), int(rows[-1]["seq"]))
    if not chosen:
        return [], reclaimed
    if pg:
        await conn.execute(
            f"UPDATE {JOBS} AS j SET state = 'in_progress', attempts = j.attempts + 1, "
            f"cluster = v.c, route_reason = v.r, lease_token = v.t, lease_owner = ?, "
            f"lease_expires = {now} + ?, started_at = COALESCE(j.started_at, {now}), "
            f"updated_at = {now} "
            f"FROM unnest(?::text[], ?::text[], ?::text[], ?::bigint[]) AS v(id, c, r, t) "
            f"WHERE j.id = v.id",
            req.owner,
            req.lease_seconds,
            [c.job.id for c in chosen],
            [c.cluster for c in chosen],
            [c.route_reason for c in chosen],
            [c.token for c in chosen],
        )
    else:
        await conn.executemany(
            f"UPDATE {JOBS} SET state = 'in_progress', attempts = attempts + 1, cluster = ?, "
            f"route_reason = ?, lease_token = ?, lease_owner = ?, lease_expires = {now} + ?, "
            f"started_at = COALESCE(started_at, {now}), updated_at = {now} WHERE id = ?",
            [
                (c.cluster, c.route_reason, c.token, req.owner, req.lease_seconds, c.job.id)
                for c in chosen
            ],
        )
    return chosen, reclaimed


def _choose(
    req: ClaimRequest,
    row: Mapping[str, Any],
    free: dict[str, int],
    by_customer: dict[str, int],
    chosen: list[Claimed],
) -> None:
    """Add the job of ``row`` to ``chosen`` if the limits and a free cluster allow it."""
    job = _job(row)
    customer = job.customer
    if (
        customer is not None
        and req.per_customer is not None
        and by_customer.get(customer, 0) >= req.per_customer
    ):
        return
    routed = req.route(job, free)
    if routed is None:
        return
    cluster, reason = routed
    free[cluster] -= 1
    if customer is not None:
        by_customer[customer] = by_customer.get(customer, 0) + 1
    chosen.append(
        Claimed(
            job,
            int(row["attempts"]) + 1,
            cluster,
            reason,
            req.tokens(),
            list(load_json(row["steps"], [])),
            float(row["created_at"]),
        )
    )


async def renew(
    conn: Connection, leases: Sequence[tuple[str, int, int]], lease_seconds: float
) -> set[int]:
    """Extend the leases ``(id, token, progress to add)``; return the tokens still held."""
    now = now_sql(conn)
    if conn.dialect == "postgresql":
        await _custom_plans(conn)
        rows = await _fetch(
            conn,
            f"UPDATE {JOBS} AS j SET lease_expires = {now} + ?, progress = j.progress + v.p, "
            f"updated_at = {now} "
            f"FROM unnest(?::text[], ?::bigint[], ?::bigint[]) AS v(id, t, p) "
            f"WHERE j.id = v.id AND j.lease_token = v.t AND j.state = 'in_progress' "
            f"RETURNING j.lease_token",
            lease_seconds,
            [lease[0] for lease in leases],
            [lease[1] for lease in leases],
            [lease[2] for lease in leases],
        )
        return {int(row["lease_token"]) for row in rows}
    held: set[int] = set()
    for job_id, token, progress in leases:
        row = await conn.fetchval(
            f"UPDATE {JOBS} SET lease_expires = {now} + ?, progress = progress + ?, "
            f"updated_at = {now} WHERE id = ? AND lease_token = ? AND state = 'in_progress' "
            f"RETURNING id",
            lease_seconds,
            progress,
            job_id,
            token,
        )
        if row is not None:
            held.add(token)
    return held


async def finish(conn: Connection, outcomes: Sequence[Outcome]) -> set[int]:
    """Write how attempts ended, fenced by their tokens; return the tokens accepted."""
    now = now_sql(conn)
    args = [
        (
            o.id,
            o.token,
            o.state.value,
            o.delay,
            None if o.category is None else o.category.value,
            o.step,
            o.message,
            o.progress,
        )
        for o in outcomes
    ]
    finished = ", ".join(f"'{state}'" for state in _FINISHED)
    if conn.dialect == "postgresql":
        await _custom_plans(conn)
        columns = list(zip(*args, strict=True))
        rows = await _fetch(
            conn,
            f"UPDATE {JOBS} AS j SET state = v.s, run_at = {now} + v.d, "
            f"error_category = COALESCE(v.c, j.error_category), "
            f"error_step = CASE WHEN v.c IS NULL THEN j.error_step ELSE v.st END, "
            f"error_message = COALESCE(v.m, j.error_message), "
            f"error_attempt = CASE WHEN v.c IS NULL THEN j.error_attempt ELSE j.attempts END, "
            f"progress = j.progress + v.p, lease_token = NULL, lease_owner = NULL, "
            f"lease_expires = NULL, updated_at = {now}, "
            f"finished_at = CASE WHEN v.s IN ({finished}) THEN {now} END "
            f"FROM unnest(?::text[], ?::bigint[], ?::text[], ?::float8[], ?::text[], "
            f"?::text[], ?::text[], ?::bigint[]) AS v(id, t, s, d, c, st, m, p) "
            f"WHERE j.id = v.id AND j.lease_token = v.t AND j.state = 'in_progress' "
            f"RETURNING v.t",
            *(list(column) for column in columns),
        )
        return {int(row["t"]) for row in rows}
    accepted: set[int] = set()
    for job_id, token, state, delay, category, step, message, progress in args:
        row = await conn.fetchval(
            f"UPDATE {JOBS} SET state = ?, run_at = {now} + ?, "
            f"error_category = COALESCE(?, error_category), "
            f"error_step = CASE WHEN ? IS NULL THEN error_step ELSE ? END, "
            f"error_message = COALESCE(?, error_message), "
            f"error_attempt = CASE WHEN ? IS NULL THEN error_attempt ELSE attempts END, "
            f"progress = progress + ?, lease_token = NULL, lease_owner = NULL, "
            f"lease_expires = NULL, updated_at = {now}, "
            f"finished_at = CASE WHEN ? IN ({finished}) THEN {now} END "
            f"WHERE id = ? AND lease_token = ? AND state = 'in_progress' RETURNING id",
            state,
            delay,
            category,
            category,
            step,
            message,
            category,
            progress,
            state,
            job_id,
            token,
        )
        if row is not None:
            accepted.add(token)
    return accepted


async def release(conn: Connection, leases: Sequence[tuple[str, int, int]]) -> None:
    """Give claimed jobs back, ready at once, their attempt not counted (a clean stop)."""
    now = now_sql(conn)
    for job_id, token, progress in leases:
        await conn.execute(
            f"UPDATE {JOBS} SET state = 'ready', attempts = attempts - 1, "
            f"progress = progress + ?, lease_token = NULL, lease_owner = NULL, "
            f"lease_expires = NULL, run_at = {now}, updated_at = {now} "
            f"WHERE id = ? AND lease_token = ? AND state = 'in_progress'",
            progress,
            job_id,
            token,
        )


async def step_done(
    conn: Connection, job_id: str, token: int, steps: list[str], progress: int
) -> bool:
    """Record the finished steps of a claimed job; False if the lease was taken over."""
    now = now_sql(conn)
    row = await conn.fetchval(
        f"UPDATE {JOBS} SET steps = ?, progress = progress + ?, updated_at = {now} "
        f"WHERE id = ? AND lease_token = ? AND state = 'in_progress' RETURNING id",
        json.dumps(steps),
        progress,
        job_id,
        token,
    )
    return row is not None


async def outlook(
    conn: Connection, clusters: Sequence[str], labels: Sequence[frozenset[str]]
) -> tuple[int, float | None]:
    """Count the unfinished jobs a worker with these clusters could take.

    A job counts if it is not pinned to another cluster and one of the clusters has
    every label it requires (``labels``: each cluster's). Returns that count and the
    seconds until the next such waiting job is due (None if none waits). Two queries,
    one per partial index (waiting, in progress), so finished jobs are never read.
    """
    now = now_sql(conn)
    marks = ", ".join("?" * len(clusters))
    mine = f"(affinity IS NULL OR affinity IN ({marks}))"
    waiting = await _fetch(
        conn,
        f"SELECT requires, COUNT(*) AS n, MIN(run_at) - {now} AS due FROM {JOBS} "
        f"WHERE {_WAITING} AND {mine} GROUP BY requires",
        *clusters,
    )
    running = await _fetch(
        conn,
        f"SELECT requires, COUNT(*) AS n, NULL AS due FROM {JOBS} "
        f"WHERE state = 'in_progress' AND {mine} GROUP BY requires",
        *clusters,
    )
    count = 0
    due: float | None = None
    for row in [*waiting, *running]:
        requires = row["requires"]
        if requires != _NO_LABELS:
            needed = frozenset(load_json(requires))
            if not any(needed <= have for have in labels):
                continue  # no cluster here has what it needs: it is not ours to wait for
        count += int(row["n"])
        if row["due"] is not None:
            due = float(row["due"]) if due is None else min(due, float(row["due"]))
    return count, due


# -- the public queue -------------------------------------------------------------------------


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
                    self.channel = f"{CHANNEL}_{schema}"[:63]
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
                dump_payload(job.payload),
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
            existing = await _existing(conn, ids)
            if existing:
                raise DuplicateJobError(
                    f"job id {existing[0]!r} is already stored ({len(existing)} of the "
                    f"{len(ids)} ids are), so no job of this call was stored; ids are "
                    f"unique: pick new ids (a stored job that is dead or failed can be run "
                    f"again with db.jobs.requeue(id))"
                )
            columns = (
                "id, payload, priority, customer, affinity, region, requires, max_retries, "
                "state, created_at, run_at, updated_at"
            )
            if conn.dialect == "postgresql":
                await conn.execute(
                    f"INSERT INTO {JOBS} ({columns}) SELECT v.*, 'ready', {now}, {now}, {now} "
                    f"FROM unnest(?::text[], ?::text[], ?::int[], ?::text[], ?::text[], "
                    f"?::text[], ?::text[], ?::int[]) AS v",
                    *(list(column) for column in zip(*rows, strict=True)),
                )
                if len(rows) >= _ANALYZE_AFTER:
                    # Fresh statistics: a claim walks the queue's index, not a sort of
                    # every waiting row (autovacuum would analyze too, but later).
                    await conn.execute(f"ANALYZE {JOBS}")
                await conn.execute("SELECT pg_notify(?, '')", self.channel)
            else:
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

        async def read(conn: Connection) -> list[dict[str, Any]]:
            return await _fetch(conn, f"SELECT * FROM {JOBS} WHERE id = ?", job_id)

        rows = await self._call(read)
        if not rows:
            raise JobNotFoundError(f"no job with id {job_id!r} in {self._db!r}")
        return _record(rows[0])

    async def depth(self) -> QueueDepth:
        """Count the jobs in each state."""

        async def read(conn: Connection) -> list[dict[str, Any]]:
            return await _fetch(conn, f"SELECT state, COUNT(*) AS n FROM {JOBS} GROUP BY state")

        return _depth(await self._call(read))

    async def by_cluster(self, cluster: str) -> QueueDepth:
        """Count the jobs of one cluster in each state.

        A job belongs to the cluster its latest attempt ran on; a job that has not run
        yet belongs to the cluster it is pinned to (its ``affinity``), if any.
        """
        if not isinstance(cluster, str):
            raise TypeError(f"cluster must be a cluster's name (a str), got {cluster!r}")

        async def read(conn: Connection) -> list[dict[str, Any]]:
            return await _fetch(
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
                return await _fetch(
                    conn, f"SELECT * FROM {JOBS} ORDER BY priority, seq LIMIT ?", limit
                )
            return await _fetch(
                conn,
                f"SELECT * FROM {JOBS} WHERE state = ? ORDER BY priority, seq LIMIT ?",
                wanted.value,
                limit,
            )

        return [_record(row) for row in await self._call(read)]

    async def dead(self, *, limit: int = 100) -> builtins.list[JobRecord]:
        """Return the dead letter queue: jobs whose retries are exhausted."""
        return await self.list(State.DEAD, limit=limit)

    async def requeue(self, job_id: str) -> JobRecord:
        """Put a dead or failed job back to ready, with its attempts reset to 0.

        Its finished steps are kept (it resumes where it failed) and so is its last
        error, for the record. Raises :class:`~corral.jobs.JobNotFoundError` if there is
        no such job, :class:`~corral.jobs.JobStateError` if it is not dead or failed.
        """
        if not isinstance(job_id, str):
            raise TypeError(f"job id must be a str, got {job_id!r}")

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


async def _existing(conn: Connection, ids: list[str]) -> list[str]:
    if conn.dialect == "postgresql":
        rows = await _fetch(conn, f"SELECT id FROM {JOBS} WHERE id = ANY(?::text[])", ids)
        return sorted(str(row["id"]) for row in rows)
    found: list[str] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = await _fetch(conn, f"SELECT id FROM {JOBS} WHERE id IN ({marks})", *chunk)
        found.extend(str(row["id"]) for row in rows)
    return sorted(found)
