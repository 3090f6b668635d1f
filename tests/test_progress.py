from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from rich.console import Console

import corral
import helpers
from corral._backends import Connection

HERE = Path(__file__).parent


async def test_a_run_and_its_subtasks_from_start_to_end(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "Process Counties")
        sub = await run.start_subtask(1, "Process all counties", items_total=3143)
        other = await run.start_subtask(2, "Summaries")
        sub.increment()
        sub.increment(10)
        await sub.update(status="RUNNING", percent=50, message="halfway")
        [first, second] = await db.progress.get(run.id)
        assert (first.number, first.name, first.items_complete) == (1, "Process all counties", 11)
        assert (first.items_total, first.percent, first.message) == (3143, 50.0, "halfway")
        assert first.status is corral.Status.RUNNING
        assert first.ended_at is None
        assert second.items_total is None
        assert second.percent is None
        await sub.complete(message="All counties processed")
        await other.fail(message="no data")
        await run.complete()
        [first, second] = await run.subtasks()
        assert first.status is corral.Status.COMPLETED
        assert first.percent == 100.0
        assert first.message == "All counties processed"
        assert first.ended_at is not None
        assert first.ended_at >= first.started_at
        assert (second.status, second.message) == (corral.Status.FAILED, "no data")
        state = await db.progress.run_progress(run.id)
        assert state.status is corral.Status.COMPLETED
        assert state.ended_at is not None
        assert (await db.progress.runs())[0].id == run.id


async def test_percent_follows_the_counts_when_not_set(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "percent")
        sub = await run.start_subtask(1, "quarter", items_total=200)
        sub.increment(50)
        [row] = await db.progress.get(run.id)
        assert row.percent == 25.0
        skipped = await run.start_subtask(2, "skipped")
        await skipped.skip(message="nothing to do")
        assert (await db.progress.get(run.id))[1].status is corral.Status.SKIPPED


async def test_counts_are_exact_from_a_thousand_tasks_and_threads(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "exact")
        sub = await run.start_subtask(1, "count", items_total=1_000_000)

        def in_thread() -> None:
            for _ in range(1000):
                sub.increment()

        async def on_loop() -> None:
            for i in range(1000):
                sub.increment()
                if i % 100 == 0:
                    await anyio.lowlevel.checkpoint()  # interleave with the writer

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                if i % 2:
                    tg.start_soon(anyio.to_thread.run_sync, in_thread)
                else:
                    tg.start_soon(on_loop)
        [row] = await db.progress.get(run.id)
        assert row.items_complete == 1_000_000
        assert row.percent == 100.0


async def test_map_counts_every_completed_item(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "map")
        threads = await run.start_subtask(1, "threads", items_total=300)
        processes = await run.start_subtask(2, "processes", items_total=300)
        coroutines = await run.start_subtask(3, "coroutines", items_total=300)

        async def double(x: int) -> int:
            await anyio.lowlevel.checkpoint()
            return 2 * x

        assert await corral.map(helpers.square, range(300), progress=threads)
        assert await corral.map(helpers.square, range(300), offload="process", progress=processes)
        assert await corral.map(double, range(300), progress=coroutines)
        counts = [row.items_complete for row in await db.progress.get(run.id)]
        assert counts == [300, 300, 300]


async def test_a_count_reaches_the_database_within_a_flush_interval(any_url: str) -> None:
    async with corral.connect(any_url, flush_interval=0.02) as db:
        run = await db.progress.start_run("STATIC", "visible")
        sub = await run.start_subtask(1, "count")
        tracker = db.progress
        written = anyio.Event()
        write = tracker.write

        async def spy(conn: Connection) -> None:
            await write(conn)
            written.set()

        tracker.write = spy  # type: ignore[method-assign]
        await anyio.to_thread.run_sync(sub.increment, 7)  # from a thread, no other traffic
        with anyio.fail_after(30):  # no flush: the writer polls every flush interval
            await written.wait()

        async def nothing(conn: Connection) -> None:
            pass

        await db._run(nothing)  # queued behind the batch that wrote the count: committed
        async with corral.connect(any_url) as other:  # another connection sees it
            [row] = await other.progress.get(run.id)
        assert row.items_complete == 7


