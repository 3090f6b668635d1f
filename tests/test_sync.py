from __future__ import annotations

import threading

import anyio
import pytest

from corral._sync import LoopSafeSemaphore


async def test_fifo_and_never_over_capacity() -> None:
    sem = LoopSafeSemaphore(2)
    holding: list[int] = []
    releases = [anyio.Event() for _ in range(6)]

    async def user(i: int) -> None:
        await sem.acquire()
        assert sem.borrowed <= 2
        holding.append(i)
        await releases[i].wait()
        holding.remove(i)
        sem.release()

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(user, i)
            await anyio.wait_all_tasks_blocked()
        assert holding == [0, 1]
        assert sem.waiting == 4
        for i in range(4):  # each release hands the token to the longest waiter
            releases[i].set()
            await anyio.wait_all_tasks_blocked()
            assert sorted(holding) == [i + 1, i + 2]
        releases[4].set()
        releases[5].set()
    assert (sem.borrowed, sem.waiting) == (0, 0)


async def test_cancelled_waiter_leaks_no_token() -> None:
    sem = LoopSafeSemaphore(1)
    await sem.acquire()
    with anyio.move_on_after(0.01):
        await sem.acquire()
    assert sem.waiting == 0
    sem.release()
    assert sem.borrowed == 0
    assert sem.acquire_nowait()
    sem.release()


async def test_release_more_than_acquired_is_an_error() -> None:
    sem = LoopSafeSemaphore(1)
    with pytest.raises(RuntimeError, match="more often than acquire"):
        sem.release()


def test_waiter_in_another_event_loop_is_woken() -> None:
    sem = LoopSafeSemaphore(1)
    holder_ready = threading.Event()
    waiter_waiting = threading.Event()
    got_it = threading.Event()

    async def holder() -> None:
        await sem.acquire()
        holder_ready.set()
        await anyio.to_thread.run_sync(waiter_waiting.wait)
        sem.release()

    async def waiter() -> None:
        await anyio.to_thread.run_sync(holder_ready.wait)

        async def announce() -> None:
            await anyio.wait_all_tasks_blocked()
            waiter_waiting.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            await sem.acquire()
        got_it.set()
        sem.release()

    for first, second in (("asyncio", "trio"), ("trio", "asyncio")):
        holder_ready.clear()
        waiter_waiting.clear()
        got_it.clear()
        thread = threading.Thread(target=anyio.run, args=(waiter,), kwargs={"backend": second})
        thread.start()
        anyio.run(holder, backend=first)
        thread.join()
        assert got_it.is_set()
        assert sem.borrowed == 0
