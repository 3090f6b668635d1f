"""The contract of the job queue's port (:class:`corral._ports.JobStore`), on every store.

Each test drives ``session.jobs`` the way the jobs domain does, inside writer
operations (``db._run``) of a real database, and checks one guarantee the port's
docstrings state: claims atomic and the limits exact (also with several connections
claiming at once), every change to a claimed job fenced by its lease token, expired
leases taken back, unique ids, claim order, the reads, and wake-ups where the store has
them. A new backend runs these by adding its URL to the ``store_url`` fixture
(tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import pytest

import corral
from corral._ports import Session
from corral._ports._jobs import (
    Claimed,
    ClaimRequest,
    ClaimResult,
    ErrorCategory,
    JobStore,
    NewJob,
    Outcome,
    Renewal,
    State,
    StepRecord,
)

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

#: A lease that has run out already: expired at once, without waiting for a clock.
EXPIRED = -1.0


async def on(db: corral.Database, fn: Callable[[JobStore], Awaitable[T]]) -> T:
    """Run ``fn(session.jobs)`` as one writer operation of ``db``."""

    async def operation(session: Session) -> T:
        return await fn(session.jobs)

    return await db._run(operation)


async def ready(db: corral.Database) -> str:
    return await on(db, lambda jobs: jobs.prepare())


def job(
    job_id: str,
    *,
    priority: int = 2,
    customer: str | None = None,
    affinity: str | None = None,
    requires: tuple[str, ...] = (),
    max_retries: int = 3,
    kind: str = "default",
) -> NewJob:
    """A job as the domain hands it to the store (see ``NewJob``)."""
    payload = json.dumps({"id": job_id})
    labels = json.dumps(sorted(requires))
    return (job_id, payload, priority, customer, affinity, None, labels, max_retries, kind)


async def enqueue(db: corral.Database, *jobs: NewJob) -> None:
    async def insert(store: JobStore) -> None:
        existing = await store.enqueue(list(jobs))
        assert existing == []

    await on(db, insert)


def route(row: Mapping[str, Any], free: Mapping[str, int]) -> tuple[str, str] | None:
    """The router's part, as simple as it goes: its pinned cluster, else the first free."""
    if row["affinity"] is not None:
        return (row["affinity"], "pinned") if free.get(row["affinity"], 0) > 0 else None
    return next(((name, "free") for name, n in free.items() if n > 0), None)


def request(
    owner: str = "w1",
    *,
    limit: int = 100,
    max_concurrent: int = 100,
    per_customer: int | None = None,
    capacity: dict[str, int] | None = None,
    local_free: dict[str, int] | None = None,
    lease_seconds: float = 60.0,
    kinds: frozenset[str] | None = None,
) -> ClaimRequest:
    capacity = {"c": 100} if capacity is None else capacity
    return ClaimRequest(
        owner=owner,
        limit=limit,
        max_concurrent=max_concurrent,
        per_customer=per_customer,
        capacity=capacity,
        local_free=dict(capacity) if local_free is None else local_free,
        lease_seconds=lease_seconds,
        route=route,
        kinds=kinds,
    )


async def claim(db: corral.Database, req: ClaimRequest | None = None) -> ClaimResult:
    req = request() if req is None else req
    return await on(db, lambda jobs: jobs.claim(req))


async def get(db: corral.Database, job_id: str) -> Mapping[str, Any]:
    row = await on(db, lambda jobs: jobs.get(job_id))
    assert row is not None
    return row


async def state_of(db: corral.Database, job_id: str) -> State:
    return State((await get(db, job_id))["state"])


def ids(claimed: list[Claimed]) -> list[str]:
    return [c.id for c in claimed]


# -- the queue's storage, enqueueing -----------------------------------------------------------


