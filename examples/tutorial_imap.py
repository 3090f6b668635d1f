"""Tutorial 4: stream results with ``corral.imap``, in bounded memory.

Run it: python examples/tutorial_imap.py

``imap`` is an async context manager: the workers run for as long as the ``async with``
block, and leaving it (at the end, on ``break``, on an exception) cancels whatever is
still in flight. Input is pulled lazily, so it may even be endless.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import anyio

import corral

pulled = 0


def endless_ids() -> Iterator[int]:
    """An input that never ends; counts how much corral has read from it."""
    global pulled
    for n in itertools.count():
        pulled += 1
        yield n


async def lookup(n: int) -> int:
    await anyio.sleep(0.001 * (n % 7))  # calls finish out of order
    return n * n


async def main() -> None:
    limit = 8
    # In order (the default): results come out in input order as soon as they can.
    async with corral.imap(lookup, endless_ids(), limit=limit) as results:
        async for index, value in results:
            if index == 99:
                print(f"imap: item {index} -> {value}")
                break  # leaving the block cancels the calls still in flight
    # Bounded memory: never more than 2 * limit items read ahead of the last result.
    print(f"      read {pulled} items of an endless input for 100 results (limit={limit})")
    assert pulled <= 100 + 2 * limit

    # Completion order: each result as soon as its call finishes.
    order: list[int] = []
    async with corral.imap(lookup, range(20), limit=limit, ordered=False) as results:
        async for index, _ in results:
            order.append(index)
    print(f"imap(ordered=False): indexes in completion order {order}")


if __name__ == "__main__":
    anyio.run(main)