@pytest.mark.parametrize("ending", ["normal", "exception", "cancelled"])
async def test_increments_pending_at_exit_are_committed(any_url: str, ending: str) -> None:
    run_id = 0
    with anyio.CancelScope() as scope:
        try:
            async with corral.connect(any_url, flush_interval=3600) as db:
                run = await db.progress.start_run("STATIC", "exit")
                run_id = run.id
                sub = await run.start_subtask(1, "count")
                for _ in range(777):
                    sub.increment()
                if ending == "exception":
                    raise KeyError("body failed")
                if ending == "cancelled":
                    scope.cancel()
                    await anyio.sleep_forever()
        except KeyError:
            assert ending == "exception"
    async with corral.connect(any_url) as db:
        [row] = await db.progress.get(run_id)
        assert row.items_complete == 777


async def test_a_handle_from_another_connection_adds_to_the_same_count(any_url: str) -> None:
    async with corral.connect(any_url) as first, corral.connect(any_url) as second:
        run = await first.progress.start_run("STATIC", "shared")
        mine = await run.start_subtask(1, "shared")
        theirs = await second.progress.subtask(run.id, 1)
        assert theirs.name == "shared"
        for _ in range(1000):
            mine.increment()
            theirs.increment(2)
        await second.flush()
        [row] = await first.progress.get(run.id)
        assert row.items_complete == 3000
        with pytest.raises(corral.ProgressNotFoundError, match="no subtask 9 in run"):
            await second.progress.subtask(run.id, 9)
        with pytest.raises(corral.ProgressNotFoundError, match="no run with id"):
            await second.progress.run(10**9)


def _count_in_processes(url: str, run_id: int, processes: int, each: int) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, str(HERE / "progress_worker.py"), url, str(run_id), str(each)]
        )
        for _ in range(processes)
    ]
    for child in children:
        assert child.wait(timeout=120) == 0


async def test_counts_are_exact_across_processes(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "processes")
        sub = await run.start_subtask(1, "shared")

        async def here() -> None:
            for i in range(20_000):
                sub.increment()
                if i % 500 == 0:
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(here)
            tg.start_soon(anyio.to_thread.run_sync, _count_in_processes, any_url, run.id, 3, 20_000)
        [row] = await db.progress.get(run.id)
        assert row.items_complete == 4 * 20_000


def _kill_after_ready(url: str, run_id: int, count: int) -> None:
    command = [sys.executable, str(HERE / "progress_worker.py"), url, str(run_id), str(count)]
    with subprocess.Popen([*command, "--hang"], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        finally:
            child.kill()  # SIGKILL: no cleanup, no last flush
            child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL


async def test_a_killed_process_loses_only_what_it_had_not_written(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "killed")
        sub = await run.start_subtask(1, "shared")
        sub.increment(5)
        await anyio.to_thread.run_sync(_kill_after_ready, any_url, run.id, 1000)
        sub.increment(5)
        [row] = await db.progress.get(run.id)
        # The child's committed 1,000 are there exactly once; its unwritten 1,000 died
        # with it; the parent's own counts are unaffected.
        assert row.items_complete == 1000 + 10


async def test_restarting_a_subtask_keeps_its_count(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "resume")
        sub = await run.start_subtask(1, "first try", items_total=10)
        sub.increment(4)
        await sub.fail(message="crashed")
        again = await run.start_subtask(1, "second try", items_total=10)
        again.increment(6)
        [row] = await db.progress.get(run.id)
        assert (row.name, row.status, row.items_complete) == ("second try", "RUNNING", 10)
        assert row.ended_at is None


async def test_bad_input_is_refused_and_loses_nothing(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "bad input")
        sub = await run.start_subtask(1, "count")
        sub.increment(5)
        with pytest.raises(TypeError, match="increment takes an int"):
            sub.increment(1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="increment takes an int"):
            sub.increment(True)
        with pytest.raises(ValueError, match=">= 0"):
            sub.increment(-1)
        sub.increment(0)
        with pytest.raises(ValueError, match="status must be one of"):
            await sub.update(status="DONE")
        with pytest.raises(ValueError, match=">= 0 and <= 100"):
            await sub.update(percent=101)
        with pytest.raises(TypeError, match="at least one of"):
            await sub.update()
        with pytest.raises(ValueError, match="name must be a non-empty str"):
            await run.start_subtask(2, "")
        with pytest.raises(ValueError, match="items_total must be an int"):
            await run.start_subtask(2, "x", items_total=-3)
        with pytest.raises(TypeError, match="type must be a non-empty str"):
            await db.progress.start_run(None, "x")  # type: ignore[arg-type]
        [row] = await db.progress.get(run.id)
        assert row.items_complete == 5


async def test_show_progress_draws_every_subtask(any_url: str) -> None:
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "display")
        sub = await run.start_subtask(1, "Process all counties", items_total=100)
        async with corral.show_progress(run, refresh=0.01, console=console):
            await corral.map(helpers.square, range(100), progress=sub)
            await sub.complete(message="all done")
    text = out.getvalue()
    assert f"run {run.id}: STATIC display" in text
    assert "Process all counties" in text
    assert "100/100" in text
    assert "all done" in text


