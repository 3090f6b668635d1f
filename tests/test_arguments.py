"""One convention for bad arguments, over every public entry point that takes some.

A value of the wrong type raises ``TypeError``; a value of the right type that is out of
range (or not one of the choices) raises ``ValueError``; the message names the parameter.
Each table row passes one bad argument and says which error it must raise; a parameter
with values to refuse has a row for a wrong type and a row for a wrong value.

Rows marked ``later`` fail today: their checks live in modules converted to
``corral._validate`` after the branches are merged; the lead flips them (strict xfail, so
a row that starts passing fails until its mark is removed).
"""

from __future__ import annotations

import inspect
import math
import multiprocessing
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import corral
import corral.dask
import helpers
from corral import blocking, jobs
from corral._validate import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_number,
    check_str,
    check_type,
)


def later(*values: object, id: str) -> Any:
    """A row whose check is converted after the merge: expected to fail until then."""
    mark = pytest.mark.xfail(strict=True, reason="converted after merge")
    return pytest.param(*values, id=id, marks=mark)


def row(*values: object, id: str) -> Any:
    return pytest.param(*values, id=id)


def assert_convention(exc: BaseException, error: type[Exception], name: str) -> None:
    """``exc`` is ``error`` (TypeError or ValueError, not both) and names ``name``."""
    other = ValueError if error is TypeError else TypeError
    assert isinstance(exc, error), f"{type(exc).__name__} instead of {error.__name__}: {exc}"
    assert not isinstance(exc, other), f"{type(exc).__name__} is also a {other.__name__}"
    message = str(exc)
    assert re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message), (
        f"the message does not name {name!r}: {message}"
    )


def blocking_double(x: int) -> int:
    return 2 * x


async def async_double(x: int) -> int:
    return 2 * x


async def handler(ctx: jobs.JobContext) -> None:
    pass


def task() -> blocking.Task:
    return blocking.Task(blocking_double, (1,))


# -- constructors and plain functions (no event loop) ----------------------------------------

CLUSTER = corral.Cluster("a", 1)

