"""A separate process that adds to a subtask's count: ``URL RUN_ID COUNT``.

Used by tests/test_progress.py to prove that counts from several processes sharing
one database are exact. Exits 0 when all its increments are committed.
"""

from __future__ import annotations

import sys

import anyio

import corral


async def main(url: str, run_id: int, count: int) -> None:
    async with corral.connect(url) as db:
        sub = await db.progress.subtask(run_id, 1)
        for i in range(count):
            sub.increment()
            if i % 500 == 0:
                await anyio.lowlevel.checkpoint()


async def flush_then_hang(url: str, run_id: int, count: int) -> None:
    """Count ``count`` and commit it, count as much again without committing, then hang.

    The test kills this process with SIGKILL after "ready": only the committed counts may
    be in the database.
    """
    async with corral.connect(url, flush_interval=3600) as db:
        sub = await db.progress.subtask(run_id, 1)
        for _ in range(count):
            sub.increment()
        await db.flush()
        for _ in range(count):
            sub.increment()
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    work = flush_then_hang if sys.argv[4:] == ["--hang"] else main
    anyio.run(work, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
