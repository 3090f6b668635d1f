"""The job processor in one process: queue, routing, limits, retries, steps, leases.

Every test runs on SQLite, PostgreSQL and DynamoDB (``any_url``) and on asyncio and
trio (DynamoDB on asyncio only, but with CORRAL_TEST_AWS_TRIO=1); those that run
SQL on SQLite and PostgreSQL only (``db_url``).
Multi-process behaviour (SIGKILL, three workers) is in ``test_jobs_processes.py``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import random
import re
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import corral
from corral import jobs
from corral._backends._dynamodb._jobs import DynamoJobStore
from corral._backends._sql._jobs import SqlJobStore
from corral._jobs import _claims, _routing
from jobs_testing import Recorder, config, database, set_columns


class LostWatch(Recorder):
    """A recorder with an event set when an attempt's lease is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = anyio.Event()

    async def notify(self, event: jobs.JobEvent) -> None:
        await super().notify(event)
        if event.kind is jobs.EventKind.LEASE_LOST:
            self.lost.set()


async def run_all(
    db: corral.Database,
    handler: Callable[[jobs.JobContext], Awaitable[object]],
    *,
    clusters: list[corral.Cluster] | None = None,
    recorder: Recorder | None = None,
    classify: Callable[[BaseException], object] | None = None,
    **kwargs: Any,
) -> jobs.Processor:
    processor = jobs.Processor(
        db,
        handler,
        clusters=clusters,
        config=config(**kwargs),
        notifier=recorder or Recorder(),
        classify=classify,
    )
    with anyio.fail_after(60):
        await processor.run(until_idle=True)
    return processor


def every_other_error_transient(exc: BaseException) -> jobs.ErrorCategory:
    """The default classify before Python's errors had categories of their own."""
    return jobs.classify(exc) if isinstance(exc, jobs.JobError) else jobs.ErrorCategory.TRANSIENT


async def noop(ctx: jobs.JobContext) -> None:
    await anyio.lowlevel.checkpoint()


async def take_over(db: corral.Database, job_id: str) -> None:
    """Do what another worker reclaiming the job would: put its own token on the lease."""
    await set_columns(db, job_id, lease_token=7, lease_owner="thief")


# -- values and validation -------------------------------------------------------------------


def test_job_checks_its_fields() -> None:
    job = jobs.Job("a", {"x": [1, 2]}, priority="high", requires=["gpu"])
    assert job.priority is jobs.Priority.HIGH
    assert job.requires == frozenset({"gpu"})
    with pytest.raises(ValueError, match="non-empty str"):
        jobs.Job("")
    with pytest.raises(ValueError, match="'urgent', 'high', 'normal', 'low'"):
        jobs.Job("a", priority="soon")
    with pytest.raises(TypeError, match="JSON-serializable"):
        jobs.Job("a", payload={1, 2})
    with pytest.raises(TypeError, match=r"requires=\{'gpu'\}"):
        jobs.Job("a", requires="gpu")
    with pytest.raises(ValueError, match="max_retries"):
        jobs.Job("a", max_retries=-1)
    with pytest.raises(TypeError, match="customer"):
        jobs.Job("a", customer=3)  # type: ignore[arg-type]


