"""Tutorial 10: durable jobs: enqueue them, run them on clusters, see what became of them.

Run it: python examples/tutorial_jobs.py

``db.jobs`` is a queue kept in the database. A ``jobs.Processor`` claims its jobs, picks
a cluster for each, runs the handler, and records how each attempt ended: retryable
failures come back after a backoff, others fail at once. Any number of processors (on
PostgreSQL, on any number of hosts) can share one queue. Jobs have a kind, and a
processor given one handler per kind claims only those kinds; ``ctx.run_step`` runs a step
once per job; ``db.jobs.cancel`` cancels a job; a failure keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import anyio

import corral
from corral import jobs


async def fetch(job_id: str) -> str:
    """A step: its JSON result is stored, and a retry gets it back without calling it."""
    await anyio.sleep(0.01)  # stand-in for downloading the source
    return f"/scratch/{job_id}.pdf"


async def render(ctx: jobs.JobContext) -> None:
    """The handler of kind "render": returning completes the job, raising fails this attempt."""
    pages = ctx.job.payload["pages"]
    source = await ctx.run_step("fetch", fetch, ctx.job.id)  # run once per job
    if pages < 0:
        raise jobs.DataError(f"{pages} pages of {source}: bad input is not retried")
    if ctx.job.id == "report-2" and ctx.attempt == 1:
        raise jobs.TransientError("the renderer timed out")  # retried after a backoff
    for _ in range(pages):
        ctx.progress.increment()  # a plain call, counted in the job's row


async def chart(ctx: jobs.JobContext) -> None:
    """The handler of kind "chart"."""
    ctx.progress.increment(ctx.job.payload["pages"])


async def main(url: str) -> None:
    clusters = [
        corral.Cluster("local", capacity=4, cost=1),
        corral.Cluster("gpu-box", capacity=1, cost=5, labels={"gpu"}),
    ]
    config = jobs.ProcessorConfig(retry=jobs.RetryPolicy(base=0.05))  # default base: 2 s
    async with corral.connect(url) as db:
        await db.jobs.enqueue_many(
            [
                jobs.Job("report-1", {"pages": 3}, kind="render"),
                jobs.Job("report-2", {"pages": 5}, kind="render", priority="high"),
                jobs.Job("report-3", {"pages": -1}, kind="render"),
                jobs.Job("report-4", {"pages": 9}, kind="render"),
                jobs.Job("chart-1", {"pages": 2}, kind="chart", requires={"gpu"}),
            ]
        )
        print("cancel report-4:", (await db.jobs.cancel("report-4")).value)  # still waiting
        handlers = {"render": render, "chart": chart}  # one handler per kind of job
        processor = jobs.Processor(db, handlers, clusters=clusters, config=config)
        await processor.run(until_idle=True)  # or run() until cancelled, to serve forever

        for job in await db.jobs.list():  # in claim order: priority, then age
            print(f"{job.id} ({job.kind}): {job.state.value} on {job.cluster}, ", end="")
            print(f"attempts {job.attempts}, pages {job.progress}, steps {job.step_results}")
        failed = await db.jobs.get("report-3")
        assert failed is not None
        assert failed.last_error is not None
        assert failed.error_traceback is not None  # as Python prints it, its last 20 frames
        print("report-3 failed:", failed.last_error.message)
        print("  its traceback ends:", failed.error_traceback.splitlines()[-1])
        print(await db.jobs.depth())


if __name__ == "__main__":
    # The default notifier logs on the "corral.jobs" logger: failures at WARNING.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    with tempfile.TemporaryDirectory() as folder:  # a real app would keep corral.db
        url = "sqlite:///" + str(Path(folder) / "tutorial.db")
        anyio.run(main, url, backend="trio" if "--trio" in sys.argv else "asyncio")