SYNC: list[Any] = [
    # corral.Cluster
    row(lambda: corral.Cluster(5, 1), TypeError, "Cluster name", id="Cluster-name-type"),
    row(lambda: corral.Cluster("", 1), ValueError, "Cluster name", id="Cluster-name-value"),
    row(lambda: corral.Cluster("a", "4"), TypeError, "capacity", id="Cluster-capacity-type"),
    row(lambda: corral.Cluster("a", 0), ValueError, "capacity", id="Cluster-capacity-value"),
    row(lambda: corral.Cluster("a", 1, offload=3), TypeError, "offload", id="Cluster-offload-type"),
    row(
        lambda: corral.Cluster("a", 1, offload="gpu"),
        ValueError,
        "offload",
        id="Cluster-offload-value",
    ),
    row(lambda: corral.Cluster("a", 1, region=5), TypeError, "region", id="Cluster-region-type"),
    row(lambda: corral.Cluster("a", 1, region=""), ValueError, "region", id="Cluster-region-value"),
    row(lambda: corral.Cluster("a", 1, cost="1"), TypeError, "cost", id="Cluster-cost-type"),
    row(lambda: corral.Cluster("a", 1, cost=math.nan), ValueError, "cost", id="Cluster-cost-value"),
    row(lambda: corral.Cluster("a", 1, labels=5), TypeError, "labels", id="Cluster-labels-type"),
    row(lambda: corral.Cluster("a", 1, labels="gpu"), TypeError, "labels", id="Cluster-labels-str"),
    row(lambda: corral.Cluster("a", 1, labels={""}), ValueError, "label", id="Cluster-label-value"),
    # corral.ProcessPool (nothing starts until a call)
    row(
        lambda: corral.ProcessPool("2"), TypeError, "max_workers", id="ProcessPool-max_workers-type"
    ),
    row(
        lambda: corral.ProcessPool(0), ValueError, "max_workers", id="ProcessPool-max_workers-value"
    ),
    row(
        lambda: corral.ProcessPool(1, initializer=5),
        TypeError,
        "initializer",
        id="ProcessPool-initializer-type",
    ),
    row(
        lambda: corral.ProcessPool(1, initargs=5),
        TypeError,
        "initargs",
        id="ProcessPool-initargs-type",
    ),
    row(
        lambda: corral.ProcessPool(1, mp_context="spawn"),
        TypeError,
        "mp_context",
        id="ProcessPool-mp_context-type",
    ),
    row(
        lambda: corral.ProcessPool(1, mp_context=multiprocessing.get_context("fork")),
        ValueError,
        "mp_context",
        id="ProcessPool-mp_context-value",
    ),
    # corral.dask.DaskPool (nothing starts until entered)
    row(lambda: corral.dask.DaskPool(5), TypeError, "address", id="DaskPool-address-type"),
    row(
        lambda: corral.dask.DaskPool(n_workers="2"),
        TypeError,
        "n_workers",
        id="DaskPool-n_workers-type",
    ),
    row(
        lambda: corral.dask.DaskPool(n_workers=0),
        ValueError,
        "n_workers",
        id="DaskPool-n_workers-value",
    ),
    row(
        lambda: corral.dask.DaskPool(threads_per_worker=1.5),
        TypeError,
        "threads_per_worker",
        id="DaskPool-threads_per_worker-type",
    ),
    row(
        lambda: corral.dask.DaskPool(threads_per_worker=0),
        ValueError,
        "threads_per_worker",
        id="DaskPool-threads_per_worker-value",
    ),
    row(
        lambda: corral.dask.DaskPool(retries=True), TypeError, "retries", id="DaskPool-retries-type"
    ),
    row(
        lambda: corral.dask.DaskPool(retries=-1), ValueError, "retries", id="DaskPool-retries-value"
    ),
    # corral.blocking
    row(lambda: blocking.Task(5), TypeError, "callback_function", id="Task-callback_function-type"),
    row(
        lambda: blocking.Task(blocking_double, 5), TypeError, "arguments", id="Task-arguments-type"
    ),
    row(
        lambda: blocking.should_use_processes(1), TypeError, "kind", id="should_use_processes-type"
    ),
    row(
        lambda: blocking.should_use_processes("gpu"),
        ValueError,
        "kind",
        id="should_use_processes-value",
    ),
    row(lambda: blocking.execute_tasks_in_parallel(5), TypeError, "tasks", id="execute-tasks-type"),
    row(
        lambda: blocking.execute_tasks_in_parallel([task(), 5]),
        TypeError,
        "tasks[1]",
        id="execute-tasks-item-type",
    ),
    row(
        lambda: blocking.execute_tasks_in_parallel([task()], max_workers="2"),
        TypeError,
        "max_workers",
        id="execute-max_workers-type",
    ),
    row(
        lambda: blocking.execute_tasks_in_parallel([task()], max_workers=0),
        ValueError,
        "max_workers",
        id="execute-max_workers-value",
    ),
    row(
        lambda: blocking.execute_tasks_in_parallel([task()], use_processes=1),
        TypeError,
        "use_processes",
        id="execute-use_processes-type",
    ),
    row(
        lambda: blocking.execute_tasks_in_parallel_unordered([task()], return_exceptions="no"),
        TypeError,
        "return_exceptions",
        id="execute_unordered-return_exceptions-type",
    ),
    row(
        lambda: blocking.execute_tasks_in_parallel_streaming([task()], ordered=None),
        TypeError,
        "ordered",
        id="execute_streaming-ordered-type",
    ),
    # corral.jobs.Job
    row(lambda: jobs.Job(id=5), TypeError, "id", id="Job-id-type"),
    row(lambda: jobs.Job(id=""), ValueError, "id", id="Job-id-value"),
    row(lambda: jobs.Job(id="a", priority=5), TypeError, "priority", id="Job-priority-type"),
    row(lambda: jobs.Job(id="a", priority="asap"), ValueError, "priority", id="Job-priority-value"),
    row(lambda: jobs.Job(id="a", customer=5), TypeError, "customer", id="Job-customer-type"),
    row(lambda: jobs.Job(id="a", customer=""), ValueError, "customer", id="Job-customer-value"),
    row(lambda: jobs.Job(id="a", affinity=5), TypeError, "affinity", id="Job-affinity-type"),
    row(lambda: jobs.Job(id="a", affinity=""), ValueError, "affinity", id="Job-affinity-value"),
    row(lambda: jobs.Job(id="a", region=5), TypeError, "region", id="Job-region-type"),
    row(lambda: jobs.Job(id="a", region=""), ValueError, "region", id="Job-region-value"),
    row(lambda: jobs.Job(id="a", requires=5), TypeError, "requires", id="Job-requires-type"),
    row(lambda: jobs.Job(id="a", requires={""}), ValueError, "requires", id="Job-requires-value"),
    row(
        lambda: jobs.Job(id="a", max_retries="3"),
        TypeError,
        "max_retries",
        id="Job-max_retries-type",
    ),
    row(
        lambda: jobs.Job(id="a", max_retries=-1),
        ValueError,
        "max_retries",
        id="Job-max_retries-value",
    ),
    # corral.jobs.RetryPolicy
    row(lambda: jobs.RetryPolicy(base="2"), TypeError, "base", id="RetryPolicy-base-type"),
    row(lambda: jobs.RetryPolicy(base=-1), ValueError, "base", id="RetryPolicy-base-value"),
    row(lambda: jobs.RetryPolicy(cap=None), TypeError, "cap", id="RetryPolicy-cap-type"),
    row(lambda: jobs.RetryPolicy(cap=1.0), ValueError, "cap", id="RetryPolicy-cap-value"),
    row(lambda: jobs.RetryPolicy(jitter="0"), TypeError, "jitter", id="RetryPolicy-jitter-type"),
    row(lambda: jobs.RetryPolicy(jitter=2), ValueError, "jitter", id="RetryPolicy-jitter-value"),
    # corral.jobs.ProcessorConfig
    *[
        item
        for name in ("max_concurrent", "batch_size", "notify_buffer")
        for item in (
            row(
                lambda name=name: jobs.ProcessorConfig(**{name: "1"}),
                TypeError,
                name,
                id=f"ProcessorConfig-{name}-type",
            ),
            row(
                lambda name=name: jobs.ProcessorConfig(**{name: 0}),
                ValueError,
                name,
                id=f"ProcessorConfig-{name}-value",
            ),
        )
    ],
    row(
        lambda: jobs.ProcessorConfig(per_customer="1"),
        TypeError,
        "per_customer",
        id="ProcessorConfig-per_customer-type",
    ),
    row(
        lambda: jobs.ProcessorConfig(per_customer=0),
        ValueError,
        "per_customer",
        id="ProcessorConfig-per_customer-value",
    ),
    *[
        item
        for name in ("lease_seconds", "poll_interval", "notify_timeout")
        for item in (
            row(
                lambda name=name: jobs.ProcessorConfig(**{name: "1"}),
                TypeError,
                name,
                id=f"ProcessorConfig-{name}-type",
            ),
            row(
                lambda name=name: jobs.ProcessorConfig(**{name: -1}),
                ValueError,
                name,
                id=f"ProcessorConfig-{name}-value",
            ),
        )
    ],
    row(lambda: jobs.ProcessorConfig(retry=5), TypeError, "retry", id="ProcessorConfig-retry-type"),
]