def test_retry_policy_doubles_up_to_its_cap() -> None:
    policy = jobs.RetryPolicy(jitter=0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert policy.delay(40) == 3600.0
    jittered = jobs.RetryPolicy(base=10, cap=100, jitter=0.5)
    delays = [jittered.delay(2) for _ in range(200)]
    assert all(10.0 <= d <= 20.0 for d in delays)
    assert len(set(delays)) > 1
    with pytest.raises(ValueError, match="less than base"):
        jobs.RetryPolicy(base=10, cap=1)
    with pytest.raises(ValueError, match="jitter must be a finite number >= 0 and <= 1"):
        jobs.RetryPolicy(jitter=2)


def test_config_and_processor_arguments_are_checked(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        jobs.ProcessorConfig(max_concurrent=0)
    with pytest.raises(ValueError, match="per_customer"):
        jobs.ProcessorConfig(per_customer=0)
    with pytest.raises(ValueError, match="notify_buffer"):
        jobs.ProcessorConfig(notify_buffer=0)
    with pytest.raises(ValueError, match="notify_timeout"):
        jobs.ProcessorConfig(notify_timeout=-1)
    assert jobs.ProcessorConfig(notify_timeout=0).notify_timeout == 0
    with pytest.raises(ValueError, match="lease_seconds"):
        jobs.ProcessorConfig(lease_seconds=0)
    db: Any = object()
    with pytest.raises(TypeError, match="clusters=\\[cluster\\]"):
        jobs.Processor(db, noop, clusters=corral.Cluster("a", 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        jobs.Processor(db, noop, clusters=[])
    with pytest.raises(ValueError, match="share a name"):
        jobs.Processor(db, noop, clusters=[corral.Cluster("a", 1), corral.Cluster("a", 2)])
    with pytest.raises(TypeError, match="handler"):
        jobs.Processor(db, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"open corral\.Database"):
        jobs.Processor(db, noop)


def test_default_classification() -> None:
    cat = jobs.ErrorCategory
    assert jobs.classify(jobs.DataError("x")) is cat.DATA
    assert jobs.classify(jobs.ResourceError("x")) is cat.RESOURCE
    assert jobs.classify(jobs.ConfigurationError("x")) is cat.CONFIGURATION
    assert jobs.classify(jobs.PermanentError("x")) is cat.PERMANENT
    assert jobs.classify(TimeoutError()) is cat.TRANSIENT
    assert jobs.classify(MemoryError()) is cat.RESOURCE
    assert jobs.classify(RuntimeError()) is cat.TRANSIENT
    assert cat.TRANSIENT.retryable
    assert not cat.DATA.retryable
    group = ExceptionGroup("g", [TimeoutError(), jobs.ConfigurationError("x"), ValueError()])
    assert jobs.classify(group) is cat.CONFIGURATION
    assert jobs.classify(ExceptionGroup("g", [MemoryError(), TimeoutError()])) is cat.RESOURCE


# -- the queue --------------------------------------------------------------------------------


async def test_enqueue_and_get(any_url: str) -> None:
    async with database(any_url) as db:
        await db.jobs.enqueue(
            jobs.Job(
                "ws-001",
                {"samples": [1, 2]},
                priority="high",
                customer="acme",
                affinity="cluster-a",
                region="eu",
                requires={"gpu"},
                max_retries=3,
            )
        )
        rec = await db.jobs.get("ws-001")
        assert rec.payload == {"samples": [1, 2]}
        assert rec.priority is jobs.Priority.HIGH
        assert (rec.customer, rec.affinity, rec.region) == ("acme", "cluster-a", "eu")
        assert rec.requires == {"gpu"}
        assert rec.state is jobs.State.READY
        assert rec.attempts == 0
        assert rec.last_error is None
        assert rec.started_at is None
        assert rec.created_at <= rec.updated_at
        assert await db.jobs.depth() == jobs.QueueDepth(ready=1)
        with pytest.raises(jobs.JobNotFoundError, match="nope"):
            await db.jobs.get("nope")


async def test_duplicates_are_refused_and_nothing_of_the_batch_is_stored(any_url: str) -> None:
    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a"))
        with pytest.raises(jobs.DuplicateJobError, match="'a' is already stored"):
            await db.jobs.enqueue_many([jobs.Job("b"), jobs.Job("a"), jobs.Job("c")])
        with pytest.raises(jobs.DuplicateJobError, match="twice"):
            await db.jobs.enqueue_many([jobs.Job("d"), jobs.Job("d")])
        with pytest.raises(TypeError, match=r"jobs\.Job\(id=\.\.\., payload=\.\.\.\)"):
            await db.jobs.enqueue_many([{"id": "e"}])  # type: ignore[list-item]
        assert await db.jobs.enqueue_many([]) == 0
        assert [r.id for r in await db.jobs.list()] == ["a"]
        # moto copies a table for each transaction: a tenth of the jobs on DynamoDB
        many = 300 if any_url.startswith("dynamodb") else 3000
        assert await db.jobs.enqueue_many(jobs.Job(f"x{i}") for i in range(many)) == many
        assert (await db.jobs.depth()).ready == many + 1


async def test_list_is_in_claim_order(any_url: str) -> None:
    async with database(any_url) as db:
        for i, priority in enumerate(["low", "normal", "urgent", "high", "urgent", "low"]):
            await db.jobs.enqueue(jobs.Job(f"j{i}", priority=priority))
        order = [r.id for r in await db.jobs.list()]
        assert order == ["j2", "j4", "j3", "j1", "j0", "j5"]
        assert [r.id for r in await db.jobs.list("ready", limit=2)] == ["j2", "j4"]
        assert await db.jobs.list(jobs.State.DEAD) == []
        with pytest.raises(ValueError, match="state must be one of"):
            await db.jobs.list("nope")


async def test_requeue_only_dead_or_failed(any_url: str) -> None:
    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a"))
        with pytest.raises(jobs.JobStateError, match="is ready"):
            await db.jobs.requeue("a")
        with pytest.raises(jobs.JobNotFoundError):
            await db.jobs.requeue("missing")


# -- running ----------------------------------------------------------------------------------


async def test_runs_every_job_once_in_priority_order(any_url: str) -> None:
    ran: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        ran.append(ctx.job.id)
        await anyio.lowlevel.checkpoint()

    async with database(any_url) as db:
        priorities = ["low", "normal", "urgent", "high"] * 5
        await db.jobs.enqueue_many(
            jobs.Job(f"j{i:02}", priority=p) for i, p in enumerate(priorities)
        )
        processor = await run_all(db, handler, max_concurrent=1)
        rank = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
        expected = sorted(
            (f"j{i:02}" for i in range(20)), key=lambda j: (rank[priorities[int(j[1:])]], j)
        )
        assert ran == expected
        assert await db.jobs.depth() == jobs.QueueDepth(completed=20)
        stats = processor.statistics()
        assert (stats.claimed, stats.completed, stats.running) == (20, 20, 0)
        rec = await db.jobs.get("j00")
        assert rec.attempts == 1
        assert rec.cluster == "default"
        assert rec.started_at is not None
        assert rec.finished_at is not None
        assert rec.lease_owner is None


async def test_routing_records_its_reason(any_url: str) -> None:
    clusters = [
        corral.Cluster("cluster-a", 4, region="us-west-2", cost=1.0, labels={"gpu"}),
        corral.Cluster("cluster-b", 8, region="us-east-1", cost=0.6),
        corral.Cluster("cluster-c", 8, cost=0.3),
    ]
    async with database(any_url) as db:
        await db.jobs.enqueue_many(
            [
                jobs.Job("pinned", affinity="cluster-a"),
                jobs.Job("local", region="us-east-1"),
                jobs.Job("cheap"),
                jobs.Job("gpu", requires={"gpu"}),
                jobs.Job("elsewhere", affinity="cluster-z"),
                jobs.Job("nowhere", requires={"tpu"}),
            ]
        )
        ran: list[str] = []
        four = anyio.Event()

        async def handler(ctx: jobs.JobContext) -> None:
            assert ctx.cluster.name == (await db.jobs.get(ctx.job.id)).cluster
            ran.append(ctx.job.id)
            if len(ran) == 4:
                four.set()

        # "elsewhere" is pinned to a cluster this processor lacks: left for another.
        # "nowhere" needs a label no cluster has: it waits, and keeps run() busy.
        async with anyio.create_task_group() as tg:
            processor = jobs.Processor(db, handler, clusters=clusters, config=config())
            tg.start_soon(processor.run)
            with anyio.fail_after(30):
                await four.wait()
            await db.flush()
            tg.cancel_scope.cancel()
        assert sorted(ran) == ["cheap", "gpu", "local", "pinned"]
        got = {r.id: r for r in await db.jobs.list()}
        assert got["pinned"].cluster == "cluster-a"
        assert got["pinned"].route_reason == "affinity: pinned to cluster-a"
        assert got["local"].cluster == "cluster-b"
        assert "locality: data in us-east-1" in (got["local"].route_reason or "")
        assert got["cheap"].cluster == "cluster-c"
        assert "cost 0.3, cheapest of 3" in (got["cheap"].route_reason or "")
        assert got["gpu"].cluster == "cluster-a"
        assert got["gpu"].route_reason == "scheduler: the only cluster with gpu and a free slot"
        assert got["elsewhere"].state is jobs.State.READY
        assert got["nowhere"].state is jobs.State.READY
        assert await db.jobs.by_cluster("cluster-z") == jobs.QueueDepth(ready=1)
        assert await db.jobs.by_cluster("cluster-a") == jobs.QueueDepth(completed=2)


async def test_limits_are_never_exceeded_and_are_reached(any_url: str) -> None:
    clusters = [corral.Cluster("small", 2), corral.Cluster("big", 3)]
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()

    def enter(key: str) -> None:
        running[key] += 1
        peak[key] = max(peak[key], running[key])

    async def handler(ctx: jobs.JobContext) -> None:
        keys = ["all", f"cluster:{ctx.cluster.name}", f"customer:{ctx.job.customer}"]
        for key in keys:
            enter(key)
        try:
            for _ in range(5):
                await anyio.sleep(0.001)
        finally:
            for key in keys:
                running[key] -= 1

    async with database(any_url) as db:
        customers = ["acme", "globex", "initech"]
        await db.jobs.enqueue_many(jobs.Job(f"j{i}", customer=customers[i % 3]) for i in range(90))
        await run_all(db, handler, clusters=clusters, max_concurrent=4, per_customer=2)
        assert await db.jobs.depth() == jobs.QueueDepth(completed=90)
    assert peak["all"] == 4
    assert peak["cluster:small"] <= 2
    assert peak["cluster:big"] <= 3
    assert max(peak[f"customer:{c}"] for c in customers) == 2
    assert all(peak[f"customer:{c}"] <= 2 for c in customers)

    # Cluster capacities bind when the global limit is wider.
    running.clear()
    peak.clear()
    async with database(any_url) as db:
        await db.jobs.enqueue_many(jobs.Job(f"k{i}") for i in range(60))
        await run_all(db, handler, clusters=clusters, max_concurrent=50)
    assert peak["cluster:small"] == 2
    assert peak["cluster:big"] == 3
    assert peak["all"] == 5


def claim_request(
    limit: int,
    max_concurrent: int,
    clusters: list[corral.Cluster],
    local_free: dict[str, int],
) -> _claims.ClaimRequest:
    return _claims.ClaimRequest(
        owner="test",
        limit=limit,
        max_concurrent=max_concurrent,
        per_customer=None,
        capacity={c.name: c.capacity for c in clusters},
        local_free=local_free,
        lease_seconds=30,
        route=_routing.Router(clusters),
    )


async def claim_while_another_claims(
    url: str,
    queued: list[jobs.Job],
    holding: _claims.ClaimRequest,
    waiting: _claims.ClaimRequest,
) -> tuple[int, int]:
    """Claim with ``holding`` and keep its transaction open until a claim with
    ``waiting``, in another connection, waits for the claim lock; then commit. Returns
    how many jobs each claimed."""
    held, release = anyio.Event(), anyio.Event()
    claimed: list[int] = []

    async def first(conn: Any) -> None:
        taken, _, _ = await conn.jobs.claim(holding)
        claimed.append(len(taken))
        held.set()
        await release.wait()  # the claim lock is held until this batch commits

    async def second(conn: Any) -> None:
        taken, _, _ = await conn.jobs.claim(waiting)
        claimed.append(len(taken))

    async def backend_pid(conn: Any) -> Any:
        return await conn.fetchval("SELECT pg_backend_pid()")

    async with database(url) as a, database(url) as b, database(url) as watcher:
        await a.jobs.enqueue_many(queued)
        await b.jobs.depth()
        pid = await b._run(backend_pid)

        async def waits_for_the_lock(conn: Any) -> Any:
            return await conn.fetchval(
                "SELECT wait_event = 'advisory' FROM pg_stat_activity WHERE pid = ?", pid
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(a._run, first)
            await held.wait()
            tg.start_soon(b._run, second)
            with anyio.fail_after(20):
                while not await watcher._run(waits_for_the_lock):
                    pass
            release.set()
        depth = await a.jobs.depth()
    assert depth.in_progress == sum(claimed)
    return claimed[0], claimed[1]


async def test_a_claim_that_waited_for_the_lock_counts_the_claim_before_it(
    postgres_url: str,
) -> None:
    # The claim lock and the count of jobs in progress are one round trip: the count
    # must still see what the claim that held the lock committed (a snapshot taken
    # before the lock was granted would not, and the limit would be exceeded).
    clusters = [corral.Cluster("default", 100)]
    request = claim_request(3, 4, clusters, {"default": 100})
    queued = [jobs.Job(f"j{i}") for i in range(10)]
    assert await claim_while_another_claims(postgres_url, queued, request, request) == (3, 1)


async def test_jobs_another_claim_locked_and_left_are_claimed_by_the_next(
    postgres_url: str,
) -> None:
    # The first claim reads (and locks) all three jobs, pinned to x, but has one slot
    # on x; the second, waiting for the lock, read none of them (they were locked),
    # and must find the two left once the first has committed.
    x, y = corral.Cluster("x", 10), corral.Cluster("y", 10)
    queued = [jobs.Job(f"j{i}", affinity="x") for i in range(3)]
    holding = claim_request(10, 100, [x, y], {"x": 1, "y": 10})
    waiting = claim_request(5, 100, [x], {"x": 5})
    assert await claim_while_another_claims(postgres_url, queued, holding, waiting) == (1, 2)


async def test_transient_failures_retry_with_backoff_then_complete(any_url: str) -> None:
    recorder = Recorder()

    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.attempt < 3:
            async with ctx.step("fetch"):
                raise jobs.TransientError(f"flaky {ctx.attempt}")

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a", max_retries=5))
        processor = await run_all(
            db, handler, recorder=recorder, retry=jobs.RetryPolicy(base=0.05, cap=1, jitter=0)
        )
        rec = await db.jobs.get("a")
        assert rec.state is jobs.State.COMPLETED
        assert rec.attempts == 3
        assert rec.last_error == jobs.LastError(
            jobs.ErrorCategory.TRANSIENT, "fetch", "TransientError: flaky 2", 2
        )
        assert recorder.kinds("a") == ["retrying", "retrying", "completed"]
        assert processor.statistics().retried == 2


async def test_backoff_is_recorded_as_run_at(any_url: str) -> None:
    async def handler(ctx: jobs.JobContext) -> None:
        raise TimeoutError("slow upstream")

    retried = anyio.Event()

    class Watch(Recorder):
        async def notify(self, event: jobs.JobEvent) -> None:
            if event.kind is jobs.EventKind.RETRYING:
                retried.set()

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a", max_retries=1))
        processor = jobs.Processor(
            db,
            handler,
            config=config(retry=jobs.RetryPolicy(base=3600, jitter=0)),
            notifier=Watch(),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            with anyio.fail_after(30):
                await retried.wait()
            tg.cancel_scope.cancel()
        rec = await db.jobs.get("a")
        wait = (rec.run_at - rec.updated_at).total_seconds()
        assert 3599 <= wait <= 3601
        assert rec.last_error is not None
        assert rec.last_error.category is jobs.ErrorCategory.TRANSIENT
        assert await db.jobs.depth() == jobs.QueueDepth(retrying=1)


@pytest.mark.parametrize(
    ("error", "category"),
    [
        (jobs.DataError("bad row 7"), "DATA"),
        (jobs.ConfigurationError("no bucket"), "CONFIGURATION"),
        (jobs.PermanentError("gone"), "PERMANENT"),
    ],
)
async def test_non_retryable_errors_fail_at_once(
    any_url: str, error: Exception, category: str
) -> None:
    recorder = Recorder()

    async def handler(ctx: jobs.JobContext) -> None:
        async with ctx.step("parse"):
            raise error

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a", max_retries=5))
        await run_all(db, handler, recorder=recorder)
        rec = await db.jobs.get("a")
        assert rec.state is jobs.State.FAILED
        assert rec.attempts == 1
        assert rec.last_error is not None
        assert rec.last_error.category == category
        assert rec.last_error.step == "parse"
        assert rec.last_error.message == f"{type(error).__name__}: {error}"
        assert recorder.kinds("a") == ["failed"]
        # A failed job can be requeued; it runs again, attempts reset.
        await db.jobs.requeue("a")
        assert (await db.jobs.get("a")).attempts == 0


async def test_exhausted_retries_go_to_the_dead_letter_queue(any_url: str) -> None:
    recorder = Recorder()
    fixed = False

    async def handler(ctx: jobs.JobContext) -> None:
        if not fixed and ctx.job.id == "doomed":
            raise ConnectionError("upstream down")

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("doomed", max_retries=2), jobs.Job("fine")])
        await run_all(db, handler, recorder=recorder)
        dead = await db.jobs.dead()
        assert [r.id for r in dead] == ["doomed"]
        assert dead[0].attempts == 3
        assert dead[0].last_error is not None
        assert dead[0].last_error.attempt == 3
        assert recorder.kinds("doomed") == ["retrying", "retrying", "dead"]
        assert await db.jobs.depth() == jobs.QueueDepth(dead=1, completed=1)
        fixed = True
        rec = await db.jobs.requeue("doomed")
        assert (rec.state, rec.attempts) == (jobs.State.READY, 0)
        await run_all(db, handler)
        rec = await db.jobs.get("doomed")
        assert (rec.state, rec.attempts) == (jobs.State.COMPLETED, 1)


async def test_a_classify_function_decides(any_url: str) -> None:
    def classify(exc: BaseException) -> str:
        return "DATA" if isinstance(exc, KeyError) else jobs.classify(exc).value

    async def handler(ctx: jobs.JobContext) -> None:
        raise KeyError("missing column")

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a"))
        processor = jobs.Processor(db, handler, config=config(), classify=classify)
        await processor.run(until_idle=True)
        rec = await db.jobs.get("a")
        assert rec.state is jobs.State.FAILED
        assert rec.last_error is not None
        assert rec.last_error.category is jobs.ErrorCategory.DATA


async def test_validation_fails_a_job_before_its_handler(any_url: str) -> None:
    ran: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        ran.append(ctx.job.id)

    async def validate(job: jobs.Job) -> None:
        await anyio.lowlevel.checkpoint()
        if job.payload.get("bucket") is None:
            raise jobs.ConfigurationError("no bucket configured")
        if job.payload["bucket"] == "":
            raise ValueError("empty bucket name")

    async with database(any_url) as db:
        await db.jobs.enqueue_many(
            [
                jobs.Job("ok", {"bucket": "b"}),
                jobs.Job("config", {}),
                jobs.Job("data", {"bucket": ""}, max_retries=9),
            ]
        )
        processor = jobs.Processor(db, handler, config=config(), validate=validate)
        await processor.run(until_idle=True)
        assert ran == ["ok"]
        bad = {r.id: r for r in await db.jobs.list("failed")}
        assert set(bad) == {"config", "data"}
        for job_id, category in (("config", "CONFIGURATION"), ("data", "DATA")):
            error = bad[job_id].last_error
            assert error is not None
            assert (error.category, error.step, bad[job_id].attempts) == (category, "validate", 1)


async def test_a_job_resumes_at_the_step_that_failed(any_url: str) -> None:
    calls: Counter[str] = Counter()

    async def handler(ctx: jobs.JobContext) -> None:
        for name in ("one", "two", "three", "four"):
            async with ctx.step(name) as step:
                await anyio.lowlevel.checkpoint()
                calls[name] += 1
                if name == "three" and ctx.attempt == 1:
                    raise jobs.TransientError("step three broke")
            assert step.done == (ctx.attempt > 1 and name in ("one", "two"))

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("steps"))
        await run_all(db, handler)
        rec = await db.jobs.get("steps")
        assert rec.state is jobs.State.COMPLETED
        assert rec.attempts == 2
        assert rec.steps_done == ("one", "two", "three", "four")
        assert rec.last_error is not None
        assert rec.last_error.step == "three"
        assert calls == {"one": 1, "two": 1, "three": 2, "four": 1}


async def test_progress_counts_are_exact(any_url: str) -> None:
    async def handler(ctx: jobs.JobContext) -> None:
        def count() -> None:
            for _ in range(1000):
                ctx.progress.increment()

        threads = [threading.Thread(target=count) for _ in range(4)]
        for thread in threads:
            thread.start()
        async with ctx.step("half"):
            ctx.progress.increment(500)
        for thread in threads:
            await anyio.to_thread.run_sync(thread.join)
        with pytest.raises(TypeError, match="int >= 0"):
            ctx.progress.increment(-1)

    async with database(any_url) as db:
        await db.jobs.enqueue_many(jobs.Job(f"p{i}") for i in range(5))
        await run_all(db, handler)
        assert {r.progress for r in await db.jobs.list()} == {4500}


async def test_notifier_errors_are_logged_not_raised(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        async def notify(self, event: jobs.JobEvent) -> None:
            raise RuntimeError("mail server down")

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a"))
        processor = jobs.Processor(db, noop, config=config(), notifier=Broken())
        with caplog.at_level(logging.ERROR, "corral.jobs"):
            await processor.run(until_idle=True)
        assert (await db.jobs.get("a")).state is jobs.State.COMPLETED
        assert "the notifier raised" in caplog.text
        assert processor.statistics().notifications_failed == 1


async def test_a_notifier_that_blocks_holds_back_no_job(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its notify() never returns: the jobs complete all the same, run() returns once
    notify_timeout has passed after the end, and what was not delivered is counted."""
    release = anyio.Event()

    class Stuck:
        def __init__(self) -> None:
            self.calls = 0

        async def notify(self, event: jobs.JobEvent) -> None:
            self.calls += 1
            await release.wait()

    stuck = Stuck()
    try:
        async with database(any_url) as db:
            await db.jobs.enqueue_many(jobs.Job(f"j{i}") for i in range(5))
            processor = jobs.Processor(
                db, noop, config=config(notify_buffer=2, notify_timeout=0.05), notifier=stuck
            )
            with caplog.at_level(logging.WARNING, "corral.jobs"), anyio.fail_after(20):
                await processor.run(until_idle=True)
            assert (await db.jobs.depth()).completed == 5
            stats = processor.statistics()
            assert (stats.completed, stats.notifications_dropped) == (5, 5)
            assert stuck.calls == 1
            assert "dropping the oldest" in caplog.text
            assert "not delivered within notify_timeout" in caplog.text
    finally:
        release.set()


async def test_a_full_notification_buffer_drops_the_oldest(any_url: str) -> None:
    """The notifier is stuck on the first event until the last job runs: of the events
    in between, the newest notify_buffer are delivered, the older ones dropped."""
    release = anyio.Event()

    class Held(Recorder):
        async def notify(self, event: jobs.JobEvent) -> None:
            if not self.events:
                await release.wait()
            await super().notify(event)

    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "j9":
            release.set()

    held = Held()
    async with database(any_url) as db:
        await db.jobs.enqueue_many(jobs.Job(f"j{i}") for i in range(10))
        processor = await run_all(
            db, handler, recorder=held, batch_size=1, max_concurrent=1, notify_buffer=3
        )
    assert [e.job_id for e in held.events] == ["j0", "j6", "j7", "j8", "j9"]
    assert processor.statistics().notifications_dropped == 5


async def test_the_logging_notifier(any_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "bad":
            async with ctx.step("load"):
                raise jobs.DataError("row 3 has no date")

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("good"), jobs.Job("bad")])
        processor = jobs.Processor(db, handler, config=config())
        with caplog.at_level(logging.INFO, "corral.jobs"):
            await processor.run(until_idle=True)
    assert "job good completed (attempt 1 on default)" in caplog.text
    assert (
        "job bad failed (attempt 1 on default): DATA in step 'load': "
        "DataError: row 3 has no date" in caplog.text
    )


async def test_cancelling_run_gives_running_jobs_back(any_url: str) -> None:
    started = anyio.Event()
    seen: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            seen.append("cancelled")

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("long"))
        processor = jobs.Processor(db, handler, config=config())
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            await started.wait()
            assert (await db.jobs.get("long")).state is jobs.State.IN_PROGRESS
            tg.cancel_scope.cancel()
        assert seen == ["cancelled"]
        rec = await db.jobs.get("long")
        assert (rec.state, rec.attempts, rec.lease_owner) == (jobs.State.READY, 0, None)
        assert processor.statistics().running == 0
        # It runs again, as a first attempt.
        await run_all(db, noop)
        rec = await db.jobs.get("long")
        assert (rec.state, rec.attempts) == (jobs.State.COMPLETED, 1)


async def test_cancelling_run_at_random_points_strands_no_job_and_reports_each_once(
    any_url: str,
) -> None:
    """Hundreds of cancellations of run(), each after a random number of checkpoints.

    After each: no job is left in progress, no attempt is counted for a job whose
    handler did not return, and nothing is reported twice (a second write of an outcome
    is refused, as a lost lease). At the end every job completes once, with one
    COMPLETED event, and the progress stored is exactly what the handlers counted.
    """
    rng = random.Random(2)
    returned: Counter[str] = Counter()
    counted = 0

    async def handler(ctx: jobs.JobContext) -> None:
        nonlocal counted
        ctx.progress.increment()
        counted += 1
        async with ctx.step("one"):
            await anyio.lowlevel.checkpoint()
        ctx.progress.increment(2)
        counted += 2
        returned[ctx.job.id] += 1

    recorder = Recorder()
    total = 0
    # moto answers in milliseconds, not microseconds: fewer rounds on DynamoDB
    rounds = 40 if any_url.startswith("dynamodb") else 150
    async with database(any_url) as db:
        for i in range(rounds):
            n = rng.randint(1, 4)
            await db.jobs.enqueue_many(jobs.Job(f"j{i}-{k}", max_retries=0) for k in range(n))
            total += n
            batch = rng.choice([1, 2, 4])
            processor = jobs.Processor(
                db,
                handler,
                config=config(batch_size=batch, max_concurrent=4),
                notifier=recorder,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(processor.run, until_idle=True))
                for _ in range(rng.randrange(3000)):
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()
            depth = await db.jobs.depth()
            assert depth.in_progress == 0, f"iteration {i}: {depth}"
            assert depth.dead == depth.failed == depth.retrying == 0, f"iteration {i}: {depth}"
            assert processor.statistics().lease_lost == 0, f"iteration {i}"
        await run_all(db, handler, recorder=recorder)
        records = await db.jobs.list(limit=10_000)
    assert len(records) == total
    assert {(r.state, r.attempts) for r in records} == {(jobs.State.COMPLETED, 1)}
    assert set(returned.values()) == {1}
    kinds = Counter(e.kind for e in recorder.events)
    assert kinds == {jobs.EventKind.COMPLETED: total}
    assert Counter(e.job_id for e in recorder.events) == Counter(r.id for r in records)
    assert sum(r.progress for r in records) == counted


async def test_a_renewal_committed_as_run_is_cancelled_counts_its_progress_once(
    any_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run() is cancelled once a renewal has run, before its commit: the progress it
    wrote is not written again when the job is given back."""

    async def handler(ctx: jobs.JobContext) -> None:
        ctx.progress.increment(5)
        await anyio.sleep_forever()

    scope = anyio.CancelScope()
    store: Any = DynamoJobStore if any_url.startswith("dynamodb") else SqlJobStore
    real = store.renew

    async def renew_then_cancel(self: Any, leases: Any, lease_seconds: float) -> Any:
        held = await real(self, leases, lease_seconds)
        scope.cancel()
        return held

    monkeypatch.setattr(store, "renew", renew_then_cancel)
    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a"))
        processor = jobs.Processor(db, handler, config=config(lease_seconds=0.3))
        with scope:
            await processor.run()
        rec = await db.jobs.get("a")
        assert (rec.state, rec.attempts, rec.progress) == (jobs.State.READY, 0, 5)


async def test_a_processor_may_be_made_outside_the_event_loop(any_url: str) -> None:
    async with database(any_url) as db:
        processor = await anyio.to_thread.run_sync(jobs.Processor, db, noop)
        await db.jobs.enqueue(jobs.Job("a"))
        await processor.run(until_idle=True)
        assert processor.statistics().completed == 1


async def test_one_run_at_a_time(any_url: str) -> None:
    async with database(any_url) as db:
        processor = jobs.Processor(db, noop, config=config())
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError, match="already running"):
                await processor.run()
            tg.cancel_scope.cancel()


async def test_an_idle_worker_wakes_when_a_job_arrives(any_url: str) -> None:
    """With a 60 s poll interval, only a wake-up (local, or NOTIFY) can start the job."""
    done = anyio.Event()

    async def handler(ctx: jobs.JobContext) -> None:
        done.set()

    async with database(any_url) as db:
        processor = jobs.Processor(db, handler, config=config(poll_interval=60))
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            await db.jobs.depth()  # the table exists
            await anyio.wait_all_tasks_blocked()
            await db.jobs.enqueue(jobs.Job("wake"))
            with anyio.fail_after(20):
                await done.wait()
            tg.cancel_scope.cancel()


async def test_notify_from_another_connection_wakes_a_postgres_worker(postgres_url: str) -> None:
    done = anyio.Event()

    async def handler(ctx: jobs.JobContext) -> None:
        done.set()

    async with database(postgres_url) as db, database(postgres_url) as other:
        processor = jobs.Processor(db, handler, config=config(poll_interval=60))
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            await db.jobs.depth()
            await other.jobs.depth()
            await anyio.wait_all_tasks_blocked()
            await other.jobs.enqueue(jobs.Job("remote"))
            with anyio.fail_after(20):
                await done.wait()
            tg.cancel_scope.cancel()


async def test_a_renewed_lease_is_not_reclaimed(any_url: str) -> None:
    """A job running longer than its lease keeps it: a second worker does not take it."""
    release = anyio.Event()
    started = anyio.Event()
    completed = anyio.Event()
    runs: list[str] = []

    class Watch(Recorder):
        async def notify(self, event: jobs.JobEvent) -> None:
            if event.kind is jobs.EventKind.COMPLETED:
                completed.set()

    async def slow(ctx: jobs.JobContext) -> None:
        runs.append(ctx.worker)
        started.set()
        await release.wait()

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("long"))
        lease = config(lease_seconds=0.3)
        first = jobs.Processor(db, slow, config=lease, name="first", notifier=Watch())
        second = jobs.Processor(db, slow, config=lease, name="second")
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            with anyio.fail_after(20):
                await started.wait()
            first_expiry = (await db.jobs.get("long")).lease_expires_at
            assert first_expiry is not None
            tg.start_soon(second.run)
            # Watch the lease until it has been renewed past twice its length: the first
            # lease has expired by then, and "second" has polled every 50 ms meanwhile.
            with anyio.fail_after(20):
                while True:
                    expiry = (await db.jobs.get("long")).lease_expires_at
                    assert expiry is not None
                    if (expiry - first_expiry).total_seconds() > 0.6:
                        break
                    await anyio.sleep(0.05)  # watching the database clock
            release.set()
            with anyio.fail_after(20):
                await completed.wait()
            tg.cancel_scope.cancel()
        assert runs == ["first"]
        assert second.statistics().reclaimed == 0
        rec = await db.jobs.get("long")
        assert (rec.state, rec.attempts) == (jobs.State.COMPLETED, 1)


async def test_an_expired_lease_is_reclaimed_and_the_old_worker_is_fenced(any_url: str) -> None:
    """Worker "stale" stops renewing (its lease is expired by hand); "fresh" reclaims
    the job and completes it; the stale worker's late completion is then refused."""
    release = anyio.Event()
    stale_started = anyio.Event()
    fresh_done = anyio.Event()
    runs: list[tuple[str, int]] = []

    stale_events = LostWatch()

    class Fresh(Recorder):
        async def notify(self, event: jobs.JobEvent) -> None:
            await super().notify(event)
            if event.kind is jobs.EventKind.COMPLETED:
                fresh_done.set()

    async def handler(ctx: jobs.JobContext) -> None:
        runs.append((ctx.worker, ctx.attempt))
        if ctx.worker == "stale":
            stale_started.set()
            await release.wait()

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("job", max_retries=3))
        # "stale" polls rarely, so that "fresh" is the one that reclaims.
        stale = jobs.Processor(
            db, handler, config=config(poll_interval=60), name="stale", notifier=stale_events
        )
        fresh_events = Fresh()
        fresh = jobs.Processor(db, handler, config=config(), name="fresh", notifier=fresh_events)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stale.run)
            with anyio.fail_after(20):
                await stale_started.wait()
            await set_columns(db, "job", lease_expires=0)
            tg.start_soon(fresh.run)
            with anyio.fail_after(20):
                await fresh_done.wait()
            release.set()  # the stale worker's handler returns: its outcome is refused
            with anyio.fail_after(20):
                await stale_events.lost.wait()
            tg.cancel_scope.cancel()
        assert runs == [("stale", 1), ("fresh", 2)]
        rec = await db.jobs.get("job")
        assert (rec.state, rec.attempts) == (jobs.State.COMPLETED, 2)
        assert rec.last_error is not None
        assert "lease expired: worker stale" in rec.last_error.message
        assert fresh_events.kinds("job") == ["reclaimed", "completed"]
        assert stale_events.kinds("job") == ["lease_lost"]
        assert stale.statistics().completed == 0


async def test_a_worker_that_reclaims_its_own_expired_job_runs_it_once_more(
    any_url: str,
) -> None:
    """The lease of a job still running here expires (a stalled event loop, say): the
    next claim here reclaims it; the old attempt's outcome is refused, the new one wins."""
    release = anyio.Event()
    first_started = anyio.Event()
    third_started = anyio.Event()
    attempts: list[int] = []

    async def handler(ctx: jobs.JobContext) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) == 3:
            third_started.set()
        if ctx.job.id == "job" and ctx.attempt == 1:
            first_started.set()
            await release.wait()

    recorder = LostWatch()
    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("job"))
        processor = jobs.Processor(
            db, handler, config=config(poll_interval=60), notifier=recorder, name="me"
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            with anyio.fail_after(20):
                await first_started.wait()
            await set_columns(db, "job", lease_expires=0)
            await db.jobs.enqueue(jobs.Job("wake-up"))  # wakes the claimer at once
            with anyio.fail_after(20):
                await third_started.wait()
            release.set()
            with anyio.fail_after(20):
                await recorder.lost.wait()
            tg.cancel_scope.cancel()
        assert sorted(attempts) == [1, 1, 2]
        rec = await db.jobs.get("job")
        assert (rec.state, rec.attempts) == (jobs.State.COMPLETED, 2)
        assert recorder.kinds("job") == ["reclaimed", "completed", "lease_lost"]


async def test_step_names_are_unique_within_an_attempt(any_url: str) -> None:
    async def handler(ctx: jobs.JobContext) -> None:
        for _ in range(2):
            async with ctx.step("same"):
                await anyio.lowlevel.checkpoint()

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a"))
        await run_all(db, handler, classify=every_other_error_transient)
        rec = await db.jobs.get("a")
        assert rec.state is jobs.State.DEAD  # a ValueError: retried, then kept
        assert rec.last_error is not None
        assert "step 'same' was already used" in rec.last_error.message


async def test_an_error_group_is_classified_by_its_final_error(any_url: str) -> None:
    async def handler(ctx: jobs.JobContext) -> None:
        async def bad() -> None:
            raise jobs.DataError("row 3")

        async def flaky() -> None:
            raise TimeoutError("slow")

        async with anyio.create_task_group() as tg:
            tg.start_soon(flaky)
            tg.start_soon(bad)

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a", max_retries=5))
        await run_all(db, handler)
        rec = await db.jobs.get("a")
        assert (rec.state, rec.attempts) == (jobs.State.FAILED, 1)
        assert rec.last_error is not None
        assert rec.last_error.category is jobs.ErrorCategory.DATA


async def test_until_idle_ignores_jobs_no_cluster_here_can_run(any_url: str) -> None:
    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("ok"), jobs.Job("tpu", requires={"tpu"})])
        await run_all(db, noop, clusters=[corral.Cluster("cpu", 2, labels={"avx"})])
        assert await db.jobs.depth() == jobs.QueueDepth(ready=1, completed=1)


