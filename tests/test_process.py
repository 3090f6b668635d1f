from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import corral
import helpers
import proc_helpers
from corral._process import default_pool

ROOT = Path(__file__).resolve().parent.parent


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def wait_until_gone(pid: int) -> None:
    # Another process's state cannot be awaited through an event: poll it, bounded.
    # A killed worker is reaped by the forkserver within milliseconds.
    for _ in range(1000):
        if is_gone(pid):
            return
        await anyio.sleep(0.01)
    pytest.fail(f"process {pid} is still alive")


async def wait_for_exit(pid: int) -> None:
    """Wait until process ``pid`` has exited: its pidfd turns readable then, no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # already exited and reaped
        return
    try:
        with anyio.fail_after(30):  # the bound only keeps a hang from lasting forever
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def started_signal() -> Iterator[tuple[str, socket.socket]]:
    """A listening Unix socket (abstract address) that a worker's call connects to."""
    address = f"\0corral-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(address)
        listener.listen()
        listener.setblocking(False)
        yield address, listener


async def start_two_workers(pool: corral.ProcessPool) -> set[int]:
    """Start two workers: two concurrent calls find no idle worker, so each starts one."""
    pids: list[int] = []

    async def call() -> None:
        pids.append(await pool.run(helpers.pid))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        tg.start_soon(call)
    assert len(set(pids)) == 2
    return set(pids)


# -- results, arguments and exceptions -------------------------------------------------


async def test_run_returns_the_value() -> None:
    async with corral.ProcessPool(2) as pool:
        assert await pool.run(helpers.square, 7) == 49
        assert await pool.run(helpers.pid) != os.getpid()


async def test_run_passes_positional_and_keyword_arguments() -> None:
    async with corral.ProcessPool(2) as pool:
        assert await pool.run(helpers.add, 1, 2, c=3) == 6
        assert await pool.run(helpers.add, 1, b=20) == 21
        # fn is positional-only, so a keyword argument may be called "fn".
        assert await pool.run(proc_helpers.keywords, 1, fn=2) == ((1,), {"fn": 2})


async def test_to_process_returns_values_and_passes_kwargs() -> None:
    try:
        assert await corral.to_process(helpers.square, 5) == 25
        assert await corral.to_process(helpers.add, 1, b=2, c=3) == 6
    finally:
        default_pool().close()


async def test_run_accepts_callable_objects_and_decorated_functions() -> None:
    async with corral.ProcessPool(1) as pool:
        assert await pool.run(proc_helpers.Multiplier(3), 5) == 15
        assert await pool.run(proc_helpers.decorated_square, 4) == 16


async def test_worker_exception_is_raised_with_the_remote_traceback() -> None:
    async with corral.ProcessPool(1) as pool:
        with pytest.raises(ValueError, match="bad item 3") as info:
            await pool.run(helpers.fail_on, 3)
        assert type(info.value) is ValueError
        cause = info.value.__cause__
        assert cause is not None
        text = str(cause)
        assert "Traceback (most recent call last)" in text
        assert "helpers.py" in text
        assert "in fail_on" in text
        assert 'raise ValueError(f"bad item {x}")' in text
        # The worker survives an exception in fn.
        assert pool.statistics().crashed == 0
        assert await pool.run(helpers.fail_on, 4) == 4
        assert pool.statistics().started == 1


async def test_to_process_raises_the_worker_exception_type() -> None:
    try:
        with pytest.raises(ValueError, match="bad item 2") as info:
            await corral.to_process(helpers.fail_on, 2, bad=2)
        assert "in fail_on" in str(info.value.__cause__)
    finally:
        default_pool().close()


async def test_exception_that_cannot_be_pickled_is_replaced_by_a_corral_error() -> None:
    async with corral.ProcessPool(1) as pool:
        with pytest.raises(corral.RemoteError) as info:
            await pool.run(proc_helpers.raise_unpicklable)
        assert info.value.type_name == "proc_helpers.UnpicklableError"
        assert info.value.original_message == "cannot travel"
        message = str(info.value)
        assert "UnpicklableError" in message
        assert "cannot travel" in message
        assert "could not pickle" in message
        assert "raise_unpicklable" in str(info.value.__cause__)
        assert await pool.run(helpers.square, 3) == 9
        assert pool.statistics().started == 1


