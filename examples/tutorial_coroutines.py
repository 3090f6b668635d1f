"""Tutorial 1: map a coroutine function over many items, at most ``limit`` at once.

Run it: python examples/tutorial_coroutines.py

Runs the same ``main`` on asyncio and, if trio is installed, on trio.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio

import corral


async def fetch(n: int) -> str:
    """Stand-in for a network call: 50 ms of waiting."""
    await anyio.sleep(0.05)
    return f"page-{n}"


async def numbers(count: int) -> AsyncIterator[int]:
    """An async generator works as input too; corral pulls from it lazily."""
    for n in range(count):
        yield n


class Counter:
    """A progress sink: anything with ``increment(n)``."""

    def __init__(self) -> None:
        self.done = 0

    def increment(self, n: int = 1) -> None:
        self.done += n


async def main() -> None:
    # 100 calls of 50 ms, 20 at a time: about 5 rounds, 0.25 s.
    started = time.perf_counter()
    pages = await corral.map(fetch, range(100), limit=20)
    elapsed = time.perf_counter() - started
    print(f"  map: {len(pages)} results in input order {pages[:3]}..., {elapsed:.2f} s")

    # Completion order instead of input order, from an async iterable, with progress.
    counter = Counter()
    unordered = await corral.map(fetch, numbers(30), limit=10, ordered=False, progress=counter)
    print(f"  map(ordered=False): {len(unordered)} results, progress saw {counter.done}")


if __name__ == "__main__":
    print("asyncio:")
    anyio.run(main)
    try:
        import trio  # noqa: F401
    except ImportError:
        print("trio: not installed (pip install 'corral[trio]' to run on it)")
    else:
        print("trio:")
        anyio.run(main, backend="trio")
