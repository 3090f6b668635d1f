"""The processor's statements: claim jobs, renew leases, record how attempts ended.

Claims are serialized (PostgreSQL: a transaction-level advisory lock keyed by the
queue's table, taken before the in-progress jobs are counted, both in one call of
``corral_jobs_busy``; SQLite: the write lock every batch takes), so that the limits,
counted from the jobs in progress, hold across every worker process and host.
Candidates are read ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (by a claim that waits for
the lock, a first page before it waits); the statement that marks them claimed takes
only those still waiting (and returns them), so that a job changed meanwhile all the
same is left out, not claimed twice.

On PostgreSQL the statements that change many jobs at once join arrays (``unnest``) to
the table, and name the ids again (see :func:`_batch_update`): whatever the planner
thinks of the table, the rows are reached through the primary key, never by scanning the
jobs in progress or hashing the whole table. On SQLite they are one statement per job
(the ``*_each`` functions); :class:`~._jobs.SqlJobStore` picks one or the other once.

Every change a worker makes to a job it claimed names the claim's lease token: a
worker whose lease was taken over (it stopped renewing, another worker reclaimed the
job) matches no row, so its late completion or heartbeat is refused: the token fences.
"""

from __future__ import annotations

import functools
import json
import os
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..._ports._jobs import (
    Claimed,
    ClaimRequest,
    ClaimResult,
    Outcome,
    Renewal,
    State,
    StepRecord,
    merge_step_records,
)
from ._dialect import Dialect
from ._jobs_schema import BUSY, FINISHED, JOBS, NO_LABELS, WAITING, of_kinds

if TYPE_CHECKING:
    from .. import Connection

__all__ = [
    "MAX_SCAN",
    "candidates",
    "claim",
    "explain_claim",
    "finish_batch",
    "finish_each",
    "outlook",
    "release_batch",
    "release_each",
    "renew_batch",
    "renew_each",
    "step_done_batch",
    "step_done_each",
]

#: A claim reads at most this many waiting jobs that it cannot place (jobs needing
#: labels no free cluster here has) before it gives up until the next claim.
MAX_SCAN = 5_000

#: Lease tokens: 62 random bits each, from a generator seeded by the OS (once per
#: process, and again in a forked child, not once per claim). Two claims of one job
#: draw the same token with odds of 2**-62.
_random = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _random.seed(secrets.randbits(128)))
_tokens = functools.partial(_random.getrandbits, 62)


async def _fetch(conn: Connection, sql: str, *args: object) -> list[dict[str, Any]]:
    """Run a query; return its rows as dicts whose values are typed ``Any``."""
    return await conn.fetch(sql, *args)


#: PostgreSQL: plan the statements of a claim (or of a batch of updates) whatever the
#: table's statistics, and put the settings back after. Local to the transaction (and
#: undone with it, or with the savepoint, if the statements fail).
#:
#: - ``enable_sort = off``: a queue filled by small inserts and never analyzed has no
#:   statistics; the planner then thinks a handful of jobs wait, and would read every
#:   waiting job and sort them rather than walk the waiting index in its order and stop
#:   at the LIMIT. With sorting off, the index, which gives that order, is the one plan
#:   left: no ANALYZE is needed.
#: - ``plan_cache_mode = force_custom_plan``: a statement run again (the driver prepares
#:   them once) gets, after five runs, a generic plan, made without the arrays' sizes;
#:   it joins ``unnest`` of the arrays (thought to be ten rows) to the jobs in a nested
#:   loop that reads the arrays once per job: 500 claims, 250,000 comparisons. Planned
#:   for the arrays at hand, the join hashes them (a planning of well under a
#:   millisecond, for a statement that changes hundreds of jobs).
_PLANNING = (
    "SELECT current_setting('enable_sort') AS sort, current_setting('plan_cache_mode') AS "
    "cache, set_config('enable_sort', 'off', true), "
    "set_config('plan_cache_mode', 'force_custom_plan', true)"
)
_PLANNING_BACK = "SELECT set_config('enable_sort', ?, true), set_config('plan_cache_mode', ?, true)"

R = TypeVar("R")


