from __future__ import annotations

import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

import corral
import helpers

# -- results and order ---------------------------------------------------------------


async def double(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return 2 * x


async def no_yield(x: int) -> int:
    return x + 1


def blocking_double(x: int) -> int:
    return 2 * x


async def test_map_coroutines_in_input_order() -> None:
    assert await corral.map(double, range(500), limit=7) == [2 * i for i in range(500)]


async def test_map_plain_function_runs_in_threads() -> None:
    main = threading.get_ident()
    threads: set[int] = set()

    def record(x: int) -> int:
        threads.add(threading.get_ident())
        return x

    assert await corral.map(record, range(50), limit=4) == list(range(50))
    assert main not in threads


async def test_map_coroutines_that_never_yield_still_share_the_loop() -> None:
    other_ran = anyio.Event()

    async def other() -> None:
        other_ran.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        assert await corral.map(no_yield, range(1000), limit=1) == list(range(1, 1001))
    assert other_ran.is_set()


async def test_map_empty_input() -> None:
    assert await corral.map(double, []) == []
    assert await corral.map(blocking_double, iter(())) == []


async def test_map_async_iterable_input() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(100):
            await anyio.lowlevel.checkpoint()
            yield i

    assert await corral.map(double, numbers(), limit=10) == [2 * i for i in range(100)]


async def test_map_unordered_returns_every_result() -> None:
    results = await corral.map(double, range(200), limit=10, ordered=False)
    assert sorted(results) == [2 * i for i in range(200)]


async def test_callable_object_with_async_call_runs_on_the_loop() -> None:
    class Doubler:
        async def __call__(self, x: int) -> int:
            return 2 * x

    assert await corral.map(Doubler(), range(5)) == [0, 2, 4, 6, 8]


async def test_imap_ordered_yields_index_and_value() -> None:
    async with corral.imap(double, range(100), limit=5) as results:
        pairs = [pair async for pair in results]
    assert pairs == [(i, 2 * i) for i in range(100)]


async def test_imap_unordered_follows_completion_order() -> None:
    gates = [anyio.Event() for _ in range(3)]

    async def wait_gate(i: int) -> int:
        await gates[i].wait()
        return i

    order: list[int] = []
    async with corral.imap(wait_gate, range(3), limit=3, ordered=False) as results:
        await anyio.wait_all_tasks_blocked()
        for i in (2, 0, 1):
            gates[i].set()
            index, value = await results.__anext__()
            order.append(index)
            assert value == index
    assert order == [2, 0, 1]


# -- limits and lazy input -----------------------------------------------------------


class Counting:
    """A lazy input that records how many items were pulled from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.pulled += 1
            yield i


async def test_limit_bounds_calls_in_flight_and_items_pulled() -> None:
    release = anyio.Event()
    running = 0
    peak = 0

    async def held(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return x

    source = Counting(1000)
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            assert await corral.map(held, source, limit=8) == list(range(1000))

        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        assert running == 8
        assert source.pulled == 8
        release.set()
    assert peak == 8
    assert source.pulled == 1000


async def test_ordered_imap_stops_pulling_when_the_next_result_is_slow() -> None:
    first = anyio.Event()

    async def slow_first(x: int) -> int:
        if x == 0:
            await first.wait()
        return x

    source = Counting(10**9)  # far too large to buffer
    async with corral.imap(slow_first, source, limit=4) as results:
        await anyio.wait_all_tasks_blocked()
        assert source.pulled == 2 * 4  # the window: 2 * limit ahead of the next result
        first.set()
        seen = 0
        async for index, value in results:
            assert index == value == seen
            seen += 1
            if seen == 100:
                break
        assert source.pulled <= 100 + 2 * 4


async def test_unordered_imap_stops_pulling_when_the_consumer_is_slow() -> None:
    source = Counting(10**9)
    async with corral.imap(double, source, limit=3, ordered=False) as results:
        await anyio.wait_all_tasks_blocked()
        assert source.pulled <= 2 * 3
        async for index, _ in results:
            if index >= 50:
                break
    assert source.pulled <= 51 + 2 * 3


async def test_thread_limit_is_not_capped_by_anyio_default() -> None:
    barrier = threading.Barrier(50, timeout=30)

    def meet(x: int) -> int:
        barrier.wait()  # only passes once 50 threads run at once
        return x

    assert await corral.map(meet, range(50), limit=50) == list(range(50))


def _wait_until(cond: threading.Condition, predicate: Callable[[], bool]) -> None:
    with cond:
        assert cond.wait_for(predicate, timeout=30)


async def test_threads_never_exceed_limit_and_queue_a_bounded_number() -> None:
    cond = threading.Condition()
    release = threading.Event()
    running = 0
    peak = 0

    def held(x: int) -> int:
        nonlocal running, peak
        with cond:
            running += 1
            peak = max(peak, running)
            cond.notify_all()
        release.wait()
        with cond:
            running -= 1
        return x

    source = Counting(1000)
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            assert await corral.map(held, source, limit=4) == list(range(1000))

        tg.start_soon(run)
        await anyio.to_thread.run_sync(_wait_until, cond, lambda: running == 4)
        await anyio.wait_all_tasks_blocked()
        assert source.pulled <= 2 * 4  # 4 running, at most 4 more queued for them
        release.set()
    assert peak == 4
    assert source.pulled == 1000


@pytest.mark.parametrize("ordered", [True, False])
async def test_thread_imap_stops_pulling_when_the_consumer_is_slow(ordered: bool) -> None:
    source = Counting(10**9)  # far too large to buffer
    async with corral.imap(blocking_double, source, limit=4, ordered=ordered) as results:
        seen = 0
        async for index, value in results:
            assert value == 2 * index
            if ordered:
                assert index == seen
            seen += 1
            if seen == 100:
                break
            await anyio.lowlevel.checkpoint()
    # At most 2 * limit items taken and not yet handed out (the window).
    assert source.pulled <= 100 + 2 * 4


async def test_a_mapped_thread_can_call_back_into_the_event_loop() -> None:
    async def on_loop(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x * 10

    def calls_back(x: int) -> int:
        anyio.from_thread.check_cancelled()
        return anyio.from_thread.run(on_loop, x)

    assert await corral.map(calls_back, range(20), limit=3) == [x * 10 for x in range(20)]


async def test_mapped_threads_see_the_callers_context_variables() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    var.set("caller")
    assert await corral.map(lambda _: var.get(), range(10)) == ["caller"] * 10


async def test_cancelling_a_thread_map_midway_leaves_nothing_running() -> None:
    lock = threading.Lock()
    started: set[int] = set()
    finished: set[int] = set()

    def work(x: int) -> int:
        with lock:
            started.add(x)
        with lock:
            finished.add(x)
        return x

    with anyio.CancelScope() as scope:

        class CancelAfter:
            done = 0

            def increment(self, n: int = 1) -> None:
                self.done += n
                if self.done >= 500:
                    scope.cancel()

        await corral.map(work, range(100_000), limit=8, progress=CancelAfter())
    assert scope.cancelled_caught
    assert 500 <= len(started) < 100_000
    assert started == finished  # every call that started had finished when map returned


async def test_a_failing_thread_stops_the_queued_calls() -> None:
    lock = threading.Lock()
    started: set[int] = set()
    finished: set[int] = set()

    def fails_on_3(x: int) -> int:
        with lock:
            started.add(x)
        try:
            if x == 3:
                raise ValueError("bad item 3")
            return x
        finally:
            with lock:
                finished.add(x)

    with pytest.raises(ValueError, match="bad item 3"):
        await corral.map(fails_on_3, range(100_000), limit=4)
    assert len(started) < 100_000
    assert started == finished


async def test_a_base_exception_in_a_thread_is_raised_itself() -> None:
    def exits(x: int) -> int:
        if x == 2:
            raise SystemExit(3)
        return x

    with pytest.raises(SystemExit):
        await corral.map(exits, range(10), return_exceptions=True)


# -- failures ------------------------------------------------------------------------


async def test_first_failure_is_raised_itself_and_cancels_the_rest() -> None:
    cancelled: list[int] = []
    started: list[int] = []
    others_waiting = anyio.Event()

    async def work(x: int) -> int:
        started.append(x)
        if x == 5:
            await others_waiting.wait()
            raise KeyError("item five")
        try:
            if len(started) == 10:
                others_waiting.set()
            await anyio.sleep_forever()
        finally:
            cancelled.append(x)
        return x  # pragma: no cover

    with pytest.raises(KeyError, match="item five") as info:
        await corral.map(work, range(10), limit=10)
    assert sorted(cancelled) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert any("item 5" in note for note in info.value.__notes__)


async def test_return_exceptions_puts_exceptions_in_place() -> None:
    results = await corral.map(helpers.fail_on, range(6), return_exceptions=True)
    assert results[:3] == [0, 1, 2]
    assert results[4:] == [4, 5]
    assert isinstance(results[3], ValueError)


async def test_imap_hands_out_completed_results_before_the_failure() -> None:
    async def fail_at_three(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        if x == 3:
            raise ValueError("three")
        return x

    seen: list[int] = []

    async def consume() -> None:
        async with corral.imap(fail_at_three, range(10), limit=1) as results:
            async for _, value in results:
                seen.append(value)

    with pytest.raises(ValueError, match="three"):
        await consume()
    assert seen == [0, 1, 2]


async def test_input_iterable_error_is_raised_and_work_is_cancelled() -> None:
    cancelled = anyio.Event()

    def broken() -> Iterator[int]:
        yield 0
        yield 1
        raise OSError("disk gone")

    async def work(x: int) -> int:
        if x == 0:
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()
        return x

    with pytest.raises(OSError, match="disk gone") as info:
        await corral.map(work, broken(), limit=4, return_exceptions=True)
    assert cancelled.is_set()
    assert any("input iterable after 2 items" in note for note in info.value.__notes__)


async def test_timeout_cancels_a_slow_coroutine() -> None:
    async def maybe_hang(x: int) -> int:
        if x == 1:
            await anyio.sleep_forever()
        return x

    results = await corral.map(maybe_hang, range(3), timeout=0.05, return_exceptions=True)
    assert results[0] == 0
    assert results[2] == 2
    assert isinstance(results[1], TimeoutError)
    assert "timeout of 0.05 s on item 1" in str(results[1])
    with pytest.raises(TimeoutError):
        await corral.map(maybe_hang, range(3), timeout=0.05)


async def test_timeout_marks_a_thread_that_returns_late() -> None:
    results = await corral.map(helpers.sleep_for, [0.0, 0.2], timeout=0.05, return_exceptions=True)
    assert results[0] == 0.0
    assert isinstance(results[1], TimeoutError)


async def test_progress_counts_every_completed_item() -> None:
    class Sink:
        total = 0

        def increment(self, n: int = 1) -> None:
            self.total += n

    sink = Sink()
    await corral.map(double, range(321), progress=sink)
    assert sink.total == 321
    sink.total = 0
    await corral.map(helpers.fail_on, range(10), progress=sink, return_exceptions=True)
    assert sink.total == 10
    sink.total = 0
    await corral.map(helpers.square, range(1000), offload="process", progress=sink)
    assert sink.total == 1000


async def test_a_failing_progress_sink_is_raised_itself() -> None:
    class Broken:
        def increment(self, n: int = 1) -> None:
            raise RuntimeError("sink broke")

    with pytest.raises(RuntimeError, match="sink broke"):
        await corral.map(double, range(10), progress=Broken())


# -- leaving imap early --------------------------------------------------------------


async def test_breaking_out_of_imap_cancels_in_flight_work() -> None:
    cancelled: list[int] = []

    async def work(x: int) -> int:
        if x == 0:
            return x
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(x)
        return x  # pragma: no cover

    source = Counting(10**9)
    async with corral.imap(work, source, limit=4) as results:
        async for index, _ in results:
            assert index == 0
            break
    assert sorted(cancelled) == list(range(1, source.pulled))
    pulled = source.pulled
    await anyio.wait_all_tasks_blocked()
    assert source.pulled == pulled


async def test_an_exception_in_the_body_propagates_unwrapped() -> None:
    async def consume() -> None:
        async with corral.imap(double, range(100)) as results:
            async for _ in results:
                raise LookupError("mine")

    with pytest.raises(LookupError, match="mine"):
        await consume()


async def test_outer_cancellation_stops_imap() -> None:
    cancelled = anyio.Event()

    async def hang(x: int) -> int:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return x  # pragma: no cover

    with anyio.move_on_after(0.05):
        async with corral.imap(hang, range(10)) as results:
            async for _ in results:
                pass  # pragma: no cover
    assert cancelled.is_set()


async def test_outer_cancellation_of_map_with_threads_waits_for_them() -> None:
    cond = threading.Condition()
    release = threading.Event()
    started: list[int] = []
    finished: list[int] = []

    def blocked(x: int) -> int:
        with cond:
            started.append(x)
            cond.notify_all()
        release.wait()
        finished.append(x)
        return x

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(corral.map, blocked, range(3))
            await anyio.to_thread.run_sync(_wait_until, cond, lambda: len(started) > 0)
            scope.cancel()
            release.set()
    # Every call that started has finished: nothing was left running behind the caller
    # (a queued call that no thread had picked up yet is dropped, never started).
    assert started
    assert sorted(finished) == sorted(started)


# -- processes -----------------------------------------------------------------------


async def test_process_map_adaptive_chunks_in_order() -> None:
    assert await corral.map(helpers.square, range(3000), offload="process") == [
        i * i for i in range(3000)
    ]


async def test_process_imap_explicit_chunksize() -> None:
    async with corral.imap(helpers.square, range(100), offload="process", chunksize=7) as res:
        assert [pair async for pair in res] == [(i, i * i) for i in range(100)]


async def test_process_map_with_a_generator_input() -> None:
    results = await corral.map(helpers.square, (i for i in range(500)), offload="process")
    assert results == [i * i for i in range(500)]


async def test_process_failures_have_the_remote_traceback() -> None:
    results = await corral.map(
        helpers.fail_on, range(20), offload="process", return_exceptions=True
    )
    error = results[3]
    assert isinstance(error, ValueError)
    assert "fail_on" in str(error.__cause__)


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"limit": 0}, ValueError, "limit must be an int >= 1"),
        ({"limit": -3}, ValueError, "limit must be an int >= 1"),
        ({"limit": 2.5}, TypeError, "limit must be an int >= 1"),
        ({"limit": True}, TypeError, "limit must be an int >= 1"),
        ({"timeout": 0}, ValueError, "timeout must be a finite number of seconds > 0"),
        ({"timeout": "1"}, TypeError, "timeout must be a number of seconds"),
        ({"offload": "gpu"}, ValueError, "offload must be one of 'thread', 'process'"),
        ({"chunksize": 4}, ValueError, "chunksize applies to offload='process' only"),
        ({"cluster": "cpu"}, TypeError, "cluster must be a corral.Cluster"),
        ({"progress": object()}, TypeError, "progress must be an object with an increment"),
        ({"ordered": "yes"}, TypeError, "ordered must be True or False"),
    ],
)
async def test_bad_arguments_are_rejected_before_any_work(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    source = Counting(10)
    with pytest.raises(error, match=match):
        await corral.map(blocking_double, source, **options)  # type: ignore[call-overload]
    with pytest.raises(error, match=match):
        corral.imap(blocking_double, source, **options)  # type: ignore[call-overload]
    assert source.pulled == 0


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"chunksize": 0}, ValueError, "chunksize must be an int >= 1"),
        ({"chunksize": 4, "timeout": 1.0}, ValueError, "timeout is per item"),
    ],
)
async def test_bad_process_arguments(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await corral.map(helpers.square, range(3), offload="process", **options)  # type: ignore[call-overload]


async def test_not_callable_and_not_iterable() -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        await corral.map(42, range(3))  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="items must be an iterable or an async iterable"):
        await corral.map(double, 42)  # type: ignore[call-overload]


async def test_async_fn_with_offload_is_rejected() -> None:
    for offload in ("process", "thread"):
        with pytest.raises(TypeError, match="is an async function"):
            await corral.map(double, range(3), offload=offload)  # type: ignore[call-overload]


async def test_imap_is_not_an_async_iterator_by_itself() -> None:
    with pytest.raises(TypeError, match=r"async with corral\.imap"):
        corral.imap(double, range(3)).__aiter__()


async def test_imap_can_be_entered_once() -> None:
    stream = corral.imap(double, range(3))
    async with stream as results:
        assert [v async for _, v in results] == [0, 2, 4]
    with pytest.raises(RuntimeError, match="entered only once"):
        async with stream:
            pass  # pragma: no cover