# -- pickling failures -----------------------------------------------------------------


async def test_unpicklable_argument_is_rejected_before_it_is_sent() -> None:
    async with corral.ProcessPool(2) as pool:
        with pytest.raises(corral.NotPicklableError) as info:
            await pool.run(helpers.square, threading.Lock())
        assert isinstance(info.value, TypeError)
        message = str(info.value)
        assert "argument 0" in message
        assert "square" in message
        assert "offload='thread'" in message
        assert pool.statistics().started == 0


async def test_unpicklable_keyword_argument_is_named() -> None:
    async with corral.ProcessPool(2) as pool:
        with pytest.raises(corral.NotPicklableError, match="keyword argument 'c'"):
            await pool.run(helpers.add, 1, c=threading.Lock())
        assert pool.statistics().started == 0


async def test_unpicklable_result_fails_that_call_only() -> None:
    async with corral.ProcessPool(1) as pool:
        first = await pool.run(helpers.pid)
        with pytest.raises(corral.NotPicklableError) as info:
            await pool.run(helpers.return_lock)
        assert isinstance(info.value, TypeError)
        assert "return value" in str(info.value)
        assert "offload='thread'" in str(info.value)
        assert await pool.run(helpers.pid) == first
        statistics = pool.statistics()
        assert (statistics.started, statistics.crashed, statistics.killed) == (1, 0, 0)


async def test_unpicklable_result_in_a_chunk_fails_its_item_only() -> None:
    async with corral.ProcessPool(2) as pool:
        results = await corral.map(
            proc_helpers.lock_on, range(10), offload=pool, chunksize=5, return_exceptions=True
        )
        assert isinstance(results[3], corral.NotPicklableError)
        assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]


async def test_unpicklable_item_in_map_fails_its_item_only() -> None:
    async with corral.ProcessPool(2) as pool:
        results = await corral.map(
            helpers.square, [1, threading.Lock(), 3], offload=pool, return_exceptions=True
        )
        assert results[0] == 1
        assert isinstance(results[1], corral.NotPicklableError)
        assert results[2] == 9


async def test_an_exception_that_does_not_unpickle_fails_its_own_item_only() -> None:
    async with corral.ProcessPool(1) as pool:
        first = await pool.run(helpers.pid)
        results = await corral.map(
            proc_helpers.coded_fail_on, range(10), offload=pool, chunksize=5, return_exceptions=True
        )
        error = results[3]
        assert isinstance(error, corral.RemoteError)
        assert error.type_name == "proc_helpers.CodedError"
        assert error.original_message == "bad item 3"
        assert "proc_helpers.CodedError: bad item 3" in str(error)
        assert "does not unpickle" in str(error)
        assert "super().__init__" in str(error)  # the fix
        assert "in coded_fail_on" in error.remote_traceback
        assert "in coded_fail_on" in str(error.__cause__)
        assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
        # The worker survived, and served the rest of its chunk.
        assert await pool.run(helpers.pid) == first
        statistics = pool.statistics()
        assert (statistics.started, statistics.crashed, statistics.killed) == (1, 0, 0)


async def test_an_exception_that_does_not_unpickle_is_raised_by_map_and_run() -> None:
    async with corral.ProcessPool(1) as pool:
        with pytest.raises(corral.RemoteError, match="CodedError: bad item 3"):
            await corral.map(proc_helpers.coded_fail_on, range(10), offload=pool, chunksize=5)
        with pytest.raises(corral.RemoteError, match="CodedError: bad item 4"):
            await pool.run(proc_helpers.coded_fail_on, 4, bad=4)
        assert pool.statistics().crashed == 0


