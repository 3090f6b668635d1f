from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.from_thread
import pytest

import corral
import helpers


def keywords(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    return args, kwargs


async def test_returns_the_value_from_another_thread() -> None:
    assert await corral.to_thread(helpers.square, 6) == 36
    assert await corral.to_thread(threading.get_ident) != threading.get_ident()


async def test_passes_positional_and_keyword_arguments() -> None:
    assert await corral.to_thread(helpers.add, 1, 2, c=3) == 6
    assert await corral.to_thread(helpers.add, 1, b=2) == 3
    assert await corral.to_thread(keywords) == ((), {})


@pytest.mark.parametrize("name", ["fn", "limiter", "abandon_on_cancel", "cancellable"])
async def test_keyword_arguments_go_to_fn_whatever_their_name(name: str) -> None:
    # fn is positional-only, and nothing is taken for anyio's own options.
    assert await corral.to_thread(keywords, 1, **{name: 2}) == ((1,), {name: 2})


async def test_exception_is_raised_itself() -> None:
    error = ValueError("from the thread")

    def fail() -> None:
        raise error

    with pytest.raises(ValueError, match="from the thread") as info:
        await corral.to_thread(fail)
    assert info.value is error

    with pytest.raises(ValueError, match="bad item 3"):
        await corral.to_thread(helpers.fail_on, 3)
    with pytest.raises(ValueError, match="bad item 5"):
        await corral.to_thread(helpers.fail_on, 5, bad=5)


class BlockingCall:
    """A blocking function that the test holds inside its thread until it lets it go."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = threading.Event()
        self.steps: list[str] = []

    def __call__(self, *, label: str = "done") -> str:
        anyio.from_thread.run_sync(self.entered.set)
        self.release.wait()
        self.steps.append("thread returned")
        return label


async def cancel_while_in_the_thread(call: BlockingCall, **kwargs: str) -> anyio.CancelScope:
    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            await corral.to_thread(call, **kwargs)
            call.steps.append("caller resumed")
        call.steps.append("caller finished")

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await call.entered.wait()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        # Cancelled, but the thread is still running: the caller must still wait for it.
        assert call.steps == []
        call.release.set()
    return scope


@pytest.mark.parametrize("kwargs", [{}, {"label": "x"}], ids=["positional", "keywords"])
async def test_cancellation_waits_for_the_thread_to_return(kwargs: dict[str, str]) -> None:
    call = BlockingCall()
    scope = await cancel_while_in_the_thread(call, **kwargs)
    assert call.steps[0] == "thread returned"
    assert call.steps[-1] == "caller finished"
    assert scope.cancel_called


async def test_cancelled_call_raises_the_cancellation_once_the_thread_returns() -> None:
    # The documented policy: "a cancelled caller waits for fn to return and then raises
    # the cancellation", so the code after the await does not run.
    call = BlockingCall()
    scope = await cancel_while_in_the_thread(call)
    assert call.steps == ["thread returned", "caller finished"]
    assert scope.cancelled_caught


async def test_calls_run_concurrently() -> None:
    # Three calls that can only finish together prove they run in three threads at once.
    barrier = threading.Barrier(3)

    def meet(i: int) -> int:
        barrier.wait(timeout=30)  # a bound against a hang, never reached when correct
        return i

    results: list[int] = []

    async def call(i: int) -> None:
        results.append(await corral.to_thread(meet, i))

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(call, i)
    assert sorted(results) == [0, 1, 2]


async def coroutine_function(x: int) -> int:
    return x


class AsyncCall:
    async def __call__(self, x: int) -> int:
        return x


@pytest.mark.parametrize(
    "fn",
    [coroutine_function, AsyncCall(), functools.partial(coroutine_function)],
    ids=["function", "async __call__", "partial"],
)
async def test_an_async_function_is_refused_before_it_runs(fn: Callable[[int], int]) -> None:
    # map and to_process refuse coroutine functions; to_thread must too, instead of
    # returning an unawaited coroutine (and a RuntimeWarning later).
    with pytest.raises(TypeError, match="is an async function") as info:
        await corral.to_thread(fn, 1)
    assert "to_thread" in str(info.value)
    assert "await it" in str(info.value)


async def test_a_function_that_returns_a_coroutine_is_refused_and_the_coroutine_closed() -> None:
    made: list[Coroutine[Any, Any, int]] = []

    def sneaky(x: int) -> Coroutine[Any, Any, int]:
        coro = coroutine_function(x)
        made.append(coro)
        return coro

    with pytest.raises(TypeError, match="returned a coroutine") as info:
        await corral.to_thread(sneaky, 1)
    assert "sneaky" in str(info.value)
    [coro] = made
    assert coro.cr_frame is None  # closed: no "never awaited" warning either
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