async def test_jobs_held_back_at_the_head_do_not_hide_the_runnable_ones(any_url: str) -> None:
    """A claim looks past jobs it cannot take (a customer at its limit, labels no
    cluster here has), however many wait ahead of the ones it can."""
    starts: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        starts.append(ctx.job.id)
        await anyio.lowlevel.checkpoint()

    # On DynamoDB fewer (moto reads an index page in milliseconds): still more held
    # back at the head (60) than a claim reads in its first page (25).
    held, a = (60, 30) if any_url.startswith("dynamodb") else (150, 100)
    async with database(any_url) as db:
        await db.jobs.enqueue_many(jobs.Job(f"gpu{i}", requires={"gpu"}) for i in range(held))
        await db.jobs.enqueue_many(jobs.Job(f"a{i:03}", customer="a") for i in range(a))
        await db.jobs.enqueue_many(jobs.Job(f"b{i}", customer="b") for i in range(10))
        await run_all(db, handler, max_concurrent=8, per_customer=2)
        # One claim took these four (trio starts its tasks in any order).
        assert sorted(starts[:4]) == ["a000", "a001", "b0", "b1"]
        assert await db.jobs.depth() == jobs.QueueDepth(ready=held, completed=a + 10)


async def test_a_refused_heartbeat_cancels_the_attempt(any_url: str) -> None:
    """Another worker took the lease over (its token replaced ours): our next renewal is
    refused, and our handler is cancelled without recording anything."""
    started = anyio.Event()
    stopped = anyio.Event()

    async def handler(ctx: jobs.JobContext) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    recorder = LostWatch()
    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("job"))
        processor = jobs.Processor(
            db, handler, config=config(lease_seconds=0.3, poll_interval=60), notifier=recorder
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            with anyio.fail_after(20):
                await started.wait()
            await take_over(db, "job")
            with anyio.fail_after(20):
                await stopped.wait()
                await recorder.lost.wait()
            tg.cancel_scope.cancel()
        assert recorder.kinds("job") == ["lease_lost"]
        assert processor.statistics().lease_lost == 1
        rec = await db.jobs.get("job")
        assert (rec.state, rec.lease_owner, rec.attempts) == (jobs.State.IN_PROGRESS, "thief", 1)


async def test_purge_deletes_old_finished_jobs_only(any_url: str) -> None:
    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "bad":
            raise jobs.DataError("no")

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("done"), jobs.Job("bad")])
        await run_all(db, handler)
        await db.jobs.enqueue(jobs.Job("waiting"))
        assert await db.jobs.purge(older_than=3600) == 0  # finished just now
        assert await db.jobs.purge(older_than=0) == 1
        assert [r.id for r in await db.jobs.list()] == ["bad", "waiting"]
        assert await db.jobs.purge(older_than=0, states=["failed", "dead"]) == 1
        assert [r.id for r in await db.jobs.list()] == ["waiting"]
        with pytest.raises(ValueError, match="not ready"):
            await db.jobs.purge(older_than=0, states="ready")
        with pytest.raises(ValueError, match=">= 0"):
            await db.jobs.purge(older_than=-1)
        with pytest.raises(TypeError, match="seconds"):
            await db.jobs.purge(older_than="1d")  # type: ignore[arg-type]


