"""Memoized steps, ``ctx.run_step``: a finished step's function is never called again.

Every test runs on SQLite, PostgreSQL and DynamoDB (``any_url``) and on asyncio and
trio (DynamoDB on asyncio only, but with CORRAL_TEST_AWS_TRIO=1); those that run
SQL on SQLite and PostgreSQL only (``db_url``). A
step's result is stored with it (JSON) and handed back, without calling its function,
to every later attempt: a retry, a requeue, a reclaim after the worker was killed
(a real process, killed with SIGKILL).
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

import corral
from corral import jobs
from jobs_testing import FAST, set_columns, stored_column

HERE = Path(__file__).parent


class Recorder:
    """A notifier that keeps every event, and says when an attempt's lease is lost."""

    def __init__(self) -> None:
        self.events: list[jobs.JobEvent] = []
        self.lost = anyio.Event()

    async def notify(self, event: jobs.JobEvent) -> None:
        self.events.append(event)
        if event.kind is jobs.EventKind.LEASE_LOST:
            self.lost.set()


def processor(
    db: corral.Database, handler: Any, recorder: Recorder | None = None, **kwargs: Any
) -> jobs.Processor:
    config = jobs.ProcessorConfig(
        retry=FAST, poll_interval=0.05, lease_seconds=kwargs.pop("lease_seconds", 30), **kwargs
    )
    return jobs.Processor(db, handler, config=config, notifier=recorder or Recorder())


async def run_all(db: corral.Database, handler: Any, recorder: Recorder | None = None) -> None:
    with anyio.fail_after(60):
        await processor(db, handler, recorder).run(until_idle=True)


async def raw_steps(db: corral.Database, job_id: str) -> str:
    """The ``steps`` column of a job, as stored."""
    return str(await stored_column(db, job_id, "steps"))


# -- retries: finished steps are not called, their results come back --------------------------


async def test_a_retry_gets_the_stored_results_without_calling_the_steps(any_url: str) -> None:
    calls: Counter[str] = Counter()
    seen: dict[int, list[object]] = {}
    threads: set[str] = set()

    def align(sample: str, *, threads_: int) -> dict[str, Any]:  # plain: runs in a thread
        calls["align"] += 1
        threads.add(threading.current_thread().name)
        return {"sample": sample, "threads": threads_, "pair": (1, 2)}

    async def count(aligned: dict[str, Any], ctx: jobs.JobContext) -> list[int]:
        await anyio.lowlevel.checkpoint()
        calls["count"] += 1
        ctx.progress.increment(5)  # stored with the step
        if ctx.attempt == 1:
            raise jobs.TransientError("the counter's disk is full")
        return [len(aligned["sample"]), aligned["threads"]]

    def report(counts: list[int]) -> str:
        calls["report"] += 1
        return f"{sum(counts)} reads"

    async def handler(ctx: jobs.JobContext) -> None:
        aligned = await ctx.run_step("align", align, "ACGT", threads_=8)
        seen.setdefault(ctx.attempt, []).append(copy.deepcopy(aligned))
        aligned["pair"] = "changed by the handler"  # its own copy: not what is stored
        counts = await ctx.run_step("count", count, aligned, ctx)
        seen[ctx.attempt].append(counts)
        if ctx.attempt == 2:  # fails after step 2: steps 1 and 2 are stored
            assert ctx.steps_done == ("align", "count")
            raise jobs.TransientError("the network went away")
        text = await ctx.run_step("report", report, counts)
        seen[ctx.attempt].append(text)

    recorder = Recorder()
    async with corral.connect(any_url) as db:
        await db.jobs.enqueue(jobs.Job("sample-1"))
        await run_all(db, handler, recorder)
        rec = await db.jobs.get("sample-1")
        stored = json.loads(await raw_steps(db, "sample-1"))
    assert (rec.state, rec.attempts) == (jobs.State.COMPLETED, 3)
    # align ran once; count failed once and ran once more; neither ran on attempt 3.
    assert calls == {"align": 1, "count": 2, "report": 1}
    assert threads  # align ran in a worker thread, not the event loop's
    assert threading.main_thread().name not in threads
    aligned = {"sample": "ACGT", "threads": 8, "pair": [1, 2]}  # as JSON gives it back
    assert seen == {1: [aligned], 2: [aligned, [4, 8]], 3: [aligned, [4, 8], "12 reads"]}
    assert rec.steps_done == ("align", "count", "report")
    assert rec.step_results == {"align": aligned, "count": [4, 8], "report": "12 reads"}
    assert stored == rec.step_results  # the column: one JSON object, {name: result}
    assert rec.progress == 10  # counted in both attempts of count
    failures = [(e.attempt, e.step) for e in recorder.events if e.kind == "retrying"]
    assert failures == [(1, "count"), (2, None)]


