"""Claims by job kind: a processor of one kind drains its jobs behind many of another kind.

A processor given ``{"render": handler}`` claims only jobs of kind ``render``: the
condition is in the claim's SQL, and the partial index ``corral_jobs_waiting_kind`` on
``(kind, priority, seq)`` lets the claim read its own kind's waiting jobs in claim order,
instead of walking past every waiting job of the other kinds ahead of them. Each round
drains N no-op ``render`` jobs with ``Processor(db, {"render": noop}).run(until_idle=True)``
(one process, default limits but ``max_concurrent=100``), timed from the start of ``run`` to
its return:

- ``alone``: N render jobs and nothing else (the reference);
- ``behind M others``: M jobs of kind ``other`` enqueued first (older: ahead in claim
  order), then the N render jobs;
- ``behind M, no kind index``: the same, with the index dropped (as a claim would run
  without it);
- ``one handler, no kinds``: N jobs drained by a processor of one handler (every kind, no
  kind in the claim's SQL), the claim as it was before kinds.

Every drain runs in a fresh database (SQLite: a new file; PostgreSQL: a new schema).
Rounds are interleaved (every row once per round); each row is the median of its rounds.

    python benchmarks/job_kinds.py                # 5,000 jobs behind 50,000, median of 3
    python benchmarks/job_kinds.py --quick        # 500 behind 5,000, once: a smoke test
    python benchmarks/job_kinds.py --no-postgres  # SQLite only

PostgreSQL is --postgres URL (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import _common
import anyio
import asyncpg

import corral
from corral import jobs

ROWS = ("alone", "behind M others", "behind M, no kind index", "one handler, no kinds")


async def noop(ctx: jobs.JobContext) -> None:
    pass


async def drain(url: str, row: str, n: int, m: int) -> float:
    async with corral.connect(url) as db:
        if row.startswith("behind"):
            await db.jobs.enqueue_many(jobs.Job(f"o{i}", kind="other") for i in range(m))
        kind = "default" if row.startswith("one handler") else "render"
        await db.jobs.enqueue_many(jobs.Job(f"r{i}", kind=kind) for i in range(n))
        if row.endswith("no kind index"):
            await db._run(lambda conn: conn.execute("DROP INDEX corral_jobs_waiting_kind"))
        handler = noop if row.startswith("one handler") else {"render": noop}
        config = jobs.ProcessorConfig(max_concurrent=100, poll_interval=0.05)
        processor = jobs.Processor(db, handler, config=config)
        start = time.perf_counter()
        await processor.run(until_idle=True)
        seconds = time.perf_counter() - start
        done = (await db.jobs.depth(kind=kind)).completed
        assert done == n, f"{row}: {done} of {n} jobs done"
        return seconds


async def fresh(dialect: str, postgres: str, folder: Path):
    """Return a fresh database URL, and how to drop it."""
    if dialect == "sqlite":
        path = folder / f"{uuid.uuid4().hex[:12]}.db"
        return f"sqlite:///{path}", None
    schema = f"bench_kinds_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres, timeout=10)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    url = f"{postgres}{'&' if '?' in postgres else '?'}search_path={schema}"
    return url, schema


async def drop(postgres: str, schema: str | None) -> None:
    if schema is None:
        return
    conn = await asyncpg.connect(postgres, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


async def main(args):
    results = {}
    dialects = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
    with tempfile.TemporaryDirectory() as folder:
        for dialect in dialects:
            times: dict[str, list[float]] = {row: [] for row in ROWS}
            for round_number in range(args.repeat):
                order = ROWS[round_number % len(ROWS) :] + ROWS[: round_number % len(ROWS)]
                for row in order:
                    url, schema = await fresh(dialect, args.postgres, Path(folder))
                    try:
                        times[row].append(await drain(url, row, args.jobs, args.others))
                    finally:
                        await drop(args.postgres, schema)
            rows = [
                _common.row(
                    row.replace("M", f"{args.others:,}"),
                    statistics.median(times[row]),
                    args.jobs,
                    note=f"rounds: {', '.join(f'{t:.2f}' for t in times[row])} s",
                )
                for row in ROWS
            ]
            _common.print_table(
                f"{dialect}: drain {args.jobs:,} jobs of one kind (median of {args.repeat})",
                rows,
                "alone",
            )
            results[dialect] = rows
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5_000, help="jobs of the processor's kind")
    parser.add_argument("--others", type=int, default=50_000, help="jobs of another kind ahead")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--postgres", default="postgresql://postgres@127.0.0.1:5432/test", metavar="URL"
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--quick", action="store_true", help="500 jobs behind 5,000, once")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.others, args.repeat = 500, 5_000, 1
    _common.warn_if_busy()
    results = anyio.run(main, args)
    _common.write_results(
        _common.result_name("job_kinds", args.quick), {"quick": args.quick, "databases": results}
    )