# -- runners: the tasks that run the claimed jobs -------------------------------------------------

_seen: contextvars.ContextVar[str | None] = contextvars.ContextVar("_seen", default=None)


async def test_jobs_waiting_in_their_handlers_each_get_a_runner(any_url: str) -> None:
    """A batch of jobs that all wait for one another: each must be running at once."""
    n = 20
    arrived = 0
    everyone = anyio.Event()

    async def handler(ctx: jobs.JobContext) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            everyone.set()
        await everyone.wait()

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job(f"j{i}") for i in range(n)])
        processor = await run_all(db, handler, batch_size=n, max_concurrent=n)
        assert processor.statistics().completed == n
        assert (await db.jobs.depth()).completed == n


async def test_each_job_runs_in_a_context_of_its_own(any_url: str) -> None:
    """Jobs that never wait run one after another on one runner, yet a context variable
    set by one of them is not seen by the next, as if each had a task of its own."""
    seen: list[str | None] = []

    async def handler(ctx: jobs.JobContext) -> None:
        seen.append(_seen.get())
        _seen.set(ctx.job.id)

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job(f"j{i}") for i in range(200)])
        await run_all(db, handler, batch_size=200, max_concurrent=200)
    assert seen == [None] * 200
    assert _seen.get() is None


async def test_runners_go_on_after_a_job_whose_lease_was_lost(any_url: str) -> None:
    """The runner of a job whose lease is taken over drops it, and runs later jobs."""
    started = anyio.Event()
    done: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "stuck":
            started.set()
            await anyio.sleep_forever()
        done.append(ctx.job.id)

    class Watch(LostWatch):
        def __init__(self) -> None:
            super().__init__()
            self.all_done = anyio.Event()

        async def notify(self, event: jobs.JobEvent) -> None:
            await super().notify(event)
            if sum(e.kind is jobs.EventKind.COMPLETED for e in self.events) == 5:
                self.all_done.set()

    recorder = Watch()
    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("stuck"))
        processor = jobs.Processor(
            db, handler, config=config(lease_seconds=0.3, poll_interval=0.05), notifier=recorder
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            with anyio.fail_after(20):
                await started.wait()
            await take_over(db, "stuck")
            with anyio.fail_after(20):
                await recorder.lost.wait()
            await db.jobs.enqueue_many([jobs.Job(f"after{i}") for i in range(5)])
            with anyio.fail_after(20):
                await recorder.all_done.wait()
            tg.cancel_scope.cancel()
        assert sorted(done) == [f"after{i}" for i in range(5)]
        assert processor.statistics().lease_lost == 1
        assert processor.statistics().completed == 5


# -- enqueue races, values no database stores (issue 11, items 6 and 18) ---------------------


async def test_two_databases_enqueueing_the_same_ids_at_once(any_url: str) -> None:
    """Of two connections enqueueing the same ids at once, one wins; the other is refused.

    Two writers' enqueues of the same ids race: each checks the ids are new, then
    inserts. The loser must get DuplicateJobError naming an id (not the driver's unique
    violation), every id must be stored once, and nothing of the loser's call stored.
    """
    # moto copies a table for each transaction: fewer rounds on DynamoDB
    rounds = 5 if any_url.startswith("dynamodb") else 20
    async with corral.connect(any_url) as one, corral.connect(any_url) as two:
        await one.jobs.depth()  # both writers have made (or seen) the table
        await two.jobs.depth()
        for round_ in range(rounds):
            ids = [f"r{round_}-{i}" for i in range(40)]
            outcomes: list[BaseException | None] = []

            async def enqueue(
                db: corral.Database,
                ids: list[str] = ids,
                outcomes: list[BaseException | None] = outcomes,
            ) -> None:
                try:
                    await db.jobs.enqueue_many([jobs.Job(i) for i in ids])
                except Exception as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(None)

            async with anyio.create_task_group() as tg:
                tg.start_soon(enqueue, one)
                tg.start_soon(enqueue, two)
            errors = [e for e in outcomes if e is not None]
            assert len(errors) == 1, outcomes
            assert isinstance(errors[0], jobs.DuplicateJobError), repr(errors[0])
            assert f"job id 'r{round_}-" in str(errors[0])
        assert (await one.jobs.depth()).ready == rounds * 40
        assert len({r.id for r in await two.jobs.list(limit=1000)}) == rounds * 40


def nested(depth: int) -> object:
    """Return a list nested ``depth`` levels deep."""
    value: object = None
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("field", ["id", "customer", "affinity", "region", "requires"])
@pytest.mark.parametrize(("text", "problem"), [("a\x00b", "NUL"), ("a\ud800b", "surrogate")])
def test_job_names_refuse_what_a_database_cannot_store(field: str, text: str, problem: str) -> None:
    """NUL (SQLite stores it, PostgreSQL refuses it) and lone surrogates (neither can
    encode them) are refused when the job is made, naming the field and the fix."""
    kwargs: dict[str, Any] = {"id": "ok", field: {text} if field == "requires" else text}
    with pytest.raises(corral.UnstorableTextError, match=rf"Job {field}.*{problem}") as info:
        jobs.Job(**kwargs)
    assert isinstance(info.value, ValueError)


def test_a_payload_nested_too_deep_is_a_payload_error() -> None:
    """json.dumps raised RecursionError; the limit is now one, stated, depth."""
    jobs.Job("deep-enough", nested(jobs.Job.MAX_PAYLOAD_DEPTH))
    for depth in (jobs.Job.MAX_PAYLOAD_DEPTH + 1, 100_000):
        with pytest.raises(jobs.PayloadError, match="nests deeper than") as info:
            jobs.Job("deep", nested(depth))
        assert isinstance(info.value, TypeError | ValueError)
    with pytest.raises(jobs.PayloadError, match="JSON-serializable"):
        jobs.Job("a", payload={1, 2})


async def test_text_the_databases_store_alike_and_what_they_refuse(any_url: str) -> None:
    """Both databases store payload strings with NUL and lone surrogates as given (as
    JSON escapes), and refuse alike what they cannot store, before anything is written."""
    async with database(any_url) as db:
        payload = {"nul": "a\x00b", "lone": "\ud800", "emoji": "\U0001f600", "k\x00": [1]}
        await db.jobs.enqueue(jobs.Job("text", payload, customer="é\u00e9", requires={"λ"}))
        record = await db.jobs.get("text")
        assert record.payload == payload
        assert (record.customer, record.requires) == ("é\u00e9", frozenset({"λ"}))
        # A payload changed after its job was made is checked again by enqueue, and a
        # refused job refuses the whole call: none of its jobs is written.
        late = jobs.Job("late", {"items": []})
        late.payload["items"].append(nested(100_000))
        with pytest.raises(jobs.PayloadError, match=r"'late'.*nests deeper"):
            await db.jobs.enqueue_many([jobs.Job("first"), late, jobs.Job("last")])
        odd = jobs.Job("odd", {"items": []})
        odd.payload["items"].append({1, 2})
        with pytest.raises(jobs.PayloadError, match=r"'odd'.*JSON-serializable"):
            await db.jobs.enqueue_many([jobs.Job("first"), odd])
        assert [r.id for r in await db.jobs.list()] == ["text"]
        # Asking for a job by a name no job can have: the same error on both databases
        # (SQLite said not found, PostgreSQL QueryError; both UnicodeEncodeError for a
        # surrogate).
        for bad in ("a\x00b", "a\ud800b"):
            with pytest.raises(corral.UnstorableTextError, match="job_id"):
                await db.jobs.get(bad)
            with pytest.raises(corral.UnstorableTextError, match="job_id"):
                await db.jobs.requeue(bad)
            with pytest.raises(corral.UnstorableTextError, match="cluster"):
                await db.jobs.by_cluster(bad)


async def test_what_a_handler_gives_that_a_database_cannot_store(any_url: str) -> None:
    """An error message with NUL or a lone surrogate is stored escaped (it made the
    outcome's UPDATE fail, which stopped the processor); a step name or a worker name
    with one is refused, as a job's names are."""
    async with database(any_url) as db:
        await db.jobs.enqueue_many(
            [jobs.Job("msg", max_retries=0), jobs.Job("step", max_retries=0)]
        )

        async def handler(ctx: jobs.JobContext) -> None:
            if ctx.job.id == "msg":
                raise jobs.DataError("bad \x00 byte, lone \ud800")
            async with ctx.step("s\x00"):
                raise AssertionError("not reached")

        await run_all(db, handler, classify=every_other_error_transient)
        msg, step = await db.jobs.get("msg"), await db.jobs.get("step")
        assert msg.state is jobs.State.FAILED
        assert msg.last_error is not None
        assert msg.last_error.message == "DataError: bad \\x00 byte, lone \\ud800"
        assert step.state is jobs.State.DEAD
        assert step.last_error is not None
        assert step.last_error.message.startswith("UnstorableTextError: step name 's\\x00'")
        assert step.last_error.step is None
        with pytest.raises(corral.UnstorableTextError, match="Processor name"):
            jobs.Processor(db, noop, name="w\ud800")


# -- a cluster's capacity: one meaning for jobs and maps (issue 11, item 11) ------------------


async def test_running_jobs_and_the_maps_in_them_share_their_cluster_capacity(
    any_url: str,
) -> None:
    """Capacity 2, two jobs running: the jobs hold the cluster's two units, so a map in
    one of them runs on its job's unit while the other job works: never three at once.

    Job a maps while job b does work of its own, then b maps while a does. A unit of
    work is a handler at work outside a map, or a map call running.
    """
    cluster = corral.Cluster("c", capacity=2)
    arrived = {"a": anyio.Event(), "b": anyio.Event()}
    mapped = {"a": anyio.Event(), "b": anyio.Event()}
    own = calls = peak = 0
    borrowed: list[int] = []
    both_running: list[int] = []

    def note() -> None:
        nonlocal peak
        peak = max(peak, own + calls)
        borrowed.append(cluster.statistics().borrowed)

    async def work(x: int) -> int:
        nonlocal calls
        calls += 1
        note()
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        calls -= 1
        return x

    async def handler(ctx: jobs.JobContext) -> None:
        nonlocal own
        me = ctx.job.id
        other = "b" if me == "a" else "a"
        own += 1
        note()
        arrived[me].set()
        await arrived[other].wait()
        both_running.append(cluster.statistics().borrowed)
        if me == "b":
            await mapped["a"].wait()  # b works while a maps
        own -= 1
        assert await corral.map(work, range(50), cluster=ctx.cluster) == list(range(50))
        own += 1
        note()
        mapped[me].set()
        if me == "a":
            await mapped["b"].wait()  # a works while b maps
        own -= 1

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job(i, max_retries=0) for i in "ab"])
        processor = await run_all(db, handler, clusters=[cluster])
        assert processor.statistics().completed == 2, await db.jobs.list()
    assert both_running == [2, 2]  # each running job holds one of the two units
    assert peak == 2
    assert max(borrowed) == 2
    assert cluster.statistics() == corral.ClusterStatistics("c", 2, 0, 0)


