"""corral.dask: CPU offload to a Dask cluster, on one LocalCluster of two worker processes.

Every async test runs on asyncio and trio. Functions the workers run are pickled by
value (cloudpickle), so the workers need not import this module. Tasks that must stay
in flight wait on a file that the test creates when it is done with them: no sleeps.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import dask
import distributed  # in the test extra: these tests fail, never skip, without it
import pytest

import corral
from corral.dask import DaskPool, DaskPoolStatistics, wait_concurrent

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    # allowed-failures=0: a task whose worker dies fails at once (KilledWorker), so the
    # worker-death test kills two workers, not eight.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},
        )
    client = distributed.Client(cluster)
    client.wait_for_workers(2)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
async def pool(client: Any) -> Any:
    async with DaskPool(client) as pool:
        yield pool
    # Nothing of this test is left to run on the cluster.
    left = client.run_on_scheduler(
        lambda dask_scheduler: {k: ts.state for k, ts in dask_scheduler.tasks.items()}
    )
    assert in_flight(client) == 0, left


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    """A file whose creation releases the tasks that wait for it (at the test's end too)."""
    path = tmp_path / "release"
    yield path
    path.touch()


def square(x: int) -> int:
    return x * x


def inverse(x: int) -> float:
    return 1 / (x - 3)


def wait_for(path: str, x: int) -> int:
    """Run on a worker: return x at once for x == 0, else once ``path`` exists."""
    while x != 0 and not os.path.exists(path):
        time.sleep(0.005)
    return x


def fail_first(path: str, x: int) -> int:
    if x == 0:
        raise ValueError("item 0 is bad")
    return wait_for(path, x)


def lock_on_1(x: int) -> object:
    return threading.Lock() if x == 1 else x


def die_on_13(x: int) -> int:
    if x == 13:
        os._exit(3)
    return x


def fail_twice(path: str) -> int:
    """Run on a worker: raise on the first two calls (counted in ``path``), then succeed."""
    calls = len(open(path).read()) if os.path.exists(path) else 0  # noqa: SIM115
    with open(path, "a") as f:
        f.write("x")
    if calls < 2:
        raise OSError(f"flaky call {calls + 1}")
    return calls + 1


def _unfinished(dask_scheduler: Any) -> int:
    states = ("released", "waiting", "no-worker", "queued", "processing")
    return sum(1 for ts in dask_scheduler.tasks.values() if ts.state in states)


def in_flight(client: Any) -> int:
    """Tasks the scheduler still means to run, or runs: waiting, queued or processing."""
    return int(client.run_on_scheduler(_unfinished))


async def test_run_returns_results_and_raises(pool: DaskPool) -> None:
    assert await pool.run(square, 7) == 49
    # cloudpickle: lambdas and closures cross the wire, unlike to a ProcessPool.
    offset = 10
    assert await pool.run(lambda a, *, b: a + b + offset, 1, b=2) == 13
    with pytest.raises(ZeroDivisionError):
        await pool.run(inverse, 3)
    stats = pool.statistics()
    assert isinstance(stats, DaskPoolStatistics)
    assert stats.workers == 2
    assert stats.threads == 2
    assert stats.submitted == 3
    assert stats.in_flight == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.workers = 3  # type: ignore[misc]


async def test_unpicklable_is_refused_before_work_starts(pool: DaskPool) -> None:
    lock = threading.Lock()
    with pytest.raises(corral.NotPicklableError, match="cloudpickle"):
        await corral.map(lambda x: (lock, x), range(3), offload=pool)
    with pytest.raises(corral.NotPicklableError, match="argument 0"):
        await pool.run(square, lock)  # type: ignore[arg-type]
    # An item that cannot be pickled fails itself only.
    results = await corral.map(str, [1, lock, 3], offload=pool, chunksize=3, return_exceptions=True)
    assert results[0] == "1"
    assert results[2] == "3"
    assert isinstance(results[1], corral.NotPicklableError)
    assert pool.statistics().submitted == 1
    # So does a result that cannot be pickled back.
    results = await corral.map(
        lock_on_1,
        range(3),
        offload=pool,
        chunksize=3,
        return_exceptions=True,
    )
    assert results[0] == 0
    assert results[2] == 2
    assert isinstance(results[1], corral.NotPicklableError)
    assert "return value" in str(results[1])


async def test_map_is_ordered_and_chunked(pool: DaskPool) -> None:
    results = await corral.map(square, range(3000), offload=pool)
    assert results == [x * x for x in range(3000)]
    # Adaptive chunks: far fewer Dask tasks than items.
    assert pool.statistics().submitted < 300


async def test_imap_unordered_and_progress(pool: DaskPool) -> None:
    class Count:
        n = 0

        def increment(self, n: int = 1) -> None:
            self.n += n

    count = Count()
    seen = {}
    async with corral.imap(
        square, range(500), offload=pool, ordered=False, progress=count
    ) as results:
        async for index, value in results:
            seen[index] = value
    assert seen == {x: x * x for x in range(500)}
    assert count.n == 500


async def test_streams_a_million_items_in_bounded_memory(pool: DaskPool) -> None:
    state = {"taken": 0, "most_outstanding": 0}

    def items() -> Iterator[int]:
        for x in range(1_000_000):
            state["taken"] += 1
            yield x

    returned = 0
    chunk = 5000
    async with corral.imap(abs, items(), offload=pool, chunksize=chunk) as results:
        async for index, value in results:
            assert index == value == returned
            returned += 1
            outstanding = state["taken"] - returned
            state["most_outstanding"] = max(state["most_outstanding"], outstanding)
    assert returned == 1_000_000
    # At most 2 x limit x chunk items taken and not yet handed back (limit = 2 threads).
    assert state["most_outstanding"] <= 2 * 2 * chunk


async def test_return_exceptions_both_ways(pool: DaskPool) -> None:
    results = await corral.map(inverse, range(6), offload=pool, return_exceptions=True)
    assert isinstance(results[3], ZeroDivisionError)
    assert results[4] == 1.0
    with pytest.raises(ZeroDivisionError) as info:
        await corral.map(inverse, range(6), offload=pool)
    assert "on item 3 of the input" in "".join(info.value.__notes__)
    # The worker's traceback comes back chained.
    assert "inverse" in str(info.value.__cause__)


async def test_timeout_fails_the_slow_item_only(pool: DaskPool, release: Path) -> None:
    fn = functools.partial(wait_for, str(release))
    results = await corral.map(
        fn, [0, 1], offload=pool, timeout=1.0, return_exceptions=True, limit=2
    )
    assert results[0] == 0
    assert isinstance(results[1], TimeoutError)
    assert "timeout of 1 s on item 1" in str(results[1])
    assert pool.statistics().cancelled == 1


async def test_leaving_imap_early_cancels_tasks(pool: DaskPool, client: Any, release: Path) -> None:
    fn = functools.partial(wait_for, str(release))
    async with corral.imap(fn, range(100), offload=pool, chunksize=1) as results:
        async for index, _ in results:
            assert index == 0
            assert pool.statistics().in_flight >= 1  # the others wait for the release file
            break
    assert in_flight(client) == 0
    assert pool.statistics().in_flight == 0


async def test_a_failure_cancels_tasks(pool: DaskPool, client: Any, release: Path) -> None:
    fn = functools.partial(fail_first, str(release))
    with pytest.raises(ValueError, match="item 0 is bad"):
        await corral.map(fn, range(10), offload=pool, chunksize=1, limit=4)
    left = client.run_on_scheduler(
        lambda dask_scheduler: {k: ts.state for k, ts in dask_scheduler.tasks.items()}
    )
    assert in_flight(client) == 0, left
    assert pool.statistics().cancelled >= 1


async def test_a_cancelled_caller_cancels_tasks(pool: DaskPool, client: Any, release: Path) -> None:
    fn = functools.partial(wait_for, str(release))
    with anyio.CancelScope() as scope:

        class CancelOnFirst:
            def increment(self, n: int = 1) -> None:
                scope.cancel()

        await corral.map(fn, range(10), offload=pool, chunksize=1, progress=CancelOnFirst())
    assert scope.cancelled_caught
    assert in_flight(client) == 0
    assert pool.statistics().in_flight == 0


async def test_cluster_shares_the_pools_capacity(pool: DaskPool, release: Path) -> None:
    cluster = corral.Cluster("dask", capacity=2, offload=pool)
    most = 0

    class Watch:
        def increment(self, n: int = 1) -> None:
            nonlocal most
            most = max(most, pool.statistics().in_flight, cluster.statistics().borrowed)

    results: dict[str, list[int]] = {}

    async def run(name: str) -> None:
        results[name] = await corral.map(
            square, range(200), cluster=cluster, limit=4, chunksize=5, progress=Watch()
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "a")
        tg.start_soon(run, "b")
    assert results == {"a": [x * x for x in range(200)], "b": [x * x for x in range(200)]}
    assert 1 <= most <= 2
    assert pool.statistics().submitted == 80


async def test_wait_concurrent_serves_executor_futures(pool: DaskPool) -> None:
    executor = pool.client.get_executor()
    assert await wait_concurrent(executor.submit(square, 9)) == 81


async def test_a_worker_killed_mid_chunk_fails_its_item_only(pool: DaskPool, client: Any) -> None:
    try:
        results = await corral.map(
            die_on_13, range(40), offload=pool, chunksize=10, return_exceptions=True
        )
    finally:
        await anyio.to_thread.run_sync(client.wait_for_workers, 2)
    assert isinstance(results[13], corral.WorkerCrashed)
    assert [r for i, r in enumerate(results) if i != 13] == [i for i in range(40) if i != 13]
    assert pool.statistics().crashed >= 2  # the chunk's worker, then item 13's alone


@pytest.mark.parametrize(("retries", "expected"), [(2, 3), (1, None), (0, None)])
async def test_retries_rerun_a_failed_run(
    client: Any, tmp_path: Path, retries: int, expected: int | None
) -> None:
    calls = tmp_path / "calls"
    async with DaskPool(client, retries=retries) as pool:
        if expected is None:
            with pytest.raises(OSError, match=f"flaky call {retries + 1}"):
                await pool.run(fail_twice, str(calls))
        else:
            assert await pool.run(fail_twice, str(calls)) == expected
    assert len(calls.read_text()) == min(retries + 1, 3)  # every rerun, no more


def test_missing_extra_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(corral.MissingDriverError, match=r"pip install 'corral\[dask\]'"):
        DaskPool()


def test_the_core_imports_without_distributed() -> None:
    code = (
        "import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
        "import corral, corral.dask\n"
        "assert 'distributed' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


async def test_no_address_starts_and_closes_a_local_cluster() -> None:
    pool = DaskPool(n_workers=1, threads_per_worker=1)
    with pytest.raises(RuntimeError, match="not open"):
        pool.client  # noqa: B018
    with pytest.raises(RuntimeError, match="not open"):
        await corral.map(square, [1], offload=pool)
    async with pool:
        assert pool.statistics().workers == 1
        assert await corral.map(lambda x: x + 1, range(5), offload=pool) == [1, 2, 3, 4, 5]
        cluster = pool.client.cluster
    assert pool.client.status == "closed"
    assert cluster is not None
    assert cluster.status.name == "closed"
    with pytest.raises(corral.PoolClosedError):
        await corral.map(square, [1], offload=pool)
    with pytest.raises(corral.PoolClosedError):
        async with pool:
            pass