async def _planned(conn: Connection, statements: Callable[[], Awaitable[R]]) -> R:
    """Run ``statements()`` (PostgreSQL's) under the settings of :data:`_PLANNING`."""
    was = (await _fetch(conn, _PLANNING))[0]
    result = await statements()
    await conn.execute(_PLANNING_BACK, was["sort"], was["cache"])
    return result


#: The columns of a candidate that a claim reads (what :class:`Claimed` holds).
_CANDIDATE = (
    "seq, id, payload, priority, customer, affinity, region, requires, max_retries, "
    "attempts, steps, kind, cancel_requested"
)


def candidates(
    d: Dialect,
    req: ClaimRequest,
    clusters: Sequence[str],
    limit: int,
    *,
    held: Sequence[str] = (),
    after: tuple[int, int] | None = None,
    seen: Sequence[str] = (),
) -> tuple[str, list[object]]:
    """Return the query of one page of a claim's candidates, and its arguments.

    The jobs waiting and due now, of ``req.kinds`` (if given), pinned to none but
    ``clusters``, of no customer of ``held``, after ``(priority, seq)`` ``after``, not
    among the ids ``seen``, in claim order, at most ``limit``: an ``ORDER BY`` that the
    waiting index gives (see :data:`_PLANNING`), locked (PostgreSQL) ``SKIP LOCKED``.
    """
    of_kind, kinds = of_kinds(req.kinds)
    marks = ", ".join("?" * len(clusters))
    where = (
        f"{WAITING} AND run_at <= {d.now} AND (affinity IS NULL OR affinity IN ({marks})) {of_kind}"
    )
    if held:
        where += f"AND (customer IS NULL OR customer NOT IN ({', '.join('?' * len(held))})) "
    if after is not None:
        where += "AND (priority, seq) > (?, ?) "
    if seen:
        where += "AND NOT (id = ANY(?::text[])) "
    sql = (
        f"SELECT {_CANDIDATE} FROM {JOBS} WHERE {where}ORDER BY priority, seq "
        f"LIMIT ?{d.skip_locked}"
    )
    args: list[object] = [*clusters, *kinds, *held, *(after or ())]
    if seen:
        args.append(list(seen))
    args.append(limit)
    return sql, args


async def explain_claim(conn: Connection, d: Dialect, req: ClaimRequest) -> list[list[str]]:
    """Return the plans of the queries that read the candidates of claim ``req``.

    A check that the claim's plans do not depend on the table's statistics: the
    queries :func:`claim` sends (the first page, and a page after it), planned under
    the settings it plans them with (PostgreSQL: :data:`_PLANNING`; ``EXPLAIN``, whose
    lines are returned) or by SQLite (``EXPLAIN QUERY PLAN``, its ``detail`` lines).
    Reads nothing of the jobs and changes nothing.
    """
    mine = [name for name, n in req.local_free.items() if n > 0]
    statements = [
        candidates(d, req, mine, req.limit),
        candidates(d, req, mine, req.limit, after=(0, 0)),
    ]
    if not d.shared:
        plans: list[list[str]] = []
        for sql, args in statements:
            rows = await _fetch(conn, f"EXPLAIN QUERY PLAN {sql}", *args)
            plans.append([str(row["detail"]) for row in rows])
        return plans

    async def explain() -> list[list[str]]:
        plans: list[list[str]] = []
        for sql, args in statements:
            rows = await _fetch(conn, f"EXPLAIN {sql}", *args)
            plans.append([str(row["QUERY PLAN"]) for row in rows])
        return plans

    return await _planned(conn, explain)


async def claim(conn: Connection, d: Dialect, req: ClaimRequest) -> ClaimResult:
    """Reclaim expired leases, then claim up to ``req.limit`` jobs within the limits.

    See :meth:`corral._ports._jobs.JobStore.claim`. On PostgreSQL its plans do not
    depend on the table's statistics (see :data:`_PLANNING`).
    """
    if not d.shared:
        return await _claim(conn, d, req)
    return await _planned(conn, functools.partial(_claim, conn, d, req))


