"""The queue's statements: enqueue jobs, read them, count them, purge and requeue them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..._ports._jobs import NewJob, RequeueAnswer, State, enqueue_rounds, requeue_answers
from ._dialect import Dialect
from ._jobs_schema import JOBS, of_kinds

if TYPE_CHECKING:
    from .. import Connection

__all__ = [
    "by_cluster",
    "cancel",
    "depth",
    "depth_by_kind",
    "enqueue_checked",
    "enqueue_unnest",
    "get",
    "list_jobs",
    "purge",
    "requeue",
    "requeue_many",
]

_COLUMNS = (
    "id, payload, priority, customer, affinity, region, requires, max_retries, kind, "
    "state, created_at, run_at, updated_at"
)


async def _fetch(conn: Connection, sql: str, *args: object) -> list[dict[str, Any]]:
    """Run a query; return its rows as dicts whose values are typed ``Any``."""
    return await conn.fetch(sql, *args)


async def enqueue_unnest(
    conn: Connection, d: Dialect, groups: Sequence[Sequence[NewJob]], channel: str
) -> list[list[str]]:
    """Insert each group whole or not at all, one statement of arrays a round (PostgreSQL).

    Returns, per group, the ids already stored (empty: stored). No check first:
    another connection may insert the same ids between a check and the insert. A
    conflicting row waits for the other insert to commit (or roll back), then is left
    out; the rows the same statement inserted for a group so refused are deleted
    again (inside the batch's transaction: no other connection ever sees them). The
    statement notifies ``channel`` if it stored any row.
    """
    now = d.now
    refused: list[list[str]] = [[] for _ in groups]
    for members in enqueue_rounds(groups):
        rows = [job for n in members for job in groups[n]]
        stored = await conn.fetchval(
            f"WITH ins AS (INSERT INTO {JOBS} ({_COLUMNS}) "
            f"SELECT v.*, 'ready', {now}, {now}, {now} "
            f"FROM unnest(?::text[], ?::text[], ?::int[], ?::text[], ?::text[], "
            f"?::text[], ?::text[], ?::int[], ?::text[]) AS v ON CONFLICT (id) DO NOTHING "
            f"RETURNING id) SELECT (SELECT array_agg(id) FROM ins), "
            f"(SELECT pg_notify(?, '') FROM ins LIMIT 1)",
            *(list(column) for column in zip(*rows, strict=True)),
            channel,
        )
        if stored is None or len(stored) < len(rows):  # type: ignore[arg-type]
            inserted = set(stored or ())  # type: ignore[call-overload]
            undo: list[str] = []
            for n in members:
                ids = [job[0] for job in groups[n]]
                missing = [job_id for job_id in ids if job_id not in inserted]
                if missing:
                    refused[n] = missing
                    undo.extend(job_id for job_id in ids if job_id in inserted)
            if undo:
                await conn.execute(f"DELETE FROM {JOBS} WHERE id = ANY(?::text[])", undo)
    # No ANALYZE: the claims' plans do not depend on the statistics (see _claims).
    return refused


async def enqueue_checked(
    conn: Connection, d: Dialect, groups: Sequence[Sequence[NewJob]], channel: str
) -> list[list[str]]:
    """Insert each group unless one of its ids is stored; return those ids, sorted (SQLite).

    BEGIN IMMEDIATE: no other connection writes between the check and the insert.
    ``channel`` is unused (SQLite has no wake-ups across connections).
    """
    now = d.now
    refused: list[list[str]] = [[] for _ in groups]
    for members in enqueue_rounds(groups):
        existing = set(await _existing(conn, [job[0] for n in members for job in groups[n]]))
        rows: list[NewJob] = []
        for n in members:
            group = groups[n]
            if existing:
                found = sorted(job[0] for job in group if job[0] in existing)
                if found:
                    refused[n] = found
                    continue
            rows.extend(group)
        if rows:
            await conn.executemany(
                f"INSERT INTO {JOBS} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                f"'ready', {now}, {now}, {now})",
                rows,
            )
    return refused


async def _existing(conn: Connection, ids: list[str]) -> list[str]:
    """Return which of ``ids`` are stored, sorted (SQLite)."""
    found: list[str] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = await _fetch(conn, f"SELECT id FROM {JOBS} WHERE id IN ({marks})", *chunk)
        found.extend(str(row["id"]) for row in rows)
    return sorted(found)


async def get(conn: Connection, job_id: str) -> Mapping[str, Any] | None:
    """Return the row of job ``job_id``, or None."""
    rows = await _fetch(conn, f"SELECT * FROM {JOBS} WHERE id = ?", job_id)
    return rows[0] if rows else None


def _counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {str(row["state"]): int(row["n"]) for row in rows}


async def depth(conn: Connection, kind: str | None = None) -> dict[str, int]:
    """Count the jobs (of ``kind`` if given) in each state."""
    if kind is None:
        sql = f"SELECT state, COUNT(*) AS n FROM {JOBS} GROUP BY state"
        return _counts(await _fetch(conn, sql))
    sql = f"SELECT state, COUNT(*) AS n FROM {JOBS} WHERE kind = ? GROUP BY state"
    return _counts(await _fetch(conn, sql, kind))


async def depth_by_kind(conn: Connection) -> dict[str, dict[str, int]]:
    """Count the jobs of each kind in each state: ``{kind: {state: count}}``."""
    rows = await _fetch(conn, f"SELECT kind, state, COUNT(*) AS n FROM {JOBS} GROUP BY kind, state")
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(str(row["kind"]), {})[str(row["state"])] = int(row["n"])
    return counts


async def by_cluster(conn: Connection, cluster: str) -> dict[str, int]:
    """Count the jobs of one cluster in each state."""
    rows = await _fetch(
        conn,
        f"SELECT state, COUNT(*) AS n FROM {JOBS} WHERE cluster = ? "
        f"OR (cluster IS NULL AND affinity = ?) GROUP BY state",
        cluster,
        cluster,
    )
    return _counts(rows)


async def list_jobs(
    conn: Connection, state: State | None, limit: int, kind: str | None = None
) -> list[dict[str, Any]]:
    """Return up to ``limit`` rows (in ``state``, of ``kind``, if given), in claim order."""
    where: list[str] = []
    args: list[object] = []
    if state is not None:
        where.append("state = ?")
        args.append(state.value)
    if kind is not None:
        where.append("kind = ?")
        args.append(kind)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return await _fetch(
        conn, f"SELECT * FROM {JOBS} {clause}ORDER BY priority, seq LIMIT ?", *args, limit
    )


async def purge(conn: Connection, d: Dialect, states: Sequence[State], older_than: float) -> int:
    """Delete the jobs in ``states`` finished ``older_than`` seconds ago; return how many."""
    marks = ", ".join("?" * len(states))
    rows = await _fetch(
        conn,
        f"DELETE FROM {JOBS} WHERE state IN ({marks}) AND finished_at <= {d.now} - ? RETURNING id",
        *(state.value for state in states),
        float(older_than),
    )
    return len(rows)


#: What a requeue changes, and which jobs it may.
_REQUEUE = (
    "state = 'ready', attempts = 0, run_at = {now}, updated_at = {now}, finished_at = NULL, "
    "cancel_requested = FALSE"
)
_REQUEUEABLE = "state IN ('dead', 'failed', 'cancelled')"


async def requeue(conn: Connection, d: Dialect, job_id: str, channel: str) -> str | None:
    """Put a dead, failed or cancelled job back to ready; None if done, else why not.

    Why not: ``"missing"``, or its state. Its ``cancel_requested`` is cleared.
    """
    answer = (await requeue_many(conn, d, [job_id], channel))[0]
    return answer if isinstance(answer, str) else None


async def requeue_many(
    conn: Connection, d: Dialect, job_ids: Sequence[str], channel: str
) -> list[RequeueAnswer]:
    """Requeue each job of ``job_ids``; return its row once requeued, or why not.

    See :meth:`corral._ports._jobs.JobStore.requeue_many`. On PostgreSQL one statement
    for them all: the update (by the primary key), the rows of those it refused (read
    in the same snapshot, before the update) and the ``NOTIFY`` on ``channel`` if it
    requeued any. On SQLite an update ``RETURNING`` the rows, and a read of the states
    of those refused, per 500 ids (``channel`` unused: no wake-ups across connections).
    """
    ids = list(dict.fromkeys(job_ids))
    assignments = _REQUEUE.format(now=d.now)
    rows: list[dict[str, Any]] = []
    if d.shared:
        rows = await _fetch(
            conn,
            f"WITH u AS (UPDATE {JOBS} SET {assignments} WHERE id = ANY($1::text[]) "
            f"AND {_REQUEUEABLE} RETURNING *) "
            f"SELECT u.*, NULL AS corral_refused, "
            f"(SELECT pg_notify($2, '') FROM u LIMIT 1) IS NULL AS corral_notified FROM u "
            f"UNION ALL SELECT j.*, j.state, NULL FROM {JOBS} AS j "
            f"WHERE j.id = ANY($1::text[]) AND NOT EXISTS (SELECT FROM u WHERE u.id = j.id)",
            ids,
            channel,
        )
    else:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            done = await _fetch(
                conn,
                f"UPDATE {JOBS} SET {assignments} WHERE id IN ({marks}) AND {_REQUEUEABLE} "
                f"RETURNING *",
                *chunk,
            )
            rows.extend(done)
            requeued = {row["id"] for row in done}
            left = [job_id for job_id in chunk if job_id not in requeued]
            if left:
                marks = ", ".join("?" * len(left))
                rows.extend(
                    await _fetch(
                        conn,
                        f"SELECT id, state AS corral_refused FROM {JOBS} WHERE id IN ({marks})",
                        *left,
                    )
                )
    answers: dict[str, RequeueAnswer] = dict.fromkeys(ids, "missing")
    for row in rows:
        refused = row.pop("corral_refused", None)
        row.pop("corral_notified", None)
        answers[row["id"]] = row if refused is None else str(refused)
    return requeue_answers(job_ids, answers)


async def cancel(conn: Connection, d: Dialect, job_id: str) -> str:
    """Cancel a waiting job, or ask its worker to cancel a running one; say which.

    See :meth:`corral._ports._jobs.JobStore.cancel`: ``"cancelled"``, ``"requested"``,
    ``"missing"`` or the state of a finished job. One statement for a job not finished
    (its ``SET`` reads the state before the update; ``RETURNING``, after it).
    """
    now = d.now
    running = "state = 'in_progress'"
    changed = await conn.fetchval(
        f"UPDATE {JOBS} SET state = CASE WHEN {running} THEN state ELSE 'cancelled' END, "
        f"cancel_requested = CASE WHEN {running} THEN TRUE ELSE cancel_requested END, "
        f"finished_at = CASE WHEN {running} THEN finished_at ELSE {now} END, "
        f"updated_at = {now} "
        f"WHERE id = ? AND state IN ('ready', 'retrying', 'in_progress') RETURNING state",
        job_id,
    )
    if changed is not None:
        return "requested" if changed == "in_progress" else "cancelled"
    state = await conn.fetchval(f"SELECT state FROM {JOBS} WHERE id = ?", job_id)
    return "missing" if state is None else str(state)


async def stranded(
    conn: Connection,
    clusters: Sequence[str],
    labels: Sequence[frozenset[str]],
    kinds: frozenset[str] | None = None,
) -> dict[tuple[str | None, str], int]:
    """Count the waiting jobs a worker with these clusters could never take, by why.

    See :meth:`corral._ports._jobs.JobStore.stranded`. One query over the waiting jobs
    (of ``kinds``, if given) that are pinned elsewhere or require labels; the labels are
    matched here.
    """
    marks = ", ".join("?" * len(clusters))
    of_kind, kind_args = of_kinds(kinds)
    rows = await _fetch(
        conn,
        f"SELECT affinity, requires, COUNT(*) AS n FROM {JOBS} "
        f"WHERE state IN ('ready', 'retrying') {of_kind}AND (affinity IS NULL "
        f"AND requires <> '[]' OR affinity NOT IN ({marks})) GROUP BY affinity, requires",
        *kind_args,
        *clusters,
    )
    left: dict[tuple[str | None, str], int] = {}
    for row in rows:
        affinity, requires = row["affinity"], row["requires"]
        if affinity is None:
            needed = frozenset(json.loads(requires))
            if any(needed <= have for have in labels):
                continue
        key = (affinity, requires)
        left[key] = left.get(key, 0) + int(row["n"])
    return left
