"""Fetch in parallel, write through one writer, verify: daily prices for many tickers.

Each ticker's history is "fetched" with simulated network latency (anyio.sleep);
corral.map runs 50 fetches at once, and every fetched row goes through one writer into
one SQLite file: concurrent producers, one owner of the connection, batched transactions.
Afterwards the file is opened with plain sqlite3 and every row is checked.

    python examples/tickers.py                  # 400 tickers x 250 days = 100,000 rows
    python examples/tickers.py --quick          # 40 tickers x 20 days
    python examples/tickers.py --db prices.db   # keep the file (default: a temporary one)
"""

from __future__ import annotations

import argparse
import datetime
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

import corral

FIRST_DAY = datetime.date(2026, 1, 1)


def close_price(ticker: str, day: int) -> float:
    """A made-up but reproducible closing price."""
    return round(10 + (sum(map(ord, ticker)) * 7 + day * 13) % 1000 / 10, 2)


async def fetch_history(ticker: str, days: int) -> list[dict[str, object]]:
    """Stand-in for an HTTP call that returns a ticker's daily prices."""
    await anyio.sleep(0.002 + sum(map(ord, ticker)) % 8 / 1000)  # network latency
    return [
        {
            "ticker": ticker,
            "day": (FIRST_DAY + datetime.timedelta(days=day)).isoformat(),
            "close": close_price(ticker, day),
            "volume": 1000 * (day + 1),
        }
        for day in range(days)
    ]


async def load(url: str, tickers: list[str], days: int) -> corral.DatabaseStatistics:
    async with corral.connect(url) as db:
        prices = db.table("prices", key=("ticker", "day"))

        async def fetch_and_write(ticker: str) -> int:
            rows = await fetch_history(ticker, days)
            return await prices.put_many(rows)  # waits only if the writer falls behind

        written = await corral.map(fetch_and_write, tickers, limit=50)
        await db.flush()  # every row accepted so far is committed
        assert sum(written) == len(tickers) * days
        return db.statistics()


def verify(path: Path, tickers: list[str], days: int) -> None:
    """Open the file with plain sqlite3: every row is there, with the values fetched."""
    conn = sqlite3.connect(path)
    try:
        per_ticker = dict(
            conn.execute('SELECT "ticker", COUNT(*) FROM "prices" GROUP BY "ticker"').fetchall()
        )
        assert per_ticker == dict.fromkeys(tickers, days), "rows are missing"
        last = (FIRST_DAY + datetime.timedelta(days=days - 1)).isoformat()
        for ticker in tickers[:: max(1, len(tickers) // 10)]:
            close = conn.execute(
                'SELECT "close" FROM "prices" WHERE "ticker" = ? AND "day" = ?', (ticker, last)
            ).fetchone()[0]
            assert close == close_price(ticker, days - 1), (ticker, close)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, help="SQLite file to write (default: temporary)")
    parser.add_argument("--tickers", type=int, default=400)
    parser.add_argument("--days", type=int, default=250)
    parser.add_argument("--quick", action="store_true", help="40 tickers x 20 days")
    args = parser.parse_args()
    if args.quick:
        args.tickers, args.days = 40, 20
    tickers = [f"T{i:04d}" for i in range(args.tickers)]
    with tempfile.TemporaryDirectory() as tmp:
        path = (args.db or Path(tmp) / "tickers.db").resolve()
        path.unlink(missing_ok=True)
        started = time.perf_counter()
        stats = anyio.run(load, f"sqlite:///{path}", tickers, args.days)
        seconds = time.perf_counter() - started
        print(
            f"fetched {len(tickers)} tickers, 50 at a time, and wrote {stats.committed:,} rows "
            f"through one writer in {stats.batches} transactions ({seconds:.2f} s)"
        )
        verify(path, tickers, args.days)
        print(f"verified: every one of the {stats.committed:,} rows is in {path.name}")


if __name__ == "__main__":
    main()
