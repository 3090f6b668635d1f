from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

import corral
import helpers
from corral._process import default_pool
from corral.blocking import (
    Task,
    execute_tasks_in_parallel,
    execute_tasks_in_parallel_streaming,
    execute_tasks_in_parallel_unordered,
    should_use_processes,
)

# A bound on waits between threads that only a broken implementation would reach.
DEADLOCK = 30


@pytest.fixture
def close_default_pool() -> Iterator[None]:
    """Stop the default process pool's workers after a test that used it."""
    yield
    default_pool().close()


def pair(a: int, b: int = 0) -> tuple[int, int]:
    return a, b


class Concurrency:
    """Counts calls running at once, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0
        self.ended = 0

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1
            self.ended += 1


def reverse_chain(n: int) -> list[Task]:
    """Tasks that can only complete last to first, all running at once."""
    done = [threading.Event() for _ in range(n + 1)]
    done[n].set()

    def step(i: int) -> int:
        assert done[i + 1].wait(DEADLOCK), "the tasks did not run concurrently"
        done[i].set()
        return i * 10

    return [Task(step, (i,)) for i in range(n)]


# -- Task ----------------------------------------------------------------------------------


def test_task_with_tuple_list_and_dict_arguments() -> None:
    assert Task(pair, (1, 2))() == (1, 2)
    assert Task(pair, [3, 4])() == (3, 4)
    assert Task(pair, {"a": 5, "b": 6})() == (5, 6)
    assert Task(pair, (7,))() == (7, 0)
    assert Task(helpers.pid)() == helpers.pid()  # no arguments: ()


def test_task_is_frozen() -> None:
    task = Task(pair, (1,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.arguments = (2,)  # type: ignore[misc]


@pytest.mark.parametrize("arguments", [5, "ab", None, {1, 2}, b"xy"], ids=repr)
def test_task_rejects_arguments_that_are_not_a_tuple_list_or_mapping(arguments: object) -> None:
    with pytest.raises(TypeError, match=r"Task\.arguments must be a tuple") as info:
        Task(pair, arguments)  # type: ignore[arg-type]
    assert f"({arguments!r},)" in str(info.value)  # shows how to write one argument


def test_task_rejects_something_not_callable() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        Task(5)  # type: ignore[arg-type]


async def async_fn(x: int) -> int:
    return x


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x


@pytest.mark.parametrize(
    "fn",
    [async_fn, functools.partial(async_fn), AsyncCallable()],
    ids=["coroutine-function", "partial", "object-with-async-call"],
)
def test_task_rejects_async_callbacks(fn: Callable[..., Any]) -> None:
    with pytest.raises(TypeError, match="async") as info:
        Task(fn, (1,))
    assert "corral.map" in str(info.value)


# -- execute_tasks_in_parallel -------------------------------------------------------------


def test_results_in_input_order_whatever_the_completion_order() -> None:
    tasks = reverse_chain(5)
    assert execute_tasks_in_parallel(tasks, max_workers=5) == [0, 10, 20, 30, 40]


def test_runs_in_threads_other_than_the_caller() -> None:
    here = threading.get_ident()
    idents = execute_tasks_in_parallel([Task(threading.get_ident) for _ in range(10)])
    assert here not in idents


def test_keyword_arguments_and_empty_input() -> None:
    tasks = [Task(helpers.add, {"a": i, "b": 1, "c": 2}) for i in range(5)]
    assert execute_tasks_in_parallel(tasks) == [3, 4, 5, 6, 7]
    assert execute_tasks_in_parallel([]) == []
    assert execute_tasks_in_parallel(iter([Task(pair, (1,))])) == [(1, 0)]


def test_processes_in_input_order(close_default_pool: None) -> None:
    tasks = [Task(helpers.square, (i,)) for i in range(40)]
    assert execute_tasks_in_parallel(tasks, use_processes=True) == [i * i for i in range(40)]
    pids = execute_tasks_in_parallel([Task(helpers.pid) for _ in range(10)], use_processes=True)
    assert os.getpid() not in pids


@pytest.mark.parametrize("max_workers", [1, 3])
def test_max_workers_is_respected(max_workers: int) -> None:
    counter = Concurrency()
    # Every group of max_workers calls must meet at the barrier: max_workers run at once.
    barrier = threading.Barrier(max_workers)

    def work(i: int) -> int:
        counter.enter()
        try:
            barrier.wait(DEADLOCK)
            return i
        finally:
            counter.leave()

    tasks = [Task(work, (i,)) for i in range(4 * max_workers)]
    assert execute_tasks_in_parallel(tasks, max_workers=max_workers) == list(range(len(tasks)))
    assert counter.most == max_workers
    assert counter.running == 0


def test_return_exceptions_puts_exceptions_in_place() -> None:
    tasks = [Task(helpers.fail_on, (i,)) for i in range(6)]
    results = execute_tasks_in_parallel(tasks, return_exceptions=True)
    assert isinstance(results[3], ValueError)
    assert str(results[3]) == "bad item 3"
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5]


def test_first_exception_is_raised_itself() -> None:
    raised: list[Exception] = []

    def fail(i: int) -> int:
        if i == 2:
            error = KeyError(i)
            raised.append(error)
            raise error
        return i

    with pytest.raises(KeyError) as info:
        execute_tasks_in_parallel([Task(fail, (i,)) for i in range(5)], max_workers=2)
    assert type(info.value) is KeyError  # not an ExceptionGroup
    assert raised == [info.value]
    notes = info.value.__notes__
    assert any("raised by the task's callback_function" in n and "fail" in n for n in notes)
    assert "corral: raised by a Task on item 2 of the input" in notes


def test_first_exception_from_a_process_is_raised_itself(close_default_pool: None) -> None:
    tasks = [Task(helpers.fail_on, (i,)) for i in range(6)]
    with pytest.raises(ValueError, match="bad item 3") as info:
        execute_tasks_in_parallel(tasks, use_processes=True)
    assert type(info.value) is ValueError
    assert "in fail_on" in str(info.value.__cause__)
    assert "corral.blocking: raised by the task's callback_function fail_on" in (
        info.value.__notes__
    )
    results = execute_tasks_in_parallel(tasks, use_processes=True, return_exceptions=True)
    assert isinstance(results[3], ValueError)
    assert results[4] == 4


def test_the_default_pool_is_shared_by_threads_each_running_a_loop(
    close_default_pool: None,
) -> None:
    results: dict[int, list[int]] = {}

    def run(k: int) -> None:
        tasks = [Task(helpers.add, (i, k)) for i in range(30)]
        results[k] = execute_tasks_in_parallel(tasks, use_processes=True)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLOCK)
    assert results == {k: [i + k for i in range(30)] for k in range(3)}


# -- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run",
    [
        execute_tasks_in_parallel,
        execute_tasks_in_parallel_unordered,
        lambda tasks, **kw: list(execute_tasks_in_parallel_streaming(tasks, **kw)),
    ],
    ids=["ordered", "unordered", "streaming"],
)
def test_bad_arguments(run: Callable[..., Any]) -> None:
    task = Task(pair, (1,))
    with pytest.raises(TypeError, match=r"iterable of corral\.blocking\.Task"):
        run(task)
    with pytest.raises(TypeError, match=r"iterable of corral\.blocking\.Task"):
        run(5)
    with pytest.raises(TypeError, match=r"tasks\[1\] must be a corral\.blocking\.Task, got int 5"):
        run([task, 5])
    with pytest.raises(TypeError, match="use_processes"):
        run([task], use_processes="yes")
    with pytest.raises(ValueError, match="max_workers must be an int >= 1"):
        run([task], max_workers=0)


def test_a_non_task_in_a_generator_is_raised_itself() -> None:
    def tasks() -> Iterator[object]:
        yield Task(pair, (1,))
        yield "not a task"

    with pytest.raises(TypeError, match=r"tasks\[1\] must be a corral\.blocking\.Task, got str"):
        execute_tasks_in_parallel(tasks())  # type: ignore[arg-type]


def test_lambda_with_processes_is_rejected_before_any_work_starts() -> None:
    ran: list[int] = []
    pool = default_pool()
    try:
        started = pool.statistics().started
        tasks = [Task(helpers.square, (1,)), Task(lambda: ran.append(1))]
        with pytest.raises(corral.NotPicklableError, match="lambda"):
            execute_tasks_in_parallel(tasks, use_processes=True)
        with pytest.raises(corral.NotPicklableError, match="lambda"):
            execute_tasks_in_parallel_streaming(tasks, use_processes=True)
        assert pool.statistics().started == started
        assert ran == []
    finally:
        pool.close()


# -- unordered -----------------------------------------------------------------------------


def test_unordered_returns_the_same_results() -> None:
    results = execute_tasks_in_parallel_unordered(reverse_chain(5), max_workers=5)
    assert sorted(results) == [0, 10, 20, 30, 40]
    many = [Task(helpers.square, (i,)) for i in range(100)]
    assert sorted(execute_tasks_in_parallel_unordered(many, max_workers=7)) == sorted(
        i * i for i in range(100)
    )


def test_unordered_with_processes_and_exceptions(close_default_pool: None) -> None:
    tasks = [Task(helpers.fail_on, (i,)) for i in range(8)]
    results = execute_tasks_in_parallel_unordered(tasks, use_processes=True, return_exceptions=True)
    errors = [r for r in results if isinstance(r, ValueError)]
    assert len(errors) == 1
    assert sorted(r for r in results if not isinstance(r, ValueError)) == [
        0,
        1,
        2,
        4,
        5,
        6,
        7,
    ]
    with pytest.raises(ValueError, match="bad item 3"):
        execute_tasks_in_parallel_unordered(tasks, use_processes=True)


# -- streaming -----------------------------------------------------------------------------


def test_streaming_ordered_yields_index_and_result_in_order() -> None:
    pairs = list(execute_tasks_in_parallel_streaming(reverse_chain(5), max_workers=5))
    assert pairs == [(0, 0), (1, 10), (2, 20), (3, 30), (4, 40)]


def test_streaming_unordered_yields_every_index_once() -> None:
    stream = execute_tasks_in_parallel_streaming(reverse_chain(5), max_workers=5, ordered=False)
    pairs = list(stream)
    assert sorted(pairs) == [(0, 0), (1, 10), (2, 20), (3, 30), (4, 40)]


def test_streaming_with_processes(close_default_pool: None) -> None:
    tasks = (Task(helpers.square, (i,)) for i in range(30))
    pairs = list(execute_tasks_in_parallel_streaming(tasks, use_processes=True))
    assert pairs == [(i, i * i) for i in range(30)]


def test_streaming_return_exceptions() -> None:
    tasks = [Task(helpers.fail_on, (i,)) for i in range(6)]
    pairs = dict(execute_tasks_in_parallel_streaming(tasks, return_exceptions=True))
    assert isinstance(pairs.pop(3), ValueError)
    assert pairs == {0: 0, 1: 1, 2: 2, 4: 4, 5: 5}
    seen: list[int] = []

    def consume() -> None:
        for index, _ in execute_tasks_in_parallel_streaming(tasks, max_workers=1):
            seen.append(index)

    with pytest.raises(ValueError, match="bad item 3") as info:
        consume()
    assert type(info.value) is ValueError
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("ordered", [True, False])
def test_streaming_pulls_an_endless_generator_lazily(ordered: bool) -> None:
    max_workers = 2
    pulled = itertools.count()
    counts = [0]

    def tasks() -> Iterator[Task]:
        for i in itertools.count():
            counts[0] = next(pulled) + 1
            yield Task(helpers.square, (i,))

    stream = execute_tasks_in_parallel_streaming(tasks(), max_workers=max_workers, ordered=ordered)
    assert counts[0] == 0  # nothing runs before the first result is asked for
    taken = []
    try:
        for k in range(1, 31):
            taken.append(next(stream))
            assert k <= counts[0] <= k + 2 * max_workers + 1
    finally:
        stream.close()
    assert counts[0] <= 30 + 2 * max_workers + 1
    if ordered:
        assert taken == [(i, i * i) for i in range(30)]
    else:
        assert all(value == index * index for index, value in taken)
        assert len({index for index, _ in taken}) == 30


class Blocker:
    """Calls that return at once for the first ``quick`` items and block the others.

    A blocked call waits inside the event loop (``from_thread.run``) for its host task to
    be cancelled. ``entered`` is released only once that wait is a task in the host's
    cancel scope: a cancellation before that point would never reach it.
    """

    def __init__(self, quick: int) -> None:
        self.quick = quick
        self.counter = Concurrency()
        self.entered = threading.Semaphore(0)

    def __call__(self, i: int) -> int:
        if i < self.quick:
            return i
        self.counter.enter()
        try:
            anyio.from_thread.run(self._wait_for_cancellation)  # raises when cancelled
        finally:
            self.counter.leave()
        raise AssertionError("unreachable")

    async def _wait_for_cancellation(self) -> None:
        self.entered.release()
        await anyio.sleep_forever()

    def wait_until_blocked(self, calls: int) -> None:
        for _ in range(calls):
            assert self.entered.acquire(timeout=DEADLOCK), "the blocking calls did not start"


@pytest.mark.parametrize("ordered", [True, False])
def test_closing_the_stream_early_stops_every_call(ordered: bool) -> None:
    max_workers = 2
    blocker = Blocker(quick=5)
    pulled = [0]

    def tasks() -> Iterator[Task]:
        for i in range(1000):
            pulled[0] += 1
            yield Task(blocker, (i,))

    stream = execute_tasks_in_parallel_streaming(tasks(), max_workers=max_workers, ordered=ordered)
    taken = [next(stream) for _ in range(5)]
    assert sorted(taken) == [(i, i) for i in range(5)]
    blocker.wait_until_blocked(max_workers)  # both workers now run a call that never returns
    stream.close()
    # The calls in flight were cancelled, and close() waited for their threads.
    assert blocker.counter.running == 0
    assert blocker.counter.started == blocker.counter.ended == max_workers
    assert pulled[0] <= 5 + 2 * max_workers + 1
    with pytest.raises(StopIteration):
        next(stream)


def test_breaking_out_of_the_stream_stops_every_call() -> None:
    blocker = Blocker(quick=3)
    tasks = (Task(blocker, (i,)) for i in range(1000))
    seen = []
    for index, value in execute_tasks_in_parallel_streaming(tasks, max_workers=3):
        seen.append((index, value))
        if index == 2:
            blocker.wait_until_blocked(3)
            break  # the generator is closed here, as its last reference goes
    assert seen == [(0, 0), (1, 1), (2, 2)]
    assert blocker.counter.running == 0
    assert blocker.counter.started == blocker.counter.ended == 3


def test_a_stream_that_is_never_iterated_runs_nothing() -> None:
    blocker = Blocker(quick=0)
    stream = execute_tasks_in_parallel_streaming([Task(blocker, (i,)) for i in range(3)])
    stream.close()
    assert blocker.counter.started == 0


# -- helpers -------------------------------------------------------------------------------


def test_should_use_processes() -> None:
    assert should_use_processes("cpu") is True
    assert should_use_processes("io") is False
    with pytest.raises(ValueError, match="kind must be one of 'cpu', 'io'"):
        should_use_processes("gpu")  # type: ignore[arg-type]


def test_is_picklable_is_exported() -> None:
    assert corral.blocking.is_picklable(helpers.square)
    assert not corral.blocking.is_picklable(threading.Lock())


# -- inside an event loop ------------------------------------------------------------------


async def test_calling_from_inside_a_running_event_loop_is_an_error() -> None:
    tasks = [Task(pair, (1,))]
    for run in (
        execute_tasks_in_parallel,
        execute_tasks_in_parallel_unordered,
        execute_tasks_in_parallel_streaming,  # raises when called, before iteration
    ):
        with pytest.raises(RuntimeError) as info:
            run(tasks)
        message = str(info.value)
        assert run.__name__ in message
        assert "inside a running event loop" in message
        assert "await corral.map(" in message


async def test_calling_from_a_worker_thread_of_an_event_loop_works() -> None:
    # A worker thread is synchronous code: the facade starts its own loop there.
    result = await anyio.to_thread.run_sync(execute_tasks_in_parallel, [Task(pair, (1, 2))])
    assert result == [(1, 2)]