async def _claim(conn: Connection, d: Dialect, req: ClaimRequest) -> ClaimResult:
    """:func:`claim`, its statements."""
    now = d.now
    pg = d.shared
    skip = d.skip_locked
    reclaimed: list[dict[str, Any]] = []
    if req.reclaim:
        reclaimed = await _fetch(
            conn,
            f"UPDATE {JOBS} SET state = CASE WHEN attempts > max_retries THEN 'dead' "
            f"ELSE 'ready' END, error_category = 'TRANSIENT', error_step = NULL, "
            f"error_message = 'lease expired: worker ' || COALESCE(lease_owner, '?') || "
            f"' stopped renewing it (killed or stuck)', error_attempt = attempts, "
            f"error_traceback = NULL, "
            f"lease_token = NULL, lease_owner = NULL, lease_expires = NULL, run_at = {now}, "
            f"updated_at = {now}, "
            f"finished_at = CASE WHEN attempts > max_retries THEN {now} END "
            f"WHERE id IN (SELECT id FROM {JOBS} WHERE state = 'in_progress' "
            f"AND lease_expires < {now}{skip}) "
            f"RETURNING id, state, error_message, attempts, cluster, kind",
        )
    if req.limit <= 0:
        return ClaimResult([], reclaimed, True)
    prefetched: Sequence[Mapping[str, Any]] | None = None
    if pg and req.wait:
        # Read (and lock) a first page before waiting for the claim lock, so that the
        # lock is held for less: with this worker's own free clusters for the counts
        # it has yet to see, and no customer held back (both checked once it has).
        mine = [name for name, n in req.local_free.items() if n > 0]
        if not mine:
            return ClaimResult([], reclaimed, True)
        ahead = min(req.limit, sum(req.local_free[name] for name in mine))
        sql, args = candidates(d, req, mine, ahead)
        prefetched = await conn.fetch_rows(sql, *args)
    # Per customer only if there is a limit per customer (fewer groups to make).
    by_customers = req.per_customer is not None
    if pg:
        # The claim lock, taken after the reclaim (which lowers the counts: it needs no
        # lock), held until the batch commits; and the count, in the same round trip.
        busy = await _fetch(conn, f"SELECT * FROM {BUSY}(?, ?)", req.wait, by_customers)
        if busy and busy[0]["n"] < 0:
            # another worker is claiming: left to the claimer
            return ClaimResult([], reclaimed, False)
    else:
        groups = "cluster, customer" if by_customers else "cluster"
        busy = await _fetch(
            conn,
            f"SELECT {groups}, COUNT(*) AS n FROM {JOBS} WHERE state = 'in_progress' "
            f"GROUP BY {groups}",
        )
    total = 0
    by_cluster: dict[str, int] = {}
    by_customer: dict[str, int] = {}
    for row in busy:
        n = int(row["n"])
        total += n
        if row["cluster"] is not None:
            by_cluster[row["cluster"]] = by_cluster.get(row["cluster"], 0) + n
        if row.get("customer") is not None:
            by_customer[row["customer"]] = by_customer.get(row["customer"], 0) + n
    room = min(req.limit, req.max_concurrent - total)
    free = {
        name: min(req.local_free.get(name, 0), cap - by_cluster.get(name, 0))
        for name, cap in req.capacity.items()
    }
    if room <= 0 or max(free.values(), default=0) <= 0:
        return ClaimResult([], reclaimed, True)
    # Leave out in SQL the jobs no claim of this transaction can take (pinned to a full
    # cluster, of a customer at its limit), and page on past the window: jobs held back
    # at the head of the queue (by a limit, or needing labels no cluster here has) must
    # not hide the runnable jobs behind them.
    names = [name for name, n in free.items() if n > 0]
    held = sorted(
        c for c, n in by_customer.items() if req.per_customer is not None and n >= req.per_customer
    )
    chosen: list[Claimed] = []
    # Rows read at a time: as many as there is room for (all of them, when none is held
    # back), then twice as many as the last page, to skip the held back jobs faster.
    window = room if prefetched is None else ahead
    after: tuple[int, int] | None = None
    scanned = 0
    seen: list[str] = []  # ids of a short first page, read again: left out
    while len(chosen) < room and scanned < MAX_SCAN:
        first = prefetched is not None
        if prefetched is not None:
            rows, prefetched = prefetched, None
        else:
            sql, args = candidates(d, req, names, window, held=held, after=after, seen=seen)
            rows = await conn.fetch_rows(sql, *args)
        for candidate in rows:
            if len(chosen) >= room:
                break
            claimed = req.place(candidate, free, by_customer, _tokens)
            if claimed is not None:
                chosen.append(claimed)
        scanned += len(rows)
        if len(rows) < window:
            if not first:
                break
            # The first page, read before the lock, came up short: rows that another
            # claim had locked then (skipped) may be waiting still, released when it
            # committed. Read once more, under the lock, leaving out the rows read.
            seen = [row["id"] for row in rows]
            window = room
            continue
        after = (int(rows[-1]["priority"]), int(rows[-1]["seq"]))
        window = min(2 * window, MAX_SCAN)
    limited = len(chosen) >= room
    if not chosen:
        return ClaimResult([], reclaimed, limited)
    if pg:
        taken = await _mark_claimed(conn, d, req, chosen)
    else:
        # SQLite: the batch holds the database's write lock, so the jobs still wait.
        await conn.executemany(
            f"UPDATE {JOBS} SET state = 'in_progress', attempts = attempts + 1, cluster = ?, "
            f"route_reason = ?, lease_token = ?, lease_owner = ?, lease_expires = {now} + ?, "
            f"started_at = COALESCE(started_at, {now}), updated_at = {now} WHERE id = ?",
            [
                (c.cluster, c.route_reason, c.token, req.owner, req.lease_seconds, c.id)
                for c in chosen
            ],
        )
        taken = {c.token for c in chosen}
    if len(taken) < len(chosen):
        chosen = [c for c in chosen if c.token in taken]
    return ClaimResult(chosen, reclaimed, limited)


