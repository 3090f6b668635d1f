"""Runs that end: heartbeats, runs ended by leaving ``connect``, abandoned runs, old tables.

Real SQLite files, a real PostgreSQL server and DynamoDB on moto (``any_url``; the
test of old tables runs SQL: ``db_url``); the programs that die are real processes
(they print a line once their run started; the test reads it, then sends the signal).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from click.testing import CliRunner, Result

import corral
from corral._cli import cli
from corral._ports import Session
from corral._ports._progress import ProgressStore, RunProgress, Status
from corral._progress import ABANDONED_AFTER, is_abandoned, last_update

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).parent
WORKER = str(HERE / "progress_worker.py")
T = TypeVar("T")

#: A start time with microseconds, as the tracker stamps them.
T0 = datetime(2026, 12, 3, 9, 30, 15, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class FakeClock:
    """The tracker's time source, moved by the test."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


async def on(db: corral.Database, fn: Callable[[ProgressStore], Awaitable[T]]) -> T:
    """Run ``fn(session.progress)`` as one writer operation of ``db``."""

    async def operation(session: Session) -> T:
        return await fn(session.progress)

    return await db._run(operation)


def read_run(url: str, run_id: int) -> RunProgress:
    async def main() -> RunProgress:
        async with corral.connect(url) as db:
            return await db.progress.run_progress(run_id)

    return anyio.run(main)


