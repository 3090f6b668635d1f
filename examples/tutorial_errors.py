"""Tutorial 5: failures, ``return_exceptions``, timeouts and crashed workers.

Run it: python examples/tutorial_errors.py
"""

from __future__ import annotations

import os
import time

import anyio

import corral


async def parse(text: str) -> int:
    await anyio.sleep(0.01)  # stand-in for fetching the text
    return int(text)


async def wait(seconds: float) -> float:
    await anyio.sleep(seconds)
    return seconds


def nap(seconds: float) -> float:
    """A blocking call in a thread."""
    time.sleep(seconds)
    return seconds


def spin(seconds: float) -> float:
    """Busy for ``seconds`` in a worker process."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    return seconds


def crash_on_three(n: int) -> int:
    """Ends its worker process abruptly on item 3 (like a segfault or the OOM killer)."""
    if n == 3:
        os._exit(1)
    return n


async def main() -> None:
    # 1. The first failure cancels the rest and is raised as itself (no ExceptionGroup),
    #    with a note naming the item.
    try:
        await corral.map(parse, ["1", "2", "three", "4"])
    except ValueError as exc:
        print(f"raised: {exc!r}, note: {exc.__notes__}")

    # imap hands out the results that completed before the failure, then raises it.
    try:
        async with corral.imap(parse, ["1", "2", "three", "4"], limit=1) as stream:
            async for index, value in stream:
                print(f"imap: item {index} -> {value}")
    except ValueError as exc:
        print(f"imap raised: {exc!r}")

    # 2. return_exceptions=True: every item runs; exceptions stand in place of results.
    parsed = await corral.map(parse, ["1", "2", "three", "4"], return_exceptions=True)
    print("return_exceptions=True:", parsed)

    # 3. timeout: seconds per item. A coroutine is cancelled at the deadline.
    waited = await corral.map(wait, [0.01, 5.0, 0.02], timeout=0.2, return_exceptions=True)
    print("timeout (coroutines):", waited)

    # ...a thread cannot be interrupted: its call fails when it returns, late.
    napped = await corral.map(nap, [0.01, 0.5], timeout=0.2, return_exceptions=True)
    print("timeout (threads):", napped)

    # ...a process worker running an overdue call is killed (and replaced when needed).
    async with corral.ProcessPool(1) as pool:
        spun = await corral.map(
            spin, [0.01, 5.0, 0.01], offload=pool, timeout=0.5, return_exceptions=True
        )
        print("timeout (processes):", spun)
        print(f"    workers killed: {pool.statistics().killed}")

    # 4. A worker process that dies fails only the call it was running, with
    #    WorkerCrashed; the pool starts a replacement.
    async with corral.ProcessPool(2) as pool:
        survived = await corral.map(
            crash_on_three, range(6), offload=pool, chunksize=1, return_exceptions=True
        )
        print("crashed worker:", survived)
        crash = survived[3]
        assert isinstance(crash, corral.WorkerCrashed)
        print(f"    pid {crash.pid}, exit code {crash.exitcode}")


if __name__ == "__main__":
    anyio.run(main)