async def test_concurrent_steps_store_their_own_results(any_url: str) -> None:
    """Steps in a task group, known by name: each stores its result, whatever the order
    they finish in; the one that failed is the only one called again."""
    calls: Counter[str] = Counter()

    async def handler(ctx: jobs.JobContext) -> None:
        in_flight = 0
        both_started = anyio.Event()
        stored = {"a": anyio.Event(), "b": anyio.Event()}

        async def fetch(name: str) -> dict[str, str]:
            nonlocal in_flight
            calls[name] += 1
            in_flight += 1
            if in_flight == 2:
                both_started.set()
            await both_started.wait()  # a and b run at once, and finish together
            return {"name": name}

        async def last() -> str:
            calls["c"] += 1
            if ctx.attempt == 1:
                await stored["a"].wait()
                await stored["b"].wait()
                raise jobs.TransientError("c broke after a and b were stored")
            return "c"

        results: dict[str, object] = {}

        async def run(name: str) -> None:
            if name == "c":
                results[name] = await ctx.run_step(name, last)
            else:
                results[name] = await ctx.run_step(name, fetch, name)
                stored[name].set()

        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(run, name)
        assert results == {"a": {"name": "a"}, "b": {"name": "b"}, "c": "c"}

    recorder = Recorder()
    async with corral.connect(any_url) as db:
        await db.jobs.enqueue(jobs.Job("fan-out"))
        await run_all(db, handler, recorder)
        rec = await db.jobs.get("fan-out")
    assert (rec.state, rec.attempts) == (jobs.State.COMPLETED, 2)
    assert calls == {"a": 1, "b": 1, "c": 2}
    assert sorted(rec.steps_done[:2]) == ["a", "b"]
    assert rec.steps_done[2] == "c"
    assert rec.step_results == {"a": {"name": "a"}, "b": {"name": "b"}, "c": "c"}
    [failure] = [e for e in recorder.events if e.kind == "retrying"]
    assert (failure.attempt, failure.step) == (1, "c")


# -- what cannot be stored, and misuse ---------------------------------------------------------


async def test_a_result_json_cannot_store_fails_the_job_naming_the_step(any_url: str) -> None:
    calls: Counter[str] = Counter()

    def tags() -> set[str]:
        calls["tags"] += 1
        return {"a", "b"}

    def deep() -> list[Any]:
        calls["deep"] += 1
        nested: list[Any] = []
        for _ in range(jobs.Job.MAX_PAYLOAD_DEPTH):
            nested = [nested]
        return nested

    async def handler(ctx: jobs.JobContext) -> None:
        await ctx.run_step("fine", str, 1)
        await ctx.run_step(ctx.job.id, tags if ctx.job.id == "tags" else deep)
        calls["after"] += 1

    recorder = Recorder()
    async with corral.connect(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("tags"), jobs.Job("deep")])
        await run_all(db, handler, recorder)
        records = {job_id: await db.jobs.get(job_id) for job_id in ("tags", "deep")}
    assert calls == {"tags": 1, "deep": 1}  # PERMANENT: not retried; nothing after it ran
    for job_id, rec in records.items():
        assert (rec.state, rec.attempts) == (jobs.State.FAILED, 1)
        assert rec.steps_done == ("fine",)  # nothing stored for the bad step
        assert rec.step_results == {"fine": "1"}
        error = rec.last_error
        assert error is not None
        assert (error.category, error.step) == (jobs.ErrorCategory.PERMANENT, job_id)
        assert error.message.startswith(f"StepResultError: job {job_id!r}: step {job_id!r}")
    messages = {job_id: rec.last_error.message for job_id, rec in records.items() if rec.last_error}
    assert "returned set that cannot be stored as JSON" in messages["tags"]
    assert "return JSON types (dict, list, str, int, float, bool, None)" in messages["tags"]
    assert "nesting deeper than 500 levels" in messages["deep"]


