"""Fetch in threads, summarise on a Dask cluster, write through one writer: tickers at scale.

Each ticker's price history is "fetched" by a blocking call (a stand-in for an HTTP
client) in threads; its CPU summary (returns, volatility, a slow pure-Python drawdown)
runs on a Dask cluster, in chunks, streamed back as each completes; every summary row
goes through the database's one writer. Progress is recorded in the database and shown
live. The run is checked afterwards with plain sqlite3.

    python examples/dask_tickers.py                 # 2,000 tickers, a LocalCluster
    python examples/dask_tickers.py --quick         # 200 tickers
    python examples/dask_tickers.py --scheduler tcp://scheduler:8786   # a real cluster

With ``--scheduler`` the Dask workers must be able to import this file's functions'
modules (cloudpickle sends ``summarise`` itself by value, since it lives in __main__).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

import corral
from corral.dask import DaskPool


def fetch_history(ticker: str, days: int) -> list[float]:
    """Blocking stand-in for an HTTP call: a ticker's daily closing prices."""
    time.sleep(0.001)  # the network
    rng = random.Random(ticker)
    price = 100.0
    closes = []
    for _ in range(days):
        price *= math.exp(rng.gauss(0.0002, 0.02))
        closes.append(round(price, 4))
    return closes


def summarise(closes: list[float]) -> dict[str, float]:
    """CPU work, run on a Dask worker: return, volatility and maximum drawdown."""
    returns = [math.log(b / a) for a, b in itertools.pairwise(closes)]
    mean = sum(returns) / len(returns)
    volatility = math.sqrt(sum((r - mean) ** 2 for r in returns) / len(returns))
    drawdown = 0.0
    for i, top in enumerate(closes):  # the slow way, on purpose: O(days^2)
        for low in closes[i : i + 60]:
            drawdown = max(drawdown, 1 - low / top)
    return {
        "total_return": closes[-1] / closes[0] - 1,
        "volatility": volatility * math.sqrt(252),
        "max_drawdown": drawdown,
    }


async def main(url: str, tickers: list[str], days: int, scheduler: str | None) -> None:
    async with corral.connect(url) as db, DaskPool(scheduler) as pool:
        run = await db.progress.start_run("STATIC", "Ticker summaries on Dask")
        fetching = await run.start_subtask(1, "Fetch histories", items_total=len(tickers))
        summing = await run.start_subtask(2, "Summarise on Dask", items_total=len(tickers))
        table = db.table("summaries", key="ticker")

        def fetch(ticker: str) -> list[float]:
            return fetch_history(ticker, days)

        started = time.perf_counter()
        async with corral.show_progress(run, refresh=0.2):
            histories = await corral.map(fetch, tickers, limit=32, progress=fetching)
            await fetching.complete(message=f"{len(tickers):,} histories fetched")
            async with corral.imap(summarise, histories, offload=pool, ordered=False) as results:
                async for index, summary in results:
                    await table.put({"ticker": tickers[index], **summary})
                    summing.increment()
            await db.flush()
            await summing.complete(message=f"{len(tickers):,} summaries written")
        await run.complete(message="all tickers summarised")
        seconds = time.perf_counter() - started
        stats = pool.statistics()
        print(
            f"summarised {len(tickers):,} tickers x {days} days on {stats.workers} Dask "
            f"workers ({stats.threads} threads) in {stats.submitted} tasks, and wrote "
            f"{db.statistics().committed:,} rows through one writer ({seconds:.2f} s)"
        )


def verify(path: Path, tickers: list[str], days: int) -> None:
    """Every ticker has its row, and a sample matches a local computation."""
    conn = sqlite3.connect(path)
    try:
        rows = dict(conn.execute('SELECT "ticker", "max_drawdown" FROM "summaries"').fetchall())
    finally:
        conn.close()
    assert set(rows) == set(tickers), "rows are missing"
    for ticker in tickers[:: max(1, len(tickers) // 5)]:
        expected = summarise(fetch_history(ticker, days))["max_drawdown"]
        assert math.isclose(rows[ticker], expected), ticker
    print(f"verified: {len(rows):,} rows in {path.name}, sampled values match")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=500)
    parser.add_argument("--scheduler", help="a Dask scheduler address (default: a LocalCluster)")
    parser.add_argument("--quick", action="store_true", help="200 tickers x 250 days")
    args = parser.parse_args()
    if args.quick:
        args.tickers, args.days = 200, 250
    names = [f"T{i:05d}" for i in range(args.tickers)]
    with tempfile.TemporaryDirectory() as folder:
        db_path = Path(folder) / "tickers.db"
        anyio.run(main, f"sqlite:///{db_path}", names, args.days, args.scheduler)
        verify(db_path, names, args.days)
