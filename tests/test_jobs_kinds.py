"""Job kinds: a processor serves the kinds it has handlers for; reads filter by kind.

Every test runs on SQLite, PostgreSQL and DynamoDB (``any_url``) and on asyncio and
trio (DynamoDB on asyncio only, but with CORRAL_TEST_AWS_TRIO=1); those that run
SQL on SQLite and PostgreSQL only (``db_url``). The store's part (claims, reads and
counts by kind) is in ``test_contract_jobs.py``.
"""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import pytest

import corral
from corral import jobs
from jobs_testing import Recorder, config, database

pytestmark = pytest.mark.timeout(60)


def test_a_kind_is_a_short_name() -> None:
    assert jobs.Job("a").kind == "default"
    assert jobs.Job("a", kind="render").kind == "render"
    for bad in ("", " render", "render ", "a" * 65, "new\nline", 3, None):
        with pytest.raises(jobs.JobKindError, match="must be a short name") as raised:
            jobs.Job("a", kind=bad)  # type: ignore[arg-type]
        assert "such as 'render'" in str(raised.value)
    assert isinstance(jobs.JobKindError("x"), corral.CorralError)
    assert jobs.Job("a", kind="ä" * 64).kind == "ä" * 64  # characters, not bytes


async def test_bad_kinds_and_handlers_are_refused_with_the_fix(any_url: str) -> None:
    async def handle(ctx: jobs.JobContext) -> None:
        pass

    async with database(any_url) as db:
        with pytest.raises(ValueError, match="empty mapping: map at least one job kind"):
            jobs.Processor(db, {})
        with pytest.raises(jobs.JobKindError, match="a key of the handler mapping"):
            jobs.Processor(db, {"": handle})
        with pytest.raises(TypeError, match="the handler of kind 'render' must be an async"):
            jobs.Processor(db, {"render": "handle"})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="or a mapping of job kind to such functions"):
            jobs.Processor(db, 3)  # type: ignore[arg-type]
        with pytest.raises(jobs.JobKindError, match="kind must be a short name"):
            await db.jobs.depth(kind="")
        with pytest.raises(jobs.JobKindError, match="kind must be a short name"):
            await db.jobs.list(kind=" x")
        processor = jobs.Processor(db, {"render": handle, "index": handle})
        assert processor.kinds == ("index", "render")
        assert "kinds=['index', 'render']" in repr(processor)
        assert jobs.Processor(db, handle).kinds is None  # one handler: every kind


