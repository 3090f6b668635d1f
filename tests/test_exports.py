from __future__ import annotations

import inspect

import corral
import corral.blocking

EXPECTED = {
    "Cluster",
    "ClusterStatistics",
    "CorralError",
    "IMap",
    "MapResults",
    "NotPicklableError",
    "Offload",
    "PoolClosedError",
    "ProcessPool",
    "ProcessPoolStatistics",
    "ProgressSink",
    "WorkerCrashed",
    "WorkerInitializerError",
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


def test_everything_public_has_a_docstring() -> None:
    for module in (corral, corral.blocking):
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
    ):
        assert issubclass(error, corral.CorralError)
    assert issubclass(corral.NotPicklableError, TypeError)


def test_py_typed_is_shipped() -> None:
    from importlib.resources import files

    assert files("corral").joinpath("py.typed").is_file()
