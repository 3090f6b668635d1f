"""Progress increments per second: corral's tracker vs one UPDATE per increment.

1,000 concurrent tasks each call ``subtask.increment()`` 1,000 times (1,000,000 in all);
the time runs until the last count is committed (``db.progress.get`` flushes), and the
committed count is checked to be exact. The usual way, as task trackers do it, runs one
``UPDATE ... SET items_complete = items_complete + 1`` per increment (autocommit) from
the same 1,000 tasks through the driver directly: aiosqlite on SQLite (with corral's
settings, WAL and synchronous=NORMAL, and with SQLite's defaults), an asyncpg pool of 10
connections on PostgreSQL (default durable settings). It is far slower, so it runs for --baseline increments only; rates are
compared, and its count is checked to be exact too.

    python benchmarks/increments.py              # SQLite and PostgreSQL
    python benchmarks/increments.py --quick      # 100,000 increments, under 20 s
    python benchmarks/increments.py --postgres postgresql://postgres@127.0.0.1/test

PostgreSQL runs in a database of its own, corral_bench, created when missing.
The one-UPDATE baseline needs asyncio (its drivers are asyncio-only).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import _common
import aiosqlite
import anyio
import asyncpg

import corral

TASKS = 1_000


async def tracker_rate(url, per_task):
    total = TASKS * per_task
    async with corral.connect(url) as db:
        run = await db.progress.start_run("BENCH", "increments")
        sub = await run.start_subtask(1, "count", items_total=total)

        async def task():
            for i in range(per_task):
                sub.increment()
                if i % 100 == 99:
                    await anyio.lowlevel.checkpoint()  # other tasks and the writer run too

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(TASKS):
                tg.start_soon(task)
        [row] = await db.progress.get(run.id)  # flushes: every count committed
        seconds = time.perf_counter() - started
    if row.items_complete != total:
        raise AssertionError(f"tracker counted {row.items_complete:,}, expected {total:,}")
    return seconds, total


async def time_updates(execute, total):
    """Run ``total`` one-row UPDATEs from TASKS concurrent tasks; return the seconds."""

    async def task(count):
        for _ in range(count):
            await execute("UPDATE naive SET n = n + 1 WHERE id = 1")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(TASKS):
            tg.start_soon(task, total // TASKS + (i < total % TASKS))
    return time.perf_counter() - started


def checked(seconds, n, total):
    if n != total:
        raise AssertionError(f"UPDATE per increment counted {n:,}, expected {total:,}")
    return seconds, total


async def update_per_increment_sqlite(path, total, *, wal):
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        if wal:  # the settings corral's writer uses
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
        else:  # SQLite's defaults: rollback journal, synchronous=FULL
            await conn.execute("PRAGMA journal_mode=DELETE")
        await conn.execute("DROP TABLE IF EXISTS naive")
        await conn.execute("CREATE TABLE naive (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        await conn.execute("INSERT INTO naive VALUES (1, 0)")

        seconds = await time_updates(conn.execute, total)
        async with conn.execute("SELECT n FROM naive") as cursor:
            [(n,)] = await cursor.fetchall()
    return checked(seconds, n, total)


async def update_per_increment_postgres(url, total):
    pool = await asyncpg.create_pool(url, min_size=10, max_size=10)
    try:
        await pool.execute("DROP TABLE IF EXISTS naive")
        await pool.execute("CREATE TABLE naive (id INTEGER PRIMARY KEY, n BIGINT NOT NULL)")
        await pool.execute("INSERT INTO naive VALUES (1, 0)")

        seconds = await time_updates(pool.execute, total)
        n = await pool.fetchval("SELECT n FROM naive")
    finally:
        await pool.close()
    return checked(seconds, n, total)


async def bench_database(label, url, naives, per_task, baseline, repeat):
    rows = []
    best = None
    for _ in range(repeat):
        seconds, total = await tracker_rate(url, per_task)
        best = seconds if best is None else min(best, seconds)
    rows.append(
        _common.row(
            f"corral tracker, {TASKS:,} tasks",
            best,
            total,
            note=f"{total:,} increments, committed, exact",
        )
    )
    for name, naive in naives:
        seconds, count = await naive(baseline)
        rows.append(
            _common.row(name, seconds, count, note=f"{count:,} increments, autocommit, exact")
        )
    tracker_rate_ = rows[0]["items"] / rows[0]["seconds"]
    print(f"\nIncrements on {label} (tracker: best of {repeat})")
    header = f"{'name':<44} {'increments':>10} {'seconds':>8} {'increments/s':>13}"
    print(f"{header} {'tracker is':>14}")
    for r in rows:
        r["rate"] = r["items"] / r["seconds"]
        r["tracker_speedup"] = tracker_rate_ / r["rate"]
        faster = "" if r is rows[0] else f"{r['tracker_speedup']:,.0f}x faster"
        print(
            f"{r['name']:<44} {r['items']:>10,} {r['seconds']:>8.3f} {r['rate']:>13,.0f}"
            f" {faster:>14}  {r['note']}"
        )
    return {"url": url, "rows": rows}


async def ensure_database(url, name):
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def main(args):
    results = {}
    per_task = args.items // TASKS
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "increments.db"
        sqlite_url = f"sqlite:///{path}"

        naives = [
            (
                "one UPDATE per increment (WAL, sync=NORMAL)",
                partial(update_per_increment_sqlite, Path(folder) / "naive-wal.db", wal=True),
            ),
            (
                "one UPDATE per increment (SQLite defaults)",
                partial(update_per_increment_sqlite, Path(folder) / "naive-default.db", wal=False),
            ),
        ]
        results["sqlite"] = await bench_database(
            "SQLite", sqlite_url, naives, per_task, args.baseline, args.repeat
        )
    if not args.no_postgres:
        pg_url = await ensure_database(args.postgres, "corral_bench")
        conn = await asyncpg.connect(pg_url)  # start clean: no rows from earlier runs
        try:
            await conn.execute("DROP TABLE IF EXISTS corral_subtasks, corral_runs")
        finally:
            await conn.close()

        naives = [
            (
                "one UPDATE per increment (pool of 10)",
                partial(update_per_increment_postgres, pg_url),
            )
        ]
        results["postgresql"] = await bench_database(
            "PostgreSQL", pg_url, naives, per_task, args.baseline, args.repeat
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="tracker increments")
    parser.add_argument("--baseline", type=int, default=5_000, help="one-UPDATE increments")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--postgres", default="postgresql://postgres@127.0.0.1:5432/test", metavar="URL"
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--quick", action="store_true", help="100,000 increments, once")
    args = parser.parse_args()
    if args.quick:
        args.items, args.baseline, args.repeat = 100_000, 1_000, 1
    _common.warn_if_busy()
    results = anyio.run(main, args)
    _common.write_results(
        _common.result_name("increments", args.quick), {"quick": args.quick, "databases": results}
    )
