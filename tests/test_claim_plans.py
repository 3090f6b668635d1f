"""The claim's plans: whatever way the queue was filled, a claim walks the waiting index.

No ``ANALYZE``, by the test or by corral (PostgreSQL: autovacuum is turned off for the
table, so that the server does not analyze it either; checked before and after): the
queue filled one job at a time, in bulk, and mixed with draining. Each time the queries
that read a claim's candidates (the store's own, planned under the settings the claim
plans them with: ``SqlJobStore.explain_claim``), of every kind and of one kind, are a
walk of the waiting index in its order, stopping at the ``LIMIT``: no scan of the
table, no sort. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

from typing import Any

import pytest

import corral
from corral import jobs
from corral._ports import Session
from corral._ports._jobs import ClaimRequest, Outcome, State

pytestmark = pytest.mark.timeout(120)


def request(kinds: frozenset[str] | None = None, limit: int = 100) -> ClaimRequest:
    return ClaimRequest(
        owner="w",
        limit=limit,
        max_concurrent=10_000,
        per_customer=None,
        capacity={"c": 10_000},
        local_free={"c": 10_000},
        lease_seconds=600,
        route=lambda row, free: ("c", "free"),
        kinds=kinds,
    )


async def plans(db: corral.Database, req: ClaimRequest) -> list[list[str]]:
    async def explain(session: Session) -> Any:
        store: Any = session.jobs
        return await store.explain_claim(req)

    result: list[list[str]] = await db._run(explain)
    return result


async def never_analyzed(db: corral.Database) -> None:
    """Check that nothing analyzed the jobs table (PostgreSQL: and keep autovacuum off it)."""

    async def check(session: Session) -> Any:
        conn: Any = session
        await session.jobs.prepare()
        if conn.dialect == "sqlite":
            return await conn.fetch(
                "SELECT 1 AS analyzed FROM sqlite_master WHERE name = 'sqlite_stat1'"
            )
        await conn.execute("ALTER TABLE corral_jobs SET (autovacuum_enabled = false)")
        return await conn.fetch(
            "SELECT 1 AS analyzed FROM pg_stat_user_tables WHERE relid = 'corral_jobs'::regclass "
            "AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)"
        )

    assert await db._run(check) == []


def nodes(plan: list[str]) -> list[str]:
    """The nodes of a PostgreSQL plan, outermost first: each line's name, cost left out."""
    found = []
    for line in plan:
        text = line.strip()
        if text.startswith("->") or line is plan[0]:
            found.append(text.removeprefix("->").strip().split("  (cost=")[0])
    return found


async def assert_walks_the_waiting_index(db: corral.Database, when: str) -> None:
    """Check the plans of the claim's queries, of every kind and of one kind."""
    sqlite = db.url.startswith("sqlite")
    for req, index in [
        (request(), "corral_jobs_waiting"),
        (request(frozenset({"k"})), "corral_jobs_waiting_kind"),
    ]:
        for plan in await plans(db, req):
            if sqlite:
                # One search of the index, in its order: no temporary B-tree to sort.
                [detail] = plan
                assert detail.startswith(f"SEARCH corral_jobs USING INDEX {index} ") or (
                    detail == f"SCAN corral_jobs USING INDEX {index}"
                ), (when, plan)
                continue
            # The clock (an InitPlan), then the index walked in order, each row locked,
            # up to the LIMIT.
            assert nodes(plan) == [
                "Limit",
                "Result",
                "LockRows",
                f"Index Scan using {index} on corral_jobs",
            ], (when, "\n".join(plan))


def batch(start: int, n: int) -> list[jobs.Job]:
    return [
        jobs.Job(
            id=f"j{i}", priority=("high", "normal", "low")[i % 3], kind="k" if i % 2 else "default"
        )
        for i in range(start, start + n)
    ]


async def drain(db: corral.Database, n: int) -> None:
    """Claim up to ``n`` jobs and complete them."""

    async def run(session: Session) -> None:
        claimed = (await session.jobs.claim(request(limit=n))).claimed
        done = [Outcome(c.id, c.token, State.COMPLETED) for c in claimed]
        await session.jobs.finish(done)

    await db._run(run)


async def test_a_queue_filled_one_job_at_a_time_is_claimed_by_the_waiting_index(
    db_url: str,
) -> None:
    async with corral.connect(db_url) as db:
        await never_analyzed(db)
        await assert_walks_the_waiting_index(db, "empty")
        filled = 0
        for upto in (1, 20, 300, 2_000):
            while filled < upto:
                [job] = batch(filled, 1)
                await db.jobs.enqueue(job)
                filled += 1
            await assert_walks_the_waiting_index(db, f"{filled} enqueued one at a time")
        await never_analyzed(db)


async def test_a_queue_filled_in_bulk_is_claimed_by_the_waiting_index(db_url: str) -> None:
    async with corral.connect(db_url) as db:
        await never_analyzed(db)
        await db.jobs.enqueue_many(batch(0, 5_000))
        await assert_walks_the_waiting_index(db, "5,000 enqueued at once")
        await never_analyzed(db)


async def test_a_queue_filled_while_it_drains_is_claimed_by_the_waiting_index(
    db_url: str,
) -> None:
    async with corral.connect(db_url) as db:
        await never_analyzed(db)
        await db.jobs.enqueue_many(batch(0, 2_000))
        await drain(db, 1_900)  # most of them finished: the waiting index holds few
        await assert_walks_the_waiting_index(db, "bulk, then drained")
        for n in range(2_000, 2_300):
            await db.jobs.enqueue(batch(n, 1)[0])
            if n % 50 == 0:
                await drain(db, 40)
        await assert_walks_the_waiting_index(db, "one at a time while draining")
        await db.jobs.enqueue_many(batch(2_300, 2_000))
        await drain(db, 1_000)
        await assert_walks_the_waiting_index(db, "bulk again, half drained")
        await drain(db, 10_000)
        await assert_walks_the_waiting_index(db, "drained")
        await never_analyzed(db)