async def _mark_claimed(
    conn: Connection, d: Dialect, req: ClaimRequest, chosen: list[Claimed]
) -> set[int]:
    """Mark the chosen jobs claimed, if they still wait; return the tokens of those marked.

    The placements (cluster and reason) are few: each is sent once, and each job names
    its own by number.
    """
    now = d.now
    placements: dict[tuple[str, str], int] = {}
    numbers = [
        placements.setdefault((c.cluster, c.route_reason), len(placements) + 1) for c in chosen
    ]
    return await _batch_update(
        conn,
        f"state = 'in_progress', attempts = j.attempts + 1, cluster = ($1::text[])[v.p], "
        f"route_reason = ($2::text[])[v.p], lease_token = v.t, lease_owner = $3, "
        f"lease_expires = {now} + $4, started_at = COALESCE(j.started_at, {now}), "
        f"updated_at = {now}",
        [
            [cluster for cluster, _ in placements],
            [reason for _, reason in placements],
            req.owner,
            req.lease_seconds,
        ],
        [c.id for c in chosen],
        [("p", "int", numbers), ("t", "bigint", [c.token for c in chosen])],
        f"j.{WAITING}",
    )


async def renew_batch(
    conn: Connection, d: Dialect, leases: Sequence[tuple[Claimed, int]], lease_seconds: float
) -> Renewal:
    """Extend the leases ``(claimed job, progress to add)``; return those held.

    Then read which of the jobs held were asked to cancel: a second statement, by
    their primary key (a cancellation committed between the two is seen now, or at
    the next renewal).
    """
    now = d.now
    add, values = _added([progress for _, progress in leases])
    update = functools.partial(
        _update_claimed,
        conn,
        f"{add}lease_expires = {now} + $1, updated_at = {now}",
        [lease_seconds],
        [(claimed.id, claimed.token) for claimed, _ in leases],
        values,
    )
    held = await _planned(conn, update)
    cancel: set[int] = set()
    if held:
        rows = await _fetch(
            conn,
            f"SELECT lease_token FROM {JOBS} WHERE id = ANY((SELECT $1::text[])::text[]) "
            f"AND cancel_requested",
            [claimed.id for claimed, _ in leases if claimed.token in held],
        )
        cancel = {int(row["lease_token"]) for row in rows} & held
    return Renewal(held, cancel)


