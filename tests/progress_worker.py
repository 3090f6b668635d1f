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


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