@pytest.mark.parametrize(("call", "error", "name"), SYNC)
def test_bad_argument(call: Callable[[], object], error: type[Exception], name: str) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - assert_convention checks the type
        call()
    assert_convention(info.value, error, name)


# -- coroutines and async context managers (no database) -------------------------------------

PROGRESS = object()


def map_rows(entry: str, call: Callable[..., Any]) -> list[Any]:
    """The rows of corral.map or corral.imap: one per checked parameter and kind of error."""
    cases: list[tuple[str, dict[str, Any], type[Exception], str]] = [
        ("fn", {"fn": 42}, TypeError, "fn"),
        ("items", {"items": 42}, TypeError, "items"),
        ("limit-type", {"limit": "4"}, TypeError, "limit"),
        ("limit-float", {"limit": 2.5}, TypeError, "limit"),
        ("limit-value", {"limit": 0}, ValueError, "limit"),
        ("timeout-type", {"timeout": "1"}, TypeError, "timeout"),
        ("timeout-value", {"timeout": -1}, ValueError, "timeout"),
        ("timeout-nan", {"timeout": math.nan}, ValueError, "timeout"),
        ("offload-type", {"offload": 3}, TypeError, "offload"),
        ("offload-value", {"offload": "gpu"}, ValueError, "offload"),
        ("chunksize-type", {"chunksize": "2", "offload": "process"}, TypeError, "chunksize"),
        ("chunksize-value", {"chunksize": 0, "offload": "process"}, ValueError, "chunksize"),
        ("chunksize-thread", {"chunksize": 2}, ValueError, "chunksize"),
        ("cluster", {"cluster": "a"}, TypeError, "cluster"),
        ("progress", {"progress": PROGRESS}, TypeError, "progress"),
        ("ordered", {"ordered": 1}, TypeError, "ordered"),
        ("return_exceptions", {"return_exceptions": "no"}, TypeError, "return_exceptions"),
    ]
    return [
        row(call, options, error, name, id=f"{entry}-{case}")
        for case, options, error, name in cases
    ]


