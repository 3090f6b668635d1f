"""``corral jobs ...`` and ``corral worker``: real processes on real databases."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import IO

import anyio
import pytest

import corral
from corral import jobs

HANDLERS = """
import anyio
from corral import jobs


async def handle(ctx):
    payload = ctx.job.payload or {}
    if payload.get("fail") == "data":
        raise jobs.DataError(f"bad [row] {payload['row']}")
    if payload.get("fail") == "transient":
        raise jobs.TransientError("flaky")
    async with ctx.step("fetch"):
        ctx.progress.increment(payload.get("n", 1))


async def block(ctx):
    print("started", ctx.job.id, flush=True)
    await anyio.sleep_forever()


def plain(ctx):
    return None


app = {"render": handle, "index": handle}
empty = {}
bad_keys = {" render": handle}
plain_in_app = {"render": plain}
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("CORRAL_DB", None)
    return env


def _corral(
    *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=cwd,
        input=stdin,
        check=False,
    )


def _ok(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    result = _corral(*args, cwd=cwd, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _fails(*args: str, code: int = 1, cwd: Path | None = None) -> str:
    """Run a command that must fail with exit status ``code``; return its stderr."""
    result = _corral(*args, cwd=cwd)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())  # one line, whatever the message's line breaks


def _rows(table: str) -> list[list[str]]:
    """The body rows of a rich table, as lists of cell texts."""
    return [
        [cell.strip() for cell in line.strip()[1:-1].split("│")]
        for line in table.splitlines()
        if line.startswith("│")
    ]


def _records(url: str) -> dict[str, jobs.JobRecord]:
    async def main() -> dict[str, jobs.JobRecord]:
        async with corral.connect(url) as db:
            return {record.id: record for record in await db.jobs.list(limit=1000)}

    return anyio.run(main)


def _enqueue(url: str, *batch: jobs.Job) -> None:
    async def main() -> None:
        async with corral.connect(url) as db:
            await db.jobs.enqueue_many(batch)

    anyio.run(main)


def _handlers(tmp_path: Path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    return tmp_path


# -- corral jobs ------------------------------------------------------------------------------


def test_enqueue_then_status_list_and_show(db_url: str, tmp_path: Path) -> None:
    out = _ok(
        *("jobs", "enqueue", "ws-1", "--db", db_url, "--payload", '{"n": 3}'),
        *("--priority", "high", "--customer", "acme", "--affinity", "a", "--region", "eu"),
        *("--requires", "gpu", "--requires", "ssd", "--max-retries", "5"),
    )
    assert out.startswith("enqueued ws-1 (high) in ")
    lines = [
        {"id": "ws-2", "payload": [1, 2], "priority": "urgent", "requires": ["gpu"]},
        {"id": "ws-3"},
        {"id": "ws-4", "customer": "own", "max_retries": 0},
    ]
    path = tmp_path / "more.jsonl"
    path.write_text(f"{json.dumps(lines[0])}\n\n{json.dumps(lines[1])}\n{json.dumps(lines[2])}\n")
    out = _ok("jobs", "enqueue", "--db", db_url, "--file", str(path), "--customer", "zed")
    assert out.startswith(f"enqueued 3 job(s) from {path} in ")
    out = _ok("jobs", "enqueue", "--db", db_url, "--file", "-", stdin='{"id": "ws-5"}\n')
    assert out.startswith("enqueued 1 job(s) from <stdin> in ")

    records = _records(db_url)
    one = records["ws-1"]
    assert (one.payload, one.priority, one.customer) == ({"n": 3}, jobs.Priority.HIGH, "acme")
    assert (one.affinity, one.region, one.requires) == ("a", "eu", {"gpu", "ssd"})
    assert (one.max_retries, one.state, one.attempts) == (5, jobs.State.READY, 0)
    assert (records["ws-2"].payload, records["ws-2"].priority) == ([1, 2], jobs.Priority.URGENT)
    assert records["ws-2"].requires == {"gpu"}
    assert records["ws-2"].customer == "zed"  # the option fills in what a line leaves out
    assert (records["ws-3"].customer, records["ws-3"].max_retries) == ("zed", 3)
    assert (records["ws-4"].customer, records["ws-4"].max_retries) == ("own", 0)
    assert records["ws-5"].customer is None

    depth = dict(_rows(_ok("jobs", "status", "--db", db_url)))
    assert depth == {
        "ready": "5",
        "in_progress": "0",
        "retrying": "0",
        "completed": "0",
        "failed": "0",
        "dead": "0",
        "cancelled": "0",
        "pending": "5",
        "total": "5",
    }
    rows = _rows(_ok("jobs", "list", "--db", db_url))
    assert [row[0] for row in rows] == ["ws-2", "ws-1", "ws-3", "ws-4", "ws-5"]  # claim order
    assert rows[1][:6] == ["ws-1", "ready", "high", "acme", "(a)", "0/6"]
    listed = _ok("jobs", "list", "--db", db_url, "--state", "ready", "--limit", "2")
    assert [row[0] for row in _rows(listed)] == ["ws-2", "ws-1"]
    assert "2 of 5 ready jobs shown; pass --limit 5 for all" in listed
    assert _ok("jobs", "list", "--db", db_url, "--state", "dead").startswith("no dead jobs in ")

    out = _ok("jobs", "show", "ws-1", "--db", db_url)
    shown = dict(row for row in _rows(out) if row[0])
    assert (shown["state"], shown["requires"], shown["attempts"]) == ("ready", "gpu, ssd", "0 of 6")
    assert shown["payload"] == "{"
    assert '"n": 3' in out


def test_enqueue_errors_name_the_line_and_the_fix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert "give a job ID, or --file" in _fails("jobs", "enqueue", "--db", url, code=2)
    err = _fails("jobs", "enqueue", "x", "--db", url, "--payload", "{n: 1}", code=2)
    assert "--payload" in err
    assert "'{n: 1}' is not JSON" in err
    assert "quote it for the shell" in err
    _ok("jobs", "enqueue", "kept", "--db", url)

    def bad_file(text: str) -> str:
        path = tmp_path / "bad.jsonl"
        path.write_text(text)
        return _fails("jobs", "enqueue", "--db", url, "--file", str(path))

    err = bad_file('{"id": "a"}\n\n{"id": "b",\n')
    assert "bad.jsonl line 3: not JSON" in err
    assert "write one JSON object per line" in err
    err = bad_file('{"id": "a"}\n{"id": "b", "prio": "high"}\n')
    assert "bad.jsonl line 2: unknown key(s) 'prio'; the keys are id, payload, priority" in err
    err = bad_file('{"id": "a"}\n{"id": "a"}\n')
    assert "bad.jsonl line 2: id 'a' is on line 1 too; give each job its own id" in err
    err = bad_file('{"id": "a", "priority": "asap"}\n')
    assert "bad.jsonl line 1: Job priority must be one of 'urgent', 'high', 'normal', 'low'" in err
    err = bad_file('{"id": "a"}\n{"id": "kept"}\n')
    assert "job id 'kept' is already stored" in err
    assert "nothing was enqueued" in err
    assert set(_records(url)) == {"kept"}  # all or nothing

    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    err = _fails("jobs", "status", "--db", missing)
    assert "no database at" in err
    assert "pass --db URL or set CORRAL_DB" in err
    err = _fails("jobs", "show", "nope", "--db", url)
    assert "no job with id 'nope'" in err
    assert "corral jobs list shows the ids" in err


# -- corral worker ----------------------------------------------------------------------------


def test_worker_until_idle_then_requeue(db_url: str, tmp_path: Path) -> None:
    _enqueue(
        db_url,
        jobs.Job("g", {"n": 3}, requires={"gpu"}),
        jobs.Job("u", region="us"),
        jobs.Job("data", {"fail": "data", "row": 7}),
        jobs.Job("flaky", {"fail": "transient"}, max_retries=0),
    )
    result = _corral(
        *("worker", "--db", db_url, "--handler", "handlers:handle", "--until-idle"),
        *("--cluster", "a=2,region=eu,cost=0.6,labels=gpu+ssd", "--cluster", "b=1,region=us"),
        *("--poll-interval", "0.05", "--name", "cli-test"),
        cwd=_handlers(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "job g completed (attempt 1 on a)" in result.stderr
    assert "worker cli-test stopped: 4 claimed, 2 completed, 0 retried, 1 failed, 1 dead" in (
        result.stderr
    )

    records = _records(db_url)
    g, u, data, flaky = (records[name] for name in ("g", "u", "data", "flaky"))
    assert (g.state, g.cluster, g.steps_done, g.progress) == ("completed", "a", ("fetch",), 3)
    assert (u.state, u.cluster) == ("completed", "b")  # locality
    assert data.state is jobs.State.FAILED
    assert data.last_error == jobs.LastError("DATA", None, "DataError: bad [row] 7", 1)
    assert flaky.state is jobs.State.DEAD
    assert flaky.last_error is not None
    assert flaky.last_error.category is jobs.ErrorCategory.TRANSIENT

    [failed] = _rows(_ok("jobs", "list", "--db", db_url, "--state", "failed"))
    assert failed[0:2] == ["data", "failed"]
    assert failed[6] == "DATA: DataError: bad [row] 7"  # brackets are text, not markup
    out = _ok("jobs", "status", "--db", db_url, "--cluster", "a")
    assert out.startswith("jobs on cluster a in ")
    on_a = dict(_rows(out))
    expected = collections.Counter(r.state.value for r in records.values() if r.cluster == "a")
    assert {state: int(on_a[state]) for state in expected} == expected
    assert int(on_a["total"]) == sum(expected.values())

    out = _ok("jobs", "requeue", "data", "flaky", "--db", db_url)
    assert "requeued data: was failed after 1 attempt(s) (DATA: DataError: bad [row] 7)" in out
    assert "requeued flaky: was dead after 1 attempt(s)" in out
    records = _records(db_url)
    for name in ("data", "flaky"):
        assert (records[name].state, records[name].attempts) == (jobs.State.READY, 0)
    assert records["data"].last_error == data.last_error  # kept for the record

    err = _fails("jobs", "requeue", "g", "nope", "data", "--db", db_url)
    assert "3 of 3 job(s) not requeued" in err
    assert "job 'g' is completed: only a dead, failed or cancelled job can be requeued" in err
    assert "no job with id 'nope'" in err
    assert "job 'data' is ready" in err

    out = _ok("jobs", "purge", "--db", db_url, "--older-than", "3600")
    assert out.startswith("deleted 0 completed job(s)")
    out = _ok("jobs", "purge", "--db", db_url, "--older-than", "0")
    assert out.startswith("deleted 2 completed job(s) finished over 0 s ago")
    assert sorted(_records(db_url)) == ["data", "flaky"]  # requeued: not finished
    err = _fails("jobs", "purge", "--db", db_url, "--older-than", "0", "--state", "ready", code=2)
    assert "'ready' is not one of 'completed', 'failed', 'dead', 'cancelled'" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_stops_on_a_signal_and_gives_its_job_back(
    db_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    _enqueue(db_url, jobs.Job("blocker"))
    command = [sys.executable, "-m", "corral", "worker", "--db", db_url]
    command += ["--handler", "handlers:block", "--name", "cli-test"]
    with subprocess.Popen(
        command,
        cwd=_handlers(tmp_path),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "started blocker\n"  # the handler is running
            running = _records(db_url)["blocker"]
            assert (running.state, running.lease_owner) == (jobs.State.IN_PROGRESS, "cli-test")
            worker.send_signal(signum)
            out, err = worker.communicate(timeout=60)
        finally:
            worker.kill()
    assert worker.returncode == 0, err
    assert out == ""  # the worker logs to stderr
    assert f"{signum.name} received: stopping" in err
    assert "worker cli-test stopped: 1 claimed, 0 completed" in err
    given_back = _records(db_url)["blocker"]
    assert (given_back.state, given_back.attempts) == (jobs.State.READY, 0)
    assert given_back.lease_owner is None


def test_worker_and_commands_hide_the_password(postgres_url: str, tmp_path: Path) -> None:
    """Trust authentication ignores the password: the connections are real."""
    secret = "s3cr3t-Pw"
    url = f"{postgres_url}&password={secret}"
    _enqueue(url, jobs.Job("one"))
    result = _corral(
        *("worker", "--db", url, "--handler", "handlers:handle", "--until-idle"),
        *("--poll-interval", "0.05", "--name", "cli-test"),
        cwd=_handlers(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "worker cli-test stopped: 1 claimed, 1 completed" in result.stderr
    assert "&password=***" in result.stderr  # the log line names the database
    assert secret not in result.stderr + result.stdout
    for args in (["jobs", "status"], ["jobs", "list"], ["jobs", "enqueue", "two"]):
        out = _ok(*args, "--db", url)
        assert "&password=***" in out
        assert secret not in out


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--cluster", "gpu"], 2, "'gpu': it does not start with name=capacity; write"),
        (["--cluster", "a=two"], 2, "capacity 'two' is not a whole number"),
        (["--cluster", "a=2,colour=red"], 2, "unknown key 'colour' (the keys are region"),
        (["--cluster", "a=2,cost=cheap"], 2, "cost 'cheap' is not a number"),
        (["--cluster", "a=1", "--cluster", "a=2"], 2, "two clusters are named 'a'"),
        (["--handler", "handlers"], 2, "'handlers' is not module:function"),
        (["--handler", "handlers.py:handle"], 2, "names a file: give the module's import name"),
        (["--handler", "nowhere:handle"], 1, "cannot import the handler module 'nowhere'"),
        (["--handler", "handlers:nope"], 1, "has no 'nope'; define async def nope(ctx) in it"),
        (["--handler", "handlers:plain"], 1, "is a plain function, and the worker awaits"),
    ],
)
def test_worker_errors_name_the_fix(
    tmp_path: Path, args: list[str], code: int, expected: str
) -> None:
    if "--handler" not in args:
        args = [*args, "--handler", "handlers:handle"]
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    err = _fails("worker", "--db", url, "--until-idle", *args, code=code, cwd=_handlers(tmp_path))
    assert expected in err
    assert not (tmp_path / "jobs.db").exists()  # refused before opening the database


# -- issue 13: the command line as an operator uses it ----------------------------------------


def test_db_before_the_subcommand_or_from_corral_db(db_url: str, tmp_path: Path) -> None:
    """``corral --db URL jobs status`` works as ``corral jobs status --db URL`` does."""
    _ok("--db", db_url, "jobs", "enqueue", "early")
    _ok("jobs", "enqueue", "late", "--db", db_url)
    assert sorted(_records(db_url)) == ["early", "late"]
    after = _ok("jobs", "status", "--db", db_url)
    assert _ok("--db", db_url, "jobs", "status") == after
    assert dict(_rows(after))["ready"] == "2"
    assert "no runs recorded" in _ok("--db", db_url, "progress")
    from_env = subprocess.run(
        [sys.executable, "-m", "corral", "jobs", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "CORRAL_DB": db_url},
        check=False,
    )
    assert from_env.returncode == 0, from_env.stderr
    assert [row[0] for row in _rows(from_env.stdout)] == ["early", "late"]
    # both given: the one after the subcommand, nearer the command, wins
    other = f"sqlite:///{tmp_path / 'missing.db'}"
    assert "no database at" in _fails("--db", db_url, "jobs", "status", "--db", other)
    assert _ok("--db", other, "jobs", "status", "--db", db_url) == after
    err = _fails("--db", other, "jobs", "status")
    assert "no database at" in err
    assert "missing.db" in err


def test_show_prints_the_traceback_of_the_last_failure(db_url: str, tmp_path: Path) -> None:
    _enqueue(db_url, jobs.Job("data", {"fail": "data", "row": 7}), jobs.Job("ok"))
    result = _corral(
        *("worker", "--db", db_url, "--handler", "handlers:handle", "--until-idle"),
        *("--poll-interval", "0.05"),
        cwd=_handlers(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    # The worker's log has the failure's traceback with it.
    assert "job data failed" in result.stderr
    assert "Traceback (most recent call last):" in result.stderr
    assert 'handlers.py", line 9, in handle' in result.stderr
    out = _ok("jobs", "show", "data", "--db", db_url)
    assert "Traceback (most recent call last):" in out
    assert 'handlers.py", line 9, in handle' in out
    assert out.rstrip().endswith("DataError: bad [row] 7")  # brackets are text, not markup
    assert "Traceback" not in _ok("jobs", "show", "ok", "--db", db_url)


def _json(*args: str, cwd: Path | None = None) -> object:
    """Run a command with ``--json``; its stdout is one JSON document and nothing else."""
    return json.loads(_ok(*args, "--json", cwd=cwd))


def test_json_for_scripts(db_url: str, tmp_path: Path) -> None:
    """``--json`` on ``jobs status|list|show`` and ``progress``: the documented keys."""
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert "no database at" in _fails("jobs", "status", "--db", empty, "--json")
    _enqueue(
        db_url,
        jobs.Job(
            "ws-1",
            {"n": 2, "tags": ["x"]},
            priority="high",
            customer="acme",
            requires={"ssd", "gpu"},
        ),
        jobs.Job("bad", {"fail": "data", "row": 7}, affinity="a"),
        jobs.Job("ws-3"),
    )
    result = _corral(
        *("worker", "--db", db_url, "--handler", "handlers:handle", "--until-idle"),
        *("--cluster", "a=1,labels=gpu+ssd", "--poll-interval", "0.05"),
        cwd=_handlers(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    _enqueue(db_url, jobs.Job("later", customer="zed"))

    status = _json("jobs", "status", "--db", db_url)
    assert status == {
        "database": status["database"],
        "cluster": None,
        "kind": None,
        "ready": 1,
        "in_progress": 0,
        "retrying": 0,
        "completed": 2,
        "failed": 1,
        "dead": 0,
        "cancelled": 0,
        "pending": 1,
        "total": 4,
    }
    assert status["database"] in _ok("jobs", "status", "--db", db_url)  # redacted, as shown
    on_a = _json("jobs", "status", "--db", db_url, "--cluster", "a")
    assert isinstance(on_a, dict)
    assert (on_a["cluster"], on_a["total"]) == ("a", 3)

    listed = _json("jobs", "list", "--db", db_url)
    assert isinstance(listed, list)
    assert [job["id"] for job in listed] == ["ws-1", "bad", "ws-3", "later"]  # claim order
    limited = _corral("jobs", "list", "--db", db_url, "--json", "--limit", "1")
    assert [job["id"] for job in json.loads(limited.stdout)] == ["ws-1"]
    assert "1 of 4 jobs shown; pass --limit 4 for all" in limited.stderr  # not in the JSON
    assert [job["id"] for job in _json("jobs", "list", "--db", db_url, "--state", "failed")] == [
        "bad"
    ]
    assert _json("jobs", "list", "--db", db_url, "--state", "dead") == []

    shown = _json("jobs", "show", "ws-1", "--db", db_url)
    assert isinstance(shown, dict)
    assert shown == listed[0]
    expected = {
        "id": "ws-1",
        "kind": "default",
        "payload": {"n": 2, "tags": ["x"]},
        "priority": "high",
        "customer": "acme",
        "affinity": None,
        "region": None,
        "requires": ["gpu", "ssd"],
        "max_retries": 3,
        "state": "completed",
        "cancel_requested": False,
        "attempts": 1,
        "cluster": "a",
        "steps_done": ["fetch"],
        "step_results": {"fetch": None},
        "progress": 2,
        "last_error": None,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    assert {key: shown[key] for key in expected} == expected
    for key in ("created_at", "started_at", "updated_at", "finished_at"):
        assert datetime.fromisoformat(shown[key]).utcoffset() is not None, key  # aware
    assert isinstance(shown["route_reason"], str)
    bad = _json("jobs", "show", "bad", "--db", db_url)
    assert isinstance(bad, dict)
    assert bad["state"] == "failed"
    error = bad["last_error"]
    assert {key: error[key] for key in ("category", "step", "message", "attempt")} == {
        "category": "DATA",
        "step": None,
        "message": "DataError: bad [row] 7",
        "attempt": 1,
    }
    assert "no job with id 'nope'" in _fails("jobs", "show", "nope", "--db", db_url, "--json")


def test_progress_json_for_scripts(db_url: str) -> None:
    async def main() -> int:
        async with corral.connect(db_url) as db:
            first = await db.progress.start_run("STATIC", "first")
            await first.complete(message="all done")
            run = await db.progress.start_run("STATIC", "counties")
            sub = await run.start_subtask(1, "count", items_total=10)
            sub.increment(4)
            await run.start_subtask(2, "sums")
            return run.id

    run_id = anyio.run(main)
    runs = _json("progress", "--db", db_url)
    assert isinstance(runs, list)
    assert [(r["id"], r["name"], r["status"]) for r in runs] == [
        (run_id, "counties", "RUNNING"),
        (run_id - 1, "first", "COMPLETED"),
    ]
    assert {key: runs[1][key] for key in ("type", "message")} == {
        "type": "STATIC",
        "message": "all done",
    }
    assert runs[0]["ended_at"] is None
    assert datetime.fromisoformat(runs[1]["ended_at"]).utcoffset() is not None
    one = _json("progress", str(run_id), "--db", db_url)
    assert isinstance(one, dict)
    assert {key: one[key] for key in runs[0]} == runs[0]
    assert [
        {key: s[key] for key in ("number", "name", "status", "items_total", "items_complete")}
        for s in one["subtasks"]
    ] == [
        {"number": 1, "name": "count", "status": "RUNNING", "items_total": 10, "items_complete": 4},
        {
            "number": 2,
            "name": "sums",
            "status": "RUNNING",
            "items_total": None,
            "items_complete": 0,
        },
    ]
    assert one["subtasks"][0]["percent"] == 40.0
    err = _fails("progress", "--db", db_url, "--json", "--watch", code=2)
    assert "--json prints one snapshot" in err


def test_an_idle_worker_says_what_it_leaves_and_logs_each_job(db_url: str, tmp_path: Path) -> None:
    _enqueue(
        db_url,
        jobs.Job("ok"),
        *(jobs.Job(f"gpu{i}", requires={"gpu"}) for i in range(3)),
    )
    result = _corral(
        *("worker", "--db", db_url, "--handler", "handlers:handle", "--until-idle"),
        *("--cluster", "cpu=2", "--poll-interval", "0.05", "--name", "cli-idle"),
        cwd=_handlers(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "job ok completed (attempt 1 on cpu)" in result.stderr
    assert result.stderr.count("3 jobs require labels no cluster has: gpu") == 1


def test_worker_batch_size_and_log_level(db_url: str, tmp_path: Path) -> None:
    _enqueue(db_url, jobs.Job("one"), jobs.Job("two"))
    worker = ("worker", "--db", db_url, "--handler", "handlers:handle", "--until-idle")
    result = _corral(
        *worker, "--batch-size", "1", "--poll-interval", "0.05", cwd=_handlers(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert "batch_size=1;" in result.stderr  # the start line names the limits it runs with
    assert "2 claimed, 2 completed" in result.stderr
    _enqueue(db_url, jobs.Job("three"), jobs.Job("bad", {"fail": "data", "row": 1}))
    quiet = _corral(*worker, "--log-level", "warning", cwd=_handlers(tmp_path))
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO" not in quiet.stderr
    assert "job bad failed" in quiet.stderr  # a failure is a warning: still shown
    assert "WARNING" in quiet.stderr
    assert _records(db_url)["three"].state is jobs.State.COMPLETED
    assert "'loud' is not one of 'debug', 'info', 'warning', 'error'" in _fails(
        *worker, "--log-level", "loud", code=2
    )
    assert "--batch-size" in _fails(*worker, "--batch-size", "0", code=2)
    help_text = " ".join(_ok("worker", "--help").split())
    for default in (
        "--max-concurrent INTEGER RANGE Jobs running at once, in all. [default: 10; x>=1]",
        "[default: 100; x>=1]",
        "[default: info]",
    ):
        assert default in help_text, default


def test_jobs_help_lists_every_subcommand() -> None:
    from corral._cli._jobs import jobs_group

    names = set(jobs_group.commands)
    assert {"enqueue", "status", "list", "show", "cancel", "requeue", "purge"} <= names
    out = _ok("jobs", "--help")
    summary = " ".join(out.split("Options:")[0].split())
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()]
    assert set(listed) == names
    assert listed[:4] == ["enqueue", "status", "list", "show"]  # in the order of a job's life
    for name in names:
        assert f" {name}" in summary, name  # the summary names each, none left out
    assert "Read and change the job queue" in _ok("--help")


def _screen(lines: IO[str]) -> str:
    """Read one table that ``--watch`` printed into a pipe (up to its bottom border)."""
    screen: list[str] = []
    for line in lines:
        screen.append(line)
        if line.startswith("└"):
            return "".join(screen)
    raise AssertionError(f"the output ended before a whole table: {''.join(screen)!r}")


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_status_watch_prints_each_change_until_stopped(db_url: str, as_json: bool) -> None:
    """Into a pipe, ``jobs status --watch`` prints the counts, then again as they change."""
    _enqueue(db_url, jobs.Job("a"))
    command = [sys.executable, "-m", "corral", "jobs", "status", "--watch", "--db", db_url]
    command += ["--refresh", "0.02", *(["--json"] if as_json else [])]
    with subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as watcher:
        try:
            assert watcher.stdout is not None

            def ready() -> int:
                if as_json:
                    counts = json.loads(watcher.stdout.readline())  # one object a line
                    return int(counts["ready"])
                return int(dict(_rows(_screen(watcher.stdout)))["ready"])

            assert ready() == 1
            _enqueue(db_url, jobs.Job("b"), jobs.Job("c"))
            assert ready() == 3  # printed once the counts changed, not at every refresh
            watcher.send_signal(signal.SIGINT)
            out, err = watcher.communicate(timeout=60)
        finally:
            watcher.kill()
    assert watcher.returncode == 0, err
    assert "Traceback" not in err
    assert out == ""  # nothing changed after: nothing more printed


# -- issue 13: job kinds and cancellation -----------------------------------------------------


def test_kinds_from_enqueue_to_worker(tmp_path: Path) -> None:
    """On SQLite only: the commands are the same on both stores, which the store's
    contract tests (tests/test_contract_jobs.py) hold to the same answers by kind."""
    db_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    out = _ok("jobs", "enqueue", "r1", "--db", db_url, "--kind", "render")
    assert out.startswith("enqueued r1 (normal, kind render) in ")
    path = tmp_path / "more.jsonl"
    path.write_text('{"id": "i1", "kind": "index"}\n{"id": "plain"}\n{"id": "r2"}\n')
    _ok("jobs", "enqueue", "--db", db_url, "--file", str(path))
    _ok("jobs", "enqueue", "--db", db_url, "--file", "-", "--kind", "render", stdin='{"id": "r3"}')
    records = _records(db_url)
    assert {r.id: r.kind for r in records.values()} == {
        "r1": "render",
        "i1": "index",
        "plain": "default",
        "r2": "default",  # the line gives no kind, and no --kind fills it in
        "r3": "render",
    }
    err = _fails("jobs", "enqueue", "x", "--db", db_url, "--kind", " render")
    assert "Job kind must be a short name" in err
    assert "such as 'render'" in err

    out = _ok("jobs", "status", "--db", db_url, "--kind", "render")
    assert out.startswith("jobs of kind render in ")
    assert (dict(_rows(out))["ready"], dict(_rows(out))["total"]) == ("2", "2")
    out = _ok("jobs", "status", "--db", db_url, "--by-kind")
    assert out.startswith("jobs by kind in ")
    header = next(line for line in out.splitlines() if line.startswith("┃"))
    assert [cell.strip() for cell in header.strip()[1:-1].split("┃")] == [
        "state",
        "default",
        "index",
        "render",
        "all",
    ]
    by_kind = {row[0]: row[1:] for row in _rows(out)}
    assert by_kind["ready"] == ["2", "1", "2", "5"]
    assert by_kind["total"] == ["2", "1", "2", "5"]
    as_json = _json("jobs", "status", "--db", db_url, "--by-kind")
    assert isinstance(as_json, dict)
    assert set(as_json["kinds"]) == {"default", "index", "render"}
    assert as_json["kinds"]["render"]["ready"] == 2
    assert as_json["kinds"]["render"]["total"] == 2
    err = _fails("jobs", "status", "--db", db_url, "--kind", "render", "--cluster", "a", code=2)
    assert "give one of --cluster, --kind, not both" in err
    listed = _rows(_ok("jobs", "list", "--db", db_url, "--kind", "render"))
    assert [(row[0], row[7]) for row in listed] == [("r1", "render"), ("r3", "render")]
    shown = dict(row for row in _rows(_ok("jobs", "show", "i1", "--db", db_url)) if row[0])
    assert shown["kind"] == "index"

    result = _corral(
        *("worker", "--db", db_url, "--app", "handlers:app", "--until-idle"),
        *("--poll-interval", "0.05", "--name", "cli-kinds"),
        cwd=_handlers(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "worker cli-kinds: app handlers:app (kinds index, render) on " in result.stderr
    assert "job r1 of kind render completed (attempt 1 on default)" in result.stderr
    assert "3 claimed, 3 completed" in result.stderr
    states = {r.id: r.state.value for r in _records(db_url).values()}
    assert states == {
        "r1": "completed",
        "i1": "completed",
        "r3": "completed",
        "plain": "ready",  # the default kind: not the app's
        "r2": "ready",
    }


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        ([], 2, "give --handler MODULE:FUNCTION (one handler for every job) or --app"),
        (["--handler", "handlers:handle", "--app", "handlers:app"], 2, "not both"),
        (["--app", "handlers"], 2, "'handlers' is not module:mapping"),
        (["--app", "handlers:handle"], 1, "is a function, not a mapping of job kind to handler"),
        (["--app", "handlers:empty"], 1, "is an empty mapping: map at least one job kind"),
        (["--app", "handlers:bad_keys"], 1, "the key must be a short name"),
        (["--app", "handlers:plain_in_app"], 1, "the handler of kind 'render' is a plain"),
        (["--app", "handlers:nope"], 1, "has no 'nope'; define nope = {'kind': handler"),
    ],
)
def test_worker_app_errors_name_the_fix(
    tmp_path: Path, args: list[str], code: int, expected: str
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    err = _fails("worker", "--db", url, "--until-idle", *args, code=code, cwd=_handlers(tmp_path))
    assert expected in err
    assert not (tmp_path / "jobs.db").exists()  # refused before opening the database


def test_cancel_a_waiting_and_a_running_job(db_url: str, tmp_path: Path) -> None:
    _enqueue(db_url, jobs.Job("blocker"), jobs.Job("waiting"))
    command = [sys.executable, "-m", "corral", "worker", "--db", db_url, "--until-idle"]
    command += ["--handler", "handlers:block", "--name", "cli-test", "--max-concurrent", "1"]
    command += ["--lease-seconds", "0.6", "--poll-interval", "0.05"]
    with subprocess.Popen(
        command,
        cwd=_handlers(tmp_path),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "started blocker\n"  # the handler is running
            out = _ok("jobs", "cancel", "waiting", "--db", db_url)
            assert out == "cancelled waiting: was ready\n"
            out = _ok("jobs", "cancel", "blocker", "--db", db_url)
            assert out == (
                "cancel requested for blocker: in progress on worker cli-test, which stops it "
                "at its next lease renewal\n"
            )
            # Its next renewal cancels the handler; then nothing is left: it stops.
            out, err = worker.communicate(timeout=60)
        finally:
            worker.kill()
    assert worker.returncode == 0, err
    assert "job blocker cancelled (attempt 1 on default): cancelled on request" in err
    assert "worker cli-test stopped: 1 claimed, 0 completed, 0 retried, 0 failed, 0 dead, " in err
    assert "1 cancelled" in err
    records = _records(db_url)
    assert (records["blocker"].state, records["blocker"].attempts) == (jobs.State.CANCELLED, 1)
    assert records["waiting"].state is jobs.State.CANCELLED
    assert dict(_rows(_ok("jobs", "status", "--db", db_url)))["cancelled"] == "2"
    listed = _ok("jobs", "list", "--db", db_url, "--state", "cancelled")
    assert [row[0] for row in _rows(listed)] == ["blocker", "waiting"]

    assert _ok("jobs", "cancel", "blocker", "--db", db_url) == "blocker was cancelled already\n"
    out = _ok("jobs", "requeue", "waiting", "--db", db_url)
    assert out.startswith("requeued waiting: was cancelled after 0 attempt(s)")
    result = _corral(
        *("worker", "--db", db_url, "--handler", "handlers:handle", "--until-idle"),
        *("--poll-interval", "0.05"),
        cwd=_handlers(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    err = _fails("jobs", "cancel", "waiting", "nope", "--db", db_url)
    assert "2 of 2 job(s) not cancelled" in err
    assert "job 'waiting' is completed already: only a waiting or running job can be" in err
    assert "corral jobs requeue ID runs a finished job again" in err
    assert "no job with id 'nope'" in err
    out = _ok("jobs", "purge", "--db", db_url, "--older-than", "0", "--state", "cancelled")
    assert out.startswith("deleted 1 cancelled job(s)")
    assert sorted(_records(db_url)) == ["waiting"]
