"""Cancelling a job: a waiting one at once, a running one at its worker's next renewal.

Every test runs on SQLite, PostgreSQL and DynamoDB (``any_url``) and on asyncio and
trio (DynamoDB on asyncio only, but with CORRAL_TEST_AWS_TRIO=1); those that run
SQL on SQLite and PostgreSQL only (``db_url``). The
store's part (``JobStore.cancel``, ``Renewal.cancel``) is in ``test_contract_jobs.py``.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from corral import jobs
from jobs_testing import config, database

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A notifier that keeps every event; events set when a job is cancelled, or retried."""

    def __init__(self) -> None:
        self.events: list[jobs.JobEvent] = []
        self.cancelled = anyio.Event()
        self.retrying = anyio.Event()

    async def notify(self, event: jobs.JobEvent) -> None:
        self.events.append(event)
        if event.kind is jobs.EventKind.CANCELLED:
            self.cancelled.set()
        elif event.kind is jobs.EventKind.RETRYING:
            self.retrying.set()

    def kinds(self, job_id: str) -> list[str]:
        return [e.kind.value for e in self.events if e.job_id == job_id]


class Blocker:
    """A handler that finishes a step, counts, then waits until it is cancelled."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.saw_cancel = anyio.Event()
        self.runs = 0

    async def __call__(self, ctx: jobs.JobContext) -> None:
        self.runs += 1
        async with ctx.step("one"):
            await anyio.lowlevel.checkpoint()
        ctx.progress.increment(5)
        self.started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.saw_cancel.set()
            raise


async def test_a_running_job_is_cancelled_at_its_next_renewal(any_url: str) -> None:
    """A cancel on the processor's own database has it renew at once (the lease is 30
    s long: no renewal would come by itself within the test)."""
    handler = Blocker()
    recorder = Recorder()
    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("a", max_retries=3), jobs.Job("b")])
        processor = jobs.Processor(
            db, {"default": handler}, config=config(max_concurrent=1), notifier=recorder
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            with anyio.fail_after(20):
                await handler.started.wait()
            running = await db.jobs.get("a")
            assert (running.state, running.cancel_requested) == (jobs.State.IN_PROGRESS, False)
            assert await db.jobs.cancel("a") is jobs.Cancellation.REQUESTED
            asked = await db.jobs.get("a")
            assert (asked.state, asked.cancel_requested) == (jobs.State.IN_PROGRESS, True)
            assert await db.jobs.cancel("a") is jobs.Cancellation.REQUESTED  # again: the same
            with anyio.fail_after(20):
                await handler.saw_cancel.wait()
                await recorder.cancelled.wait()
            # The slot it held is free: b (the next job) runs, and is cancelled in turn.
            handler.started = anyio.Event()
            with anyio.fail_after(20):
                await handler.started.wait()
            recorder.cancelled = anyio.Event()
            assert await db.jobs.cancel("b") is jobs.Cancellation.REQUESTED
            with anyio.fail_after(20):
                await recorder.cancelled.wait()
            tg.cancel_scope.cancel()
        record = await db.jobs.get("a")
        assert record.state is jobs.State.CANCELLED
        assert (record.attempts, record.steps_done, record.progress) == (1, ("one",), 5)
        assert record.last_error is None  # a cancellation is no error
        assert record.finished_at is not None
        assert record.lease_owner is None
        assert recorder.kinds("a") == ["cancelled"]  # not retried
        event = next(e for e in recorder.events if e.job_id == "a")
        assert (event.attempt, event.job_kind, event.worker) == (1, "default", processor.name)
        assert isinstance(event.fence, int)  # the attempt's lease token, for deduplication
        assert "cancelled on request" in (event.message or "")
        stats = processor.statistics()
        assert (stats.cancelled, stats.retried, stats.completed, stats.lease_lost) == (2, 0, 0, 0)
        assert handler.runs == 2
        assert (await db.jobs.depth()).cancelled == 2


async def test_a_cancel_from_another_connection_is_seen_at_the_next_renewal(
    any_url: str,
) -> None:
    """As from another process: nothing wakes the renewer, whose renewals (every 0.1 s
    for a lease of 0.3 s) find the request."""
    handler = Blocker()
    recorder = Recorder()
    async with database(any_url) as db, database(any_url) as other:
        await db.jobs.enqueue(jobs.Job("a"))
        processor = jobs.Processor(
            db, handler, config=config(lease_seconds=0.3, poll_interval=60), notifier=recorder
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            with anyio.fail_after(20):
                await handler.started.wait()
            assert await other.jobs.cancel("a") is jobs.Cancellation.REQUESTED
            with anyio.fail_after(20):
                await handler.saw_cancel.wait()
                await recorder.cancelled.wait()
            tg.cancel_scope.cancel()
        record = await db.jobs.get("a")
        assert (record.state, record.attempts, record.progress) == (jobs.State.CANCELLED, 1, 5)
        assert recorder.kinds("a") == ["cancelled"]


async def test_cancel_a_waiting_a_retrying_a_finished_and_a_missing_job(any_url: str) -> None:
    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "flaky":
            raise jobs.TransientError("upstream down")

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("done"), jobs.Job("flaky")])
        slow = config(retry=jobs.RetryPolicy(base=3600, cap=3600, jitter=0))
        recorder = Recorder()
        processor = jobs.Processor(db, handler, config=slow, notifier=recorder)
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run)
            with anyio.fail_after(20):
                await recorder.retrying.wait()  # sent once the retry is committed
            tg.cancel_scope.cancel()
        await db.jobs.enqueue(jobs.Job("ready"))
        assert await db.jobs.cancel("ready") is jobs.Cancellation.CANCELLED
        assert await db.jobs.cancel("flaky") is jobs.Cancellation.CANCELLED
        flaky = await db.jobs.get("flaky")
        assert (flaky.state, flaky.attempts) == (jobs.State.CANCELLED, 1)
        assert flaky.last_error is not None  # its last failure, kept for the record
        assert flaky.finished_at is not None
        with pytest.raises(jobs.JobStateError, match="'done' is completed already: only a"):
            await db.jobs.cancel("done")
        assert await db.jobs.cancel("ready") is jobs.Cancellation.CANCELLED  # as it was
        assert (await db.jobs.get("ready")).state is jobs.State.CANCELLED
        with pytest.raises(jobs.JobNotFoundError, match="no job with id 'nope'"):
            await db.jobs.cancel("nope")
        with pytest.raises(TypeError, match="job_id must be a non-empty str"):
            await db.jobs.cancel(3)  # type: ignore[arg-type]
        assert [r.id for r in await db.jobs.list("cancelled")] == ["flaky", "ready"]
        # Requeued, a cancelled job runs again; purged, it is gone.
        requeued = await db.jobs.requeue("ready")
        assert (requeued.state, requeued.attempts) == (jobs.State.READY, 0)
        await jobs.Processor(db, handler, config=config()).run(until_idle=True)
        assert (await db.jobs.get("ready")).state is jobs.State.COMPLETED
        assert await db.jobs.purge(older_than=0, states=["cancelled"]) == 1
        assert await db.jobs.depth() == jobs.QueueDepth(completed=2)


async def test_a_cancelled_job_is_never_claimed_by_many_workers(any_url: str) -> None:
    ran: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        await anyio.lowlevel.checkpoint()
        ran.append(ctx.job.id)

    async with database(any_url) as db:
        await db.jobs.enqueue_many(jobs.Job(f"j{n:02}") for n in range(30))
        for n in range(0, 30, 2):
            assert await db.jobs.cancel(f"j{n:02}") is jobs.Cancellation.CANCELLED

    async def worker(n: int) -> None:
        async with database(any_url) as db:
            processor = jobs.Processor(
                db, handler, config=config(max_concurrent=4, batch_size=2), name=f"w{n}"
            )
            await processor.run(until_idle=True)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(worker, n)
    assert sorted(ran) == [f"j{n:02}" for n in range(1, 30, 2)]
    async with database(any_url) as db:
        assert await db.jobs.depth() == jobs.QueueDepth(completed=15, cancelled=15)


async def test_a_job_asked_to_cancel_that_went_back_to_waiting_is_cancelled_when_claimed(
    any_url: str,
) -> None:
    """The cancellation is asked as its attempt fails (retryable) before any renewal:
    the job is retried, and its next claim finishes it cancelled, not run again."""
    runs: list[int] = []
    recorder = Recorder()

    async def handler(ctx: jobs.JobContext) -> None:
        runs.append(ctx.attempt)
        assert await db.jobs.cancel(ctx.job.id) is jobs.Cancellation.REQUESTED
        raise jobs.TransientError("failed as it was asked to stop")

    async with database(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a", max_retries=5))
        processor = jobs.Processor(db, handler, config=config(), notifier=recorder)
        with anyio.fail_after(30):
            await processor.run(until_idle=True)
        record = await db.jobs.get("a")
    assert runs == [1]
    assert (record.state, record.attempts) == (jobs.State.CANCELLED, 2)
    assert recorder.kinds("a") == ["retrying", "cancelled"]