async def test_a_processor_takes_only_the_kinds_it_has_handlers_for(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[tuple[str, str, str]] = []

    async def render(ctx: jobs.JobContext) -> None:
        await anyio.lowlevel.checkpoint()
        ran.append(("render", ctx.job.id, ctx.job.kind))

    async def index(ctx: jobs.JobContext) -> None:
        ran.append(("index", ctx.job.id, ctx.job.kind))

    async def anything(ctx: jobs.JobContext) -> None:
        ran.append(("anything", ctx.job.id, ctx.job.kind))

    recorder = Recorder()
    async with database(any_url) as db:
        await db.jobs.enqueue_many(
            [
                jobs.Job("plain"),
                jobs.Job("r1", kind="render"),
                jobs.Job("i1", kind="index"),
                jobs.Job("r2", kind="render", priority="urgent"),
                jobs.Job("o1", kind="other"),
                jobs.Job("g1", kind="render", requires={"gpu"}),  # no cluster has gpu
            ]
        )
        processor = jobs.Processor(
            db, {"render": render, "index": index}, config=config(), notifier=recorder
        )
        with caplog.at_level(logging.WARNING, "corral.jobs"), anyio.fail_after(30):
            # Returns with plain and o1 waiting: they are not its kinds to wait for.
            await processor.run(until_idle=True)
        assert sorted(ran) == [
            ("index", "i1", "index"),
            ("render", "r1", "render"),
            ("render", "r2", "render"),
        ]
        assert processor.statistics().completed == 3
        assert {e.job_id: e.job_kind for e in recorder.events} == {
            "i1": "index",
            "r1": "render",
            "r2": "render",
        }
        fences = [e.fence for e in recorder.events]  # each attempt's own lease token
        assert len(set(fences)) == 3
        assert all(isinstance(f, int) for f in fences)
        # It says it leaves g1 (its kind, a label none of its clusters has), not the others.
        [warning] = [r.getMessage() for r in caplog.records if r.name == "corral.jobs"]
        assert "leaving 1 job that no cluster of it can take" in warning
        records = {r.id: r for r in await db.jobs.list()}
        assert {r.id: r.kind for r in records.values()} == {
            "plain": "default",
            "r1": "render",
            "i1": "index",
            "r2": "render",
            "o1": "other",
            "g1": "render",
        }
        assert records["plain"].state is jobs.State.READY
        assert records["o1"].state is jobs.State.READY
        # One handler runs every kind (as before kinds existed).
        ran.clear()
        await jobs.Processor(db, anything, config=config()).run(until_idle=True)
        assert sorted(ran) == [("anything", "o1", "other"), ("anything", "plain", "default")]


async def test_depth_and_list_by_kind(any_url: str) -> None:
    async with database(any_url) as db:
        assert await db.jobs.depth_by_kind() == {}
        await db.jobs.enqueue_many(
            [
                jobs.Job("a"),
                jobs.Job("r1", kind="render"),
                jobs.Job("r2", kind="render", priority="high"),
                jobs.Job("i1", kind="index"),
            ]
        )
        await db.jobs.cancel("r1")
        assert await db.jobs.depth(kind="render") == jobs.QueueDepth(ready=1, cancelled=1)
        assert await db.jobs.depth(kind="nothing") == jobs.QueueDepth()
        assert await db.jobs.depth() == jobs.QueueDepth(ready=3, cancelled=1)
        by_kind = await db.jobs.depth_by_kind()
        assert list(by_kind) == ["default", "index", "render"]  # sorted by name
        assert by_kind["render"] == jobs.QueueDepth(ready=1, cancelled=1)
        assert by_kind["render"].total == 2
        assert [r.id for r in await db.jobs.list(kind="render")] == ["r2", "r1"]
        assert [r.id for r in await db.jobs.list("ready", kind="render")] == ["r2"]
        assert [r.id for r in await db.jobs.list(kind="index", limit=5)] == ["i1"]


# SQL: it drops columns of corral_jobs (a DynamoDB item has no columns to migrate).
async def test_a_table_made_before_kinds_gets_their_columns(db_url: str) -> None:
    """A queue of the previous version keeps working: its jobs are of kind default."""

    async def handle(ctx: jobs.JobContext) -> None:
        pass

    async with database(db_url) as db:
        await db.jobs.enqueue_many([jobs.Job("old"), jobs.Job("waiting")])
        # As the previous version made it: no index by kind, no kind, no cancel_requested.
        for drop in (
            "DROP INDEX corral_jobs_waiting_kind",
            "ALTER TABLE corral_jobs DROP COLUMN kind",
            "ALTER TABLE corral_jobs DROP COLUMN cancel_requested",
        ):
            await db._run(lambda conn, drop=drop: conn.execute(drop))
    async with database(db_url) as db:
        await db.jobs.enqueue(jobs.Job("new", kind="render"))
        records = {r.id: r for r in await db.jobs.list()}
        assert {r.id: (r.kind, r.cancel_requested) for r in records.values()} == {
            "old": ("default", False),
            "waiting": ("default", False),
            "new": ("render", False),
        }
        assert await db.jobs.cancel("waiting") is jobs.Cancellation.CANCELLED
        await jobs.Processor(db, {"default": handle}, config=config()).run(until_idle=True)
        assert (await db.jobs.get("old")).state is jobs.State.COMPLETED
        assert (await db.jobs.get("new")).state is jobs.State.READY
        assert (await db.jobs.get("waiting")).state is jobs.State.CANCELLED


async def test_the_log_names_the_kind_of_each_job(
    any_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handle(ctx: jobs.JobContext) -> None:
        pass

    async with database(any_url) as db:
        await db.jobs.enqueue_many([jobs.Job("r1", kind="render"), jobs.Job("plain")])
        processor = jobs.Processor(db, handle, config=config())
        with caplog.at_level(logging.INFO, "corral.jobs"):
            await processor.run(until_idle=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "corral.jobs"]
    assert "job r1 of kind render completed (attempt 1 on default)" in lines
    assert "job plain completed (attempt 1 on default)" in lines  # the default kind unsaid
