"""Process 3,143 counties in parallel, with progress you can watch from another terminal.

Each county is fetched (simulated network latency), summarised (CPU work in a process
pool), and its summary written through the database's one writer. The run and its
subtasks are recorded in the database as they go: a live display shows them here, and

    corral progress --watch           # in another terminal, same directory

shows the same run from outside, reading the database.

    python examples/counties.py                      # ~15 s, into ./corral.db
    python examples/counties.py --db postgresql://postgres@127.0.0.1/test
    python examples/counties.py --quick              # a few seconds, in a temporary file
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import anyio

import corral

STATES = 51
COUNTIES = 3_143


def county_list(count: int) -> list[dict[str, object]]:
    """Synthetic counties: a unique FIPS code (state + county number) and a name."""
    return [
        {"fips": f"{i % STATES + 1:02d}{i // STATES * 2 + 1:03d}", "name": f"County {i:04d}"}
        for i in range(count)
    ]


def summarise(values: list[float]) -> tuple[float, float]:
    """CPU work, run in a worker process: mean and a slow, pure-Python spread."""
    mean = sum(values) / len(values)
    spread = sum((v - mean) ** 2 for v in values for _ in range(20)) / (20 * len(values))
    return mean, spread**0.5


async def main(url: str | None, quick: bool) -> None:
    counties = county_list(200 if quick else COUNTIES)
    latency = (0.0005, 0.002) if quick else (0.05, 0.5)

    async with corral.connect(url) as db:
        run = await db.progress.start_run("STATIC", "Process Counties")
        fetched = await run.start_subtask(1, "Fetch all counties", items_total=len(counties))
        summed = await run.start_subtask(2, "Summarise all counties", items_total=len(counties))
        stats = db.table("county_stats", key="fips")

        async def fetch(county: dict[str, object]) -> list[float]:
            await anyio.sleep(random.uniform(*latency))  # the network
            seed = int(str(county["fips"]))
            rng = random.Random(seed)
            return [rng.gauss(50, 10) for _ in range(200)]

        async with corral.show_progress(run, refresh=0.2):
            samples = await corral.map(fetch, counties, limit=64, progress=fetched)
            await fetched.complete(message=f"{len(counties):,} counties fetched")
            async with corral.imap(summarise, samples, offload="process") as results:
                async for index, (mean, spread) in results:
                    county = counties[index]
                    await stats.put({**county, "mean": mean, "spread": spread})
                    summed.increment()
            await db.flush()
            await summed.complete(message=f"{len(counties):,} summaries written")
            written = db.statistics().committed
            # The display shows this message as it ends, with a command to see the run
            # again (when the database outlives the program). Ctrl-C stops it in one line.
            await run.complete(message=f"all counties processed, {written:,} rows committed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: sqlite:///corral.db)")
    parser.add_argument("--quick", action="store_true", help="200 counties, in a temporary file")
    args = parser.parse_args()
    if args.quick and args.db is None:
        with tempfile.TemporaryDirectory() as folder:
            anyio.run(main, f"sqlite:///{Path(folder) / 'counties.db'}", True)
    else:
        anyio.run(main, args.db, args.quick)