async def test_names_and_messages_are_shown_as_written_not_as_markup(any_url: str) -> None:
    from corral._display import runs_table, subtasks_table

    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "bad [row] 7")
        sub = await run.start_subtask(1, "[bold]x[/bold]", items_total=2)
        async with corral.show_progress(run, refresh=0.01, console=console):
            sub.increment(2)
            await sub.complete(message="ok [done]")
        console.print(runs_table(await db.progress.runs()))
        console.print(subtasks_table(await db.progress.run_progress(run.id), await run.subtasks()))
    text = out.getvalue()
    assert text.count("bad [row] 7") >= 3
    assert text.count("[bold]x[/bold]") >= 2
    assert text.count("ok [done]") >= 2


async def test_show_progress_lets_the_body_exception_through(any_url: str) -> None:
    console = Console(file=io.StringIO(), force_terminal=False)
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "display")
        with pytest.raises(KeyError, match="mine"):
            async with corral.show_progress(run, console=console):
                raise KeyError("mine")
        with pytest.raises(TypeError, match=r"run must be a corral\.Run"):
            corral.show_progress(run.id)  # type: ignore[arg-type]


# -- the command line: real processes reading the database ---------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "corral", "progress", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _start(url: str) -> int:
    async def main() -> int:
        async with corral.connect(url) as db:
            run = await db.progress.start_run("STATIC", "Process Counties")
            sub = await run.start_subtask(1, "Process all counties", items_total=3143)
            sub.increment(1234)
            return run.id

    return anyio.run(main)


def _complete(url: str, run_id: int) -> None:
    async def main() -> None:
        async with corral.connect(url) as db:
            sub = await db.progress.subtask(run_id, 1)
            sub.increment(3143 - 1234)
            await sub.complete(message="done")
            await (await db.progress.run(run_id)).complete()

    anyio.run(main)


def test_cli_lists_runs_and_shows_one(any_url: str) -> None:
    run_id = _start(any_url)
    listing = _cli("--db", any_url)
    assert listing.returncode == 0, listing.stderr
    assert "Process Counties" in listing.stdout
    assert "RUNNING" in listing.stdout
    one = _cli("--db", any_url, str(run_id))
    assert one.returncode == 0, one.stderr
    assert "Process all counties" in one.stdout
    assert "1,234" in one.stdout
    assert "3,143" in one.stdout


def test_cli_watch_follows_a_run_until_it_ends(any_url: str) -> None:
    run_id = _start(any_url)
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "corral", "progress", "--db", any_url, "--watch", str(run_id)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _complete(any_url, run_id)
        out, err = watcher.communicate(timeout=120)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    assert f"run {run_id} COMPLETED" in out


def test_cli_errors_name_the_fix(tmp_path: Path, any_url: str) -> None:
    missing = _cli("--db", f"sqlite:///{tmp_path / 'nothing.db'}")
    assert missing.returncode != 0
    assert "no database at" in missing.stderr
    assert "--db" in missing.stderr
    bad = _cli("--db", "mysql://x/y")
    assert bad.returncode != 0
    assert "unsupported database URL scheme 'mysql'" in bad.stderr
    assert "Traceback" not in bad.stderr
    _start(any_url)  # the database exists, the run does not
    unknown = _cli("--db", any_url, "999999")
    assert unknown.returncode != 0
    assert "no run with id 999999" in unknown.stderr
    assert "Traceback" not in unknown.stderr


async def test_increment_after_the_block_ended_raises_database_closed(any_url: str) -> None:
    # Every other call on a closed database raises DatabaseClosedError; an increment
    # must too, rather than count into a tally that nobody will ever write.
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "closed")
        sub = await run.start_subtask(1, "count")
        sub.increment()
        sub.increment(2)
    with pytest.raises(corral.DatabaseClosedError, match="block has ended"):
        sub.increment()
    with pytest.raises(corral.DatabaseClosedError, match="block has ended"):
        sub.increment(5)
    with pytest.raises(corral.DatabaseClosedError, match="block has ended"):
        await anyio.to_thread.run_sync(sub.increment)
    with pytest.raises(corral.DatabaseClosedError, match="block has ended"):
        sub.increment(0)
    async with corral.connect(any_url) as db:
        [row] = await db.progress.get(run.id)
        assert row.items_complete == 3


