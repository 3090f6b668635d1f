"""The job processor on real processes sharing one database.

A worker process is killed with SIGKILL in the middle of a job: another worker reclaims
the job once the lease runs out and finishes it, exactly once, without running its
finished step again. Three worker processes share 1,000 jobs within limits that bind,
watched from the handlers across the processes. A worker process stopped with SIGSTOP
(its lease then made to run out in the table) while another takes its job over has its
late completion refused by the lease token. The workers are tests/jobs_worker.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

import corral
from corral import jobs
from corral._backends import Connection
from jobs_worker import Recorder, append, lines, steps_handler

HERE = Path(__file__).parent
WORKER = HERE / "jobs_worker.py"


def spawn(url: str, handler: str, directory: Path, *options: str) -> subprocess.Popen[str]:
    """Start a jobs_worker.py process; its stdin and stdout are pipes."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, handler, str(directory), *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for a worker to exit 0 and return its report (its last line of output)."""
    assert child.stdout is not None
    out = child.stdout.read()
    assert child.wait(timeout=90) == 0, out
    return dict(json.loads(out.splitlines()[-1]))


def stop(child: subprocess.Popen[str]) -> None:
    """Kill a worker that is still running (a failed test), and reap it."""
    if child.poll() is None:
        child.kill()
    child.wait(timeout=60)
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            pipe.close()


async def ready(child: subprocess.Popen[str]) -> None:
    """Wait for the worker's ``ready`` line."""
    assert child.stdout is not None
    line = await anyio.to_thread.run_sync(child.stdout.readline)
    assert line.strip() == "ready", f"the worker said {line!r}, exit code {child.poll()}"


def rescuer(db: corral.Database, handler: Any, recorder: Recorder) -> jobs.Processor:
    """A processor in this process, with a short lease and a short poll."""
    config = jobs.ProcessorConfig(lease_seconds=1, poll_interval=0.1)
    return jobs.Processor(db, handler, config=config, notifier=recorder, name="rescuer")


# -- SIGKILL: the job is reclaimed and finished once ----------------------------------------