async def test_a_step_name_is_used_once_per_attempt(any_url: str) -> None:
    problems: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        assert await ctx.run_step("x", int, "7") == 7
        with pytest.raises(ValueError, match="step 'x' was already used in this attempt") as e:
            await ctx.run_step("x", int, "8")
        problems.append(str(e.value))
        async with ctx.step("y"):
            await anyio.lowlevel.checkpoint()
        with pytest.raises(ValueError, match="step 'y' was already used"):
            await ctx.run_step("y", int, "9")
        for name, error in (("", ValueError), (3, TypeError)):
            with pytest.raises(error, match="step name must be a non-empty str"):
                await ctx.run_step(name, int, "1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="returned a coroutine"):  # a thread cannot run it
            await ctx.run_step("lambda", lambda: anyio.lowlevel.checkpoint())

    async with corral.connect(any_url) as db:
        await db.jobs.enqueue(jobs.Job("a"))
        await run_all(db, handler)
        rec = await db.jobs.get("a")
    assert rec.state is jobs.State.COMPLETED, rec.last_error
    assert rec.step_results == {"x": 7, "y": None}
    assert problems == [
        "step 'x' was already used in this attempt of job 'a': step names must be unique "
        "within a job (a finished step is skipped on retry by its name); give each step its "
        "own name"
    ]


# -- what keeps the results: the old stored form, requeue, a lost lease ----------------------


async def test_a_job_stored_with_the_old_list_of_steps_keeps_them(any_url: str) -> None:
    """Before steps had results, the column held a JSON list of names: those steps are
    finished, for ``ctx.step`` and ``run_step`` alike (with no result: None)."""
    calls: Counter[str] = Counter()

    def work(name: str) -> str:
        calls[name] += 1
        return f"{name} done"

    async def handler(ctx: jobs.JobContext) -> None:
        assert ctx.steps_done == ("one", "two")
        assert await ctx.run_step("one", work, "one") is None  # finished, no result kept
        async with ctx.step("two") as step:
            assert step.done
            await anyio.lowlevel.checkpoint()
            calls["two"] += 1
        assert await ctx.run_step("three", work, "three") == "three done"

    async with corral.connect(any_url) as db:
        await db.jobs.enqueue(jobs.Job("old"))
        await set_columns(db, "old", steps='["one", "two"]')
        before = await db.jobs.get("old")
        await run_all(db, handler)
        rec = await db.jobs.get("old")
        column = await raw_steps(db, "old")
    assert (before.steps_done, before.step_results) == (("one", "two"), {"one": None, "two": None})
    assert rec.state is jobs.State.COMPLETED, rec.last_error
    assert calls == {"three": 1}
    assert rec.steps_done == ("one", "two", "three")
    assert column == '{"one":null,"two":null,"three":"three done"}'


async def test_a_requeued_job_keeps_its_results(any_url: str) -> None:
    calls: Counter[str] = Counter()

    async def expensive() -> dict[str, int]:
        calls["expensive"] += 1
        await anyio.lowlevel.checkpoint()
        return {"rows": 41}

    async def handler(ctx: jobs.JobContext) -> None:
        result = await ctx.run_step("expensive", expensive)
        if calls["upload"] == 0:
            calls["upload"] += 1
            raise jobs.DataError("the upload target is missing")  # failed, not retried
        await ctx.run_step("upload", lambda n: n + 1, result["rows"])

    async with corral.connect(any_url) as db:
        await db.jobs.enqueue(jobs.Job("r"))
        await run_all(db, handler)
        assert (await db.jobs.get("r")).state is jobs.State.FAILED
        await db.jobs.requeue("r")
        await run_all(db, handler)
        rec = await db.jobs.get("r")
    assert (rec.state, rec.attempts) == (jobs.State.COMPLETED, 1)  # requeue resets attempts
    assert calls == {"expensive": 1, "upload": 1}
    assert rec.step_results == {"expensive": {"rows": 41}, "upload": 42}


async def test_a_step_whose_lease_was_taken_over_raises_lease_lost(any_url: str) -> None:
    """The step's write is fenced by the lease: refused, the step raises LeaseLostError
    (as ``ctx.step`` does) and the attempt is dropped, its result not stored."""
    after: list[str] = []
    raised: list[BaseException] = []

    async def handler(ctx: jobs.JobContext) -> None:
        async def stolen() -> int:
            # what a worker reclaiming the job does
            await set_columns(db, ctx.job.id, lease_token=7, lease_owner="thief")
            return 1

        try:
            await ctx.run_step("stolen", stolen)
        except BaseException as exc:
            raised.append(exc)
            raise
        after.append("ran on")

    recorder = Recorder()
    async with corral.connect(any_url) as db:
        await db.jobs.enqueue(jobs.Job("job"))
        worker = processor(db, handler, recorder)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            with anyio.fail_after(20):
                await recorder.lost.wait()
            tg.cancel_scope.cancel()
        rec = await db.jobs.get("job")
    [error] = raised
    assert isinstance(error, jobs.LeaseLostError)
    assert "lease was taken over by another worker" in str(error)
    assert after == []
    assert (rec.state, rec.lease_owner, rec.steps_done) == (jobs.State.IN_PROGRESS, "thief", ())
    assert worker.statistics().lease_lost == 1


# -- a killed worker: another process's result reaches the rescuer ---------------------------


def spawn(url: str, directory: Path, *options: str) -> subprocess.Popen[str]:
    """Start a steps_worker.py process; its stdout is a pipe."""
    worker = HERE / "steps_worker.py"
    return subprocess.Popen(
        [sys.executable, str(worker), url, str(directory), *options],
        stdout=subprocess.PIPE,
        text=True,
    )


async def test_a_killed_workers_step_result_reaches_the_worker_that_reclaims_it(
    any_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    from jobs_worker import lines
    from steps_worker import memo_handler

    async with corral.connect(any_url) as db:
        await db.jobs.enqueue(jobs.Job("job-1"))
        victim = spawn(any_url, tmp_path, "--hang", f"--backend={anyio_backend}")
        try:
            assert victim.stdout is not None
            line = await anyio.to_thread.run_sync(victim.stdout.readline)
            assert line == "ready\n", f"the worker said {line!r}, exit code {victim.poll()}"
            held = await db.jobs.get("job-1")
            assert (held.state, held.lease_owner, held.steps_done) == (
                jobs.State.IN_PROGRESS,
                "victim",
                ("one",),
            )
            victim.send_signal(signal.SIGKILL)  # no cleanup: the lease is left to expire
        finally:
            if victim.poll() is None:
                victim.kill()
            await anyio.to_thread.run_sync(victim.wait)
            if victim.stdout is not None:
                victim.stdout.close()
        assert victim.returncode == -signal.SIGKILL

        rescuer = processor(db, memo_handler(tmp_path), lease_seconds=1)
        with anyio.fail_after(60):
            await rescuer.run(until_idle=True)  # waits out the dead worker's lease
        rec = await db.jobs.get("job-1")
    victim_was = "job-1 attempt=1 worker=victim"
    assert (rec.state, rec.attempts) == (jobs.State.COMPLETED, 2)
    assert rec.step_results == {"one": {"where": victim_was, "n": 6}, "two": "uploaded"}
    assert lines(tmp_path / "one.log") == [victim_was]  # step one ran once, in the victim
    rescuer_is = f"job-1 attempt=2 worker={rescuer.name}"
    assert lines(tmp_path / "two.log") == [f"{rescuer_is} got {victim_was} n=6"]
    assert lines(tmp_path / "completed.log") == [f"{rescuer_is} uploaded"]
