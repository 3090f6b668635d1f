"""Worksets as durable jobs on two clusters: routing, steps, retries, dead letters, depth.

A workset is a batch of files to download, transform and upload. Each one is a job in
the database: a ``jobs.Processor`` claims it, routes it to cluster-a or cluster-b (pinned,
or by data locality, resources and cost), runs it step by step, retries it when it fails
for a passing reason (resuming at the step that failed), fails it at once when its data
is bad, and keeps what exhausts its retries in the dead letter queue until requeued.
Reports are another kind of job, run by a processor of their own; one of them hangs, and
is cancelled while it runs.

    python examples/worksets.py              # 20 files per workset, a burst of 40
    python examples/worksets.py --quick      # 3 files per workset, a burst of 8
    python examples/worksets.py --db postgresql://user@host/db   # an empty database
    python examples/worksets.py --trio       # the same on trio
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

import corral
from corral import jobs

CLUSTERS = [
    corral.Cluster("cluster-a", capacity=8, region="us-east", cost=3, labels={"gpu"}),
    corral.Cluster("cluster-b", capacity=8, region="eu-west", cost=1),
]
CONFIG = jobs.ProcessorConfig(
    max_concurrent=12,  # jobs in progress at once, over every processor of the database
    per_customer=4,  # jobs of one customer in progress at once
    retry=jobs.RetryPolicy(base=0.05, cap=0.2),  # fast backoff for the demo (default 2 s)
)

OFFLINE = {"tape-library"}  # upload targets that are down: uploads there time out
TRACE: dict[str, list[str]] = {}  # job id -> the steps that ran, as "step#attempt"


class Gauge:
    """Counts the handlers of each customer running at once, and keeps the peak."""

    def __init__(self) -> None:
        self.now: Counter[str | None] = Counter()
        self.peak: Counter[str | None] = Counter()

    def enter(self, customer: str | None) -> None:
        self.now[customer] += 1
        self.peak[customer] = max(self.peak[customer], self.now[customer])

    def leave(self, customer: str | None) -> None:
        self.now[customer] -= 1


GAUGE = Gauge()


class Collect:
    """A jobs.Notifier that keeps every event (the default one logs them)."""

    def __init__(self) -> None:
        self.events: list[jobs.JobEvent] = []

    async def notify(self, event: jobs.JobEvent) -> None:
        self.events.append(event)


def trace(ctx: jobs.JobContext, step: str) -> None:
    """Note that a step's function really ran (a finished step's is never called again)."""
    TRACE.setdefault(ctx.job.id, []).append(f"{step}#{ctx.attempt}")


def check(job: jobs.Job) -> None:
    """The processor's ``validate``: refuse a workset before it runs (never retried)."""
    if "target" not in job.payload:
        raise jobs.ConfigurationError("no upload target configured")


async def download(ctx: jobs.JobContext, files: int) -> dict[str, Any]:
    """Step 1 (async): fetch the files; its result is stored with the step (JSON)."""
    trace(ctx, "download")
    await anyio.sleep(0.002 * files)  # stand-in for real I/O
    return {"folder": f"/scratch/{ctx.job.id}", "files": files}


def transform(ctx: jobs.JobContext, fetched: dict[str, Any], corrupt: int | None) -> int:
    """Step 2 (a plain function: run_step runs it in a worker thread): parse each file."""
    trace(ctx, "transform")
    for n in range(fetched["files"]):
        if n == corrupt:
            raise jobs.DataError(f"file {n} is not valid CSV")  # failed at once
        ctx.progress.increment()  # one file done (thread-safe)
    return 100 * int(fetched["files"])  # rows


async def upload(ctx: jobs.JobContext, target: str, rows: int) -> str:
    """Step 3 (async): upload the rows; a passing failure is retried from this step."""
    trace(ctx, "upload")
    await anyio.sleep(0.005)
    if target in OFFLINE:
        raise jobs.TransientError(f"{target} is offline")  # retried, then dead
    if target == "mirror-eu" and ctx.attempt == 1:
        raise jobs.TransientError("upload to mirror-eu timed out")  # retried
    return f"{target}://{ctx.job.id} ({rows} rows)"