async def test_to_process_raises_a_remote_error_for_an_exception_that_does_not_unpickle() -> None:
    try:
        with pytest.raises(corral.RemoteError) as info:
            await corral.to_process(proc_helpers.coded_fail_on, 2, bad=2)
        assert info.value.type_name == "proc_helpers.CodedError"
        assert info.value.original_message == "bad item 2"
        assert await corral.to_process(proc_helpers.coded_fail_on, 1, bad=2) == 1
        assert default_pool().statistics().crashed == 0
    finally:
        default_pool().close()


async def test_an_exception_that_unpickles_in_the_worker_only_becomes_a_remote_error() -> None:
    async with corral.ProcessPool(1) as pool:
        with pytest.raises(corral.RemoteError) as info:
            await pool.run(proc_helpers.raise_worker_only)
        assert info.value.type_name == "proc_helpers.WorkerOnlyError"
        assert info.value.original_message == "only travels one way"
        assert "could not unpickle" in str(info.value)
        assert "unpickles in worker processes only" in str(info.value)
        assert "in raise_worker_only" in str(info.value.__cause__)
        assert pool.statistics().crashed == 0


async def test_a_result_that_does_not_unpickle_fails_its_own_item_only() -> None:
    async with corral.ProcessPool(1) as pool:
        first = await pool.run(helpers.pid)
        results = await corral.map(
            proc_helpers.coded_result_on,
            range(10),
            offload=pool,
            chunksize=5,
            return_exceptions=True,
        )
        error = results[3]
        assert isinstance(error, corral.NotPicklableError)
        message = str(error)
        assert "return value" in message
        assert "proc_helpers.CodedError" in message
        assert "unpickle" in message
        assert isinstance(error.__cause__, TypeError)
        assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
        with pytest.raises(corral.NotPicklableError, match="CodedError"):
            await pool.run(proc_helpers.coded_result_on, 3)
        assert await pool.run(helpers.pid) == first
        statistics = pool.statistics()
        assert (statistics.started, statistics.crashed, statistics.killed) == (1, 0, 0)


def nested_in_module() -> object:
    def inner(x: int) -> int:
        return x

    return inner


async def async_square(x: int) -> int:
    return x * x


@pytest.mark.parametrize(
    ("fn", "error", "words"),
    [
        (lambda x: x, corral.NotPicklableError, "lambda"),
        (nested_in_module(), corral.NotPicklableError, "closure"),
        (async_square, TypeError, "async function"),
    ],
    ids=["lambda", "nested", "async"],
)
async def test_bad_functions_are_rejected_before_any_work_starts(
    fn: object, error: type[Exception], words: str
) -> None:
    async with corral.ProcessPool(2) as pool:
        with pytest.raises(error, match=words):
            await pool.run(fn, 1)  # type: ignore[arg-type]
        with pytest.raises(error, match=words):
            await corral.map(fn, range(10), offload=pool)  # type: ignore[arg-type]
        with pytest.raises(error, match=words):
            await corral.map(fn, range(10), offload="process")  # type: ignore[arg-type]
        assert pool.statistics().started == 0


async def test_to_process_rejects_a_lambda_before_any_work_starts() -> None:
    pool = default_pool()
    try:
        started = pool.statistics().started
        with pytest.raises(corral.NotPicklableError, match="lambda"):
            await corral.to_process(lambda: 1)
        assert pool.statistics().started == started
    finally:
        pool.close()


# -- crashes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "exitcode"), [(helpers.die_on, -signal.SIGKILL), (helpers.exit_on, 7)]
)
async def test_a_worker_that_dies_fails_its_call_and_is_replaced(fn: object, exitcode: int) -> None:
    async with corral.ProcessPool(1) as pool:
        first = await pool.run(helpers.pid)
        with pytest.raises(corral.WorkerCrashed) as info:
            await pool.run(fn, 3)  # type: ignore[arg-type]
        assert info.value.pid == first
        assert info.value.exitcode == exitcode
        assert str(first) in str(info.value)
        statistics = pool.statistics()
        assert (statistics.crashed, statistics.killed, statistics.workers) == (1, 0, 0)
        assert await pool.run(fn, 4) == 4  # type: ignore[arg-type]
        assert await pool.run(helpers.pid) != first
        assert pool.statistics().started == 2
        await wait_until_gone(first)


