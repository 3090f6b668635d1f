"""Rows per second through one writer, against one INSERT per row and the floor.

Every row is a dict {"ticker", "day", "close", "volume"} bound for a table whose primary
key is (ticker, day), the same table definition for every row of the report, created
empty before each measurement. On SQLite (a file, WAL mode, synchronous=NORMAL, as corral
sets it) and on PostgreSQL:

- floor: the fastest plain way to land those rows: all of them in one transaction, with
  one executemany on SQLite (named placeholders, straight from the dicts) and one COPY on
  PostgreSQL (records built from the dicts inside the timing). It only appends.
- corral: `--producers` tasks put the rows through `db.table("prices").put(row)`, timed
  until `db.flush()` returns, i.e. until every row is committed. It upserts.
- one INSERT per row: the usual hand-written way, `INSERT ... ON CONFLICT DO UPDATE`
  committed row by row (aiosqlite where installed, else sqlite3 in a thread; asyncpg),
  timed on the first `--per-row` rows and scaled to all (a computed row).

A second table, the shape of the fetch-then-write pattern corral replaces: rows
{"k": int, "a": str, "b": float}, primary key k, 100,000 of them (``--int-rows``), put by
one task looping ``await table.put(row)`` and by ``--producers`` tasks, against the same
floors (one COPY, one executemany of the dicts).

    python benchmarks/writer.py                 # 200,000 rows, median of 3
    python benchmarks/writer.py --quick         # 20,000 rows, one run: a smoke test
    python benchmarks/writer.py --postgres postgresql://user@host/db

PostgreSQL is CORRAL_TEST_POSTGRES_URL or postgresql://postgres@127.0.0.1:5432/test; the
benchmark works in a schema of its own and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

import _common
import anyio
import anyio.to_thread

import corral

try:
    import aiosqlite
except ImportError:  # optional peer
    aiosqlite = None

COLUMNS = ("ticker", "day", "close", "volume")
SQLITE_DDL = (
    'CREATE TABLE "prices" ("ticker" TEXT, "day" TEXT, "close" REAL, "volume" INTEGER, '
    'PRIMARY KEY ("ticker", "day"))'
)
POSTGRES_DDL = (
    'CREATE TABLE "prices" ("ticker" TEXT, "day" TEXT, "close" DOUBLE PRECISION, '
    '"volume" BIGINT, PRIMARY KEY ("ticker", "day"))'
)
UPSERT = (
    'INSERT INTO "prices" ("ticker", "day", "close", "volume") VALUES ({}) '
    'ON CONFLICT ("ticker", "day") DO UPDATE SET "close" = excluded."close", '
    '"volume" = excluded."volume"'
)


ITEMS_COLUMNS = ("k", "a", "b")
ITEMS_SQLITE_DDL = 'CREATE TABLE "items" ("k" INTEGER PRIMARY KEY, "a" TEXT, "b" REAL)'
ITEMS_POSTGRES_DDL = 'CREATE TABLE "items" ("k" BIGINT PRIMARY KEY, "a" TEXT, "b" DOUBLE PRECISION)'


def make_int_rows(count):
    return [{"k": i, "a": f"value {i}", "b": 0.5 * i} for i in range(count)]


def make_rows(count):
    return [
        {"ticker": f"T{i % 500:03d}", "day": f"2026-{i // 500:05d}", "close": 1.5 * i, "volume": i}
        for i in range(count)
    ]


# -- SQLite -----------------------------------------------------------------------------------


def sqlite_fresh(path):
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(SQLITE_DDL)
    return conn


def sqlite_count(path, table="prices"):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    finally:
        conn.close()


def sqlite_fresh_items(path):
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(ITEMS_SQLITE_DDL)
    return conn


def sqlite_floor_items(path, rows):
    conn = sqlite_fresh_items(path)
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany('INSERT INTO "items" VALUES (:k, :a, :b)', rows)
    conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


def sqlite_floor_dicts(path, rows):
    conn = sqlite_fresh(path)
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(
        'INSERT INTO "prices" VALUES (:ticker, :day, :close, :volume)',
        rows,
    )
    conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


def sqlite_floor_tuples(path, rows):
    records = [tuple(row.values()) for row in rows]  # built before the timing
    conn = sqlite_fresh(path)
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany('INSERT INTO "prices" VALUES (?, ?, ?, ?)', records)
    conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


async def sqlite_per_row(path, rows):
    sqlite_fresh(path).close()
    sql = UPSERT.format("?, ?, ?, ?")
    start = time.perf_counter()
    if aiosqlite is not None:
        async with aiosqlite.connect(path) as conn:
            for row in rows:
                await conn.execute(sql, tuple(row.values()))
                await conn.commit()
    else:
        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            for row in rows:
                await anyio.to_thread.run_sync(conn.execute, sql, tuple(row.values()))
                await anyio.to_thread.run_sync(conn.commit)
        finally:
            conn.close()
    return time.perf_counter() - start


# -- PostgreSQL -------------------------------------------------------------------------------


async def postgres_fresh(url):
    import asyncpg

    conn = await asyncpg.connect(url)
    await conn.execute('DROP TABLE IF EXISTS "prices"')
    await conn.execute(POSTGRES_DDL)
    return conn


async def postgres_count(url, table="prices"):
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(f'SELECT COUNT(*) FROM "{table}"')
    finally:
        await conn.close()


async def postgres_fresh_items(url):
    import asyncpg

    conn = await asyncpg.connect(url)
    await conn.execute('DROP TABLE IF EXISTS "items"')
    await conn.execute(ITEMS_POSTGRES_DDL)
    return conn


async def postgres_floor_items(url, rows):
    conn = await postgres_fresh_items(url)
    try:
        start = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table(
                "items", records=[tuple(row.values()) for row in rows], columns=ITEMS_COLUMNS
            )
        return time.perf_counter() - start
    finally:
        await conn.close()


async def postgres_floor(url, rows, prebuilt):
    conn = await postgres_fresh(url)
    records = [tuple(row.values()) for row in rows] if prebuilt else None
    try:
        start = time.perf_counter()
        async with conn.transaction():
            if records is None:
                await conn.copy_records_to_table(
                    "prices", records=[tuple(row.values()) for row in rows], columns=COLUMNS
                )
            else:
                await conn.copy_records_to_table("prices", records=records, columns=COLUMNS)
        return time.perf_counter() - start
    finally:
        await conn.close()


async def postgres_per_row(url, rows):
    conn = await postgres_fresh(url)
    sql = UPSERT.format("$1, $2, $3, $4")
    try:
        start = time.perf_counter()
        for row in rows:
            await conn.execute(sql, *row.values())  # autocommit: one transaction per row
        return time.perf_counter() - start
    finally:
        await conn.close()


# -- corral -----------------------------------------------------------------------------------


async def corral_writer(url, rows, producers, table="prices", key=("ticker", "day")):
    async with corral.connect(url) as db:
        prices = db.table(table, key=key)
        shares = [rows[i::producers] for i in range(producers)]

        async def produce(share):
            put = prices.put
            for row in share:
                await put(row)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for share in shares:
                tg.start_soon(produce, share)
        await db.flush()
        seconds = time.perf_counter() - start
        stats = db.statistics()
    assert stats.committed == len(rows), stats
    return seconds, stats.batches


# -- running ----------------------------------------------------------------------------------


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def measure_rounds(specs, repeat, items):
    """Time every (name, fn, check) once per round, for ``repeat`` rounds; median per row.

    Interleaving the rows, rather than repeating one row before the next, lets a slow drift
    of the shared machine's speed hit every row alike, so the ratios stay fair.
    """
    seconds = {name: [] for name, _, _ in specs}
    for _ in range(repeat):
        for name, fn, check in specs:
            seconds[name].append(fn())
            check()
    out = []
    for name, _, _ in specs:
        value = median(seconds[name])
        print(f"  {name:<52} {value:8.3f} s", flush=True)
        out.append(_common.row(name, value, items))
    return out


def measure_against_floors(args, url, rows, floors, prepare, check):
    """Time the floors and corral on asyncio and trio in interleaved rounds; return rows."""
    batches = {}

    def corral_run(backend):
        prepare()
        seconds, batches[backend] = anyio.run(
            corral_writer, url, rows, args.producers, backend=backend
        )
        return seconds

    backends = ("asyncio", "trio")
    specs = [(name, fn, check) for name, fn in floors]
    specs += [
        (
            f"corral: {args.producers} tasks put, then flush ({backend})",
            partial(corral_run, backend),
            check,
        )
        for backend in backends
    ]
    out = measure_rounds(specs, args.repeat, len(rows))
    for row, backend in zip(out[len(floors) :], backends, strict=True):
        row["note"] = f"{batches[backend]} transactions"
    return out


def measure_items(args, url, rows, floor, prepare, check):
    """The integer-key table: its floor, then corral from one task and from many."""
    batches = {}

    def corral_run(producers, backend):
        prepare()
        seconds, batches[producers, backend] = anyio.run(
            corral_writer, url, rows, producers, "items", "k", backend=backend
        )
        return seconds

    runs = [(1, "asyncio"), (args.producers, "asyncio"), (1, "trio")]
    specs = [
        floor,
        *(
            (
                f"corral: {n} task{'s' if n > 1 else ''} put, then flush ({backend})",
                partial(corral_run, n, backend),
                check,
            )
            for n, backend in runs
        ),
    ]
    out = measure_rounds(specs, args.repeat, len(rows))
    for row, run in zip(out[1:], runs, strict=True):
        row["note"] = f"{batches[run]} transactions"
    floor_seconds = out[0]["seconds"]
    for r in out:
        r["throughput"] = floor_seconds / r["seconds"]
    return out


def print_items(title, out):
    _common.print_table(
        title, out, out[0]["name"], extra=[("throughput vs floor", "throughput", "{:.2f}")]
    )
    return {"items": out[0]["items"], "reference": out[0]["name"], "rows": out}


def report(title, rows, reference, per_row_count, per_row_seconds, items):
    scaled = per_row_seconds * items / per_row_count
    rows.append(
        _common.row(
            "one INSERT ... ON CONFLICT per row, committed each",
            scaled,
            items,
            measured=False,
            note=f"timed on {per_row_count:,} rows, scaled",
        )
    )
    floor_seconds = next(r for r in rows if r["name"] == reference)["seconds"]
    for r in rows:
        r["throughput"] = floor_seconds / r["seconds"]
    _common.print_table(
        title, rows, reference, extra=[("throughput vs floor", "throughput", "{:.2f}")]
    )
    return {"items": items, "reference": reference, "rows": rows}


def run_sqlite(args, rows, workdir):
    path = str(workdir / "bench.db")
    items = len(rows)
    url = f"sqlite:///{path}"

    def check():
        assert sqlite_count(path) == items

    def prepare():
        sqlite_fresh(path).close()

    print(f"\nSQLite: {items:,} rows, median of {args.repeat} interleaved rounds")
    floors = [
        (
            "floor: one executemany of the dicts, one transaction",
            lambda: sqlite_floor_dicts(path, rows),
        ),
        (
            "  (the same of pre-built tuples, for reference)",
            lambda: sqlite_floor_tuples(path, rows),
        ),
    ]
    out = measure_against_floors(args, url, rows, floors, prepare, check)
    per_row = rows[: args.per_row]
    seconds = anyio.run(sqlite_per_row, path, per_row)
    peer = "aiosqlite" if aiosqlite is not None else "sqlite3 in a thread"
    print(f"  per row ({peer}): {len(per_row):,} rows in {seconds:.3f} s")
    result = report(
        f"SQLite: {items:,} rows into an empty table (primary key ticker, day)",
        out,
        out[0]["name"],
        len(per_row),
        seconds,
        items,
    )
    ints = make_int_rows(args.int_rows)

    def check_items():
        assert sqlite_count(path, "items") == len(ints)

    print(f"\nSQLite, integer key: {len(ints):,} rows, median of {args.repeat} rounds")
    out = measure_items(
        args,
        url,
        ints,
        (
            "floor: one executemany of the dicts, one transaction",
            lambda: sqlite_floor_items(path, ints),
            lambda: None,
        ),
        lambda: sqlite_fresh_items(path).close(),
        check_items,
    )
    result["integer_key"] = print_items(
        f"SQLite: {len(ints):,} rows {{k: int, a: str, b: float}} into an empty table "
        f"(primary key k)",
        out,
    )
    return result


def run_postgres(args, rows):
    import asyncpg

    base = args.postgres
    schema = f"corral_bench_{uuid.uuid4().hex[:8]}"

    async def admin(sql):
        conn = await asyncpg.connect(base, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # a benchmark, not a test: say so and go on
        print(f"\nPostgreSQL at {base} is not reachable ({exc}); skipping it")
        return None
    url = f"{base}{'&' if '?' in base else '?'}search_path={schema}"
    items = len(rows)
    try:

        def check():
            assert asyncio.run(postgres_count(url)) == items

        async def fresh():
            conn = await postgres_fresh(url)
            await conn.close()

        def prepare():
            asyncio.run(fresh())

        print(f"\nPostgreSQL: {items:,} rows, median of {args.repeat} interleaved rounds")
        floors = [
            (
                "floor: one COPY of the rows, one transaction",
                lambda: asyncio.run(postgres_floor(url, rows, prebuilt=False)),
            ),
            (
                "  (the same of pre-built tuples, for reference)",
                lambda: asyncio.run(postgres_floor(url, rows, prebuilt=True)),
            ),
        ]
        out = measure_against_floors(args, url, rows, floors, prepare, check)
        per_row = rows[: args.per_row]
        seconds = asyncio.run(postgres_per_row(url, per_row))
        print(f"  per row (asyncpg): {len(per_row):,} rows in {seconds:.3f} s")
        result = report(
            f"PostgreSQL: {items:,} rows into an empty table (primary key ticker, day)",
            out,
            out[0]["name"],
            len(per_row),
            seconds,
            items,
        )
        ints = make_int_rows(args.int_rows)

        async def fresh_items():
            conn = await postgres_fresh_items(url)
            await conn.close()

        def check_items():
            assert asyncio.run(postgres_count(url, "items")) == len(ints)

        print(f"\nPostgreSQL, integer key: {len(ints):,} rows, median of {args.repeat} rounds")
        out = measure_items(
            args,
            url,
            ints,
            (
                "floor: one COPY of the rows, one transaction",
                lambda: asyncio.run(postgres_floor_items(url, ints)),
                lambda: None,
            ),
            lambda: asyncio.run(fresh_items()),
            check_items,
        )
        result["integer_key"] = print_items(
            f"PostgreSQL: {len(ints):,} rows {{k: int, a: str, b: float}} into an empty "
            f"table (primary key k)",
            out,
        )
        return result
    finally:
        asyncio.run(admin(f'DROP SCHEMA "{schema}" CASCADE'))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--producers", type=int, default=100)
    parser.add_argument(
        "--int-rows", type=int, default=100_000, help="rows of the integer-key table"
    )
    parser.add_argument("--per-row", type=int, default=2_000, help="rows timed one by one")
    parser.add_argument("--repeat", type=int, default=3, help="repeats per row (median)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CORRAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeat, args.per_row, args.int_rows = 20_000, 1, 300, 20_000
    args.per_row = min(args.per_row, args.rows)
    databases = args.databases.split(",")
    _common.warn_if_busy()
    rows = make_rows(args.rows)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "sqlite" in databases:
            results["sqlite"] = run_sqlite(args, rows, Path(tmp))
    if "postgresql" in databases:
        results["postgresql"] = run_postgres(args, rows)
    _common.write_results(
        _common.result_name("writer", args.quick),
        {"quick": args.quick, "producers": args.producers, "databases": results},
    )


if __name__ == "__main__":
    main()
