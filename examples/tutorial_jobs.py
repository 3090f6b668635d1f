"""Tutorial 10: durable jobs: enqueue them, run them on clusters, see what became of them.

Run it: python examples/tutorial_jobs.py

``db.jobs`` is a queue kept in the database. A ``jobs.Processor`` claims its jobs, picks
a cluster for each, runs the handler, and records how each attempt ended: retryable
failures come back after a backoff, others fail at once. Any number of processors (on
PostgreSQL, on any number of hosts) can share one queue.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import anyio

import corral
from corral import jobs


async def render(ctx: jobs.JobContext) -> None:
    """The handler: returning completes the job, raising fails this attempt."""
    pages = ctx.job.payload["pages"]
    async with ctx.step("fetch"):  # finished once, it is skipped when the job is retried
        await anyio.sleep(0.01)  # stand-in for downloading the source
    if pages < 0:
        raise jobs.DataError(f"{pages} pages: bad input is not retried")
    if ctx.job.id == "report-2" and ctx.attempt == 1:
        raise jobs.TransientError("the renderer timed out")  # retried after a backoff
    for _ in range(pages):
        ctx.progress.increment()  # a plain call, counted in the job's row


async def main(url: str) -> None:
    clusters = [
        corral.Cluster("local", capacity=4, cost=1),
        corral.Cluster("gpu-box", capacity=1, cost=5, labels={"gpu"}),
    ]
    config = jobs.ProcessorConfig(retry=jobs.RetryPolicy(base=0.05))  # default base: 2 s
    async with corral.connect(url) as db:
        await db.jobs.enqueue_many(
            [
                jobs.Job("report-1", {"pages": 3}),
                jobs.Job("report-2", {"pages": 5}, priority="high"),
                jobs.Job("report-3", {"pages": -1}),
                jobs.Job("chart-1", {"pages": 2}, requires={"gpu"}),
            ]
        )
        processor = jobs.Processor(db, render, clusters=clusters, config=config)
        await processor.run(until_idle=True)  # or run() until cancelled, to serve forever

        for job in await db.jobs.list():  # in claim order: priority, then age
            print(
                f"{job.id}: {job.state.value} on {job.cluster}, attempts {job.attempts}, ", end=""
            )
            print(f"pages {job.progress}, steps done {job.steps_done}; {job.route_reason}")
        print(await db.jobs.depth())


if __name__ == "__main__":
    # The default notifier logs on the "corral.jobs" logger: failures at WARNING.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    with tempfile.TemporaryDirectory() as folder:  # a real app would keep corral.db
        url = "sqlite:///" + str(Path(folder) / "tutorial.db")
        anyio.run(main, url, backend="trio" if "--trio" in sys.argv else "asyncio")