def start_child(
    url: str, backend: str, *extra: str, lines: list[str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """Start the worker's ``open`` program; return it and its run's id, once started.

    Its stdout and stderr are one pipe, read through its file object only (see
    :func:`rest`); the lines it printed before are appended to ``lines``.
    """
    child = subprocess.Popen(
        [sys.executable, WORKER, "open", url, backend, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"},
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("started "):
            return child, int(line.split()[1])
        if lines is not None:
            lines.append(line)
    child.kill()
    raise AssertionError(f"the child ended before its run started: {rest(child)}")


def rest(child: subprocess.Popen[str]) -> str:
    """Return what ``child`` prints until it exits, once it has exited.

    Read from its file object: ``communicate(timeout=...)`` reads the pipe's descriptor
    itself, and would miss the lines the file object read ahead while iterating.
    """
    assert child.stdout is not None
    out = child.stdout.read()
    child.wait(timeout=60)
    return out


# -- leaving connect ends the runs it started --------------------------------------------------


async def test_leaving_connect_with_an_exception_fails_its_open_runs(any_url: str) -> None:
    ids: dict[str, int] = {}

    async def program() -> None:
        async with corral.connect(any_url) as db:
            failed = await db.progress.start_run("STATIC", "left open")
            sub = await failed.start_subtask(1, "count", items_total=10)
            sub.increment(4)
            done = await db.progress.start_run("STATIC", "completed here")
            await done.complete(message="fine")
            elsewhere = await db.progress.start_run("STATIC", "completed elsewhere")
            async with corral.connect(any_url) as other:  # as another process would
                await (await other.progress.run(elsewhere.id)).complete(message="theirs")
            ids.update(failed=failed.id, done=done.id, elsewhere=elsewhere.id)
            raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        await program()
    failed, done, elsewhere = (ids[name] for name in ("failed", "done", "elsewhere"))
    async with corral.connect(any_url) as db:
        run = await db.progress.run_progress(failed)
        assert (run.status, run.message) == (Status.FAILED, "KeyError: 'mine'")
        assert run.ended_at is not None
        assert run.updated_at == run.ended_at
        [row] = await db.progress.get(failed)
        assert row.items_complete == 4  # the counts pending at exit are kept too
        run = await db.progress.run_progress(done)
        assert (run.status, run.message) == (Status.COMPLETED, "fine")
        run = await db.progress.run_progress(elsewhere)
        assert (run.status, run.message) == (Status.COMPLETED, "theirs")


async def test_cancelled_is_interrupted_a_group_fails_and_a_normal_exit_ends_nothing(
    any_url: str,
) -> None:
    with anyio.CancelScope() as scope:
        async with corral.connect(any_url) as db:
            cancelled = await db.progress.start_run("STATIC", "cancelled")
            scope.cancel()
            await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    grouped: list[int] = []

    async def fail() -> None:
        raise ValueError("a task broke")

    async def program() -> None:
        async with corral.connect(any_url) as db, anyio.create_task_group() as tg:
            grouped.append((await db.progress.start_run("STATIC", "in a task group")).id)
            tg.start_soon(fail)

    with pytest.raises(ExceptionGroup):
        await program()
    async with corral.connect(any_url) as db:
        kept = await db.progress.start_run("STATIC", "left running")
    async with corral.connect(any_url) as db:
        run = await db.progress.run_progress(cancelled.id)
        assert (run.status, run.message) == (Status.INTERRUPTED, "interrupted: cancelled")
        run = await db.progress.run_progress(grouped[0])
        assert (run.status, run.message) == (Status.FAILED, "ValueError: a task broke")
        run = await db.progress.run_progress(kept.id)
        assert (run.status, run.ended_at) == (Status.RUNNING, None)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_marks_the_run_interrupted(any_url: str, backend: str) -> None:
    child, run_id = start_child(any_url, backend)
    with child:
        child.send_signal(signal.SIGINT)
        out = rest(child)
    assert child.returncode != 0, out
    run = read_run(any_url, run_id)
    assert (run.status, run.message) == (Status.INTERRUPTED, "interrupted: KeyboardInterrupt"), out
    assert run.ended_at is not None


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_on_show_progress_prints_one_line_and_no_traceback(
    any_url: str, backend: str
) -> None:
    before: list[str] = []
    child, run_id = start_child(any_url, backend, "show", lines=before)
    with child:
        child.send_signal(signal.SIGINT)
        out = rest(child)
    assert child.returncode == -signal.SIGINT, out  # as an uncaught Ctrl-C exits
    # All it printed (stderr too): the display, its last state, and one line; not one
    # line of traceback.
    printed = [line for line in (*before, *out.splitlines(True)) if "started" not in line]
    assert len(printed) == 3, printed
    title, count, line = printed
    assert (title, count) == (
        f"run {run_id}: STATIC interrupt me\n",
        "1. Count: 3/10 30% RUNNING\n",
    )
    assert line.startswith(f"Interrupted (Ctrl-C): run {run_id} STATIC 'interrupt me' at ")
    assert "3 of 10 items" in line
    assert "kept in " in line
    assert "the counts committed and the run, marked INTERRUPTED" in line
    run = read_run(any_url, run_id)
    assert (run.status, run.message) == (Status.INTERRUPTED, "interrupted: Ctrl-C")


# -- heartbeats, and abandoned runs --------------------------------------------------------------


async def test_a_run_s_heartbeat_is_its_counts_and_a_periodic_touch(any_url: str) -> None:
    async with corral.connect(any_url, heartbeat=30) as db:
        clock = FakeClock(T0)
        db.progress._clock = clock
        run = await db.progress.start_run("STATIC", "beating")
        sub = await run.start_subtask(1, "count")

        async def heartbeat() -> datetime | None:
            await db.flush()
            return (await db.progress.run_progress(run.id)).updated_at

        assert await heartbeat() == T0
        clock.advance(29)
        assert await heartbeat() == T0  # idle, and no period has passed: nothing written
        assert await heartbeat() == T0
        now = clock.advance(2)
        assert await heartbeat() == now  # a period: touched, though idle
        sub.increment()
        clock.advance(0.5)
        assert await heartbeat() == at(31)  # counted, but stamped less than 1 s ago
        sub.increment(5)
        now = clock.advance(0.5)
        assert await heartbeat() == now  # counted: stamped
        [row] = await run.subtasks()
        assert row.items_complete == 6
        await run.complete()
        ended = clock.now
        clock.advance(100)
        assert await heartbeat() == ended  # a finished run keeps its end as heartbeat
        with pytest.raises(ValueError, match="heartbeat must be a finite number of seconds > 0"):
            async with corral.connect(any_url, heartbeat=0):
                pass
        with pytest.raises(TypeError, match="heartbeat must be seconds as a number"):
            async with corral.connect(any_url, heartbeat="30"):  # type: ignore[arg-type]
                pass


def _cli(url: str, *args: str) -> Result:
    """Run ``corral progress --db URL ARGS`` in process (click's runner)."""
    return CliRunner().invoke(
        cli, ["progress", "--db", url, *args], env={"COLUMNS": "200", "NO_COLOR": "1"}
    )


def test_a_killed_program_s_run_is_abandoned_once_its_heartbeat_is_old(any_url: str) -> None:
    child, run_id = start_child(any_url, "asyncio")
    with child:
        child.kill()  # SIGKILL: nothing ends the run
        rest(child)
    run = read_run(any_url, run_id)
    assert run.status is Status.RUNNING
    assert run.updated_at is not None
    beat = last_update(run)
    assert not is_abandoned(run, now=beat + timedelta(seconds=ABANDONED_AFTER))
    assert is_abandoned(run, now=beat + timedelta(seconds=ABANDONED_AFTER + 1))
    assert is_abandoned(run, after=5, now=beat + timedelta(seconds=6))
    listing = _cli(any_url, "--abandoned-after", "0")  # any age is too old
    assert listing.exit_code == 0, listing.output
    [row] = [line for line in listing.output.splitlines() if "interrupt me" in line]
    assert "ABANDONED" in row
    assert " ago" in row  # the last update, for people
    fresh = json.loads(_cli(any_url, "--json").output)[0]
    assert (fresh["status"], fresh["abandoned"]) == ("RUNNING", False)
    assert fresh["updated_at"] == beat.isoformat()


# -- tables made by the previous version -----------------------------------------------------------


def _old_tables(dialect: str) -> list[str]:
    """The tables as corral 0.1.0.dev made them: no heartbeat on the runs."""
    ident, stamp = (
        ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT")
        if dialect == "sqlite"
        else ("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "TIMESTAMPTZ")
    )
    return [
        f"CREATE TABLE corral_runs (id {ident}, type TEXT NOT NULL, name TEXT NOT NULL, "
        f"status TEXT NOT NULL, message TEXT, started_at {stamp} NOT NULL, ended_at {stamp})",
        f"CREATE TABLE corral_subtasks (run_id BIGINT NOT NULL REFERENCES corral_runs(id) "
        f"ON DELETE CASCADE, number BIGINT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, "
        f"items_total BIGINT, items_complete BIGINT NOT NULL DEFAULT 0, percent DOUBLE "
        f"PRECISION, message TEXT, started_at {stamp} NOT NULL, ended_at {stamp}, "
        f"updated_at {stamp} NOT NULL, PRIMARY KEY (run_id, number))",
    ]


# SQL: it makes the tables of the previous version (DynamoDB's store has no older one).
async def test_tables_of_the_previous_version_are_read_then_brought_up_to_date(
    db_url: str,
) -> None:
    async with corral.connect(db_url) as db:
        stamp: Callable[[datetime], object] = (
            (lambda t: t.isoformat()) if db.dialect == "sqlite" else (lambda t: t)
        )

        async def make_old(conn: corral._backends.Connection) -> None:
            for statement in _old_tables(db.dialect):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO corral_runs (type, name, status, started_at) VALUES (?, ?, ?, ?)",
                "STATIC",
                "old",
                "RUNNING",
                stamp(T0),
            )
            await conn.execute(
                "INSERT INTO corral_subtasks (run_id, number, name, status, items_complete, "
                "started_at, updated_at) VALUES (1, 1, 'count', 'RUNNING', 7, ?, ?)",
                stamp(T0),
                stamp(at(60)),
            )

        await db._run(make_old)
    # A reader (corral progress) reads them as they are, creating and changing nothing.
    listing = await anyio.to_thread.run_sync(_cli, db_url)
    assert listing.exit_code == 0, listing.output
    assert "ABANDONED" in listing.output  # no heartbeat at all: judged by its start
    async with corral.connect(db_url) as db:
        assert await db.progress._exists()
        [old] = await db.progress.runs()
        assert (old.name, old.updated_at, last_update(old)) == ("old", None, T0)
    # A writer brings them up to date: the column is added, the old run's heartbeat is
    # its subtasks' latest write, and new runs have one.
    async with corral.connect(db_url) as db:
        new = await db.progress.start_run("STATIC", "new")
        old = await db.progress.run_progress(1)
        assert (old.updated_at, old.status) == (at(60), Status.RUNNING)
        assert (await db.progress.run_progress(new.id)).updated_at is not None
        [row] = await db.progress.get(1)
        assert row.items_complete == 7
        await on(db, lambda p: p.ensure_schema())  # again: nothing to add, nothing breaks
        await new.complete(message="done")
    async with corral.connect(db_url) as db:
        assert (await db.progress.run_progress(new.id)).message == "done"


# -- the port's additions (every store of the contract suite) ------------------------------------


async def test_the_port_ends_running_runs_only_and_touches_running_runs_only(
    store_url: str,
) -> None:
    async with corral.connect(store_url) as db:
        await on(db, lambda p: p.ensure_schema())
        a, b, c = [await on(db, lambda p, n=n: p.start_run("STATIC", "r", at(n))) for n in range(3)]
        run = await on(db, lambda p: p.run(a))
        assert run is not None
        assert run.updated_at == at(0)  # started: its heartbeat is its start
        await on(db, lambda p: p.finish_run(c, Status.COMPLETED, "done", at(5)))
        await on(db, lambda p: p.touch_runs([a, b, c, c + 1000], at(7)))
        runs = {r.id: r for r in await on(db, lambda p: p.runs(10))}
        assert (runs[a].updated_at, runs[b].updated_at) == (at(7), at(7))
        assert runs[c].updated_at == at(5)  # finished: left as it is
        ended = await on(
            db, lambda p: p.end_running([c, b, a, c + 1000], Status.FAILED, "KeyError", at(9))
        )
        assert ended == sorted([a, b])
        runs = {r.id: r for r in await on(db, lambda p: p.runs(10))}
        for run_id in (a, b):
            assert (runs[run_id].status, runs[run_id].message) == (Status.FAILED, "KeyError")
            assert runs[run_id].ended_at == runs[run_id].updated_at == at(9)
        assert (runs[c].status, runs[c].message, runs[c].ended_at) == (
            Status.COMPLETED,
            "done",
            at(5),
        )
        assert await on(db, lambda p: p.end_running([], Status.FAILED, None, at(10))) == []
        assert await on(db, lambda p: p.end_running([a], Status.INTERRUPTED, None, at(10))) == []
