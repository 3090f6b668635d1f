from __future__ import annotations

import inspect
import re

import corral
import corral.blocking
import corral.dask

EXPECTED = {
    "Cluster",
    "ClusterStatistics",
    "ColumnTypeError",
    "CommitUnknownError",
    "ConnectError",
    "ConnectionLostError",
    "CorralError",
    "Database",
    "DatabaseClosedError",
    "DatabaseMovedError",
    "DatabaseURLError",
    "DatabaseStatistics",
    "IMap",
    "IdentifierError",
    "MapResults",
    "MissingDriverError",
    "MissingKeyError",
    "NotPicklableError",
    "Offload",
    "PoolClosedError",
    "ProcessPool",
    "ProcessPoolStatistics",
    "ProgressNotFoundError",
    "ProgressSink",
    "ProgressTracker",
    "QueryError",
    "ReadOnlyError",
    "RemoteError",
    "Run",
    "RunProgress",
    "Status",
    "Subtask",
    "SubtaskProgress",
    "show_progress",
    "SchemaError",
    "Table",
    "UnknownColumnError",
    "UnstorableTextError",
    "WorkerCrashed",
    "WorkerInitializerError",
    "WriteError",
    "connect",
    "cpu_count",
    "imap",
    "is_picklable",
    "map",
    "to_process",
    "to_thread",
}


def test_public_names() -> None:
    assert isinstance(corral.__all__, tuple)
    assert set(corral.__all__) == EXPECTED
    for name in corral.__all__:
        assert hasattr(corral, name)


def test_blocking_names() -> None:
    assert set(corral.blocking.__all__) == {
        "Task",
        "execute_tasks_in_parallel",
        "execute_tasks_in_parallel_streaming",
        "execute_tasks_in_parallel_unordered",
        "is_picklable",
        "should_use_processes",
    }


def test_dask_names() -> None:
    assert isinstance(corral.dask.__all__, tuple)
    assert set(corral.dask.__all__) == {"DaskPool", "DaskPoolStatistics", "wait_concurrent"}
    for name in corral.dask.__all__:
        assert hasattr(corral.dask, name)


def test_dask_pool_statistics_fields_are_documented() -> None:
    import dataclasses

    fields = [f.name for f in dataclasses.fields(corral.dask.DaskPoolStatistics)]
    source = inspect.getsource(corral.dask.DaskPoolStatistics)
    for name in fields:
        assert re.search(rf'{name}: \w+\n    """', source), (
            f"DaskPoolStatistics.{name} has no docstring"
        )


def test_everything_public_has_a_docstring() -> None:
    for module in (corral, corral.blocking, corral.dask):
        for name in module.__all__:
            obj = getattr(module, name)
            if name == "Offload":
                continue  # a typing alias; documented where it is defined
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_errors_are_corral_errors() -> None:
    for error in (
        corral.NotPicklableError,
        corral.WorkerCrashed,
        corral.WorkerInitializerError,
        corral.PoolClosedError,
        corral.RemoteError,
        corral.WriteError,
        corral.SchemaError,
        corral.UnknownColumnError,
        corral.MissingKeyError,
        corral.ColumnTypeError,
        corral.IdentifierError,
        corral.DatabaseClosedError,
        corral.MissingDriverError,
        corral.ConnectError,
        corral.ConnectionLostError,
        corral.CommitUnknownError,
        corral.UnstorableTextError,
        corral.DatabaseURLError,
        corral.ReadOnlyError,
        corral.DatabaseMovedError,
    ):
        assert issubclass(error, corral.CorralError)
    assert issubclass(corral.NotPicklableError, TypeError)
    for error in (corral.UnknownColumnError, corral.MissingKeyError, corral.ColumnTypeError):
        assert issubclass(error, corral.SchemaError)
    assert issubclass(corral.SchemaError, ValueError)
    assert issubclass(corral.IdentifierError, ValueError)
    assert issubclass(corral.DatabaseURLError, ValueError)
    assert issubclass(corral.ColumnTypeError, TypeError)
    assert issubclass(corral.MissingDriverError, ImportError)
    assert issubclass(corral.ConnectError, ConnectionError)


def test_database_statistics_fields_are_documented() -> None:
    import dataclasses

    fields = [f.name for f in dataclasses.fields(corral.DatabaseStatistics)]
    assert fields == ["accepted", "committed", "batches", "pending", "failed", "errors_dropped"]
    source = inspect.getsource(corral.DatabaseStatistics)
    for name in fields:
        assert re.search(rf'{name}: int( = 0)?\n    """', source), (
            f"DatabaseStatistics.{name} has no docstring"
        )


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("corral").joinpath("py.typed").is_file()
