"""Tutorial 7: the blocking facade, for synchronous code.

Run it: python examples/tutorial_blocking.py

No ``async`` anywhere: each call starts an event loop, runs the tasks on corral's
engine and returns when all of them have finished.
"""

from __future__ import annotations

import time

from corral.blocking import (
    Task,
    execute_tasks_in_parallel,
    execute_tasks_in_parallel_streaming,
    execute_tasks_in_parallel_unordered,
    is_picklable,
    should_use_processes,
)


def download(url: str, retries: int = 0) -> str:
    time.sleep(0.02)  # blocking I/O
    return f"{url} ({retries} retries)"


def checksum(n: int) -> int:
    return sum(i * i for i in range(n)) % 1_000_003


def risky(n: int) -> int:
    if n == 2:
        raise ValueError("no 2s allowed")
    return n


if __name__ == "__main__":
    # Positional arguments as a tuple (a single argument is written (x,)) ...
    tasks = [Task(download, (f"https://example.com/{n}",)) for n in range(3)]
    # ... or keyword arguments as a dict.
    tasks.append(Task(download, {"url": "https://example.com/kw", "retries": 2}))
    print("ordered:  ", execute_tasks_in_parallel(tasks, max_workers=4))
    print("unordered:", len(execute_tasks_in_parallel_unordered(tasks, max_workers=4)), "results")

    # Streaming: pulls tasks lazily and yields (index, result) as they complete.
    for index, page in execute_tasks_in_parallel_streaming(tasks, max_workers=2):
        print(f"streamed #{index}: {page}")

    # CPU-bound work belongs in processes; the function must be importable.
    cpu_tasks = [Task(checksum, (n,)) for n in (10_000, 20_000, 30_000)]
    use_processes = should_use_processes("cpu")
    print(
        f"use_processes={use_processes}:",
        execute_tasks_in_parallel(cpu_tasks, use_processes=use_processes),
    )
    print("is_picklable(checksum):", is_picklable(checksum), "lambda:", is_picklable(lambda: 0))

    # return_exceptions=True: exceptions stand in place of results.
    risky_tasks = [Task(risky, (n,)) for n in range(4)]
    print("return_exceptions:", execute_tasks_in_parallel(risky_tasks, return_exceptions=True))