async def renew_each(
    conn: Connection, d: Dialect, leases: Sequence[tuple[Claimed, int]], lease_seconds: float
) -> Renewal:
    """As :func:`renew_batch`, one statement per lease."""
    now = d.now
    held: set[int] = set()
    cancel: set[int] = set()
    for claimed, progress in leases:
        rows = await _fetch(
            conn,
            f"UPDATE {JOBS} SET lease_expires = {now} + ?, progress = progress + ?, "
            f"updated_at = {now} WHERE id = ? AND lease_token = ? AND state = 'in_progress' "
            f"RETURNING cancel_requested",
            lease_seconds,
            progress,
            claimed.id,
            claimed.token,
        )
        if rows:
            held.add(claimed.token)
            if rows[0]["cancel_requested"]:
                cancel.add(claimed.token)
    return Renewal(held, cancel)


def _columns(
    o: Outcome,
) -> tuple[str, int, str, float, str | None, str | None, str | None, int, str | None]:
    category = None if o.category is None else o.category.value
    return (
        o.id,
        o.token,
        o.state.value,
        o.delay,
        category,
        o.step,
        o.message,
        o.progress,
        o.traceback,
    )


async def finish_batch(conn: Connection, d: Dialect, outcomes: Sequence[Outcome]) -> set[int]:
    """Write how attempts ended, fenced by their tokens; return the tokens accepted."""
    return await _planned(conn, functools.partial(_finish_batch, conn, d, outcomes))


async def _finish_batch(conn: Connection, d: Dialect, outcomes: Sequence[Outcome]) -> set[int]:
    now = d.now
    # Completions, the most of them, in a statement of their own with less to send.
    done: list[Outcome] = []
    rest: list[Outcome] = []
    for o in outcomes:
        (done if o.state is State.COMPLETED and o.category is None else rest).append(o)
    accepted: set[int] = set()
    if done:
        add, values = _added([o.progress for o in done])
        accepted |= await _update_claimed(
            conn,
            f"{add}state = 'completed', run_at = {now}, lease_token = NULL, "
            f"lease_owner = NULL, lease_expires = NULL, updated_at = {now}, "
            f"finished_at = {now}",
            [],
            [(o.id, o.token) for o in done],
            values,
        )
    if rest:
        _, _, states, delays, categories, steps, messages, added, tracebacks = zip(
            *map(_columns, rest), strict=True
        )
        accepted |= await _update_claimed(
            conn,
            f"state = v.s, run_at = {now} + v.d, "
            f"error_category = COALESCE(v.c, j.error_category), "
            f"error_step = CASE WHEN v.c IS NULL THEN j.error_step ELSE v.st END, "
            f"error_message = COALESCE(v.m, j.error_message), "
            f"error_attempt = CASE WHEN v.c IS NULL THEN j.error_attempt "
            f"ELSE j.attempts END, "
            f"error_traceback = CASE WHEN v.c IS NULL THEN j.error_traceback ELSE v.tb END, "
            f"progress = j.progress + v.p, lease_token = NULL, lease_owner = NULL, "
            f"lease_expires = NULL, updated_at = {now}, "
            f"finished_at = CASE WHEN v.s IN ({FINISHED}) THEN {now} END",
            [],
            [(o.id, o.token) for o in rest],
            [
                ("s", "text", list(states)),
                ("d", "float8", list(delays)),
                ("c", "text", list(categories)),
                ("st", "text", list(steps)),
                ("m", "text", list(messages)),
                ("p", "bigint", list(added)),
                ("tb", "text", list(tracebacks)),
            ],
        )
    return accepted


async def finish_each(conn: Connection, d: Dialect, outcomes: Sequence[Outcome]) -> set[int]:
    """As :func:`finish_batch`, one statement per outcome."""
    now = d.now
    accepted = set()
    for job_id, token, state, delay, category, step, message, progress, tb in map(
        _columns, outcomes
    ):
        row = await conn.fetchval(
            f"UPDATE {JOBS} SET state = ?, run_at = {now} + ?, "
            f"error_category = COALESCE(?, error_category), "
            f"error_step = CASE WHEN ? IS NULL THEN error_step ELSE ? END, "
            f"error_message = COALESCE(?, error_message), "
            f"error_attempt = CASE WHEN ? IS NULL THEN error_attempt ELSE attempts END, "
            f"error_traceback = CASE WHEN ? IS NULL THEN error_traceback ELSE ? END, "
            f"progress = progress + ?, lease_token = NULL, lease_owner = NULL, "
            f"lease_expires = NULL, updated_at = {now}, "
            f"finished_at = CASE WHEN ? IN ({FINISHED}) THEN {now} END "
            f"WHERE id = ? AND lease_token = ? AND state = 'in_progress' RETURNING id",
            state,
            delay,
            category,
            category,
            step,
            message,
            category,
            category,
            tb,
            progress,
            state,
            job_id,
            token,
        )
        if row is not None:
            accepted.add(token)
    return accepted