async def call_map(options: dict[str, Any]) -> object:
    fn = options.pop("fn", helpers.square)
    items = options.pop("items", range(3))
    return await corral.map(fn, items, **options)


async def call_imap(options: dict[str, Any]) -> object:
    fn = options.pop("fn", helpers.square)
    items = options.pop("items", range(3))
    async with corral.imap(fn, items, **options) as results:
        return [pair async for pair in results]


ASYNC: list[Any] = [
    *map_rows("map", call_map),
    *map_rows("imap", call_imap),
    row(lambda _: corral.to_thread(42), {}, TypeError, "fn", id="to_thread-fn-type"),
    row(lambda _: corral.to_process(42), {}, TypeError, "fn", id="to_process-fn-type"),
    row(lambda _: corral.dask.DaskPool().run(42), {}, TypeError, "fn", id="DaskPool.run-fn-type"),
    row(
        lambda _: corral.to_process(async_double, 1),
        {},
        TypeError,
        "fn",
        id="to_process-fn-async",
    ),
]


@pytest.mark.parametrize(("call", "options", "error", "name"), ASYNC)
async def test_bad_argument_async(
    call: Callable[[dict[str, Any]], Any],
    options: dict[str, Any],
    error: type[Exception],
    name: str,
) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - assert_convention checks the type
        await call(dict(options))
    assert_convention(info.value, error, name)


# -- the database and its views --------------------------------------------------------------


async def connect_with(**options: Any) -> None:
    async with corral.connect("sqlite:///:memory:", **options):
        pass


async def new_run(db: corral.Database) -> corral.Run:
    return await db.progress.start_run("STATIC", "r")


async def new_subtask(db: corral.Database) -> corral.Subtask:
    return await (await new_run(db)).start_subtask(1, "s")


async def increment(db: corral.Database, n: object) -> None:
    (await new_subtask(db)).increment(n)  # type: ignore[arg-type]


async def show(db: corral.Database, run: object = None, **options: Any) -> None:
    async with corral.show_progress(await new_run(db) if run is None else run, **options):
        pass