async def test_a_job_maps_on_its_own_unit_and_on_the_free_ones(any_url: str) -> None:
    """A job mapping on a capacity-1 cluster runs its map on its own unit (it cannot
    wait for itself); on a capacity-3 cluster with no other work, on all three."""
    small = corral.Cluster("small", capacity=1)
    big = corral.Cluster("big", capacity=3)
    running = 0
    full = anyio.Event()
    seen: list[tuple[str, int]] = []

    async def work(x: int) -> int:
        nonlocal running
        cluster = small if x < 100 else big
        running += 1
        seen.append((cluster.name, cluster.statistics().borrowed))
        if cluster is big and running == 3:
            full.set()
        if cluster is big:
            await full.wait()  # three run at once, or this never returns
        await anyio.lowlevel.checkpoint()
        running -= 1
        return x

    async def handler(ctx: jobs.JobContext) -> None:
        start = 0 if ctx.cluster is small else 100
        items = range(start, start + 20)
        assert await corral.map(work, items, cluster=ctx.cluster) == list(items)

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("on-small", affinity="small"))
        await db.jobs.enqueue(jobs.Job("on-big", affinity="big"))
        processor = jobs.Processor(db, handler, clusters=[small], config=config())
        with anyio.fail_after(20):
            await processor.run(until_idle=True)
        processor = jobs.Processor(db, handler, clusters=[big], config=config())
        with anyio.fail_after(20):
            await processor.run(until_idle=True)
        assert (await db.jobs.depth()).completed == 2
    assert {b for name, b in seen if name == "small"} == {1}
    assert max(b for name, b in seen if name == "big") == 3
    assert small.statistics().borrowed == big.statistics().borrowed == 0


