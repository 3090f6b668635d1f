"""A separate process that counts into a run, for tests/test_progress*.py.

``URL RUN_ID COUNT``: add COUNT to subtask 1 of run RUN_ID, and exit 0 once committed
(counts from several processes sharing one database are exact).
``URL RUN_ID COUNT --hang``: commit COUNT, count as much again without committing, print
"ready" and hang (the test kills it with SIGKILL).
``open URL BACKEND [show]``: start a run (with 3 of 10 items of subtask 1 committed),
print "started RUN_ID" and wait forever, in ``show_progress`` with ``show``: the test
sends SIGINT or SIGKILL.
"""

from __future__ import annotations

import sys

import anyio

import corral


async def main(url: str, run_id: int, count: int) -> None:
    async with corral.connect(url) as db:
        sub = await db.progress.subtask(run_id, 1)
        for i in range(count):
            sub.increment()
            if i % 500 == 0:
                await anyio.lowlevel.checkpoint()


async def flush_then_hang(url: str, run_id: int, count: int) -> None:
    """Count ``count`` and commit it, count as much again without committing, then hang.

    The test kills this process with SIGKILL after "ready": only the committed counts may
    be in the database.
    """
    async with corral.connect(url, flush_interval=3600) as db:
        sub = await db.progress.subtask(run_id, 1)
        for _ in range(count):
            sub.increment()
        await db.flush()
        for _ in range(count):
            sub.increment()
        print("ready", flush=True)
        await anyio.sleep_forever()


async def open_run(url: str, show: bool) -> None:
    """Start a run, count 3 items, say so, and wait to be interrupted or killed."""
    async with corral.connect(url) as db:
        run = await db.progress.start_run("STATIC", "interrupt me")
        sub = await run.start_subtask(1, "Count", items_total=10)
        sub.increment(3)
        await db.flush()
        if show:
            async with corral.show_progress(run, refresh=0.05):
                print(f"started {run.id}", flush=True)
                await anyio.sleep_forever()
        print(f"started {run.id}", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    if sys.argv[1] == "open":
        anyio.run(open_run, sys.argv[2], sys.argv[4:] == ["show"], backend=sys.argv[3])
    else:
        work = flush_then_hang if sys.argv[4:] == ["--hang"] else main
        anyio.run(work, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