DB: list[Any] = [
    # corral.connect
    row(
        lambda _: connect_with(batch_size="1"),
        TypeError,
        "batch_size",
        id="connect-batch_size-type",
    ),
    row(
        lambda _: connect_with(batch_size=0),
        ValueError,
        "batch_size",
        id="connect-batch_size-value",
    ),
    row(
        lambda _: connect_with(max_pending=1.5),
        TypeError,
        "max_pending",
        id="connect-max_pending-type",
    ),
    row(
        lambda _: connect_with(max_pending=0),
        ValueError,
        "max_pending",
        id="connect-max_pending-value",
    ),
    row(
        lambda _: connect_with(flush_interval="1"),
        TypeError,
        "flush_interval",
        id="connect-flush_interval-type",
    ),
    row(
        lambda _: connect_with(flush_interval=0),
        ValueError,
        "flush_interval",
        id="connect-flush_interval-value",
    ),
    # corral.Database.table
    row(lambda db: db.table(5, key="id"), TypeError, "name", id="table-name-type"),
    row(lambda db: db.table("t t", key="id"), ValueError, "name", id="table-name-value"),
    row(lambda db: db.table("t", key=5), TypeError, "key", id="table-key-type"),
    row(lambda db: db.table("t", key=()), ValueError, "key", id="table-key-value"),
    # db.progress
    row(lambda db: db.progress.start_run(5, "r"), TypeError, "type", id="start_run-type-type"),
    row(
        lambda db: db.progress.start_run("STATIC", ""),
        ValueError,
        "name",
        id="start_run-name-value",
    ),
    row(lambda db: db.progress.runs(limit="1"), TypeError, "limit", id="runs-limit-type"),
    row(lambda db: db.progress.runs(limit=-1), ValueError, "limit", id="runs-limit-value"),
    row(lambda db: db.progress.get(-1), ValueError, "run_id", id="get-run_id-value"),
    row(
        lambda db: _start_subtask(db, number=-1),
        ValueError,
        "number",
        id="start_subtask-number-value",
    ),
    row(
        lambda db: _start_subtask(db, items_total=-1),
        ValueError,
        "items_total",
        id="start_subtask-items_total-value",
    ),
    row(lambda db: increment(db, 1.5), TypeError, "increment", id="increment-n-type"),
    row(lambda db: increment(db, -1), ValueError, "increment", id="increment-n-value"),
    row(lambda db: _update(db, percent="1"), TypeError, "percent", id="update-percent-type"),
    row(lambda db: _update(db, percent=101), ValueError, "percent", id="update-percent-value"),
    row(lambda db: _update(db, status=5), TypeError, "status", id="update-status-type"),
    row(lambda db: _update(db, status="DONE"), ValueError, "status", id="update-status-value"),
    row(lambda db: show(db, run=5), TypeError, "run", id="show_progress-run-type"),
    row(lambda db: show(db, refresh="1"), TypeError, "refresh", id="show_progress-refresh-type"),
    row(lambda db: show(db, refresh=0), ValueError, "refresh", id="show_progress-refresh-value"),
    # db.jobs
    row(lambda db: db.jobs.enqueue(5), TypeError, "job", id="enqueue-job-type"),
    row(lambda db: db.jobs.get(5), TypeError, "job_id", id="get-job_id-type"),
    row(lambda db: db.jobs.by_cluster(5), TypeError, "cluster", id="by_cluster-cluster-type"),
    row(lambda db: db.jobs.list(limit="1"), TypeError, "limit", id="list-limit-type"),
    row(lambda db: db.jobs.list(limit=0), ValueError, "limit", id="list-limit-value"),
    row(lambda db: db.jobs.list(state=5), TypeError, "state", id="list-state-type"),
    row(lambda db: db.jobs.list(state="done"), ValueError, "state", id="list-state-value"),
    row(
        lambda db: db.jobs.purge(older_than="1"),
        TypeError,
        "older_than",
        id="purge-older_than-type",
    ),
    row(
        lambda db: db.jobs.purge(older_than=-1),
        ValueError,
        "older_than",
        id="purge-older_than-value",
    ),
    row(lambda db: db.jobs.requeue(5), TypeError, "job_id", id="requeue-job_id-type"),
    # corral.jobs.Processor
    row(lambda _: _processor(db=5), TypeError, "db", id="Processor-db-type"),
    row(lambda db: _processor(db, handler=5), TypeError, "handler", id="Processor-handler-type"),
    row(lambda db: _processor(db, config=5), TypeError, "config", id="Processor-config-type"),
    row(lambda db: _processor(db, clusters=5), TypeError, "clusters", id="Processor-clusters-type"),
    row(
        lambda db: _processor(db, clusters=[]),
        ValueError,
        "clusters",
        id="Processor-clusters-value",
    ),
    row(
        lambda db: _processor(db, clusters=[CLUSTER, CLUSTER]),
        ValueError,
        "clusters",
        id="Processor-clusters-same-name",
    ),
    row(lambda db: _processor(db, classify=5), TypeError, "classify", id="Processor-classify-type"),
    row(lambda db: _processor(db, validate=5), TypeError, "validate", id="Processor-validate-type"),
    row(lambda db: _processor(db, name=5), TypeError, "name", id="Processor-name-type"),
    row(lambda db: _processor(db, name=""), ValueError, "name", id="Processor-name-value"),
]


async def _start_subtask(db: corral.Database, **options: Any) -> None:
    options = {"number": 1, "name": "s", **options}
    run = await new_run(db)
    await run.start_subtask(options.pop("number"), options.pop("name"), **options)


async def _update(db: corral.Database, **options: Any) -> None:
    await (await new_subtask(db)).update(**options)