async def test_a_crash_in_a_chunk_fails_only_the_culprit() -> None:
    async with corral.ProcessPool(2) as pool:
        results = await corral.map(
            helpers.die_on, range(50), offload=pool, chunksize=10, return_exceptions=True
        )
        crashed = results[3]
        assert isinstance(crashed, corral.WorkerCrashed)
        assert crashed.exitcode == -signal.SIGKILL
        assert [r for i, r in enumerate(results) if i != 3] == [i for i in range(50) if i != 3]
        # One crash running the chunk, one more re-running the culprit alone.
        assert pool.statistics().crashed == 2


async def test_a_crash_in_map_is_raised_without_return_exceptions() -> None:
    async with corral.ProcessPool(2) as pool:
        with pytest.raises(corral.WorkerCrashed) as info:
            await corral.map(helpers.die_on, range(50), offload=pool, chunksize=10)
        assert info.value.exitcode == -signal.SIGKILL
        # The pool still works after the map failed.
        assert await pool.run(helpers.square, 3) == 9


def test_worker_crashed_survives_pickling() -> None:
    error = corral.WorkerCrashed("gone", pid=12, exitcode=-9)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.pid, copy.exitcode) == ("gone", 12, -9)


async def test_an_external_sigkill_of_a_busy_worker_fails_its_call() -> None:
    async with corral.ProcessPool(1) as pool:
        worker = await pool.run(helpers.pid)  # the only worker, now idle
        errors: list[corral.WorkerCrashed] = []

        async def call(address: str) -> None:
            with pytest.raises(corral.WorkerCrashed) as info:
                await pool.run(proc_helpers.connect_then_wait, address)
            errors.append(info.value)

        # The bound only keeps a hang from lasting until pytest-timeout.
        with started_signal() as (address, listener), anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, address)
                # The call connects once it runs in the worker: it has started there.
                await anyio.wait_readable(listener)
                assert pool.statistics().busy == 1
                os.kill(worker, signal.SIGKILL)
        [error] = errors
        assert error.pid == worker
        assert error.exitcode == -signal.SIGKILL
        assert "SIGKILL" in str(error)
        assert "connect_then_wait" in str(error)
        statistics = pool.statistics()
        assert (statistics.crashed, statistics.killed, statistics.busy) == (1, 0, 0)
        assert statistics.started == 1  # a call the worker had started is not run again
        assert await pool.run(helpers.square, 4) == 16


async def test_a_worker_killed_while_idle_is_not_handed_the_next_call() -> None:
    async with corral.ProcessPool(1) as pool:
        first = await pool.run(helpers.pid)
        os.kill(first, signal.SIGKILL)
        await wait_for_exit(first)
        assert await pool.run(helpers.square, 3) == 9
        assert await pool.run(helpers.pid) != first
        statistics = pool.statistics()
        assert (statistics.started, statistics.crashed, statistics.killed) == (2, 1, 0)
        assert statistics.workers == 1


async def test_workers_killed_while_idle_are_replaced_for_a_map() -> None:
    async with corral.ProcessPool(2) as pool:
        pids = await start_two_workers(pool)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            await wait_for_exit(pid)
        results = await corral.map(helpers.pid, range(20), offload=pool, chunksize=1)
        assert not set(results) & pids
        statistics = pool.statistics()
        assert statistics.crashed == 2
        assert statistics.started > 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ECONNRESET on unread data")
async def test_a_call_sent_to_a_worker_that_dies_before_reading_it_is_retried() -> None:
    async with corral.ProcessPool(1) as pool:
        stopped = await pool.run(proc_helpers.stop_before_next_request)
        results: list[int] = []

        async def call() -> None:
            results.append(await pool.run(helpers.square, 5))

        with anyio.fail_after(30):  # the bound only keeps a hang from lasting forever
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                # The call is sent and waits for its answer; the worker, stopped, never
                # read it.
                await anyio.wait_all_tasks_blocked()
                os.kill(stopped, signal.SIGKILL)
        assert results == [25]
        statistics = pool.statistics()
        assert (statistics.started, statistics.crashed, statistics.killed) == (2, 1, 0)


