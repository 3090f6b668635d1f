"""The contract of the progress port (:class:`corral._ports.ProgressStore`), on every store.

Each test drives ``session.progress`` the way the progress domain does, inside writer
operations (``db._run``) of a real database, and checks one guarantee the port's
docstrings state. A new backend runs these by adding its URL to the ``store_url``
fixture (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio
import pytest

import corral
from corral._ports import Session
from corral._ports._progress import ProgressStore, RunProgress, Status, SubtaskProgress

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

#: A start time with microseconds, as the domain stamps them.
T0 = datetime(2026, 12, 3, 9, 30, 15, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def on(db: corral.Database, fn: Callable[[ProgressStore], Awaitable[T]]) -> T:
    """Run ``fn(session.progress)`` as one writer operation of ``db``."""

    async def operation(session: Session) -> T:
        return await fn(session.progress)

    return await db._run(operation)


async def ready(db: corral.Database) -> None:
    await on(db, lambda p: p.ensure_schema())


async def run_with_subtask(db: corral.Database, items_total: int | None = 10) -> int:
    run_id = await on(db, lambda p: p.start_run("STATIC", "a run", T0))
    await on(db, lambda p: p.start_subtask(run_id, 1, "first", items_total, T0))
    return run_id


async def subtask(db: corral.Database, run_id: int, number: int = 1) -> SubtaskProgress:
    [found] = [s for s in await on(db, lambda p: p.subtasks(run_id)) if s.number == number]
    return found


# -- the schema --------------------------------------------------------------------------------


async def test_exists_creates_nothing_and_ensure_schema_creates_what_is_missing(
    store_url: str,
) -> None:
    async with corral.connect(store_url) as db:
        assert await on(db, lambda p: p.exists()) is False
        assert await on(db, lambda p: p.exists()) is False
        await ready(db)
        assert await on(db, lambda p: p.exists()) is True
        run_id = await on(db, lambda p: p.start_run("STATIC", "kept", T0))
        await ready(db)  # again: nothing lost
        assert await on(db, lambda p: p.exists()) is True
        assert [r.id for r in await on(db, lambda p: p.runs(10))] == [run_id]


async def test_ensure_schema_from_several_connections_at_once(store_url: str) -> None:
    async with (
        corral.connect(store_url) as a,
        corral.connect(store_url) as b,
        corral.connect(store_url) as c,
        anyio.create_task_group() as tg,
    ):
        for db in (a, b, c):
            tg.start_soon(ready, db)
    async with corral.connect(store_url) as db:
        assert await on(db, lambda p: p.exists()) is True


# -- runs --------------------------------------------------------------------------------------


async def test_a_run_is_recorded_running_with_a_new_unique_id(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        ids = [
            await on(db, lambda p, n=n: p.start_run("STATIC", f"run {n}", at(n))) for n in range(3)
        ]
        assert len(set(ids)) == 3
        assert await on(db, lambda p: p.run(ids[1])) == RunProgress(
            id=ids[1],
            type="STATIC",
            name="run 1",
            status=Status.RUNNING,
            message=None,
            started_at=at(1),
            ended_at=None,
        )
        assert await on(db, lambda p: p.run(max(ids) + 1000)) is None


async def test_runs_are_the_latest_first(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        ids = [await on(db, lambda p, n=n: p.start_run("STATIC", str(n), T0)) for n in range(5)]
        assert [r.id for r in await on(db, lambda p: p.runs(3))] == sorted(ids)[::-1][:3]
        assert [r.id for r in await on(db, lambda p: p.runs(10))] == sorted(ids)[::-1]


async def test_finishing_a_run_sets_status_and_end_and_keeps_the_message_unless_given(
    store_url: str,
) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        run_id = await on(db, lambda p: p.start_run("STATIC", "r", T0))
        await on(db, lambda p: p.finish_run(run_id, Status.FAILED, "it broke", at(5)))
        run = await on(db, lambda p: p.run(run_id))
        assert run is not None
        assert (run.status, run.message, run.ended_at) == (Status.FAILED, "it broke", at(5))
        await on(db, lambda p: p.finish_run(run_id, Status.COMPLETED, None, at(6)))
        run = await on(db, lambda p: p.run(run_id))
        assert run is not None
        assert (run.status, run.message, run.ended_at) == (Status.COMPLETED, "it broke", at(6))
        await on(db, lambda p: p.finish_run(run_id + 1000, Status.FAILED, "nobody", at(7)))


# -- subtasks ----------------------------------------------------------------------------------


async def test_a_subtask_is_recorded_running(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        run_id = await run_with_subtask(db, items_total=None)
        await on(db, lambda p: p.start_subtask(run_id, 2, "second", 40, at(1)))
        first, second = await on(db, lambda p: p.subtasks(run_id))
        assert first == SubtaskProgress(
            run_id=run_id,
            number=1,
            name="first",
            status=Status.RUNNING,
            items_total=None,
            items_complete=0,
            percent=None,
            message=None,
            started_at=T0,
            ended_at=None,
            updated_at=T0,
        )
        assert (second.number, second.name, second.items_total) == (2, "second", 40)
        assert await on(db, lambda p: p.subtask_name(run_id, 2)) == "second"
        assert await on(db, lambda p: p.subtask_name(run_id, 3)) is None
        assert await on(db, lambda p: p.subtasks(run_id + 1000)) == []


async def test_restarting_a_subtask_keeps_its_count_start_percent_and_message(
    store_url: str,
) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        run_id = await run_with_subtask(db)
        await on(db, lambda p: p.add({(run_id, 1): 7}, at(1)))
        await on(
            db,
            lambda p: p.update_subtask(
                run_id,
                1,
                updated_at=at(2),
                ended=True,
                status=Status.FAILED,
                percent=12.5,
                message="stopped",
            ),
        )
        await on(db, lambda p: p.start_subtask(run_id, 1, "renamed", 20, at(3)))
        assert await subtask(db, run_id) == SubtaskProgress(
            run_id=run_id,
            number=1,
            name="renamed",
            status=Status.RUNNING,
            items_total=20,
            items_complete=7,
            percent=12.5,
            message="stopped",
            started_at=T0,
            ended_at=None,
            updated_at=at(3),
        )


async def test_an_update_sets_the_fields_given_and_keeps_the_others(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        run_id = await run_with_subtask(db)
        await on(
            db, lambda p: p.update_subtask(run_id, 1, updated_at=at(1), ended=False, message="m")
        )
        await on(
            db, lambda p: p.update_subtask(run_id, 1, updated_at=at(2), ended=False, percent=30.0)
        )
        sub = await subtask(db, run_id)
        assert (sub.message, sub.percent, sub.status, sub.items_total) == (
            "m",
            30.0,
            Status.RUNNING,
            10,
        )
        assert (sub.updated_at, sub.ended_at) == (at(2), None)
        await on(
            db,
            lambda p: p.update_subtask(
                run_id, 1, updated_at=at(3), ended=True, status=Status.COMPLETED, items_total=11
            ),
        )
        sub = await subtask(db, run_id)
        assert (sub.message, sub.percent, sub.status, sub.items_total) == (
            "m",
            30.0,
            Status.COMPLETED,
            11,
        )
        assert (sub.updated_at, sub.ended_at) == (at(3), at(3))
        await on(db, lambda p: p.update_subtask(run_id, 9, updated_at=at(4), ended=True))


@pytest.mark.parametrize(
    ("total", "complete", "percent"),
    [(10, 4, 40.0), (10, 15, 100.0), (0, 3, None), (None, 3, None)],
)
async def test_percent_is_the_stored_one_else_from_the_counts(
    store_url: str, total: int | None, complete: int, percent: float | None
) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        run_id = await run_with_subtask(db, items_total=total)
        await on(db, lambda p: p.add({(run_id, 1): complete}, at(1)))
        sub = await subtask(db, run_id)
        assert (sub.items_complete, sub.percent) == (complete, percent)
        await on(
            db, lambda p: p.update_subtask(run_id, 1, updated_at=at(2), ended=False, percent=1.5)
        )
        assert (await subtask(db, run_id)).percent == 1.5


async def test_times_are_utc_and_aware_coming_out(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        run_id = await run_with_subtask(db)
        await on(db, lambda p: p.finish_run(run_id, Status.COMPLETED, None, at(1)))
        run = await on(db, lambda p: p.run(run_id))
        sub = await subtask(db, run_id)
    assert run is not None
    for stamp in (run.started_at, run.ended_at, sub.started_at, sub.updated_at):
        assert stamp is not None
        assert stamp.utcoffset() == timedelta(0)


# -- counting ----------------------------------------------------------------------------------


async def test_add_adds_every_count_exactly_and_skips_unknown_subtasks(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)
        run_id = await run_with_subtask(db)
        await on(db, lambda p: p.start_subtask(run_id, 2, "second", None, T0))
        await on(db, lambda p: p.add({(run_id, 1): 3, (run_id, 2): 1_000_000}, at(1)))
        await on(db, lambda p: p.add({(run_id, 1): 4, (run_id, 99): 5, (run_id + 9, 1): 6}, at(2)))
        first, second = await on(db, lambda p: p.subtasks(run_id))
    assert (first.items_complete, first.updated_at) == (7, at(2))
    assert (second.items_complete, second.updated_at) == (1_000_000, at(1))
    assert [s.number for s in (first, second)] == [1, 2]


async def test_counts_from_several_connections_at_once_are_exact(store_url: str) -> None:
    # As from processes or hosts sharing the store: each connection its own writer.
    writers, rounds = 4, 25
    async with corral.connect(store_url) as db:
        await ready(db)
        run_id = await run_with_subtask(db)
        await on(db, lambda p: p.start_subtask(run_id, 2, "second", None, T0))

    async def count(n: int) -> None:
        async with corral.connect(store_url) as db:
            for r in range(rounds):
                await on(db, lambda p, r=r: p.add({(run_id, 1): 1, (run_id, 2): n + 1}, at(r)))

    async with anyio.create_task_group() as tg:
        for n in range(writers):
            tg.start_soon(count, n)
    async with corral.connect(store_url) as db:
        first, second = await on(db, lambda p: p.subtasks(run_id))
    assert first.items_complete == writers * rounds
    assert second.items_complete == rounds * sum(range(1, writers + 1))


# -- the batch ---------------------------------------------------------------------------------


async def test_a_read_sees_what_the_batch_wrote_before_it(store_url: str) -> None:
    async with corral.connect(store_url) as db:
        await ready(db)

        async def write_then_read(p: ProgressStore) -> list[Any]:
            run_id = await p.start_run("STATIC", "r", T0)
            await p.start_subtask(run_id, 1, "s", 2, T0)
            await p.add({(run_id, 1): 2}, at(1))
            return [await p.run(run_id), await p.subtasks(run_id)]

        run, [sub] = await on(db, write_then_read)
    assert run.name == "r"
    assert (sub.items_complete, sub.percent) == (2, 100.0)


async def test_what_a_failed_operation_wrote_is_not_kept(store_url: str) -> None:
    class Boom(Exception):
        pass

    async with corral.connect(store_url) as db:
        await ready(db)
        run_id = await run_with_subtask(db)

        async def half_done(p: ProgressStore) -> None:
            await p.add({(run_id, 1): 5}, at(1))
            await p.start_run("STATIC", "never", T0)
            raise Boom

        with pytest.raises(Boom):
            await on(db, half_done)
        # And in a batch with other operations, queued while a first one holds the writer.
        entered, release = anyio.Event(), anyio.Event()

        async def hold(p: ProgressStore) -> None:
            entered.set()
            await release.wait()

        async def fails() -> None:
            with pytest.raises(Boom):
                await on(db, half_done)

        async with anyio.create_task_group() as tg:
            tg.start_soon(on, db, hold)
            await entered.wait()
            tg.start_soon(fails)
            tg.start_soon(on, db, lambda p: p.add({(run_id, 1): 1}, at(2)))
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert [r.id for r in await on(db, lambda p: p.runs(10))] == [run_id]
        assert (await subtask(db, run_id)).items_complete == 1