async def _update_claimed(
    conn: Connection,
    assignments: str,
    args: Sequence[object],
    claims: Sequence[tuple[str, int]],
    values: Sequence[tuple[str, str, list[Any]]],
) -> set[int]:
    """Update the rows of claimed jobs ``(id, token)`` still leased; return their tokens.

    As :func:`_batch_update`, fenced by the token alone: every change that takes a job
    out of progress clears it, so a row that still holds it is in progress under that
    lease (and testing the state too would lead the planner to the index of the jobs
    in progress).
    """
    tokens = ("t", "bigint", [token for _, token in claims])
    return await _batch_update(
        conn,
        assignments,
        args,
        [job_id for job_id, _ in claims],
        [tokens, *values],
        "j.lease_token = v.t",
    )


async def _batch_update(
    conn: Connection,
    assignments: str,
    args: Sequence[object],
    ids: list[str],
    values: Sequence[tuple[str, str, list[Any]]],
    where: str,
) -> set[int]:
    """Update the jobs ``ids`` where ``where`` holds; return the ``v.t`` of those updated.

    ``assignments``: the ``SET`` list, with ``$1``, ``$2``... for ``args`` and
    ``v.<name>`` for each job's own ``values`` (``(name, SQL type, one value per job)``,
    one of them ``t``). The statement joins ``unnest`` of the arrays to the jobs, and
    names the ids again (the same parameter) as ``id = ANY(...)`` of a subquery: the
    planner cannot see into it, so it plans for a few ids and walks the primary key,
    whatever the table's statistics (stale: taken when every job was ready) and size,
    from the first run of the statement on; given the list itself, it would rather
    scan a small table whole and hash it. The tokens come back as one array.
    """
    first = len(args) + 1  # the ids' parameter
    arrays = ", ".join(
        [f"${first}::text[]"]
        + [f"${first + 1 + i}::{sql_type}[]" for i, (_, sql_type, _) in enumerate(values)]
    )
    names = ", ".join(["id", *(name for name, _, _ in values)])
    rows = await _fetch(
        conn,
        f"WITH u AS (UPDATE {JOBS} AS j SET {assignments} FROM unnest({arrays}) AS v({names}) "
        f"WHERE j.id = ANY((SELECT ${first}::text[])::text[]) AND j.id = v.id AND {where} "
        f"RETURNING v.t) SELECT array_agg(t) AS t FROM u",
        *args,
        ids,
        *(column for _, _, column in values),
    )
    return set(rows[0]["t"] or ())


def _added(progress: list[int]) -> tuple[str, list[tuple[str, str, list[Any]]]]:
    """Return the assignment and values that add ``progress`` (nothing if all are 0)."""
    if not any(progress):
        return "", []
    return "progress = j.progress + v.p, ", [("p", "bigint", progress)]


async def release_batch(
    conn: Connection, d: Dialect, leases: Sequence[tuple[Claimed, int]]
) -> None:
    """Give claimed jobs back, ready at once, their attempt not counted (a clean stop)."""
    now = d.now
    add, values = _added([progress for _, progress in leases])
    update = functools.partial(
        _update_claimed,
        conn,
        f"{add}state = 'ready', attempts = j.attempts - 1, lease_token = NULL, "
        f"lease_owner = NULL, lease_expires = NULL, run_at = {now}, updated_at = {now}",
        [],
        [(claimed.id, claimed.token) for claimed, _ in leases],
        values,
    )
    await _planned(conn, update)