async def test_exists_creates_nothing_and_prepare_is_idempotent(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        assert await on(db, lambda jobs: jobs.exists()) is False
        assert await on(db, lambda jobs: jobs.exists()) is False
        channel = await ready(db)
        assert isinstance(channel, str)
        await enqueue(db, job("a"))
        assert await ready(db) == channel
        assert await on(db, lambda jobs: jobs.exists()) is True
        assert (await get(db, "a"))["id"] == "a"


async def test_prepare_from_several_connections_at_once(store_url: str) -> None:
    async with (
        corral.connect(store_url) as a,
        corral.connect(store_url) as b,
        corral.connect(store_url) as c,
        anyio.create_task_group() as tg,
    ):
        for db in (a, b, c):
            tg.start_soon(ready, db)
    async with corral.connect(store_url) as db:
        assert await on(db, lambda jobs: jobs.exists()) is True


async def test_an_enqueued_job_is_stored_ready_as_given(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a", priority=1, customer="acme", affinity="c", requires=("gpu",)))
        row = await get(db, "a")
        assert await on(db, lambda jobs: jobs.get("nobody")) is None
    assert {k: row[k] for k in ("id", "payload", "priority", "customer", "affinity")} == {
        "id": "a",
        "payload": '{"id": "a"}',
        "priority": 1,
        "customer": "acme",
        "affinity": "c",
    }
    assert (row["requires"], row["max_retries"], row["steps"]) == ('["gpu"]', 3, "[]")
    assert (State(row["state"]), row["attempts"], row["lease_owner"]) == (State.READY, 0, None)
    assert isinstance(row["created_at"], float | int)


async def test_enqueue_returns_the_ids_stored_already_and_the_caller_rolls_back(
    store_url: str,
) -> None:
    class Duplicate(Exception):
        pass

    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"))

        async def insert(store: JobStore) -> None:
            existing = await store.enqueue([job("b"), job("a"), job("c")])
            if existing:
                raise Duplicate(existing)

        with pytest.raises(Duplicate) as raised:
            await on(db, insert)
        assert raised.value.args == (["a"],)
        assert await on(db, lambda jobs: jobs.get("b")) is None
        assert await on(db, lambda jobs: jobs.depth()) == {"ready": 1}


async def test_one_id_enqueued_from_two_connections_at_once_is_stored_once(
    store_url: str,
) -> None:
    batch = [job(f"j{n}") for n in range(50)]
    results: list[list[str]] = []
    async with corral.connect(store_url) as db:
        await ready(db)

    async def insert(db: corral.Database) -> None:
        async def fn(store: JobStore) -> None:
            existing = await store.enqueue(batch)
            results.append(existing)
            if existing:
                raise LookupError(existing)  # as the domain does: nothing of it kept

        with contextlib.suppress(LookupError):
            await on(db, fn)

    async with (
        corral.connect(store_url) as a,
        corral.connect(store_url) as b,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(insert, a)
        tg.start_soon(insert, b)
    async with corral.connect(store_url) as db:
        assert await on(db, lambda jobs: jobs.depth()) == {"ready": 50}
    assert sorted(len(r) for r in results) == [0, 50]


# -- claims ------------------------------------------------------------------------------------


async def test_a_claim_takes_jobs_by_priority_then_age_under_a_fresh_lease(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("low", priority=3), job("a"), job("urgent", priority=0), job("b"))
        result = await claim(db, request("w1", limit=3, lease_seconds=30))
        assert ids(result.claimed) == ["urgent", "a", "b"]
        assert result.reclaimed == []
        first = result.claimed[0]
        assert (first.attempt, first.cluster, first.route_reason) == (1, "c", "free")
        assert first.row["payload"] == '{"id": "urgent"}'
        assert len({c.token for c in result.claimed}) == 3
        row = await get(db, "urgent")
        assert (State(row["state"]), row["attempts"], row["lease_owner"]) == (
            State.IN_PROGRESS,
            1,
            "w1",
        )
        assert row["cluster"] == "c"
        assert row["lease_expires"] > row["created_at"]
        assert ids((await claim(db)).claimed) == ["low"]
        assert (await claim(db)).claimed == []


async def test_a_claimed_job_is_not_claimed_again_while_its_lease_holds(store_url: str) -> None:
    async with corral.connect(store_url) as db, corral.connect(store_url) as other:
        await ready(db)
        await enqueue(db, job("a"))
        assert ids((await claim(db, request("w1"))).claimed) == ["a"]
        result = await claim(other, request("w2"))
        assert (result.claimed, result.reclaimed) == ([], [])
        assert (await get(other, "a"))["lease_owner"] == "w1"


async def test_a_job_pinned_to_a_cluster_is_claimed_for_that_cluster_only(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("pinned", affinity="gpu"), job("free"))
        assert ids((await claim(db, request(capacity={"c": 10}))).claimed) == ["free"]
        result = await claim(db, request(capacity={"c": 10, "gpu": 1}))
        assert [(c.id, c.cluster) for c in result.claimed] == [("pinned", "gpu")]


@pytest.mark.parametrize("limit", ["limit", "max_concurrent", "capacity", "local_free"])
async def test_a_claim_stops_at_each_limit(store_url: str, limit: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, *(job(f"j{n}") for n in range(10)))
        wanted = {
            "limit": request(limit=3),
            "max_concurrent": request(max_concurrent=3),
            "capacity": request(capacity={"c": 3}),
            "local_free": request(capacity={"c": 10}, local_free={"c": 3}),
        }[limit]
        result = await claim(db, wanted)
        assert ids(result.claimed) == ["j0", "j1", "j2"]
        if limit in ("limit", "max_concurrent"):  # the room it found, all taken
            assert result.limited
        if limit in ("max_concurrent", "capacity"):  # counted over every worker
            again = await claim(db, wanted)
            assert (again.claimed, again.limited) == ([], True)
        assert (await on(db, lambda jobs: jobs.depth()))["in_progress"] == 3


async def test_a_claim_for_want_of_jobs_is_not_limited(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"))
        result = await claim(db, request(limit=5))
        assert (ids(result.claimed), result.limited) == (["a"], False)


async def test_per_customer_holds_over_every_worker(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(
            db,
            *(job(f"a{n}", customer="a") for n in range(4)),
            *(job(f"b{n}", customer="b") for n in range(4)),
            job("nobody's"),
        )
        first = await claim(db, request("w1", per_customer=2, limit=3))
        assert ids(first.claimed) == ["a0", "a1", "b0"]
        second = await claim(db, request("w2", per_customer=2))
        assert ids(second.claimed) == ["b1", "nobody's"]
        assert (await claim(db, request("w3", per_customer=2))).claimed == []


async def test_a_job_held_back_does_not_hide_those_behind_it(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(
            db,
            *(job(f"a{n}", customer="a") for n in range(50)),
            *(job(f"p{n}", affinity="elsewhere") for n in range(50)),
            job("b", customer="b"),
        )
        result = await claim(db, request(per_customer=1, limit=5))
        assert ids(result.claimed) == ["a0", "b"]


@pytest.mark.parametrize("limit", ["none", "max_concurrent", "capacity", "per_customer"])
async def test_claims_from_several_connections_at_once_keep_the_limits(
    store_url: str, limit: str
) -> None:
    # As from processes or hosts sharing the store: each connection its own writer,
    # each claiming a few jobs at a time, at once, while nothing finishes.
    workers, allowed = 4, 5
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, *(job(f"j{n:02}", customer=f"k{n % 2}") for n in range(40)))
    claimed: list[Claimed] = []

    def wanted(owner: str) -> ClaimRequest:
        if limit == "none":  # every job, each claimed once
            return request(owner, limit=3)
        if limit == "max_concurrent":
            return request(owner, limit=2, max_concurrent=allowed)
        if limit == "capacity":
            return request(owner, limit=2, capacity={"c": allowed})
        return request(owner, limit=2, per_customer=allowed)

    async def worker(n: int) -> None:
        async with corral.connect(store_url) as db:
            for _ in range(6):
                claimed.extend((await claim(db, wanted(f"w{n}"))).claimed)

    async with anyio.create_task_group() as tg:
        for n in range(workers):
            tg.start_soon(worker, n)
    expected = {"none": 40, "per_customer": 2 * allowed}.get(limit, allowed)  # two customers
    assert len(claimed) == expected
    assert len(set(ids(claimed))) == expected
    async with corral.connect(store_url) as db:
        assert (await on(db, lambda jobs: jobs.depth()))["in_progress"] == expected


async def test_a_slot_freed_in_a_batch_is_claimed_in_the_same_batch(store_url: str) -> None:
    # As a processor's report does: its outcomes, then the claim of their successors.
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"), job("b"))
        [a] = (await claim(db, request(max_concurrent=1))).claimed

        async def report(jobs: JobStore) -> tuple[set[int], ClaimResult]:
            accepted = await jobs.finish([Outcome("a", a.token, State.COMPLETED)])
            return accepted, await jobs.claim(request(max_concurrent=1))

        accepted, result = await on(db, report)
        assert accepted == {a.token}
        assert ids(result.claimed) == ["b"]


# -- leases: renewing, fencing, reclaiming -----------------------------------------------------


async def test_renew_extends_the_leases_held_and_adds_their_progress(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"))
        [c] = (await claim(db, request(lease_seconds=10))).claimed
        before = (await get(db, "a"))["lease_expires"]
        assert await on(db, lambda jobs: jobs.renew([(c, 5)], 3600)) == Renewal({c.token}, set())
        row = await get(db, "a")
        assert row["lease_expires"] > before + 3000
        assert row["progress"] == 5


async def test_a_wrong_token_changes_nothing(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"))
        [c] = (await claim(db)).claimed
        before = await get(db, "a")
        forged = Claimed(c.row, c.attempt, c.cluster, c.route_reason, c.token + 1)
        assert await on(db, lambda jobs: jobs.renew([(forged, 5)], 3600)) == Renewal(set(), set())
        assert await on(db, lambda jobs: jobs.step_done(forged, '["one"]', 1)) is False
        outcome = Outcome("a", forged.token, State.COMPLETED, progress=1)
        assert await on(db, lambda jobs: jobs.finish([outcome])) == set()
        await on(db, lambda jobs: jobs.release([(forged, 1)]))
        assert await get(db, "a") == before


async def test_an_expired_lease_is_reclaimed_and_its_old_token_fenced_off(
    store_url: str,
) -> None:
    async with corral.connect(store_url) as db, corral.connect(store_url) as other:
        await ready(db)
        await enqueue(db, job("a"))
        [old] = (await claim(db, request("w1", lease_seconds=EXPIRED))).claimed
        result = await claim(other, request("w2"))
        assert [
            (r["id"], State(r["state"]), r["attempts"], r["cluster"]) for r in result.reclaimed
        ] == [("a", State.READY, 1, "c")]
        assert "w1" in result.reclaimed[0]["error_message"]
        [new] = result.claimed
        assert (new.id, new.attempt) == ("a", 2)
        assert new.token != old.token
        # The first worker comes back: nothing it writes changes the job.
        before = await get(db, "a")
        assert await on(db, lambda jobs: jobs.renew([(old, 1)], 3600)) == Renewal(set(), set())
        assert await on(db, lambda jobs: jobs.step_done(old, '["x"]', 1)) is False
        finished = Outcome("a", old.token, State.COMPLETED)
        assert await on(db, lambda jobs: jobs.finish([finished])) == set()
        await on(db, lambda jobs: jobs.release([(old, 1)]))
        assert await get(db, "a") == before
        assert before["lease_owner"] == "w2"
        assert State(before["state"]) == State.IN_PROGRESS


async def test_an_expired_lease_with_no_retries_left_is_dead(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a", max_retries=0))
        await claim(db, request(lease_seconds=EXPIRED))
        result = await claim(db)
        assert [(r["id"], State(r["state"])) for r in result.reclaimed] == [("a", State.DEAD)]
        assert result.claimed == []
        assert (await get(db, "a"))["finished_at"] is not None


async def test_a_claim_without_reclaim_leaves_expired_leases(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"))
        await claim(db, request(lease_seconds=EXPIRED))
        req = request()
        req.reclaim = False
        assert (await claim(db, req)).reclaimed == []
        assert await state_of(db, "a") == State.IN_PROGRESS


# -- how attempts end --------------------------------------------------------------------------


async def test_finish_writes_each_outcome_fenced_by_its_token(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("done"), job("again"), job("broken"), job("out"))
        claimed = {c.id: c for c in (await claim(db)).claimed}
        outcomes = [
            Outcome("done", claimed["done"].token, State.COMPLETED, progress=3),
            Outcome(
                "again",
                claimed["again"].token,
                State.RETRYING,
                delay=3600,
                category=ErrorCategory.TRANSIENT,
                step="fetch",
                message="timed out",
            ),
            Outcome("broken", claimed["broken"].token, State.FAILED, category=ErrorCategory.DATA),
            Outcome("out", claimed["out"].token, State.DEAD, category=ErrorCategory.RESOURCE),
        ]
        accepted = await on(db, lambda jobs: jobs.finish(outcomes))
        assert accepted == {c.token for c in claimed.values()}
        done, again = await get(db, "done"), await get(db, "again")
        assert (State(done["state"]), done["progress"], done["lease_owner"]) == (
            State.COMPLETED,
            3,
            None,
        )
        assert done["finished_at"] is not None
        assert (State(again["state"]), again["finished_at"], again["lease_owner"]) == (
            State.RETRYING,
            None,
            None,
        )
        assert (again["error_category"], again["error_step"], again["error_message"]) == (
            "TRANSIENT",
            "fetch",
            "timed out",
        )
        assert again["error_attempt"] == 1
        assert again["run_at"] > done["finished_at"] + 3000
        assert await state_of(db, "broken") == State.FAILED
        assert (await get(db, "broken"))["error_category"] == "DATA"
        assert await state_of(db, "out") == State.DEAD
        # Retrying, and not due: not claimed.
        assert (await claim(db)).claimed == []
        assert await on(db, lambda jobs: jobs.finish(outcomes)) == set()  # not twice


async def test_a_retry_due_now_is_claimed_again_as_the_next_attempt(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"))
        [c] = (await claim(db)).claimed
        retry = Outcome("a", c.token, State.RETRYING, category=ErrorCategory.TRANSIENT)
        await on(db, lambda jobs: jobs.finish([retry]))
        [again] = (await claim(db)).claimed
        assert (again.id, again.attempt) == ("a", 2)


async def test_release_gives_a_job_back_ready_its_attempt_not_counted(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"))
        [c] = (await claim(db)).claimed
        await on(db, lambda jobs: jobs.release([(c, 2)]))
        row = await get(db, "a")
        assert (State(row["state"]), row["attempts"], row["lease_owner"]) == (
            State.READY,
            0,
            None,
        )
        assert row["progress"] == 2
        [again] = (await claim(db)).claimed
        assert again.attempt == 1


async def test_step_done_stores_the_steps_and_adds_progress(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"))
        [c] = (await claim(db)).claimed
        assert await on(db, lambda jobs: jobs.step_done(c, '["fetch"]', 1)) is True
        assert await on(db, lambda jobs: jobs.step_done(c, '["fetch", "parse"]', 1)) is True
        row = await get(db, "a")
        assert (row["steps"], row["progress"]) == ('["fetch", "parse"]', 2)
        # The steps stay with the job: the next attempt's claim has them.
        await on(db, lambda jobs: jobs.release([(c, 0)]))
        [again] = (await claim(db)).claimed
        assert again.row["steps"] == '["fetch", "parse"]'


async def test_step_done_many_stores_each_lease_and_refuses_only_those_taken_over(
    store_url: str,
) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"), job("b"), job("c"))
        claimed = {c.id: c for c in (await claim(db)).claimed}
        a, b, c = claimed["a"], claimed["b"], claimed["c"]
        forged = Claimed(b.row, b.attempt, b.cluster, b.route_reason, b.token + 1)
        records = [
            StepRecord(a, '{"fetch":1}', 2),
            StepRecord(forged, '{"x":null}', 100),  # taken over: changes nothing ...
            StepRecord(c, '{"only":true}', 0),
            StepRecord(a, '{"fetch":1,"parse":2}', 3),  # ... and a's second record
        ]
        held = await on(db, lambda jobs: jobs.step_done_many(records))
        assert held == {a.token, c.token}
        rows = {job_id: await get(db, job_id) for job_id in "abc"}
        # What the records one after another leave: a's last steps, and all its progress.
        assert (rows["a"]["steps"], rows["a"]["progress"]) == ('{"fetch":1,"parse":2}', 5)
        assert (rows["b"]["steps"], rows["b"]["progress"]) == ("[]", 0)
        assert (rows["c"]["steps"], rows["c"]["progress"]) == ('{"only":true}', 0)
        assert await on(db, lambda jobs: jobs.step_done_many([])) == set()
        # One lone record, as step_done.
        one = [StepRecord(c, '{"only":true,"two":2}', 4)]
        assert await on(db, lambda jobs: jobs.step_done_many(one)) == {c.token}
        assert (await get(db, "c"))["progress"] == 4


# -- reads, requeue, purge ---------------------------------------------------------------------


async def _finished_set(db: corral.Database) -> dict[str, Claimed]:
    """Jobs a..e: a completed, b failed, c dead, d in progress, e ready (pinned to c)."""
    await ready(db)
    await enqueue(db, *(job(j, affinity="c" if j == "e" else None) for j in "abcde"))
    claimed = {c.id: c for c in (await claim(db, request(limit=4))).claimed}
    outcomes = [
        Outcome("a", claimed["a"].token, State.COMPLETED),
        Outcome("b", claimed["b"].token, State.FAILED, category=ErrorCategory.DATA),
        Outcome("c", claimed["c"].token, State.DEAD, category=ErrorCategory.TRANSIENT),
    ]
    await on(db, lambda jobs: jobs.finish(outcomes))
    return claimed


async def test_depth_list_and_by_cluster(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await _finished_set(db)
        depth = await on(db, lambda jobs: jobs.depth())
        assert {k: v for k, v in depth.items() if v} == {
            "completed": 1,
            "failed": 1,
            "dead": 1,
            "in_progress": 1,
            "ready": 1,
        }
        rows = await on(db, lambda jobs: jobs.list(None, 10))
        assert [r["id"] for r in rows] == list("abcde")
        assert [r["id"] for r in await on(db, lambda jobs: jobs.list(None, 2))] == ["a", "b"]
        assert [r["id"] for r in await on(db, lambda jobs: jobs.list(State.READY, 10))] == ["e"]
        by_cluster = await on(db, lambda jobs: jobs.by_cluster("c"))
        assert {k: v for k, v in by_cluster.items() if v} == {
            "completed": 1,
            "failed": 1,
            "dead": 1,
            "in_progress": 1,
            "ready": 1,
        }
        assert {
            k: v for k, v in (await on(db, lambda jobs: jobs.by_cluster("x"))).items() if v
        } == {}


async def test_requeue_puts_a_dead_or_failed_job_back_with_its_steps(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await _finished_set(db)
        assert await on(db, lambda jobs: jobs.requeue("c")) is None
        assert await on(db, lambda jobs: jobs.requeue("b")) is None
        for job_id in "bc":
            row = await get(db, job_id)
            assert (State(row["state"]), row["attempts"]) == (State.READY, 0)
            assert row["error_category"] is not None  # the last error, for the record
        assert await on(db, lambda jobs: jobs.requeue("a")) == "completed"
        assert await on(db, lambda jobs: jobs.requeue("d")) == "in_progress"
        assert await on(db, lambda jobs: jobs.requeue("zz")) == "missing"
        assert sorted(ids((await claim(db)).claimed)) == ["b", "c", "e"]


async def test_requeue_many_answers_each_id_as_requeues_one_after_another_would(
    store_url: str,
) -> None:
    async with corral.connect(store_url) as db:
        await _finished_set(db)
        asked = ["c", "zz", "a", "b", "d", "c", "e", "zz"]
        answers = await on(db, lambda jobs: jobs.requeue_many(asked))
        assert len(answers) == len(asked)
        requeued = {
            job_id: answer
            for job_id, answer in zip(asked, answers, strict=True)
            if not isinstance(answer, str)
        }
        assert sorted(requeued) == ["b", "c"]
        refused = [answer if isinstance(answer, str) else None for answer in answers]
        # c named twice: requeued, then refused as the ready job it is by then.
        assert refused == [
            None,
            "missing",
            "completed",
            None,
            "in_progress",
            "ready",
            "ready",
            "missing",
        ]
        for job_id, row in requeued.items():
            # Its row, as requeued: what get() reads.
            assert row == await get(db, job_id)
            assert (State(row["state"]), row["attempts"]) == (State.READY, 0)
            assert row["finished_at"] is None
            assert not row["cancel_requested"]
            assert row["error_category"] is not None  # the last error, for the record
        assert await state_of(db, "a") == State.COMPLETED
        assert await on(db, lambda jobs: jobs.requeue_many([])) == []
        assert sorted(ids((await claim(db)).claimed)) == ["b", "c", "e"]


async def test_requeue_many_is_rolled_back_with_its_operation(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await _finished_set(db)

        async def then_fail(jobs: JobStore) -> None:
            answers = await jobs.requeue_many(["b", "c"])
            assert not any(isinstance(answer, str) for answer in answers)
            raise LookupError("undo")

        with pytest.raises(LookupError):
            await on(db, then_fail)
        assert (await state_of(db, "b"), await state_of(db, "c")) == (State.FAILED, State.DEAD)


async def test_purge_deletes_the_finished_jobs_of_the_states_given(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await _finished_set(db)
        purge = (State.COMPLETED, State.DEAD)
        assert await on(db, lambda jobs: jobs.purge(purge, 3600)) == 0
        assert await on(db, lambda jobs: jobs.purge(purge, 0)) == 2
        assert await on(db, lambda jobs: jobs.get("a")) is None
        assert await on(db, lambda jobs: jobs.get("c")) is None
        finished = (State.COMPLETED, State.FAILED, State.DEAD)
        assert await on(db, lambda jobs: jobs.purge(finished, 0)) == 1
        assert sorted(r["id"] for r in await on(db, lambda jobs: jobs.list(None, 10))) == ["d", "e"]


async def test_outlook_counts_the_jobs_a_worker_could_take(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(
            db,
            job("running"),
            job("gpu", requires=("gpu",)),
            job("elsewhere", affinity="other"),
            job("later"),
        )
        claimed = {c.id: c for c in (await claim(db, request(limit=3))).claimed}
        assert sorted(claimed) == ["gpu", "later", "running"]
        await on(db, lambda jobs: jobs.release([(claimed["gpu"], 0)]))
        retry = Outcome("later", claimed["later"].token, State.RETRYING, delay=3600)
        await on(db, lambda jobs: jobs.finish([retry]))
        # running (in progress) and later (due in an hour); not gpu (no cluster has its
        # label), not elsewhere (pinned to another cluster).
        count, due = await on(db, lambda jobs: jobs.outlook(["c"], [frozenset()]))
        assert count == 2
        assert due is not None
        assert 3000 < due <= 3600
        count, due = await on(db, lambda jobs: jobs.outlook(["c"], [frozenset({"gpu"})]))
        assert count == 3
        assert due is not None
        assert due <= 0
        count, due = await on(db, lambda jobs: jobs.outlook(["c", "x"], [frozenset()] * 2))
        assert count == 2
        assert due is not None
        assert 3000 < due <= 3600
        count, due = await on(db, lambda jobs: jobs.outlook(["other"], [frozenset()]))
        assert count == 3  # elsewhere, running and later (pinned to none)
        assert due is not None
        assert due <= 0


# -- wake-ups ----------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["enqueue", "announce", "requeue", "requeue_many"])
async def test_watch_is_called_back_on_new_work_from_another_connection(
    store_url: str, by: str
) -> None:
    woken = anyio.Event()
    async with corral.connect(store_url) as db, corral.connect(store_url) as other:
        await ready(db)
        await ready(other)
        if by.startswith("requeue"):
            await enqueue(other, job("a", max_retries=0))
            [c] = (await claim(other)).claimed
            failed = Outcome("a", c.token, State.FAILED, category=ErrorCategory.DATA)
            await on(other, lambda jobs: jobs.finish([failed]))
        watching = await on(db, lambda jobs: jobs.watch(woken.set))
        assert isinstance(watching, bool)
        if not watching:
            return  # no wake-ups across connections here: the processor polls
        if by == "enqueue":
            await enqueue(other, job("b"))
        elif by == "announce":
            await on(other, lambda jobs: jobs.announce())
        elif by == "requeue":
            assert await on(other, lambda jobs: jobs.requeue("a")) is None
        else:
            [row] = await on(other, lambda jobs: jobs.requeue_many(["a"]))
            assert not isinstance(row, str)
        with anyio.fail_after(10):
            await woken.wait()
        await on(db, lambda jobs: jobs.unwatch(woken.set))


async def test_stranded_counts_the_waiting_jobs_a_worker_could_never_take(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(
            db,
            job("plain"),
            job("gpu1", requires=("gpu",)),
            job("gpu2", requires=("gpu",)),
            job("both", requires=("avx", "gpu")),
            job("avx", requires=("avx",)),
            job("east", affinity="east"),
            job("mine", affinity="c", requires=("tpu",)),  # pinned here: claimable
            job("running", requires=("gpu",)),
        )
        [running] = (await claim(db, request(limit=1))).claimed
        assert running.id == "plain"
        await on(db, lambda jobs: jobs.release([(running, 0)]))
        labels = [frozenset({"avx"}), frozenset({"gpu", "ssd"})]
        got = await on(db, lambda jobs: jobs.stranded(["c", "x"], labels))
        # both: no one cluster has avx and gpu; east: pinned to a cluster not here.
        assert got == {(None, '["avx", "gpu"]'): 1, ("east", "[]"): 1}
        got = await on(db, lambda jobs: jobs.stranded(["c"], [frozenset()]))
        assert got == {
            (None, '["gpu"]'): 3,
            (None, '["avx", "gpu"]'): 1,
            (None, '["avx"]'): 1,
            ("east", "[]"): 1,
        }
        # Only waiting jobs: one in progress or finished is not stranded.
        [first] = (await claim(db, request(limit=1))).claimed
        await on(db, lambda jobs: jobs.finish([Outcome(first.id, first.token, State.COMPLETED)]))
        [gpu] = (await claim(db, request(limit=1))).claimed
        assert gpu.id == "gpu1"
        got = await on(db, lambda jobs: jobs.stranded(["c"], [frozenset()]))
        assert got[(None, '["gpu"]')] == 2


# -- tracebacks --------------------------------------------------------------------------------


async def test_an_outcome_stores_its_traceback_with_the_last_error(store_url: str) -> None:
    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nKeyError: 'k'\n"
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("a"), job("b"), job("c"))
        claimed = {c.id: c for c in (await claim(db)).claimed}
        outcomes = [
            Outcome(
                "a",
                claimed["a"].token,
                State.RETRYING,
                category=ErrorCategory.TRANSIENT,
                message="KeyError: 'k'",
                traceback=tb,
            ),
            Outcome("b", claimed["b"].token, State.FAILED, category=ErrorCategory.DATA),
            Outcome("c", claimed["c"].token, State.RETRYING, category=ErrorCategory.TRANSIENT),
        ]
        await on(db, lambda jobs: jobs.finish(outcomes))
        assert (await get(db, "a"))["error_traceback"] == tb
        assert (await get(db, "b"))["error_traceback"] is None
        # A later success keeps the last error, its traceback with it.
        again = {c.id: c for c in (await claim(db, request(lease_seconds=EXPIRED))).claimed}
        done = Outcome("a", again["a"].token, State.COMPLETED)
        await on(db, lambda jobs: jobs.finish([done]))
        assert (await get(db, "a"))["error_traceback"] == tb
        # An expired lease replaces the last error: no traceback of an older attempt stays.
        await on(
            db,
            lambda jobs: jobs.finish(
                [
                    Outcome(
                        "c",
                        again["c"].token,
                        State.RETRYING,
                        category=ErrorCategory.TRANSIENT,
                        traceback=tb,
                    )
                ]
            ),
        )
        assert ids((await claim(db, request(lease_seconds=EXPIRED))).claimed) == ["c"]
        await claim(db)
        row = await get(db, "c")
        assert row["error_message"].startswith("lease expired")
        assert row["error_traceback"] is None


# -- kinds -------------------------------------------------------------------------------------


async def test_a_claim_takes_only_the_kinds_it_asks_for(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(
            db,
            job("a"),
            job("r1", kind="render"),
            job("i1", kind="index"),
            job("r2", kind="render", priority=0),
            job("i2", kind="index"),
        )
        assert (await get(db, "a"))["kind"] == "default"
        assert (await get(db, "r1"))["kind"] == "render"
        result = await claim(db, request(kinds=frozenset({"render"})))
        assert ids(result.claimed) == ["r2", "r1"]
        assert [c.row["kind"] for c in result.claimed] == ["render", "render"]
        assert not result.limited  # for want of render jobs: the others are not its own
        assert (await claim(db, request(kinds=frozenset({"render"})))).claimed == []
        # Jobs of other kinds hold no room of a claim: one slot, the index job takes it.
        result = await claim(db, request(limit=1, kinds=frozenset({"index", "nothing"})))
        assert ids(result.claimed) == ["i1"]
        assert ids((await claim(db, request(kinds=frozenset()))).claimed) == []
        assert ids((await claim(db)).claimed) == ["a", "i2"]  # every kind


async def test_depth_list_outlook_and_stranded_by_kind(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(
            db,
            job("a"),
            job("r1", kind="render"),
            job("r2", kind="render"),
            job("r3", kind="render", affinity="elsewhere"),
            job("i1", kind="index", requires=("gpu",)),
        )
        [r1] = (await claim(db, request(limit=1, kinds=frozenset({"render"})))).claimed
        assert r1.id == "r1"
        await on(db, lambda jobs: jobs.finish([Outcome("r1", r1.token, State.COMPLETED)]))
        assert await on(db, lambda jobs: jobs.depth("render")) == {"completed": 1, "ready": 2}
        assert await on(db, lambda jobs: jobs.depth("nothing")) == {}
        assert await on(db, lambda jobs: jobs.depth_by_kind()) == {
            "default": {"ready": 1},
            "render": {"completed": 1, "ready": 2},
            "index": {"ready": 1},
        }
        listed = await on(db, lambda jobs: jobs.list(None, 10, "render"))
        assert [r["id"] for r in listed] == ["r1", "r2", "r3"]
        listed = await on(db, lambda jobs: jobs.list(State.READY, 10, "render"))
        assert [r["id"] for r in listed] == ["r2", "r3"]
        assert [r["id"] for r in await on(db, lambda jobs: jobs.list(None, 1, "index"))] == ["i1"]
        plain = [frozenset()]
        # A render worker waits for r2 only (r3 is pinned elsewhere); an index worker
        # for nothing it could take (i1 needs a label it lacks), which it strands.
        count, _ = await on(db, lambda jobs: jobs.outlook(["c"], plain, frozenset({"render"})))
        assert count == 1
        count, due = await on(db, lambda jobs: jobs.outlook(["c"], plain, frozenset({"index"})))
        assert (count, due) == (0, None)
        count, _ = await on(db, lambda jobs: jobs.outlook(["c"], plain))
        assert count == 2  # a and r2
        got = await on(db, lambda jobs: jobs.stranded(["c"], plain, frozenset({"render"})))
        assert got == {("elsewhere", "[]"): 1}
        got = await on(db, lambda jobs: jobs.stranded(["c"], plain, frozenset({"index"})))
        assert got == {(None, '["gpu"]'): 1}
        got = await on(db, lambda jobs: jobs.stranded(["c"], plain, frozenset({"default"})))
        assert got == {}
        assert await on(db, lambda jobs: jobs.stranded(["c"], plain)) == {
            ("elsewhere", "[]"): 1,
            (None, '["gpu"]'): 1,
        }


# -- cancellation ------------------------------------------------------------------------------


async def test_cancel_a_waiting_job_at_once_and_a_finished_one_not(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await _finished_set(db)  # a completed, b failed, c dead, d in progress, e ready
        await enqueue(db, job("f"))
        [f] = (await claim(db, request(capacity={"x": 1}))).claimed  # e is pinned to c
        retry = Outcome("f", f.token, State.RETRYING, delay=0, category=ErrorCategory.TRANSIENT)
        await on(db, lambda jobs: jobs.finish([retry]))
        assert await state_of(db, "f") == State.RETRYING
        assert await on(db, lambda jobs: jobs.cancel("e")) == "cancelled"
        assert await on(db, lambda jobs: jobs.cancel("f")) == "cancelled"
        for job_id in "ef":
            row = await get(db, job_id)
            assert State(row["state"]) == State.CANCELLED
            assert row["finished_at"] is not None
            assert row["lease_owner"] is None
        assert await on(db, lambda jobs: jobs.cancel("a")) == "completed"
        assert await on(db, lambda jobs: jobs.cancel("b")) == "failed"
        assert await on(db, lambda jobs: jobs.cancel("c")) == "dead"
        assert await on(db, lambda jobs: jobs.cancel("e")) == "cancelled"  # its state
        assert await on(db, lambda jobs: jobs.cancel("nobody")) == "missing"
        assert await state_of(db, "a") == State.COMPLETED
        # A cancelled job is claimed by no one, due or not, whatever the claim asks.
        assert (await claim(db, request(capacity={"c": 10, "x": 10}))).claimed == []
        count, due = await on(db, lambda jobs: jobs.outlook(["c", "x"], [frozenset()] * 2))
        assert (count, due) == (1, None)  # d, in progress; not e nor f
        assert await on(db, lambda jobs: jobs.stranded(["x"], [frozenset()])) == {}
        depth = await on(db, lambda jobs: jobs.depth())
        assert depth["cancelled"] == 2


async def test_cancel_a_running_job_is_reported_by_its_next_renewal(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("run"), job("other"))
        claimed = {c.id: c for c in (await claim(db)).claimed}
        run, other = claimed["run"], claimed["other"]
        assert await on(db, lambda jobs: jobs.step_done(run, '["one"]', 2)) is True
        assert await on(db, lambda jobs: jobs.cancel("run")) == "requested"
        assert await on(db, lambda jobs: jobs.cancel("run")) == "requested"  # no change
        row = await get(db, "run")
        assert (State(row["state"]), bool(row["cancel_requested"])) == (State.IN_PROGRESS, True)
        assert row["lease_owner"] == "w1"
        assert not (await get(db, "other"))["cancel_requested"]
        leases = [(run, 1), (other, 0)]
        renewal = await on(db, lambda jobs: jobs.renew(leases, 3600))
        assert renewal == Renewal({run.token, other.token}, {run.token})
        forged = Claimed(run.row, run.attempt, run.cluster, run.route_reason, run.token + 1)
        assert await on(db, lambda jobs: jobs.renew([(forged, 0)], 3600)) == Renewal(set(), set())
        # Its worker finishes it cancelled: not retried, its steps and progress kept.
        cancelled = Outcome("run", run.token, State.CANCELLED, progress=3)
        assert await on(db, lambda jobs: jobs.finish([cancelled])) == {run.token}
        row = await get(db, "run")
        assert State(row["state"]) == State.CANCELLED
        assert (row["steps"], row["progress"], row["attempts"]) == ('["one"]', 6, 1)
        assert (row["lease_owner"], row["error_category"]) == (None, None)
        assert row["finished_at"] is not None
        assert (await claim(db)).claimed == []
        assert await on(db, lambda jobs: jobs.cancel("run")) == "cancelled"


async def test_a_cancelled_job_is_requeued_and_purged_as_a_finished_one(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, job("run"), job("wait"))
        [run] = (await claim(db, request(limit=1))).claimed
        await on(db, lambda jobs: jobs.step_done(run, '["one"]', 0))
        assert await on(db, lambda jobs: jobs.cancel("run")) == "requested"
        await on(db, lambda jobs: jobs.finish([Outcome("run", run.token, State.CANCELLED)]))
        assert await on(db, lambda jobs: jobs.cancel("wait")) == "cancelled"
        assert await on(db, lambda jobs: jobs.requeue("run")) is None
        row = await get(db, "run")
        assert (State(row["state"]), row["attempts"], row["steps"]) == (State.READY, 0, '["one"]')
        assert (bool(row["cancel_requested"]), row["finished_at"]) == (False, None)
        [again] = (await claim(db)).claimed
        assert (again.id, again.row["steps"]) == ("run", '["one"]')
        renewal = await on(db, lambda jobs: jobs.renew([(again, 0)], 3600))
        assert renewal == Renewal({again.token}, set())  # the old request is gone
        assert await on(db, lambda jobs: jobs.purge([State.CANCELLED], 0)) == 1
        assert await on(db, lambda jobs: jobs.get("wait")) is None


async def test_cancels_from_several_connections_while_others_claim(store_url: str) -> None:
    """No job is claimed once its cancellation has committed, and each ends once."""
    async with corral.connect(store_url) as db:
        await ready(db)
        await enqueue(db, *(job(f"j{n:02}") for n in range(40)))
    claimed: list[Claimed] = []
    answers: dict[str, str] = {}

    async def claimer(n: int) -> None:
        async with corral.connect(store_url) as db:
            for _ in range(10):
                claimed.extend((await claim(db, request(f"w{n}", limit=2))).claimed)

    async def canceller() -> None:
        async with corral.connect(store_url) as db:
            for n in range(0, 40, 2):
                answers[f"j{n:02}"] = await on(db, lambda jobs, n=n: jobs.cancel(f"j{n:02}"))

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(claimer, n)
        tg.start_soon(canceller)
    async with corral.connect(store_url) as db:
        taken = {c.id for c in claimed}
        assert len(taken) == len(claimed)  # none claimed twice
        for job_id, answer in answers.items():
            row = await get(db, job_id)
            if answer == "cancelled":  # cancelled while it waited: never claimed
                assert job_id not in taken
                assert State(row["state"]) == State.CANCELLED
            else:  # claimed first: running, its cancellation asked
                assert answer == "requested"
                assert job_id in taken
                assert (State(row["state"]), bool(row["cancel_requested"])) == (
                    State.IN_PROGRESS,
                    True,
                )
        depth = await on(db, lambda jobs: jobs.depth())
        assert depth.get("cancelled", 0) + len(claimed) + depth.get("ready", 0) == 40