async def test_a_killed_workers_job_is_reclaimed_and_finished_once(
    db_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    async with corral.connect(db_url) as db:
        await db.jobs.enqueue(jobs.Job(id="job-1", payload={"n": 1}, max_retries=3))
        options = ["--hang", "--name=victim", "--lease=1", f"--backend={anyio_backend}"]
        victim = spawn(db_url, "steps", tmp_path, *options)
        try:
            await ready(victim)  # step "one" is committed, the handler blocks
            held = await db.jobs.get("job-1")
            assert (held.state, held.attempts, held.lease_owner) == ("in_progress", 1, "victim")
            assert held.steps_done == ("one",)
            victim.send_signal(signal.SIGKILL)  # no cleanup: the lease is left to expire
        finally:
            await anyio.to_thread.run_sync(stop, victim)
        assert victim.returncode == -signal.SIGKILL

        recorder = Recorder()
        processor = rescuer(db, steps_handler(tmp_path), recorder)
        with anyio.fail_after(60):
            await processor.run(until_idle=True)  # waits out the dead worker's lease

        record = await db.jobs.get("job-1")
    assert record.state is jobs.State.COMPLETED
    assert record.attempts == 2
    assert record.steps_done == ("one", "two")
    assert (record.lease_owner, record.lease_expires_at) == (None, None)
    assert record.last_error is not None
    assert record.last_error.category is jobs.ErrorCategory.TRANSIENT
    assert record.last_error.attempt == 1
    assert "lease expired: worker victim stopped renewing it" in record.last_error.message
    # Step one ran once, in the killed worker; the rest ran once, in the rescuer.
    assert lines(tmp_path / "one.log") == ["job-1 attempt=1 worker=victim"]
    assert lines(tmp_path / "two.log") == ["job-1 attempt=2 worker=rescuer"]
    assert lines(tmp_path / "completed.log") == ["job-1 attempt=2 worker=rescuer"]
    [reclaimed, completed] = recorder.events
    assert (reclaimed.kind, reclaimed.job_id, reclaimed.attempt) == ("reclaimed", "job-1", 1)
    assert reclaimed.worker == "rescuer"
    assert reclaimed.message is not None
    assert "worker victim" in reclaimed.message
    assert (completed.kind, completed.job_id, completed.attempt) == ("completed", "job-1", 2)
    stats = processor.statistics()
    assert (stats.claimed, stats.completed, stats.reclaimed, stats.lease_lost) == (1, 1, 1, 0)


# -- the limits hold across processes ----------------------------------------------------------

#: The clusters: a and b bind below the global limit, c lets the global limit bind.
CLUSTERS = {"a": 2, "b": 3, "c": 4}
MAX_CONCURRENT = 6
PER_CUSTOMER = 2
CUSTOMERS = 5
#: The first jobs (affinity, customer), in claim order. The first claims (of the first
#: worker, alone; the handlers wait at the gate, so nothing ends) take 0 and 1 (a is
#: full, c0 has 2), skip 2 (c0 is full) and 3 (a is full), take 4, 5 and 6 (b is
#: full), skip 7 (b is full) and take 8 (on c): 6 jobs, the global limit. Every limit
#: is reached at once, and the per-customer and cluster limits are what keeps these
#: claims from exceeding them.
FIRST = [
    ("a", "c0"),
    ("a", "c0"),
    ("b", "c0"),
    ("a", "c1"),
    ("b", "c1"),
    ("b", "c2"),
    ("b", "c3"),
    ("b", "c4"),
    (None, "c4"),
]
#: Then the affinity of job i is PINS[i % 6], its customer c((i // 2) % 5): a and b
#: are in demand beyond their capacity, and the three processes compete for the rest
#: with every limit binding again and again.
PINS = ("a", "a", "b", "b", "b", None)


def limit_jobs(n: int) -> list[jobs.Job]:
    pairs = FIRST + [(PINS[i % 6], f"c{(i // 2) % CUSTOMERS}") for i in range(len(FIRST), n)]
    return [
        jobs.Job(id=f"job-{i:04d}", payload=i, affinity=affinity, customer=customer)
        for i, (affinity, customer) in enumerate(pairs)
    ]


async def enqueue_limit_jobs(url: str, n: int) -> None:
    batch = limit_jobs(n)
    async with corral.connect(url) as db:
        for job in batch[: len(FIRST)]:  # one at a time: their seq is their order
            await db.jobs.enqueue(job)
        await db.jobs.enqueue_many(batch[len(FIRST) :])


async def read_queue(url: str, n: int) -> tuple[jobs.QueueDepth, list[jobs.JobRecord]]:
    async with corral.connect(url) as db:
        return await db.jobs.depth(), await db.jobs.list(limit=n + 1)


def wait_full(fifo: int) -> None:
    """Wait for a worker's ``full`` on the FIFO (opened non-blocking)."""
    readable, _, _ = select.select([fifo], [], [], 60)
    assert readable, "no worker took every slot within 60 s"
    assert os.read(fifo, 100) == b"full\n"


async def in_progress(url: str) -> list[str]:
    async with corral.connect(url) as db:
        return [record.id for record in await db.jobs.list(jobs.State.IN_PROGRESS)]


def run_limits(url: str, directory: Path, n: int, backends: list[str]) -> None:
    anyio.run(enqueue_limit_jobs, url, n)
    counters = directory / "counters.json"
    counters.write_text("{}")
    os.mkfifo(directory / "full")
    fifo = os.open(directory / "full", os.O_RDONLY | os.O_NONBLOCK)
    gate = (directory / "gate").open("w")
    fcntl.flock(gate, fcntl.LOCK_EX)  # every handler waits here until the first jobs run
    options = [
        f"--max-concurrent={MAX_CONCURRENT}",
        f"--per-customer={PER_CUSTOMER}",
        "--lease=30",
        # Claims of 2 jobs at most: a worker whose jobs end does not take every slot
        # that frees up, so the processes share the slots all along.
        "--batch-size=2",
    ]
    # The first worker has every cluster and claims the first jobs alone; then each
    # cluster is shared by two workers, so that no worker can run every job and the
    # limits are counted across processes all along.
    workers = [
        ("w0", backends[0], "abc"),
        ("w1", backends[1], "ac"),
        ("w2", backends[2], "bc"),
    ]
    commands = [
        [
            f"--name={name}",
            f"--backend={backend}",
            *options,
            *(f"--cluster={c}={CLUSTERS[c]}" for c in clusters),
        ]
        for name, backend, clusters in workers
    ]
    children = [spawn(url, "limits", directory, *commands[0])]
    try:
        try:
            wait_full(fifo)
            full = json.loads(counters.read_text())
            running = anyio.run(in_progress, url)
            children += [spawn(url, "limits", directory, *command) for command in commands[1:]]
        finally:
            gate.close()  # unlocks the gate
            os.close(fifo)
        reports = [finish(child) for child in children]
    finally:
        for child in children:
            stop(child)
    names = [name for name, _, _ in workers]

    # The first claims took the jobs the limits allow, in claim order (see FIRST), and
    # their handlers held every slot at once.
    assert sorted(running) == [f"job-{i:04d}" for i in (0, 1, 4, 5, 6, 8)]
    assert {key: value for key, value in full.items() if " " not in key} == {
        "total": 6,
        "cluster:a": 2,
        "cluster:b": 3,
        "cluster:c": 1,
        "customer:c0": 2,
        "customer:c1": 1,
        "customer:c2": 1,
        "customer:c3": 1,
        "customer:c4": 1,
        "announced": True,
    }

    # Every job completed exactly once: by the handlers' own logs and by the database.
    done = Counter(job_id for name in names for job_id in lines(directory / f"done-{name}.log"))
    assert sorted(done) == [job.id for job in limit_jobs(n)]
    assert set(done.values()) == {1}
    statistics = [report["statistics"] for report in reports]
    assert sum(s["claimed"] for s in statistics) == n
    assert sum(s["completed"] for s in statistics) == n
    assert [(s["reclaimed"], s["lease_lost"], s["retried"]) for s in statistics] == [
        (0, 0, 0)
    ] * len(names)
    depth, records = anyio.run(read_queue, url, n)
    assert depth == jobs.QueueDepth(completed=n)
    assert {record.attempts for record in records} == {1}
    assert len(records) == n
    for record in records:
        if record.affinity is not None:
            assert record.cluster == record.affinity

    # No limit was ever exceeded, and every one was reached: a violation would show.
    seen = json.loads(counters.read_text())
    now = {key: value for key, value in seen.items() if " " not in key and key != "announced"}
    assert set(now.values()) == {0}
    assert seen["max total"] == MAX_CONCURRENT
    assert seen["max cluster:a"] == CLUSTERS["a"]
    assert seen["max cluster:b"] == CLUSTERS["b"]
    assert 1 <= seen["max cluster:c"] <= CLUSTERS["c"]
    customers = [value for key, value in seen.items() if key.startswith("max customer:")]
    assert len(customers) == CUSTOMERS
    assert max(customers) == PER_CUSTOMER


def test_limits_hold_across_three_processes_on_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    run_limits(postgres_url, tmp_path, 1000, ["asyncio", "trio", "asyncio"])


def test_limits_hold_across_three_processes_on_sqlite(tmp_path: Path) -> None:
    run_limits(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, 200, ["trio", "asyncio", "trio"])


# -- fencing: a late completion is refused ---------------------------------------------------


def wait_stopped(pid: int) -> None:
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status


async def expire(conn: Connection) -> None:
    await conn.execute(
        "UPDATE corral_jobs SET lease_expires = lease_expires - 1000 WHERE id = ?", "job-1"
    )


async def test_a_late_completion_after_a_takeover_is_refused(
    db_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    async def complete(ctx: jobs.JobContext) -> None:
        append(tmp_path / "completed.log", f"{ctx.job.id} attempt={ctx.attempt} {ctx.worker}")

    async with corral.connect(db_url) as db:
        await db.jobs.enqueue(jobs.Job(id="job-1"))
        # A long lease and poll: the sleeper renews nothing and claims nothing while
        # the test works; its lease is made to run out by hand instead of waited for.
        options = ["--name=sleeper", "--lease=300", "--poll=300", f"--backend={anyio_backend}"]
        sleeper = spawn(db_url, "fence", tmp_path, *options)
        try:
            await ready(sleeper)  # its handler runs and waits for a line on stdin
            held = await db.jobs.get("job-1")
            assert (held.state, held.attempts, held.lease_owner) == ("in_progress", 1, "sleeper")
            sleeper.send_signal(signal.SIGSTOP)
            await anyio.to_thread.run_sync(wait_stopped, sleeper.pid)
            await db._run(expire)

            recorder = Recorder()
            processor = rescuer(db, complete, recorder)
            with anyio.fail_after(60):
                await processor.run(until_idle=True)
            before = await db.jobs.get("job-1")
            assert (before.state, before.attempts) == ("completed", 2)
            assert [(e.kind, e.attempt) for e in recorder.events] == [
                ("reclaimed", 1),
                ("completed", 2),
            ]

            sleeper.send_signal(signal.SIGCONT)
            assert sleeper.stdin is not None
            sleeper.stdin.write("return now\n")
            sleeper.stdin.close()
            report = await anyio.to_thread.run_sync(finish, sleeper)
        finally:
            await anyio.to_thread.run_sync(stop, sleeper)
        after = await db.jobs.get("job-1")

    # The sleeper's handler returned, and its completion was refused: it changed nothing.
    assert lines(tmp_path / "started.log") == ["job-1 attempt=1 worker=sleeper"]
    assert lines(tmp_path / "returned.log") == ["job-1 attempt=1 worker=sleeper"]
    assert lines(tmp_path / "completed.log") == ["job-1 attempt=2 rescuer"]
    assert after == before
    stats = report["statistics"]
    assert (stats["claimed"], stats["completed"], stats["lease_lost"]) == (1, 0, 1)
    assert report["events"] == [
        {
            "kind": "lease_lost",
            "job_id": "job-1",
            "attempt": 1,
            "message": "the outcome was refused: another worker took the lease over",
        }
    ]