async def release_each(conn: Connection, d: Dialect, leases: Sequence[tuple[Claimed, int]]) -> None:
    """As :func:`release_batch`, one statement per lease."""
    now = d.now
    for claimed, progress in leases:
        await conn.execute(
            f"UPDATE {JOBS} SET state = 'ready', attempts = attempts - 1, "
            f"progress = progress + ?, lease_token = NULL, lease_owner = NULL, "
            f"lease_expires = NULL, run_at = {now}, updated_at = {now} "
            f"WHERE id = ? AND lease_token = ? AND state = 'in_progress'",
            progress,
            claimed.id,
            claimed.token,
        )


#: A group of step records of more jobs than this is planned for its arrays (see
#: :data:`_PLANNING`): a generic plan reads the arrays once per job, which costs little
#: for a few jobs, and a planned one costs two round trips more.
_PLAN_STEPS_ABOVE = 64


async def step_done_batch(conn: Connection, d: Dialect, records: Sequence[StepRecord]) -> set[int]:
    """Record the finished steps of claimed jobs, one statement; return the tokens held.

    The records of one lease are merged first (:func:`merge_step_records`): a job is
    updated once per statement, so two of its rows would leave one's progress out.
    """
    merged = merge_step_records(records)
    update = functools.partial(
        _update_claimed,
        conn,
        f"steps = v.s, progress = j.progress + v.p, updated_at = {d.now}",
        [],
        [(r.claimed.id, r.claimed.token) for r in merged],
        [("s", "text", [r.steps for r in merged]), ("p", "bigint", [r.progress for r in merged])],
    )
    if len(merged) > _PLAN_STEPS_ABOVE:
        return await _planned(conn, update)
    return await update()


async def step_done_each(conn: Connection, d: Dialect, records: Sequence[StepRecord]) -> set[int]:
    """As :func:`step_done_batch`, one statement per record, in order (SQLite)."""
    now = d.now
    held: set[int] = set()
    for claimed, steps, progress in records:
        row = await conn.fetchval(
            f"UPDATE {JOBS} SET steps = ?, progress = progress + ?, updated_at = {now} "
            f"WHERE id = ? AND lease_token = ? AND state = 'in_progress' RETURNING id",
            steps,
            progress,
            claimed.id,
            claimed.token,
        )
        if row is not None:
            held.add(claimed.token)
    return held


async def outlook(
    conn: Connection,
    d: Dialect,
    clusters: Sequence[str],
    labels: Sequence[frozenset[str]],
    kinds: frozenset[str] | None = None,
) -> tuple[int, float | None]:
    """Count the unfinished jobs a worker with these clusters could take.

    See :meth:`corral._ports._jobs.JobStore.outlook`. Two queries, one per partial index
    (waiting, in progress), so finished jobs are never read.
    """
    now = d.now
    marks = ", ".join("?" * len(clusters))
    of_kind, kind_args = of_kinds(kinds)
    mine = f"(affinity IS NULL OR affinity IN ({marks})) {of_kind}"
    # Read in the waiting index's order: the planner then walks that index (the
    # outlook is asked for when few jobs wait), whatever its statistics (taken when the
    # queue was full, they would lead it to scan the whole table).
    waiting = await _fetch(
        conn,
        f"SELECT requires, COUNT(*) AS n, MIN(run_at) - {now} AS due FROM (SELECT requires, "
        f"run_at FROM {JOBS} WHERE {WAITING} AND {mine}ORDER BY priority, seq) AS w "
        f"GROUP BY requires",
        *clusters,
        *kind_args,
    )
    running = await _fetch(
        conn,
        f"SELECT requires, COUNT(*) AS n, NULL AS due FROM {JOBS} "
        f"WHERE state = 'in_progress' AND {mine}GROUP BY requires",
        *clusters,
        *kind_args,
    )
    count = 0
    due: float | None = None
    for row in [*waiting, *running]:
        requires = row["requires"]
        if requires != NO_LABELS:
            needed = frozenset(json.loads(requires))
            if not any(needed <= have for have in labels):
                continue  # no cluster here has what it needs: it is not ours to wait for
        count += int(row["n"])
        if row["due"] is not None:
            due = float(row["due"]) if due is None else min(due, float(row["due"]))
    return count, due