# -- PostgreSQL: the NOTIFY channel of a queue in a schema with a long name --------------------


@contextlib.contextmanager
def _schemas(*names: str) -> Iterator[list[str]]:
    """Create schemas named ``names`` (quoted) and yield URLs in them; drop them after."""
    from conftest import POSTGRES_URL, postgres_admin, with_search_path

    made: list[str] = []
    try:
        for name in names:
            postgres_admin(f'CREATE SCHEMA "{name}"')
            made.append(name)
        yield [with_search_path(POSTGRES_URL, urllib.parse.quote(f'"{n}"')) for n in names]
    finally:
        for name in made:
            postgres_admin(f'DROP SCHEMA "{name}" CASCADE')


async def test_jobs_in_a_schema_whose_name_is_long_in_bytes(postgres_url: str) -> None:
    # 37 characters, 62 bytes: "corral_jobs_" and the name do not fit the 63 bytes of a
    # PostgreSQL channel name.
    name = f"ct_{uuid.uuid4().hex[:8]}_" + "ü" * 25
    done = anyio.Event()

    async def handler(ctx: jobs.JobContext) -> None:
        done.set()

    with _schemas(name) as [url]:
        async with database(url) as db, database(url) as other:
            assert await db._run(lambda conn: conn.fetchval("SELECT current_schema()")) == name
            processor = jobs.Processor(db, handler, config=config(poll_interval=60))
            async with anyio.create_task_group() as tg:
                tg.start_soon(processor.run)
                await db.jobs.depth()
                await other.jobs.depth()
                await anyio.wait_all_tasks_blocked()
                await other.jobs.enqueue(jobs.Job("remote"))  # NOTIFY wakes the processor
                with anyio.fail_after(20):
                    await done.wait()
                tg.cancel_scope.cancel()
            assert len(db.jobs.channel.encode()) <= 63
            assert (await db.jobs.get("remote")).state is jobs.State.COMPLETED