# -- the screen ------------------------------------------------------------------------------


def _snapshot(number: int, name: str, done: int, total: int, **fields: object) -> Any:
    from corral._progress import SubtaskProgress

    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "run_id": 1,
        "number": number,
        "name": name,
        "status": corral.Status.RUNNING,
        "items_total": total,
        "items_complete": done,
        "percent": 100.0 * done / total,
        "message": None,
        "started_at": now,
        "ended_at": None,
        "updated_at": now,
        **fields,
    }
    return SubtaskProgress(**values)


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_finished_display_keeps_bars_and_counts_at_80_columns(width: int) -> None:
    from corral._display import ProgressBars

    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False)
    bars = ProgressBars("run 1: STATIC Process Counties", console=console, plain=False)
    bars.start()
    bars.update(
        [
            _snapshot(
                1,
                "Fetch all counties",
                3143,
                3143,
                status=corral.Status.COMPLETED,
                message="3,143 counties fetched",
            ),
            _snapshot(2, "Summarise all counties", 1000, 3143),
        ]
    )
    bars.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == "run 1: STATIC Process Counties"
    fetched, summed = lines[1:3]
    assert all(len(line) <= width for line in lines)
    assert fetched.startswith("1. Fetch all counties ")
    assert "━" * 10 in fetched  # a full bar, at least 10 wide
    assert "3,143/3,143 100%" in fetched
    assert "COMPLETED 3," in fetched  # the status, and as much of the message as fits
    assert summed.startswith("2. Summarise all counties ")
    assert "━" in summed
    assert "1,000/3,143  32%" in summed
    if width >= 160:
        assert "COMPLETED 3,143 counties fetched" in fetched


async def test_the_run_s_final_message_is_shown_and_a_pipe_gets_plain_lines(any_url: str) -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)  # as a pipe is
    async with corral.connect(any_url) as db:
        run = await db.progress.start_run("STATIC", "final")
        sub = await run.start_subtask(1, "Count", items_total=4)
        async with corral.show_progress(run, refresh=0.01, console=console):
            sub.increment(4)
            await sub.complete(message="4 counted")
            await run.complete(message="all counties processed")
    text = out.getvalue()
    assert "\x1b" not in text
    title, *counting, last, final = text.splitlines()
    assert title == f"run {run.id}: STATIC final"
    assert all(line.startswith("1. Count: ") for line in counting)  # as it was seen
    assert last == "1. Count: 4/4 100% COMPLETED 4 counted"
    assert final.startswith(f"run {run.id} COMPLETED: all counties processed")


