"""Tutorial 6: a ``Cluster`` bounds how much runs in one place, across maps and threads.

Run it: python examples/tutorial_clusters.py
"""

from __future__ import annotations

import threading

import anyio

import corral

# A cluster may be created at import time and shared by every map, event loop and thread.
database = corral.Cluster("database", capacity=3)


class Gauge:
    """Counts the calls running at once, from any thread, and keeps the peak."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


gauge = Gauge()


async def query(n: int) -> int:
    gauge.enter()
    try:
        await anyio.sleep(0.01)
        return n
    finally:
        gauge.leave()


async def two_maps() -> None:
    async def one_map(name: str) -> None:
        results = await corral.map(query, range(20), limit=10, cluster=database)
        print(f"  {name}: {len(results)} results")

    async with anyio.create_task_group() as tg:
        tg.start_soon(one_map, "map A")
        tg.start_soon(one_map, "map B")
        await anyio.sleep(0.005)
        print("  while running:", database.statistics())


finished: list[int] = []


async def one_loop() -> None:
    results = await corral.map(query, range(20), limit=10, cluster=database)
    finished.append(len(results))


if __name__ == "__main__":
    print("two maps on one event loop, each limit=10, sharing", database)
    anyio.run(two_maps)
    print(f"  peak calls at once: {gauge.peak}")

    gauge.peak = 0
    threads = [threading.Thread(target=anyio.run, args=(one_loop,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert finished == [20, 20, 20], finished
    print(f"three event loops in three threads: peak calls at once {gauge.peak}")

    # Where plain functions run, and routing attributes kept for the job processor.
    gpu = corral.Cluster("gpu-box", capacity=2, offload="process", region="eu-west", labels={"gpu"})
    print("a cluster with routing attributes:", gpu)