async def render(ctx: jobs.JobContext, pages: int) -> None:
    """The report's one step: render its pages."""
    trace(ctx, "render")
    await anyio.sleep(0.001)
    ctx.progress.increment(pages)


HUNG: dict[str, anyio.Event] = {}  # set by main(): the event a hanging report sets


async def render_report(ctx: jobs.JobContext) -> None:
    """The handler of the jobs of kind "report"."""
    if ctx.job.payload.get("hang"):
        HUNG["started"].set()
        await anyio.sleep_forever()  # until db.jobs.cancel: its worker cancels it here
    await ctx.run_step("render", render, ctx, ctx.job.payload["pages"])


async def process_workset(ctx: jobs.JobContext) -> None:
    """The handler: returning completes the job, raising fails this attempt.

    Each ``run_step`` runs its function once per job: a retry (or a requeue, or another
    worker reclaiming the job) gets a finished step's stored result without calling it.
    """
    workset = ctx.job.payload
    GAUGE.enter(ctx.job.customer)
    try:
        fetched = await ctx.run_step("download", download, ctx, workset["files"])
        rows = await ctx.run_step("transform", transform, ctx, fetched, workset.get("corrupt"))
        await ctx.run_step("upload", upload, ctx, workset["target"], rows)
    finally:
        GAUGE.leave(ctx.job.customer)


def worksets(files: int) -> list[jobs.Job]:
    def ws(target: str = "archive", **extra: object) -> dict[str, object]:
        return {"files": files, "target": target, **extra}

    return [
        jobs.Job("ws-01", ws(), customer="acme", affinity="cluster-a"),  # pinned
        jobs.Job("ws-02", ws(), customer="globex", affinity="cluster-b"),  # pinned
        jobs.Job("ws-03", ws(), customer="acme", region="us-east"),  # data locality
        jobs.Job("ws-04", ws(), customer="globex", region="eu-west"),  # data locality
        jobs.Job("ws-05", ws(), customer="acme", requires={"gpu"}),  # resources
        jobs.Job("ws-06", ws(), customer="initech"),  # the cheapest cluster
        # Urgent: claimed first. Its first upload times out; the retry runs the upload only.
        jobs.Job("ws-07", ws("mirror-eu"), customer="acme", region="eu-west", priority="urgent"),
        jobs.Job("ws-08", ws(corrupt=1), customer="globex"),  # bad data
        jobs.Job("ws-09", ws("tape-library"), customer="initech", max_retries=1),  # dead
        jobs.Job("ws-10", {"files": files}, customer="initech"),  # refused by check()
        jobs.Job("ws-11", ws(), customer="acme", affinity="cluster-c"),  # no one has it
    ]


async def show_depth(db: corral.Database, title: str) -> None:
    depth = await db.jobs.depth()
    print(f"{title}: {depth.total} jobs, {depth.pending} pending")
    print(f"  all        {depth}")
    for name in ("cluster-a", "cluster-b", "cluster-c"):
        print(f"  {name:<10} {await db.jobs.by_cluster(name)}")