async def test_schemas_sharing_a_long_prefix_have_their_own_channels(postgres_url: str) -> None:
    prefix = f"ct_{uuid.uuid4().hex[:12]}_".ljust(55, "x")
    with _schemas(prefix + "_one", prefix + "_two") as urls:
        channels = []
        for url in urls:
            async with database(url) as db:
                await db.jobs.enqueue(jobs.Job("j"))
                channels.append(db.jobs.channel)
    assert channels[0] != channels[1]
    assert all(len(channel.encode()) <= 63 for channel in channels)


# -- tracebacks --------------------------------------------------------------------------------


def _fail_deep(depth: int, message: str) -> None:
    if depth:
        _fail_deep(depth - 1, message)
    raise jobs.PermanentError(message)


class LoggingRecorder(jobs.LoggingNotifier):
    """The logging notifier, keeping every event as well."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[jobs.JobEvent] = []

    async def notify(self, event: jobs.JobEvent) -> None:
        self.events.append(event)
        await super().notify(event)


async def test_a_failed_attempt_keeps_its_traceback(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = LoggingRecorder()

    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "fine":
            return
        async with ctx.step("parse"):
            _fail_deep(50 if ctx.job.id == "deep" else 2, ctx.job.payload)

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("deep", "deep down"), jobs.Job("long", "x" * 50_000)])
        await db.jobs.enqueue(jobs.Job("fine"))
        with caplog.at_level(logging.WARNING, "corral.jobs"):
            await run_all(db, handler, recorder=notifier)
        deep = await db.jobs.get("deep")
        assert deep.last_error is not None
        assert deep.last_error.category is jobs.ErrorCategory.PERMANENT
        tb = deep.error_traceback
        assert tb is not None
        assert tb.startswith("Traceback (most recent call last):\n")
        assert tb.rstrip().endswith("PermanentError: deep down")
        # Bounded: the last 20 frames, the innermost ones.
        repeated = re.findall(r"\[Previous line repeated (\d+) more times?\]", tb)
        assert tb.count('\n  File "') + sum(map(int, repeated)) == 20
        assert "in _fail_deep" in tb
        assert "in handler" not in tb
        # And at most 16 KiB, keeping its start and its end.
        long = (await db.jobs.get("long")).error_traceback
        assert long is not None
        assert len(long.encode()) <= 16 * 1024
        assert long.startswith("Traceback (most recent call last):\n")
        assert long.rstrip().endswith("x" * 100)
        assert "cut" in long
        assert (await db.jobs.get("fine")).error_traceback is None  # no failure, none
        # The notifier's event carries it, and the corral.jobs logger logs it.
        [failed] = [e for e in notifier.events if e.job_id == "deep"]
        assert failed.traceback == tb
        [logged] = [r for r in caplog.records if "job deep failed" in r.getMessage()]
        assert logged.name == "corral.jobs"
        assert "in _fail_deep" in caplog.text
        assert "PermanentError: deep down" in caplog.text


# SQL: it drops a column of corral_jobs (a DynamoDB item has no columns to migrate).
async def test_a_table_made_before_tracebacks_gets_their_column(db_url: str) -> None:
    async def handler(ctx: jobs.JobContext) -> None:
        raise jobs.DataError("bad row")

    async with database(db_url) as db:
        await db.jobs.enqueue(jobs.Job("old"))
        drop = "ALTER TABLE corral_jobs DROP COLUMN error_traceback"
        await db._run(lambda conn: conn.execute(drop))
    async with database(db_url) as db:
        await db.jobs.enqueue(jobs.Job("new"))
        await run_all(db, handler)
        for job_id in ("old", "new"):
            rec = await db.jobs.get(job_id)
            assert rec.error_traceback is not None
            assert "DataError: bad row" in rec.error_traceback
    async with database(db_url) as db:  # and once there, it is left as it is
        assert (await db.jobs.get("old")).error_traceback is not None


# -- a worker that says what it does --------------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "corral.jobs" and r.levelno == level
    ]


async def test_a_worker_logs_when_each_job_starts_and_ends(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "bad":
            raise jobs.DataError("row 3 has no date")

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("good"), jobs.Job("bad")])
        with caplog.at_level(logging.DEBUG, "corral.jobs"):
            await run_all(db, handler, clusters=[corral.Cluster("c", 2)])
    assert sorted(_lines(caplog, logging.DEBUG)) == [
        "job bad started (attempt 1 on c)",
        "job good started (attempt 1 on c)",
    ]
    ends = _lines(caplog, logging.INFO)
    assert "job good completed (attempt 1 on c)" in ends
    assert "job bad failed (attempt 1 on c): DATA: DataError: row 3 has no date" in ends


async def test_with_the_logging_notifier_each_end_is_logged_once(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("good"))
        processor = jobs.Processor(db, noop, config=config())  # the LoggingNotifier
        with caplog.at_level(logging.INFO, "corral.jobs"), anyio.fail_after(60):
            await processor.run(until_idle=True)
    assert caplog.text.count("job good completed (attempt 1 on default)") == 1


async def test_job_lines_cost_no_log_call_when_their_levels_are_off(
    any_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = logging.getLogger("corral.jobs")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"logged {args!r} with its level off")

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job(f"j{i}") for i in range(20)])
        with caplog.at_level(logging.WARNING, "corral.jobs"):
            monkeypatch.setattr(logger, "debug", refuse)
            monkeypatch.setattr(logger, "info", refuse)
            await run_all(db, noop)
        assert (await db.jobs.depth()).completed == 20


async def test_an_idle_worker_says_which_jobs_no_cluster_of_it_can_take(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with database(any_url) as db:
        await db.jobs.enqueue_many(
            [
                jobs.Job("ok"),
                *(jobs.Job(f"gpu{i}", requires={"gpu"}) for i in range(3)),
                jobs.Job("east", affinity="east"),
            ]
        )
        with caplog.at_level(logging.INFO, "corral.jobs"):
            await run_all(db, noop, clusters=[corral.Cluster("cpu", 2, labels={"avx"})])
        assert (await db.jobs.depth()).completed == 1
    [line] = [m for m in _lines(caplog, logging.WARNING) if "no cluster" in m]
    assert "3 jobs require labels no cluster has: gpu" in line
    assert "1 job is pinned to a cluster it lacks: east" in line


async def test_an_idle_worker_that_leaves_nothing_says_nothing_of_it(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("ok"), jobs.Job("gpu", requires={"gpu"})])
        with caplog.at_level(logging.INFO, "corral.jobs"):
            await run_all(db, noop, clusters=[corral.Cluster("g", 2, labels={"gpu"})])
    assert not _lines(caplog, logging.WARNING)


def test_mixed_costs_are_warned_about(caplog: pytest.LogCaptureFixture, tmp_path: Any) -> None:
    """A cluster without a cost ranks after those with one: said once, when it is made."""
    clusters = [corral.Cluster("a", 1, cost=0.5), corral.Cluster("b", 1), corral.Cluster("c", 1)]
    with caplog.at_level(logging.WARNING, "corral.jobs"):

        async def make() -> None:
            async with corral.connect(f"sqlite:///{tmp_path / 'q.db'}") as db:
                jobs.Processor(db, noop, clusters=clusters)
                jobs.Processor(db, noop, clusters=clusters[:1])
                jobs.Processor(db, noop, clusters=clusters[1:])

        anyio.run(make)
    [line] = _lines(caplog, logging.WARNING)
    assert "b, c have no cost" in line
    assert "ranks them after a" in line
    place = _routing.route(jobs.Job("x"), clusters, {"a": 1, "b": 1, "c": 1})
    assert place is not None
    assert place[0] == "a"


async def test_run_reports_started_once_it_is_listening(any_url: str) -> None:
    """``await tg.start(processor.run)`` returns with the store ready and watched: a job
    enqueued then (from another connection on PostgreSQL) runs without a poll."""
    done = anyio.Event()

    async def handler(ctx: jobs.JobContext) -> None:
        done.set()

    async with database(any_url) as db, database(any_url) as other:
        processor = jobs.Processor(db, handler, config=config(poll_interval=3600))
        async with anyio.create_task_group() as tg:
            await tg.start(processor.run)
            assert processor.statistics().running == 0
            source = other if any_url.startswith("postgres") else db
            await source.jobs.enqueue(jobs.Job("now"))
            with anyio.fail_after(20):
                await done.wait()
            tg.cancel_scope.cancel()


async def test_run_started_with_until_idle_returns_once_idle(any_url: str) -> None:
    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("one"))
        processor = jobs.Processor(db, noop, config=config())
        async with anyio.create_task_group() as tg:
            await tg.start(functools.partial(processor.run, until_idle=True))
        assert (await db.jobs.depth()).completed == 1


# -- classification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "category"),
    [
        (TypeError("unsupported operand"), "PERMANENT"),
        (KeyError("date"), "PERMANENT"),
        (IndexError("list index out of range"), "PERMANENT"),
        (AttributeError("no attribute 'x'"), "PERMANENT"),
        (NameError("name 'x' is not defined"), "PERMANENT"),
        (UnboundLocalError("local 'x'"), "PERMANENT"),
        (AssertionError("expected 3"), "PERMANENT"),
        (NotImplementedError("later"), "PERMANENT"),
        (ZeroDivisionError("division by zero"), "PERMANENT"),
        (RecursionError("maximum recursion depth exceeded"), "PERMANENT"),
        (ValueError("invalid literal for int()"), "DATA"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "DATA"),
        (ModuleNotFoundError("No module named 'pandas'"), "CONFIGURATION"),
        (OSError("disk busy"), "TRANSIENT"),
        (ConnectionResetError("reset by peer"), "TRANSIENT"),
        (TimeoutError("slow"), "TRANSIENT"),
        (MemoryError(), "RESOURCE"),
        (RuntimeError("something else"), "TRANSIENT"),
        (Exception("anything else"), "TRANSIENT"),
        (jobs.TransientError("a JobError's own category wins"), "TRANSIENT"),
    ],
)
def test_python_errors_are_classified_by_what_a_retry_can_fix(
    error: Exception, category: str
) -> None:
    assert jobs.classify(error) == category


async def test_a_plain_bug_fails_at_once_and_a_dropped_connection_is_retried(
    any_url: str,
) -> None:
    recorder = Recorder()

    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "bug":
            _ = {}["missing column"]
        elif ctx.attempt == 1:
            raise ConnectionResetError("reset by peer")

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("bug", max_retries=5), jobs.Job("net")])
        await run_all(db, handler, recorder=recorder)
        bug = await db.jobs.get("bug")
        assert (bug.state, bug.attempts) == (jobs.State.FAILED, 1)  # not retried
        assert bug.last_error is not None
        assert bug.last_error.category is jobs.ErrorCategory.PERMANENT
        assert bug.last_error.message == "KeyError: 'missing column'"
        assert recorder.kinds("bug") == ["failed"]
        net = await db.jobs.get("net")
        assert (net.state, net.attempts) == (jobs.State.COMPLETED, 2)
        assert recorder.kinds("net") == ["retrying", "completed"]
