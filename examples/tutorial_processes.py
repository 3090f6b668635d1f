"""Tutorial 3: CPU-bound functions run in a persistent pool of worker processes.

Run it: python examples/tutorial_processes.py

Worker processes import the function by name, so it must live at module level, and
the script's own work must sit under ``if __name__ == "__main__":`` (workers import
this file as a module; the guard keeps them from running it).
"""

from __future__ import annotations

import os

import anyio

import corral


def collatz_steps(n: int) -> int:
    """CPU-bound pure Python: steps for n to reach 1."""
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


_table: dict[str, int] = {}


def load_table(scale: int) -> None:
    """A pool initializer: runs once in every new worker (load a model, open a file...)."""
    _table["scale"] = scale


def scaled(n: int) -> tuple[int, int]:
    return os.getpid(), n * _table["scale"]


async def main() -> None:
    # offload="process": the default pool, one worker per CPU, started on first use.
    # chunksize is adapted so each round trip to a worker carries about 20 ms of work.
    steps = await corral.map(collatz_steps, range(1, 20_001), offload="process")
    best = max(range(len(steps)), key=steps.__getitem__) + 1
    print(f"map(offload='process'): longest Collatz chain below 20001 starts at {best}")

    # One call in the default pool.
    print("to_process:", await corral.to_process(collatz_steps, 27), "steps for 27")

    # A pool of your own: size, initializer, statistics; closed when the block ends.
    async with corral.ProcessPool(2, initializer=load_table, initargs=(10,)) as pool:
        pairs = await corral.map(scaled, range(6), offload=pool, chunksize=1)
        pids = sorted({pid for pid, _ in pairs})
        print("own pool:", [value for _, value in pairs], "from worker pids", pids)
        print("   ", pool.statistics())
        _, value = await pool.run(scaled, 7)
        print("pool.run:", value)

    # Only importable functions can cross to a process: corral says so before work starts.
    try:
        await corral.map(lambda n: n + 1, range(3), offload="process")
    except corral.NotPicklableError as exc:
        print("NotPicklableError:", exc)


if __name__ == "__main__":
    anyio.run(main)
