"""Tutorial 9: track a run and its subtasks in the database, with exact counts.

Run it: python examples/tutorial_progress.py

``db.progress`` records runs and numbered subtasks. ``increment()`` is a plain call that
never blocks, from any task or thread; the writer adds the counts up in the database,
so they are exact even when many processes share one database. ``corral.map`` counts
every completed item into ``progress=``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import anyio

import corral


def resize(image: int) -> int:
    """A blocking step, run in threads."""
    time.sleep(0.001)
    return image


async def main(url: str) -> None:
    async with corral.connect(url) as db:
        run = await db.progress.start_run("STATIC", "Resize images")
        resizing = await run.start_subtask(1, "Resize", items_total=500)
        checking = await run.start_subtask(2, "Check", items_total=500)

        await corral.map(resize, range(500), progress=resizing)  # counts every item
        await resizing.complete(message="500 images resized")

        for _ in range(500):
            checking.increment()  # by hand: plain call, never blocks
        await checking.update(message="all checked")
        await checking.complete()
        await run.complete()

        for sub in await db.progress.get(run.id):
            print(f"{sub.number}. {sub.name}: {sub.items_complete}/{sub.items_total}", end=" ")
            print(f"{sub.percent:.0f}% {sub.status.value} ({sub.message})")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:  # a real app would keep corral.db
        url = "sqlite:///" + str(Path(folder) / "tutorial.db")
        anyio.run(main, url, backend="trio" if "--trio" in sys.argv else "asyncio")