async def _processor(db: object, **options: Any) -> None:
    options.setdefault("handler", handler)
    jobs.Processor(db, options.pop("handler"), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("call", "error", "name"), DB)
async def test_bad_database_argument(
    call: Callable[[corral.Database], Any],
    error: type[Exception],
    name: str,
    tmp_path: Path,
) -> None:
    async with corral.connect(f"sqlite:///{tmp_path / 'arguments.db'}") as db:

        async def invoke() -> None:
            result = call(db)
            if inspect.isawaitable(result):
                await result

        with pytest.raises(Exception) as info:  # noqa: PT011 - assert_convention checks the type
            await invoke()
    assert_convention(info.value, error, name)


# -- the helpers themselves ------------------------------------------------------------------


FORMAT: list[tuple[Callable[[], object], type[Exception], str]] = [
    (
        lambda: check_int("limit", "4", minimum=1),
        TypeError,
        "limit must be an int >= 1, got str '4'; pass the number 4, not a str",
    ),
    (
        lambda: check_int("limit", 2.5, minimum=1),
        TypeError,
        "limit must be an int >= 1, got float 2.5; pass a whole number such as 2",
    ),
    (
        lambda: check_int("limit", True, minimum=1),
        TypeError,
        "limit must be an int >= 1, got True; pass an int, not True",
    ),
    (lambda: check_int("limit", 0, minimum=1), ValueError, "limit must be an int >= 1, got int 0"),
    (
        lambda: check_int("n", 11, minimum=0, maximum=10),
        ValueError,
        "n must be an int >= 0 and <= 10, got int 11",
    ),
    (
        lambda: check_int("n", "x", optional=True),
        TypeError,
        "n must be an int or None, got str 'x'",
    ),
    (lambda: check_number("cost", None), TypeError, "cost must be a number, got None"),
    (
        lambda: check_number("timeout", math.inf, above=0, unit="seconds"),
        ValueError,
        "timeout must be a finite number of seconds > 0, got float inf",
    ),
    (
        lambda: check_number("jitter", -0.5, minimum=0, maximum=1),
        ValueError,
        "jitter must be a finite number >= 0 and <= 1, got float -0.5",
    ),
    (lambda: check_str("name", b"a"), TypeError, "name must be a non-empty str, got bytes b'a'"),
    (lambda: check_str("name", ""), ValueError, "name must be a non-empty str, got str ''"),
    (
        lambda: check_str("id", "x" * 9, max_length=8),
        ValueError,
        "id must be a non-empty str of at most 8 characters, got str 'xxxxxxxxx... (9 characters)'",
    ),
    (
        lambda: check_choice("kind", 1, ("cpu", "io")),
        TypeError,
        "kind must be one of 'cpu', 'io', got int 1",
    ),
    (
        lambda: check_choice("kind", "gpu", ("cpu", "io")),
        ValueError,
        "kind must be one of 'cpu', 'io', got str 'gpu'",
    ),
    (lambda: check_bool("ordered", 1), TypeError, "ordered must be True or False, got int 1"),
    (lambda: check_callable("fn", 42), TypeError, "fn must be callable, got int 42"),
    (
        lambda: check_type("cluster", "a", corral.Cluster, "a corral.Cluster"),
        TypeError,
        "cluster must be a corral.Cluster, got str 'a'",
    ),
]


@pytest.mark.parametrize(("check", "error", "message"), FORMAT)
def test_one_message_format(
    check: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        check()
    assert type(info.value) is error
    assert str(info.value) == message


def test_good_values_pass_through() -> None:
    assert check_int("n", 3, minimum=1) == 3
    assert check_int("n", None, optional=True) is None
    assert check_number("x", 2) == 2.0
    assert isinstance(check_number("x", 2), float)
    assert check_number("x", None, optional=True) is None
    assert check_str("s", "a") == "a"
    assert check_str("s", "", empty=True) == ""
    assert check_choice("kind", "io", ("cpu", "io")) == "io"
    assert check_bool("b", False) is False
    assert check_type("c", CLUSTER, corral.Cluster, "a corral.Cluster") is CLUSTER
    with pytest.raises(corral.UnstorableTextError, match="NUL"):
        check_str("name", "a\x00b")
