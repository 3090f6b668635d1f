"""A live terminal display of a run's progress (rich), read from the database.

The display reads what the database holds, so the same view serves the process doing
the work (:func:`show_progress`) and any other terminal (``corral progress --watch``).
It needs the ``cli`` extra: ``pip install 'corral[cli]'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._exceptions import MissingDriverError
from ._progress import Run, RunProgress, Status, SubtaskProgress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from ._progress import ProgressTracker

__all__ = ["ProgressBars", "runs_table", "show_progress", "subtasks_table", "watch"]


def _rich() -> Any:
    try:
        import rich.progress
    except ModuleNotFoundError as exc:
        raise MissingDriverError(
            "the progress display needs rich: pip install 'corral[cli]'"
        ) from exc
    return rich


class ProgressBars:
    """One rich progress bar per subtask, with count, percent, rate and ETA."""

    def __init__(self, title: str, *, console: Console | None = None) -> None:
        _rich()
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.title = title
        self.progress: Progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]:>9}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            auto_refresh=False,  # refreshed by our own task: no thread of rich's
            transient=False,
        )
        self._tasks: dict[int, TaskID] = {}

    def start(self) -> None:
        """Start the live display."""
        self.progress.console.print(self.title, markup=False, highlight=False)
        self.progress.start()

    def stop(self) -> None:
        """Draw a last time and stop the live display."""
        self.progress.refresh()
        self.progress.stop()

    def update(self, subtasks: Sequence[SubtaskProgress]) -> None:
        """Show these snapshots (one bar per subtask number) and redraw."""
        from rich.markup import escape

        progress = self.progress
        for sub in subtasks:
            task_id = self._tasks.get(sub.number)
            description = escape(f"{sub.number}. {sub.name}")
            if task_id is None:
                task_id = self._tasks[sub.number] = progress.add_task(
                    description, total=sub.items_total, rate="", status=""
                )
            progress.update(task_id, total=sub.items_total, completed=sub.items_complete, status="")
            task = progress._tasks[task_id]
            speed = task.speed
            rate = "" if speed is None or not math.isfinite(speed) else f"{speed:,.0f}/s"
            status = "" if sub.status is Status.RUNNING else sub.status.value
            if sub.message:
                status = escape(f"{status} {sub.message}".strip())
            progress.update(task_id, rate=rate, status=status)
            if sub.status is not Status.RUNNING and not task.finished:
                progress.stop_task(task_id)
        progress.refresh()


def _title(run: Run | RunProgress) -> str:
    return f"run {run.id}: {run.type} {run.name}"


async def _poll(tracker: ProgressTracker, run_id: int, bars: ProgressBars, refresh: float) -> None:
    while True:
        bars.update(await tracker.get(run_id))
        await anyio.sleep(refresh)


class show_progress:
    """Show a live terminal display of ``run`` while the body of ``async with`` runs.

    One bar per subtask, with its count, percent, rate and ETA, redrawn every
    ``refresh`` seconds from the database, and drawn a last time when the body ends. An
    exception or cancellation in the body propagates as it is. Needs rich
    (``pip install 'corral[cli]'``).
    """

    def __init__(self, run: Run, *, refresh: float = 0.25, console: Console | None = None) -> None:
        if not isinstance(run, Run):
            raise TypeError(f"show_progress takes a Run (from start_run), got {run!r}")
        if isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh <= 0:
            raise ValueError(f"refresh must be a number of seconds > 0, got {refresh!r}")
        self._run = run
        self._refresh = refresh
        self._bars = ProgressBars(_title(run), console=console)
        self._task_group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> None:
        if self._task_group is not None:
            raise RuntimeError("a show_progress(...) can be entered only once")
        self._bars.start()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(
            _poll, self._run._tracker, self._run.id, self._bars, self._refresh
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task_group is not None
        try:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            with anyio.CancelScope(shield=True):
                try:
                    self._bars.update(await self._run._tracker.get(self._run.id))
                except Exception:
                    if exc is None:
                        raise  # else: the body's own exception is the one to see
        finally:
            self._bars.stop()


async def watch(
    tracker: ProgressTracker,
    run_id: int,
    *,
    refresh: float = 0.5,
    console: Console | None = None,
) -> RunProgress:
    """Display ``run_id`` live until the run is no longer RUNNING; return its last state."""
    run = await tracker.run_progress(run_id)
    bars = ProgressBars(_title(run), console=console)
    bars.start()
    try:
        while True:
            bars.update(await tracker.get(run_id))
            run = await tracker.run_progress(run_id)
            if run.status is not Status.RUNNING:
                bars.update(await tracker.get(run_id))
                return run
            await anyio.sleep(refresh)
    finally:
        bars.stop()


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def runs_table(runs: Sequence[RunProgress]) -> Table:
    """Return a rich table of runs, newest first."""
    _rich()
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="runs")
    for column in ("id", "type", "name", "status", "started", "ended", "message"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for run in runs:
        table.add_row(
            str(run.id),
            escape(run.type),
            escape(run.name),
            run.status.value,
            _when(run.started_at),
            _when(run.ended_at),
            escape(run.message or ""),
        )
    return table


def subtasks_table(run: RunProgress, subtasks: Sequence[SubtaskProgress]) -> Table:
    """Return a rich table of one run's subtasks."""
    _rich()
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{_title(run)} ({run.status.value})"))
    for column in ("#", "name", "status", "complete", "total", "percent", "message", "ended"):
        table.add_column(column, justify="right" if column in "# complete total" else "left")
    for sub in subtasks:
        table.add_row(
            str(sub.number),
            escape(sub.name),
            sub.status.value,
            f"{sub.items_complete:,}",
            "" if sub.items_total is None else f"{sub.items_total:,}",
            "" if sub.percent is None else f"{sub.percent:.1f}%",
            escape(sub.message or ""),
            _when(sub.ended_at),
        )
    return table
