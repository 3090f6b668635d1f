"""A blocking facade over corral's engine, for synchronous callers.

The names are those that synchronous code already uses::

    from corral.blocking import Task, execute_tasks_in_parallel

    tasks = [Task(fetch, (url,)) for url in urls]
    pages = execute_tasks_in_parallel(tasks, max_workers=16)

Each call starts an event loop (this module is the one place in corral that does),
runs the tasks with :func:`corral.map` or :func:`corral.imap`, and returns when every
task has finished: nothing is left running. Calling these from inside a running event
loop is an error; ``await corral.map(...)`` there instead.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.from_thread
from anyio.lowlevel import current_token

from ._map import imap, is_async_callable, map
from ._pickling import check_process_function, describe, is_picklable
from ._public import fixup_module_metadata as _fixup_module_metadata
from ._validate import check_bool, check_callable, check_choice, check_int, type_error

__all__ = [
    "Task",
    "execute_tasks_in_parallel",
    "execute_tasks_in_parallel_streaming",
    "execute_tasks_in_parallel_unordered",
    "is_picklable",
    "should_use_processes",
]


@dataclass(frozen=True, slots=True)
class Task:
    """One call to run: ``callback_function(*arguments)``.

    ``arguments`` is a tuple (or list) of positional arguments, or a mapping of keyword
    arguments. A single argument is written ``(x,)``.

    Raises:
        TypeError: ``callback_function`` is not callable or is async, or ``arguments``
            is neither a tuple, a list nor a mapping.
    """

    callback_function: Callable[..., Any]
    """The plain (not async) function to call."""
    arguments: tuple[Any, ...] | list[Any] | Mapping[str, Any] = ()
    """Positional arguments as a tuple or list, or keyword arguments as a mapping."""

    def __post_init__(self) -> None:
        check_callable("Task.callback_function", self.callback_function)
        if is_async_callable(self.callback_function):
            raise TypeError(
                f"Task.callback_function {describe(self.callback_function)} is async; "
                f"the blocking facade runs plain functions. Await corral.map(...) for "
                f"coroutines"
            )
        if not isinstance(self.arguments, tuple | list | Mapping):
            raise type_error(
                "Task.arguments",
                "a tuple of positional arguments or a dict of keyword arguments",
                self.arguments,
                f"write a single argument as ({self.arguments!r:.40},)",
            )

    def __call__(self) -> Any:
        """Run the task in the calling thread and return its result."""
        if isinstance(self.arguments, Mapping):
            return self.callback_function(**self.arguments)
        return self.callback_function(*self.arguments)


def _run_task(task: Task) -> Any:
    try:
        return task()
    except Exception as exc:
        fn = task.callback_function
        name = getattr(fn, "__qualname__", None) or repr(fn)
        exc.add_note(f"corral.blocking: raised by the task's callback_function {name}")
        raise


# The engine's failure note names the function it mapped: "raised by a Task on item 3".
_run_task._corral_name = "a Task"  # type: ignore[attr-defined]


def should_use_processes(kind: Literal["cpu", "io"]) -> bool:
    """Return whether work of this kind belongs in processes: ``"cpu"`` yes, ``"io"`` no.

    CPU-bound Python holds the GIL, so only processes run it in parallel; I/O-bound
    work waits with the GIL released, so threads are cheaper and enough.

    Args:
        kind: ``"cpu"`` for CPU-bound work, ``"io"`` for I/O-bound work.

    Returns:
        ``True`` for ``"cpu"``, ``False`` for ``"io"``: the ``use_processes`` to pass.

    Raises:
        ValueError: ``kind`` is neither ``"cpu"`` nor ``"io"``.
    """
    return check_choice("kind", kind, ("cpu", "io")) == "cpu"


def _check_no_running_loop(name: str) -> None:
    try:
        current_token()
    except anyio.NoEventLoopError:
        return
    raise RuntimeError(
        f"{name}() was called from inside a running event loop, which it would block; "
        f"await corral.map(...) or use corral.imap(...) there instead"
    )


def _prepare(
    name: str,
    tasks: Iterable[Task],
    max_workers: int | None,
    use_processes: bool,
    return_exceptions: bool,
    ordered: bool,
) -> Literal["thread", "process"]:
    _check_no_running_loop(name)
    if isinstance(tasks, Task) or not isinstance(tasks, Iterable):
        fix = "write tasks=[task]" if isinstance(tasks, Task) else ""
        raise type_error("tasks", "an iterable of corral.blocking.Task", tasks, fix)
    check_int("max_workers", max_workers, minimum=1, optional=True)
    check_bool("use_processes", use_processes)
    check_bool("return_exceptions", return_exceptions)
    check_bool("ordered", ordered)
    if isinstance(tasks, Sequence):  # check every task before any work starts
        for _ in _checked(tasks, use_processes):
            pass
    return "process" if use_processes else "thread"


def _checked(tasks: Iterable[Task], use_processes: bool) -> Generator[Task, None, None]:
    for index, task in enumerate(tasks):
        if not isinstance(task, Task):
            raise type_error(f"tasks[{index}]", "a corral.blocking.Task", task)
        if use_processes:
            check_process_function(task.callback_function)
        yield task


def execute_tasks_in_parallel(
    tasks: Iterable[Task],
    max_workers: int | None = None,
    use_processes: bool = False,
    return_exceptions: bool = False,
) -> list[Any]:
    """Run every task, at most ``max_workers`` at once; return results in input order.

    Threads by default; ``use_processes=True`` runs them in corral's persistent process
    pool (functions must be importable, arguments picklable). With
    ``return_exceptions=False`` the first exception cancels the rest and is raised;
    with ``True`` exceptions stand in place of results.

    Args:
        tasks: The :class:`Task` objects to run; a list is checked whole before any
            work starts, another iterable is pulled lazily.
        max_workers: The most tasks running at once; ``None``: 40 threads, or one per
            worker of the process pool.
        use_processes: ``False`` runs the tasks in threads, ``True`` in corral's
            persistent process pool (functions importable, arguments picklable).
        return_exceptions: ``False`` cancels the rest at the first exception and raises
            it; ``True`` puts exceptions in place of results.

    Returns:
        One result per task, in input order.

    Raises:
        TypeError: ``tasks`` is not an iterable of :class:`Task`, or ``use_processes`` is
            not a bool.
        NotPicklableError: ``use_processes=True`` and a task's function cannot run in a
            process.
        RuntimeError: Called from inside a running event loop.
        Exception: The first task's exception, with ``return_exceptions=False``.
    """
    return _run_all(
        "execute_tasks_in_parallel", tasks, max_workers, use_processes, return_exceptions, True
    )


def execute_tasks_in_parallel_unordered(
    tasks: Iterable[Task],
    max_workers: int | None = None,
    use_processes: bool = False,
    return_exceptions: bool = False,
) -> list[Any]:
    """Like :func:`execute_tasks_in_parallel`, with results in completion order.

    Args:
        tasks: The :class:`Task` objects to run; a list is checked whole before any
            work starts, another iterable is pulled lazily.
        max_workers: The most tasks running at once; ``None``: 40 threads, or one per
            worker of the process pool.
        use_processes: ``False`` runs the tasks in threads, ``True`` in corral's
            persistent process pool (functions importable, arguments picklable).
        return_exceptions: ``False`` cancels the rest at the first exception and raises
            it; ``True`` puts exceptions in place of results.

    Returns:
        One result per task, in completion order.

    Raises:
        TypeError: ``tasks`` is not an iterable of :class:`Task`, or ``use_processes`` is
            not a bool.
        NotPicklableError: ``use_processes=True`` and a task's function cannot run in a
            process.
        RuntimeError: Called from inside a running event loop.
        Exception: The first task's exception, with ``return_exceptions=False``.
    """
    return _run_all(
        "execute_tasks_in_parallel_unordered",
        tasks,
        max_workers,
        use_processes,
        return_exceptions,
        False,
    )


def _run_all(
    name: str,
    tasks: Iterable[Task],
    max_workers: int | None,
    use_processes: bool,
    return_exceptions: bool,
    ordered: bool,
) -> list[Any]:
    offload = _prepare(name, tasks, max_workers, use_processes, return_exceptions, ordered)

    async def run() -> list[Any]:
        return await map(
            _run_task,
            _checked(tasks, use_processes),
            limit=max_workers,
            offload=offload,
            ordered=ordered,
            return_exceptions=return_exceptions,
        )

    return anyio.run(run)


def execute_tasks_in_parallel_streaming(
    tasks: Iterable[Task],
    max_workers: int | None = None,
    use_processes: bool = False,
    return_exceptions: bool = False,
    ordered: bool = True,
) -> Generator[tuple[int, Any], None, None]:
    """Yield ``(index, result)`` as tasks complete, pulling ``tasks`` lazily.

    Memory stays bounded by ``max_workers`` whatever the number of tasks. The event
    loop runs in a helper thread for as long as the generator is iterated; closing the
    generator early (``break``) cancels the tasks in flight and stops that thread.

    Args:
        tasks: The :class:`Task` objects to run; a list is checked whole before any
            work starts, another iterable is pulled lazily.
        max_workers: The most tasks running at once; ``None``: 40 threads, or one per
            worker of the process pool.
        use_processes: ``False`` runs the tasks in threads, ``True`` in corral's
            persistent process pool (functions importable, arguments picklable).
        return_exceptions: ``False`` cancels the rest at the first exception and raises
            it; ``True`` puts exceptions in place of results.
        ordered: ``True`` yields in input order, ``False`` in completion order.

    Yields:
        ``(index, result)`` pairs, ``index`` being the task's position in ``tasks``.

    Raises:
        TypeError: ``tasks`` is not an iterable of :class:`Task`, or ``use_processes`` is
            not a bool.
        NotPicklableError: ``use_processes=True`` and a task's function cannot run in a
            process.
        RuntimeError: Called from inside a running event loop.
        Exception: The first task's exception, with ``return_exceptions=False``
            (after the results completed before it).
    """
    offload = _prepare(
        "execute_tasks_in_parallel_streaming",
        tasks,
        max_workers,
        use_processes,
        return_exceptions,
        ordered,
    )
    stream = imap(
        _run_task,
        _checked(tasks, use_processes),
        limit=max_workers,
        offload=offload,
        ordered=ordered,
        return_exceptions=return_exceptions,
    )
    return _stream(stream)


def _stream(stream: Any) -> Generator[tuple[int, Any], None, None]:
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(stream) as results,
    ):
        while True:
            try:
                pair: tuple[int, Any] = portal.call(results.__anext__)
            except StopAsyncIteration:
                return
            yield pair


_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