async def test_a_call_whose_worker_dies_while_it_is_being_sent_is_retried() -> None:
    async with corral.ProcessPool(1) as pool:
        stopped = await pool.run(proc_helpers.stop_before_next_request)
        data = bytes(8 * 2**20)  # far more than a socket buffer: the send must wait
        results: list[int] = []

        async def call() -> None:
            results.append(await pool.run(proc_helpers.length, data))

        with anyio.fail_after(30):  # the bound only keeps a hang from lasting forever
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await anyio.wait_all_tasks_blocked()  # blocked sending: nobody reads
                os.kill(stopped, signal.SIGKILL)
        assert results == [len(data)]
        statistics = pool.statistics()
        assert (statistics.started, statistics.crashed, statistics.killed) == (2, 1, 0)


# -- cancellation and timeouts -------------------------------------------------------------


async def test_cancelling_a_call_kills_its_worker() -> None:
    async with corral.ProcessPool(1) as pool:
        worker = await pool.run(helpers.pid)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, helpers.wait_forever)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().busy == 1
            tg.cancel_scope.cancel()
        statistics = pool.statistics()
        assert (statistics.killed, statistics.crashed) == (1, 0)
        assert (statistics.workers, statistics.busy) == (0, 0)
        await wait_until_gone(worker)
        assert await pool.run(helpers.pid) != worker
        assert pool.statistics().started == 2


async def test_cancelling_a_call_that_waits_for_a_worker_kills_nothing() -> None:
    async with corral.ProcessPool(1) as pool:
        worker = await pool.run(helpers.pid)
        waiter_scope = anyio.CancelScope()

        async def waiter() -> None:
            with waiter_scope:
                await pool.run(helpers.square, 2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, helpers.wait_forever)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            statistics = pool.statistics()
            assert (statistics.busy, statistics.waiting) == (1, 1)
            waiter_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            statistics = pool.statistics()
            assert (statistics.busy, statistics.waiting, statistics.killed) == (1, 0, 0)
            assert not is_gone(worker)
            tg.cancel_scope.cancel()
        assert waiter_scope.cancelled_caught
        assert pool.statistics().killed == 1


async def test_timeout_kills_the_slow_worker_only() -> None:
    async with corral.ProcessPool(2) as pool:
        results = await corral.map(
            helpers.sleep_for, [0.0, 60.0, 0.0], offload=pool, timeout=0.5, return_exceptions=True
        )
        assert results[0] == 0.0
        assert isinstance(results[1], TimeoutError)
        assert "killed" in str(results[1])
        assert results[2] == 0.0
        statistics = pool.statistics()
        assert (statistics.killed, statistics.crashed, statistics.busy) == (1, 0, 0)


# -- initializer ---------------------------------------------------------------------------


async def test_initializer_runs_once_in_every_worker() -> None:
    async with corral.ProcessPool(2, initializer=helpers.remember, initargs=("hello",)) as pool:
        pids: list[int] = []
        seen: list[object] = []

        async def call() -> None:
            seen.append(await pool.run(helpers.initialized))
            pids.append(await pool.run(helpers.pid))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            tg.start_soon(call)
        assert pool.statistics().started == 2
        assert seen == [["hello"], ["hello"]]
        # Reused workers do not run the initializer again.
        assert await corral.map(helpers.initialized, range(20), offload=pool) == [["hello"]] * 20
        assert pool.statistics().started == 2
    # The parent never ran the initializer.
    assert helpers.initialized() == []


