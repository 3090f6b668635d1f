"""Tutorial 8: write rows from many tasks and a thread through one writer, read them back.

Run it: python examples/tutorial_database.py
"""

import contextlib
import sqlite3
import sys
import tempfile
from pathlib import Path

import anyio

import corral


async def main(path: Path) -> None:
    # Any URL works: "postgresql://user@host/db", or none for sqlite:///corral.db.
    async with corral.connect(f"sqlite:///{path}") as db:
        prices = db.table("prices", key=("ticker", "day"))  # created from the first row

        async def fetch(ticker: str) -> None:
            for day in range(1, 6):
                await anyio.sleep(0.001)  # stand-in for a network call
                await prices.put({"ticker": ticker, "day": day, "close": 10.0 + day})

        def from_a_thread() -> None:  # threads block while the queue is full
            prices.put_from_thread({"ticker": "ACME", "day": 1, "close": 99.5})

        await corral.map(fetch, ["ACME", "BOLT", "CORE"])  # 15 rows from 3 tasks
        await anyio.to_thread.run_sync(from_a_thread)  # replaces ACME's day 1: an upsert
        await db.flush()  # every row accepted so far is committed
        print(db.statistics())
        try:
            await prices.put({"ticker": "ACME", "day": "two", "close": 1.0})
        except corral.ColumnTypeError as exc:  # refused before it is accepted
            print("refused:", exc)
    # The block has ended: everything accepted is in the file, for any SQLite client.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        print(conn.execute("SELECT * FROM prices WHERE day = 1 ORDER BY ticker").fetchall())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:  # or a path of your own
        backend = "trio" if "--trio" in sys.argv else "asyncio"
        anyio.run(main, Path(tmp) / "prices.db", backend=backend)
