from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterator

import corral
import corral.blocking
import corral.dask
import corral.jobs

FACES = (corral, corral.jobs, corral.blocking, corral.dask)

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
    source = _defining_source(corral.dask.DaskPoolStatistics)
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
    source = _defining_source(corral.DatabaseStatistics)
    for name in fields:
        assert re.search(rf'{name}: int( = 0)?\n    """', source), (
            f"DatabaseStatistics.{name} has no docstring"
        )


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("corral").joinpath("py.typed").is_file()


def _defining_source(obj: object) -> str:
    """The source of the private module that defines ``obj`` (its ``__module__`` is public)."""
    return inspect.getsource(importlib.import_module(obj._corral_defined_in))  # type: ignore[attr-defined]


def _public_objects() -> Iterator[tuple[str, object]]:
    for module in FACES:
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) or inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
                if isinstance(obj, type):
                    for attr, value in vars(obj).items():
                        if isinstance(value, type) and value.__module__.startswith("corral"):
                            yield f"{module.__name__}.{name}.{attr}", value


def test_public_names_report_their_public_home() -> None:
    faces = {module.__name__ for module in FACES}
    for exported, obj in _public_objects():
        home: str = obj.__module__
        assert home in faces, f"{exported} reports {home}"
        found: object = sys.modules[home]
        for part in obj.__qualname__.split("."):  # type: ignore[attr-defined]
            found = getattr(found, part)
        assert found is obj, f"{exported} is not {home}.{obj.__qualname__}"  # type: ignore[attr-defined]
    assert corral.NotPicklableError.__module__ == "corral"
    assert corral.jobs.Processor.__module__ == "corral.jobs"
    assert corral.blocking.is_picklable.__module__ == "corral"  # its first public home
    assert corral.dask.DaskPool.__module__ == "corral.dask"


def test_an_exception_class_reads_as_its_public_name() -> None:
    assert repr(corral.NotPicklableError) == "<class 'corral.NotPicklableError'>"
    assert repr(corral.jobs.PermanentError) == "<class 'corral.jobs.PermanentError'>"
    error = corral.WorkerCrashed("boom")
    assert f"{type(error).__module__}.{type(error).__qualname__}" == "corral.WorkerCrashed"