async def test_broken_initializer_raises_worker_initializer_error() -> None:
    async with corral.ProcessPool(1, initializer=helpers.broken_initializer) as pool:
        with pytest.raises(corral.WorkerInitializerError) as info:
            await pool.run(helpers.square, 2)
        assert "broken_initializer" in str(info.value)
        cause = info.value.__cause__
        assert type(cause) is RuntimeError
        assert str(cause) == "initializer is broken"
        assert "in broken_initializer" in str(cause.__cause__)
        # Every call fails the same way until the initializer is fixed.
        with pytest.raises(corral.WorkerInitializerError):
            await pool.run(helpers.square, 2)
        assert pool.statistics().workers == 0


async def test_broken_initializer_is_raised_itself_by_map() -> None:
    async with corral.ProcessPool(1, initializer=helpers.broken_initializer) as pool:
        with pytest.raises(corral.WorkerInitializerError):
            await corral.map(helpers.square, range(3), offload=pool)


async def test_initializer_and_initargs_are_checked_when_the_pool_is_created() -> None:
    with pytest.raises(corral.NotPicklableError, match="lambda"):
        corral.ProcessPool(1, initializer=lambda: None)
    with pytest.raises(corral.NotPicklableError, match="argument 0"):
        corral.ProcessPool(1, initializer=helpers.remember, initargs=(threading.Lock(),))


# -- construction and closing --------------------------------------------------------------


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        corral.ProcessPool(0)
    with pytest.raises(TypeError, match="max_workers"):
        corral.ProcessPool("2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_workers"):
        corral.ProcessPool(True)
    with pytest.raises(ValueError, match="fork"):
        corral.ProcessPool(1, mp_context=multiprocessing.get_context("fork"))


def test_statistics_of_a_fresh_pool() -> None:
    with corral.ProcessPool(3) as pool:
        assert pool.max_workers == 3
        assert pool.statistics() == corral.ProcessPoolStatistics(
            max_workers=3, workers=0, busy=0, waiting=0, started=0, crashed=0, killed=0
        )
        assert "max_workers=3" in repr(pool)
    assert "closed" in repr(pool)


async def test_close_stops_every_worker_and_is_idempotent() -> None:
    pool = corral.ProcessPool(2)
    try:
        pids = await start_two_workers(pool)
        assert pool.statistics().workers == 2
    finally:
        pool.close()
    assert pool.closed
    assert pool.statistics().workers == 0
    for pid in pids:
        assert is_gone(pid)  # close() waits for the workers to exit
    pool.close()
    await pool.aclose()
    with pytest.raises(corral.PoolClosedError):
        await pool.run(helpers.square, 2)


async def test_leaving_async_with_stops_every_worker() -> None:
    async with corral.ProcessPool(2) as pool:
        pids = await start_two_workers(pool)
    assert pool.closed
    for pid in pids:
        assert is_gone(pid)


async def test_map_on_a_closed_pool_raises_pool_closed_error() -> None:
    pool = corral.ProcessPool(2)
    pool.close()
    with pytest.raises(corral.PoolClosedError):
        await corral.map(helpers.square, range(3), offload=pool)


async def test_closing_the_pool_fails_a_call_in_flight() -> None:
    pool = corral.ProcessPool(1)
    try:
        worker = await pool.run(helpers.pid)
        errors: list[BaseException] = []

        async def call() -> None:
            with pytest.raises((corral.PoolClosedError, corral.WorkerCrashed)) as info:
                await pool.run(helpers.wait_forever)
            errors.append(info.value)

        # The bound only keeps a hang from lasting until pytest-timeout.
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await anyio.wait_all_tasks_blocked()
                assert pool.statistics().busy == 1
                pool.close()
        assert len(errors) == 1
        assert is_gone(worker)
    finally:
        pool.close()


# -- the default pool ----------------------------------------------------------------------


async def test_default_pool_is_reused_across_calls() -> None:
    pool = default_pool()
    try:
        assert default_pool() is pool
        assert pool.max_workers == corral.cpu_count()
        first = await corral.to_process(helpers.pid)
        started = pool.statistics().started
        for _ in range(5):
            assert await corral.to_process(helpers.pid) == first
        pids = set(await corral.map(helpers.pid, range(20), offload="process"))
        assert first in pids
        assert len(pids) <= pool.max_workers
        pids |= set(await corral.map(helpers.pid, range(20), offload="process"))
        assert len(pids) <= pool.max_workers
        assert pool.statistics().started <= max(started, pool.max_workers)
        assert pool.statistics().crashed == 0
        assert default_pool() is pool
    finally:
        pool.close()
    assert default_pool() is not pool  # a closed default pool is replaced on next use
    default_pool().close()