def test_hints_name_a_command_that_works_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral import _display

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_display.shutil, "which", lambda name: "/usr/local/bin/corral")
    assert _display.corral_command() == "corral"
    monkeypatch.setattr(_display.shutil, "which", lambda name: None)  # not on PATH
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    script = venv / "corral"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(_display.sys, "executable", str(venv / "python"))
    assert _display.corral_command() == ".venv/bin/corral"  # relative: below the cwd
    monkeypatch.chdir(HERE)
    assert _display.corral_command() == str(script)  # else absolute
    script.unlink()
    monkeypatch.setattr(_display.sys, "argv", [str(tmp_path / "nothing" / "corral")])
    assert _display.corral_command() == f"{venv / 'python'} -m corral"  # no script at all
    # The database must still be there later: no temporary file, no :memory:, and no
    # password printed.
    kept = tmp_path / "kept.db"
    kept.write_bytes(b"")
    monkeypatch.setattr(_display.shutil, "which", lambda name: "/usr/local/bin/corral")
    monkeypatch.setattr(_display.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    url = f"sqlite:///{kept}"
    assert _display.progress_hint(url, 3) == f"corral progress --db {url} 3"
    assert _display.progress_hint(url, 3, watch=True) == f"corral progress --db {url} --watch 3"
    monkeypatch.setenv("CORRAL_DB", url)
    assert _display.progress_hint(url, 3) == "corral progress 3"  # the default URL
    assert _display.progress_hint(f"sqlite:///{tmp_path / 'gone.db'}", 3) is None
    assert _display.progress_hint("sqlite:///:memory:", 3) is None
    monkeypatch.setattr(_display.tempfile, "gettempdir", lambda: str(tmp_path))
    assert _display.progress_hint(url, 3) is None  # in the temporary directory
    assert _display.progress_hint("postgresql://u:secret@h/db", 3) is None
    assert _display.progress_hint("postgresql://u@h/db", 3) == (
        "corral progress --db postgresql://u@h/db 3"
    )
    monkeypatch.delenv("CORRAL_DB")
    assert _display.progress_hint("postgresql://u@h/db?search_path=a b", 3) == (
        "corral progress --db 'postgresql://u@h/db?search_path=a b' 3"
    )


def _rest(process: subprocess.Popen[str]) -> str:
    """Return what ``process`` prints until it exits, read through its file object.

    Not ``communicate(timeout=...)``: it reads the pipe's descriptor itself, and would
    miss the lines the file object read ahead for ``_readline``.
    """
    assert process.stdout is not None
    out = process.stdout.read()
    process.wait(timeout=120)
    return out


def _readline(stream: Any, until: str) -> list[str]:
    """Read lines from ``stream`` up to the first holding ``until``; return them."""
    lines = []
    for line in stream:
        lines.append(line)
        if until in line:
            return lines
    raise AssertionError(f"no line with {until!r}; read {lines!r}")


def test_cli_watch_waits_for_a_run_skips_an_abandoned_one_and_prints_plain_lines(
    any_url: str,
) -> None:
    async def abandoned() -> int:
        async with corral.connect(any_url) as db:
            old = datetime.now(UTC) - timedelta(hours=1)

            async def start(conn: Connection) -> int:
                await conn.progress.ensure_schema()
                return await conn.progress.start_run("STATIC", "died an hour ago", old)

            return await db._run(start)

    dead = anyio.run(abandoned)
    env = {**os.environ, "COLUMNS": "200"}
    command = [sys.executable, "-m", "corral", "progress", "--db", any_url, "--watch"]
    with subprocess.Popen(
        [*command, "--refresh", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    ) as watcher:
        assert watcher.stdout is not None
        [waiting] = _readline(watcher.stdout, "waiting")
        assert waiting.startswith("waiting for a run to start in ")
        run_id = _start(any_url)  # 1,234 of 3,143 counted
        assert run_id != dead
        seen = _readline(watcher.stdout, "1. Process all counties")
        assert seen == [
            f"run {run_id}: STATIC Process Counties\n",
            "1. Process all counties: 1,234/3,143 39% RUNNING\n",
        ]
        _complete(any_url, run_id)
        rest = _rest(watcher)
    assert watcher.returncode == 0, rest
    *between, last, final = rest.splitlines()
    # The count and the status are written apart (one item each on DynamoDB): a refresh
    # in between shows the count first, a line of its own.
    assert all(line.startswith("1. Process all counties: ") for line in between), rest
    assert last == "1. Process all counties: 3,143/3,143 100% COMPLETED done"
    assert final.startswith(f"run {run_id} COMPLETED")
    text = waiting + "".join(seen) + rest
    assert "\x1b" not in text  # a pipe: no escape codes
    assert "died an hour ago" not in text


# SQL: it reads the database's catalog to see that no table was made.
def test_cli_watch_waits_on_an_empty_database_creating_nothing_and_ctrl_c_is_one_line(
    db_url: str,
) -> None:
    from test_cli_common import _empty, _schema

    _empty(db_url)
    before = _schema(db_url)
    env = {**os.environ, "COLUMNS": "200"}
    command = [sys.executable, "-m", "corral", "progress", "--db", db_url, "--watch"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as watcher:
        assert watcher.stdout is not None
        _readline(watcher.stdout, "waiting for a run")  # no table yet: it waits for one
        assert _schema(db_url) == before
        watcher.send_signal(signal.SIGINT)
        rest = _rest(watcher)
    assert watcher.returncode == 130
    assert rest.splitlines() == [
        f"stopped waiting for a run (Ctrl-C); nothing in {db_url} was changed"
    ]
    assert _schema(db_url) == before
    run_id = _start(db_url)
    ended = subprocess.run(  # a run whose heartbeat is too old is not followed
        [*command, "--abandoned-after", "0", str(run_id)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert ended.returncode == 0, ended.stderr
    assert f"run {run_id} looks abandoned: RUNNING, last update " in ended.stdout
