from __future__ import annotations

import threading

import anyio
import pytest

import corral
import helpers


def test_cluster_attributes_and_statistics() -> None:
    gpu = corral.Cluster("cluster-a", capacity=4, region="us-west-2", cost=1, labels={"gpu"})
    assert (gpu.name, gpu.capacity, gpu.region, gpu.cost, gpu.labels) == (
        "cluster-a",
        4,
        "us-west-2",
        1.0,
        frozenset({"gpu"}),
    )
    assert gpu.statistics() == corral.ClusterStatistics("cluster-a", 4, 0, 0)
    assert repr(gpu) == (
        "Cluster('cluster-a', capacity=4, region='us-west-2', cost=1.0, labels={'gpu'})"
    )
    with pytest.raises(AttributeError):
        gpu.statistics().borrowed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("",), {"capacity": 1}, ValueError, "name must be a non-empty str"),
        (("a",), {"capacity": 0}, ValueError, "capacity must be an int >= 1"),
        (("a",), {"capacity": "4"}, TypeError, "capacity must be an int >= 1"),
        (("a",), {"capacity": 1, "offload": "gpu"}, ValueError, "offload must be"),
        (("a",), {"capacity": 1, "labels": "gpu"}, TypeError, "write labels="),
        (("a",), {"capacity": 1, "cost": "cheap"}, TypeError, "cost must be a number"),
        (("a",), {"capacity": 1, "region": 5}, TypeError, "region must be a non-empty str"),
    ],
)
def test_bad_cluster_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        corral.Cluster(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "a\x00"},
        {"name": "a\udfff"},
        {"name": "a", "region": "e\x00u"},
        {"name": "a", "labels": {"g\x00pu"}},
    ],
)
def test_cluster_names_refuse_what_a_database_cannot_store(kwargs: dict[str, object]) -> None:
    """A cluster's name, region and labels are stored with the jobs it runs (issue 11,
    item 18): NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8) are refused."""
    with pytest.raises(corral.UnstorableTextError, match=r"Cluster (name|region|label)"):
        corral.Cluster(capacity=1, **kwargs)  # type: ignore[arg-type]


async def test_two_maps_share_a_cluster_capacity_exactly() -> None:
    cluster = corral.Cluster("shared", capacity=3)
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

    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(lambda: corral.map(held, range(20), limit=10, cluster=cluster))
        await anyio.wait_all_tasks_blocked()
        stats = cluster.statistics()
        assert stats.borrowed == 3
        assert stats.waiting >= 2
        release.set()
    assert cluster.statistics().borrowed == 0
    assert cluster.statistics().waiting == 0


async def test_a_running_job_holds_a_unit_and_lends_it_to_calls_on_its_cluster() -> None:
    """The unit a job holds (issue 11, item 11): a call on the job's cluster takes the
    job's unit, else a free one, else waits for the job's; other clusters are untouched;
    a job waits in line for its unit like any call."""
    cluster = corral.Cluster("c", capacity=2)
    other = corral.Cluster("o", capacity=1)
    async with cluster._job_unit():
        assert cluster.statistics().borrowed == 1
        async with cluster.slot():  # the job's own unit
            assert cluster.statistics().borrowed == 1
            async with cluster.slot():  # the free one
                assert cluster.statistics().borrowed == 2
                entered = anyio.Event()

                async def third() -> None:
                    async with cluster.slot():
                        entered.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(third)
                    await anyio.wait_all_tasks_blocked()
                    assert not entered.is_set()  # it waits for the job's unit
                    assert cluster.statistics().waiting == 0  # not in the cluster's line
                    tg.cancel_scope.cancel()
                async with other.slot():
                    assert other.statistics().borrowed == 1
            assert cluster.statistics().borrowed == 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(third)  # the job's unit is free again: it runs there
        assert entered.is_set()
    assert cluster.statistics().borrowed == 0

    holder = anyio.Event()

    async def job() -> None:
        async with cluster._job_unit():
            holder.set()

    # Every unit taken by calls: a job waits in line for one.
    async with cluster.slot(), cluster.slot(), anyio.create_task_group() as tg:
        tg.start_soon(job)
        await anyio.wait_all_tasks_blocked()
        assert cluster.statistics().waiting == 1
        assert not holder.is_set()
        tg.cancel_scope.cancel()
    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
    assert holder.is_set()
    assert cluster.statistics() == corral.ClusterStatistics("c", 2, 0, 0)


async def test_cluster_limit_holds_under_many_tasks() -> None:
    cluster = corral.Cluster("busy", capacity=5)
    running = 0
    peak = 0

    async def work(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(x % 4):
            await anyio.lowlevel.checkpoint()
        running -= 1
        return x

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(lambda: corral.map(work, range(300), limit=7, cluster=cluster))
    assert peak == 5


def test_cluster_capacity_holds_across_event_loops_in_threads() -> None:
    cluster = corral.Cluster("threads", capacity=2, offload="thread")
    lock = threading.Lock()
    running = 0
    peak = 0

    def work(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        # Give the other event loop a chance to overtake while this slot is held.
        threading.Event().wait(0.001)
        with lock:
            running -= 1
        return x

    results: list[list[int]] = []

    def loop(backend: str) -> None:
        async def main() -> None:
            results.append(await corral.map(work, range(60), limit=4, cluster=cluster))

        anyio.run(main, backend=backend)

    threads = [threading.Thread(target=loop, args=(b,)) for b in ("asyncio", "trio", "asyncio")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [list(range(60))] * 3
    assert peak == 2
    assert cluster.statistics().borrowed == 0


async def test_cluster_offload_process_is_used_by_map() -> None:
    cluster = corral.Cluster("cpu", capacity=2, offload="process")
    pids = await corral.map(helpers.pid, range(8), cluster=cluster)
    assert len(pids) == 8
    assert all(p != __import__("os").getpid() for p in pids)