# -- scripts -------------------------------------------------------------------------------

SCRIPT = r"""
import json
import os
import sys
import threading

import anyio

import corral


def work(x):
    return x * x


def worker_pid(_):
    return os.getpid()


def block(_):
    # One write, so that the two workers' lines cannot interleave.
    os.write(1, (json.dumps({"blocking": os.getpid()}) + "\n").encode())
    threading.Event().wait()


async def main():
    results = await corral.map(work, range(10), offload="process")
    pids = await corral.map(worker_pid, range(8), offload="process", chunksize=1)
    pids.append(await corral.to_process(worker_pid, None))
    print(json.dumps({"results": results, "pids": sorted(set(pids))}), flush=True)
    if sys.argv[2] == "hang":  # two busy workers, until the test kills this process
        pool = corral.ProcessPool(2)
        await corral.map(block, range(2), offload=pool, chunksize=1)


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1])
"""


def write_script(tmp_path: Path) -> Path:
    script = tmp_path / "script_with_main.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return script


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_function_from_a_script_main_runs_in_processes(tmp_path: Path, backend: str) -> None:
    script = write_script(tmp_path)
    done = subprocess.run(
        [sys.executable, str(script), backend, "exit"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    output = json.loads(done.stdout)
    assert output["results"] == [x * x for x in range(10)]
    assert output["pids"]
    for pid in output["pids"]:
        # The script's pool was closed at exit, which waits for its workers.
        assert is_gone(pid), f"worker {pid} outlived its script"


DRIVER = """
import ctypes
import json
import os
import subprocess
import sys

# Adopt every orphan of the script below, so that this process can wait for (and reap)
# its workers once their parent and their forkserver are gone.
PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1) == 0

script = subprocess.Popen(
    [sys.executable, sys.argv[1], "asyncio", "hang"],
    stdin=subprocess.DEVNULL,
    stdout=subprocess.PIPE,
    text=True,
)
try:
    assert json.loads(script.stdout.readline())["pids"]
    # Both workers of the second pool are busy in block() when the parent dies: they
    # cannot leave through the end of their connection, only by watching for their parent.
    busy = [json.loads(script.stdout.readline())["blocking"] for _ in range(2)]
finally:
    script.kill()
    script.wait()
# Reap every orphan as it exits, until none is left: a worker that never exits would hang
# here (until the test's timeout). Workers that exit while their forkserver still lives
# are reaped by the forkserver instead.
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
alive = []
for pid in busy:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        continue
    alive.append(pid)
print(json.dumps({"busy": busy, "alive": alive}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs prctl (Linux)")
def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = write_script(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    done = subprocess.run(
        [sys.executable, str(driver), str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert len(set(output["busy"])) == 2
    assert output["alive"] == [], "a worker outlived its killed parent"


UNGUARDED = """
import sys

import anyio

import corral


def square(x):
    return x * x


async def main():
    print(await corral.map(square, range(4), offload="process"))


anyio.run(main, backend=sys.argv[1])  # no `if __name__ == "__main__":`
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_script_without_a_main_guard_is_told_so(tmp_path: Path, backend: str) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(UNGUARDED))
    done = subprocess.run(
        [sys.executable, str(script), backend],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    # The workers re-import the script: they exit quietly instead of each printing the
    # traceback of multiprocessing's bootstrapping RuntimeError, and the one error names the fix.
    assert "bootstrapping phase" not in done.stderr
    assert done.stderr.count("Traceback") == 1
    errors = [line for line in lines if line.startswith("corral.WorkerCrashed:")]
    assert len(errors) == 1, done.stderr
    assert str(script) in errors[0]
    assert 'if __name__ == "__main__":' in errors[0]