async def main(url: str, quick: bool) -> None:
    files, burst = (3, 8) if quick else (20, 40)
    async with corral.connect(url) as db:
        if (await db.jobs.depth()).total:
            sys.exit(f"{db!r} already holds jobs: give this example an empty database")
        await db.jobs.enqueue_many(worksets(files))
        await show_depth(db, "enqueued")  # a job not run yet counts for its pinned cluster

        notifier = Collect()
        processor = jobs.Processor(
            db, process_workset, clusters=CLUSTERS, config=CONFIG, validate=check, notifier=notifier
        )
        await processor.run(until_idle=True)  # returns when nothing it could take is left

        print("\nwhere each workset ran, and why:")
        for job in sorted(await db.jobs.list(), key=lambda job: job.id):
            where = f"{job.cluster}, {job.route_reason}" if job.cluster else "not run"
            print(f"  {job.id} {job.state.value:<9} files done {job.progress}  {where}")
            error = job.last_error
            if error is not None:
                steps = ", ".join(TRACE.get(job.id, [])) or "none"
                print(f"        {job.attempts} attempt(s), steps run: {steps}")
                print(f"        last error {error.category.value} in {error.step}: {error.message}")
        kinds = Counter(event.kind.value for event in notifier.events)
        print("notifications:", dict(sorted(kinds.items())))

        print("\ndead letter queue:")
        for job in await db.jobs.dead():
            assert job.last_error is not None
            print(f"  {job.id}: {job.attempts} attempts, {job.last_error.message}")
        OFFLINE.clear()  # the tape library is back: requeue and run again
        requeued = await db.jobs.requeue("ws-09")  # attempts start again from 0
        print(f"requeued {requeued.id}: {requeued.state.value}, steps done {requeued.steps_done}")
        TRACE.pop("ws-09")
        await processor.run(until_idle=True)
        done = await db.jobs.get("ws-09")
        print(f"  {done.id} {done.state.value}; steps run this time: {', '.join(TRACE[done.id])}")
        print(f"  its step results: {done.step_results}")

        # A burst for one customer: the limits hold while it runs.
        await db.jobs.enqueue_many(
            jobs.Job(f"burst-{n:03}", {"files": files, "target": "archive"}, customer="umbrella")
            for n in range(burst)
        )
        await processor.run(until_idle=True)
        ran_on = {
            job.cluster
            for job in await db.jobs.list("completed", limit=1000)
            if job.customer == "umbrella"
        }
        print(
            f"\nburst of {burst} worksets for customer umbrella: ran on {sorted(ran_on)}, "
            f"at most {GAUGE.peak['umbrella']} at once (per_customer={CONFIG.per_customer})"
        )
        print(processor.statistics())

        # Reports: jobs of another kind, for a processor that serves only that kind. One
        # is cancelled while it waits (at once), one while it runs (at its next renewal).
        await db.jobs.enqueue_many(
            [
                jobs.Job("report-1", {"pages": 3}, kind="report"),
                jobs.Job("report-2", {"pages": 2}, kind="report"),
                jobs.Job("report-hung", {"hang": True}, kind="report"),
            ]
        )
        print("\ncancel report-2:", (await db.jobs.cancel("report-2")).value)  # cancelled
        HUNG["started"] = anyio.Event()
        reports = jobs.Processor(db, {"report": render_report}, config=CONFIG)
        async with anyio.create_task_group() as tg:
            # until_idle: it waits for no job of another kind (ws-11 among them).
            tg.start_soon(functools.partial(reports.run, until_idle=True))
            await HUNG["started"].wait()
            print("cancel report-hung:", (await db.jobs.cancel("report-hung")).value)  # requested
        for job in await db.jobs.list(kind="report"):
            print(f"  {job.id} {job.state.value}, attempts {job.attempts}, pages {job.progress}")
        for kind, depth in (await db.jobs.depth_by_kind()).items():
            print(f"  kind {kind:<8} {depth}")
        print()
        await show_depth(db, "at the end")  # ws-11 waits for a processor with cluster-c


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: a temporary file)")
    parser.add_argument("--quick", action="store_true", help="3 files per workset")
    parser.add_argument("--trio", action="store_true", help="run on trio")
    args = parser.parse_args()
    backend = "trio" if args.trio else "asyncio"
    with tempfile.TemporaryDirectory() as folder:
        url = args.db or f"sqlite:///{Path(folder) / 'worksets.db'}"
        anyio.run(main, url, args.quick, backend=backend)
