"""A job processor in its own process: ``URL HANDLER DIR [options]``.

Used by tests/test_jobs_processes.py to prove, on real processes sharing one database,
that a killed worker's job is reclaimed and finished once, that the limits hold across
processes, and that a late completion of a worker whose lease was taken over is
refused. It writes what its handler did to files under DIR (appended with O_APPEND,
one line a write), prints ``ready`` when the test may act on it, and prints one line
``{"statistics": ..., "events": [...]}`` (JSON) when its processor has returned.

Handlers (``HANDLER``):

- ``steps``: step "one" (logged to one.log), then, with ``--hang``, prints ``ready``
  and blocks forever (the test kills the process); then step "two" (two.log) and a
  line in completed.log.
- ``limits``: counts the jobs running in every process, on every cluster and of every
  customer in DIR/counters.json under an exclusive ``flock``, with the highest count
  seen of each; the job that takes the last slot writes ``full`` to the FIFO DIR/full,
  and every job waits for the test to unlock DIR/gate; logs the job's id to
  done-NAME.log.
- ``fence``: logs the attempt to started.log, prints ``ready`` once this process's
  writer is idle, then waits for a line on stdin, logs to returned.log and returns:
  the test has by then had another worker complete the job, so this completion must
  be refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

import corral
from corral import jobs
from corral._backends import Connection

Handler = Callable[[jobs.JobContext], Awaitable[None]]


def append(path: Path, line: str) -> None:
    """Append one line to ``path`` in one write (O_APPEND: safe across processes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def lines(path: Path) -> list[str]:
    """Return the lines of ``path`` ([] if it does not exist)."""
    return path.read_text().splitlines() if path.exists() else []


class Recorder:
    """A notifier that keeps every event."""

    def __init__(self) -> None:
        self.events: list[jobs.JobEvent] = []

    async def notify(self, event: jobs.JobEvent) -> None:
        self.events.append(event)


def steps_handler(directory: Path, *, hang: bool = False) -> Handler:
    """The handler of the SIGKILL test: step one, (hang), step two, completion."""

    async def handler(ctx: jobs.JobContext) -> None:
        where = f"{ctx.job.id} attempt={ctx.attempt} worker={ctx.worker}"
        async with ctx.step("one"):
            await anyio.lowlevel.checkpoint()  # a finished step is skipped from here
            append(directory / "one.log", where)
        if hang:
            print("ready", flush=True)  # step one is committed
            await anyio.sleep_forever()
        async with ctx.step("two"):
            await anyio.lowlevel.checkpoint()
            append(directory / "two.log", where)
        append(directory / "completed.log", where)

    return handler


# -- the limits handler ---------------------------------------------------------------------


def count(path: Path, cluster: str, customer: str, delta: int, full: int) -> bool:
    """Add ``delta`` to the running counts in ``path``, under an exclusive flock.

    Return whether this is the first time the total reached ``full``.
    """
    with path.open("r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        state: dict[str, Any] = json.loads(f.read() or "{}")
        for key in ("total", f"cluster:{cluster}", f"customer:{customer}"):
            now = state.get(key, 0) + delta
            if now < 0:
                raise AssertionError(f"{key} went below zero")
            state[key] = now
            state[f"max {key}"] = max(state.get(f"max {key}", 0), now)
        first = state["total"] == full and not state.get("announced")
        state["announced"] = state.get("announced", False) or first
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state))
    return first


def announce(fifo: Path) -> None:
    """Tell the test, which reads the FIFO, that every slot is taken."""
    with fifo.open("w") as f:
        f.write("full\n")


def pass_gate(gate: Path) -> None:
    """Return once the test has unlocked the gate (it holds an exclusive flock)."""
    with gate.open() as f:
        fcntl.flock(f, fcntl.LOCK_SH)


def limits_handler(directory: Path, name: str, full: int) -> Handler:
    """The handler of the limits tests: count the job in, work a little, count it out.

    The job that takes the last of ``full`` slots tells the test (the FIFO
    DIR/full); every job then waits for the test to open DIR/gate, so the first
    jobs hold every slot at once, whichever processes run them.
    """
    counters = directory / "counters.json"
    done = directory / f"done-{name}.log"

    async def handler(ctx: jobs.JobContext) -> None:
        customer = ctx.job.customer or "-"
        if count(counters, ctx.cluster.name, customer, +1, full):
            await anyio.to_thread.run_sync(announce, directory / "full")
        try:
            await anyio.to_thread.run_sync(pass_gate, directory / "gate")
            # The work: 5 to 20 ms, long against a claim's round trip to the database
            # (the jobs of the processes overlap in their handlers, not only in the
            # table), and of different lengths (the slots free up one at a time).
            await anyio.sleep(0.005 * (1 + int(ctx.job.payload) % 4))
        finally:
            count(counters, ctx.cluster.name, customer, -1, full)
        append(done, ctx.job.id)

    return handler


async def _noop(conn: Connection) -> None:
    return None


def fence_handler(directory: Path, db: corral.Database) -> Handler:
    """The handler of the fencing test: signal, wait for a line on stdin, return."""

    async def handler(ctx: jobs.JobContext) -> None:
        where = f"{ctx.job.id} attempt={ctx.attempt} worker={ctx.worker}"
        append(directory / "started.log", where)
        # The writer runs its operations in order: once this one is committed, so is
        # every one queued before it (the claimer's), and the writer is idle: it holds
        # no transaction (no lock another worker would wait on) while the test stops
        # this process (its renewer and claimer wait 100 s and 300 s).
        await db._run(_noop)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        append(directory / "returned.log", where)

    return handler


# -- the process ----------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs_worker.py")
    parser.add_argument("url")
    parser.add_argument("handler", choices=["steps", "limits", "fence"])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--max-concurrent", type=int, default=10)
    parser.add_argument("--per-customer", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--cluster", action="append", default=[], help="NAME=CAPACITY")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    clusters = [
        corral.Cluster(name, int(capacity))
        for name, capacity in (spec.split("=") for spec in args.cluster or ["default=10"])
    ]
    config = jobs.ProcessorConfig(
        max_concurrent=args.max_concurrent,
        per_customer=args.per_customer,
        lease_seconds=args.lease,
        poll_interval=args.poll,
        batch_size=args.batch_size,
    )
    recorder = Recorder()
    async with corral.connect(args.url) as db:
        if args.handler == "steps":
            handler = steps_handler(args.directory, hang=args.hang)
        elif args.handler == "limits":
            handler = limits_handler(args.directory, args.name, args.max_concurrent)
        else:
            handler = fence_handler(args.directory, db)
        processor = jobs.Processor(
            db, handler, clusters=clusters, config=config, notifier=recorder, name=args.name
        )
        await processor.run(until_idle=True)
    report = {
        "statistics": dataclasses.asdict(processor.statistics()),
        "events": [
            {"kind": e.kind.value, "job_id": e.job_id, "attempt": e.attempt, "message": e.message}
            for e in recorder.events
        ],
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    anyio.run(main, arguments, backend=arguments.backend)
