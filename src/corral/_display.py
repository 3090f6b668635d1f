"""A live terminal display of a run's progress (rich), read from the database.

The display reads what the database holds, so the same view serves the process doing
the work (:func:`show_progress`) and any other terminal (``corral progress --watch``).
It needs the ``cli`` extra: ``pip install 'corral[cli]'``.

On a terminal it draws one bar per subtask, laid out for the terminal's width (at 80
columns every bar keeps its count and percent; rate and ETA come at 100 and more).
Into a pipe or a file it prints plain lines instead: one when a subtask appears or
changes status or message, and one at most every few seconds while it counts.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._backends import parse_url
from ._database import default_url
from ._exceptions import CorralError, MissingDriverError
from ._ports import redact
from ._progress import (
    ABANDONED_AFTER,
    Run,
    RunProgress,
    Status,
    SubtaskProgress,
    is_abandoned,
    last_update,
)
from ._validate import check_number, check_type

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn, TaskID
    from rich.table import Table

    from ._progress import ProgressTracker

__all__ = [
    "ProgressBars",
    "corral_command",
    "progress_hint",
    "runs_table",
    "show_progress",
    "subtasks_table",
    "wait_for_run",
    "watch",
]

#: In plain lines, a subtask that only counts is printed at most this often (seconds).
_PLAIN_EVERY = 5.0
#: The widths the bars are laid out with (columns): bar, status, description.
_BAR_MIN, _BAR_MAX, _STATUS_MIN, _NAME_MAX = 10, 30, 20, 40
#: Rate and ETA are shown from this terminal width up.
_WIDE = 100


def _rich() -> Any:
    try:
        import rich.progress
    except ModuleNotFoundError as exc:
        raise MissingDriverError(
            "the progress display needs rich: pip install 'corral[cli]'"
        ) from exc
    return rich


# -- hints: commands that work as written ------------------------------------------------------


def corral_command() -> str:
    """Return the ``corral`` command as a shell runs it from here.

    ``corral`` when it is on ``PATH``; else the script installed next to this Python
    (a virtual environment's ``.venv/bin/corral``, relative to the current directory when
    it is below it), or the script this program was started as; else
    ``python -m corral`` with this Python's path.

    Returns:
        The command, quoted for a shell.
    """
    if shutil.which("corral"):
        return "corral"
    candidates = [Path(sys.executable).parent / "corral"]
    if sys.argv and Path(sys.argv[0]).name == "corral":
        candidates.append(Path(sys.argv[0]))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return shlex.quote(_shown(candidate))
    return f"{shlex.quote(sys.executable)} -m corral"


def _shown(path: Path) -> str:
    """Return ``path`` relative to the current directory when below it, else absolute."""
    absolute = path.absolute()
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        return str(absolute)
    return str(relative) if len(relative.parts) > 1 else f"./{relative}"


def progress_hint(url: str, run_id: int, *, watch: bool = False) -> str | None:
    """Return a ``corral progress`` command that shows ``run_id`` of ``url``, or None.

    None when no such command would work later: an in-memory SQLite database, a file
    that does not exist or lies in the temporary directory (deleted with it), or a URL
    holding a password (never printed). ``--db`` is left out for the default URL.

    Args:
        url: The database's URL.
        run_id: The run's id.
        watch: Whether the command follows the run live (``--watch``).

    Returns:
        The command, quoted for a shell, or ``None`` if none would work later.
    """
    try:
        dialect, path = parse_url(url)
    except (CorralError, TypeError):
        return None
    if redact(url) != url:
        return None
    if dialect == "sqlite":
        if path == ":memory:" or not os.path.exists(path):
            return None
        temporary = Path(tempfile.gettempdir()).resolve()
        if Path(path).resolve().is_relative_to(temporary):
            return None
    words = [corral_command(), "progress"]
    if url != default_url():
        words += ["--db", shlex.quote(url)]
    if watch:
        words.append("--watch")
    words.append(str(run_id))
    return " ".join(words)


# -- the bars ----------------------------------------------------------------------------------


def _count(sub: SubtaskProgress) -> str:
    if sub.items_total is None:
        return f"{sub.items_complete:,}"
    return f"{sub.items_complete:,}/{sub.items_total:,}"


def _percent(sub: SubtaskProgress) -> str:
    return "" if sub.percent is None else f"{sub.percent:.0f}%"


def _status(sub: SubtaskProgress) -> str:
    status = "" if sub.status is Status.RUNNING else sub.status.value
    return f"{status} {sub.message}".strip() if sub.message else status


@dataclass(frozen=True, slots=True)
class _Layout:
    """The widths of the columns of the bars, for one terminal width."""

    name: int
    bar: int
    count: int
    status: int
    wide: bool

    @classmethod
    def of(cls, width: int, rows: Sequence[tuple[str, str, str]]) -> _Layout:
        """Fit rows of (description, count, status) into ``width`` columns."""
        count = max((len(row[1]) for row in rows), default=1)
        wide = width >= _WIDE
        fixed = count + 4 + (9 + 7 if wide else 0)  # count, percent, [rate, eta]
        spaces = (7 if wide else 5) - 1
        room = max(0, width - fixed - spaces)  # for the name, the bar, the status
        name_need = min(max((len(row[0]) for row in rows), default=1), _NAME_MAX)
        status_need = max((len(row[2]) for row in rows), default=0)
        status_min = min(status_need, _STATUS_MIN)
        name = max(6, min(name_need, room - _BAR_MIN - status_min))
        bar = max(_BAR_MIN, min(_BAR_MAX, room - name - status_min))
        status = max(0, min(status_need, room - name - bar))
        return cls(name=name, bar=bar, count=count, status=status, wide=wide)


class ProgressBars:
    """One line per subtask: a rich bar with count, percent, rate and ETA, or plain text.

    Args:
        title: The line printed above the bars.
        console: The rich console to draw on; rich's default console if ``None``.
        plain: Print plain lines rather than draw bars; by default (``None``), when the
            console is not a terminal (a pipe, a file).
    """

    def __init__(
        self, title: str, *, console: Console | None = None, plain: bool | None = None
    ) -> None:
        _rich()
        from rich.progress import Progress

        self.title = title
        self.progress: Progress = Progress(
            console=console,
            auto_refresh=False,  # refreshed by our own task: no thread of rich's
            transient=False,
        )
        #: The console drawn on.
        self.console: Console = self.progress.console
        #: Whether plain lines are printed rather than bars.
        self.plain: bool = not self.console.is_terminal if plain is None else plain
        self._tasks: dict[int, TaskID] = {}
        #: Plain lines: the last printed per subtask (its status and message, when,
        #: the text), and the latest text of each.
        self._printed: dict[int, tuple[tuple[str, str], float, str]] = {}
        self._latest: dict[int, str] = {}
        self._started = False

    def start(self) -> None:
        """Print the title, and start the live display (unless plain)."""
        self.console.print(self.title, markup=False, highlight=False, soft_wrap=True)
        if not self.plain:
            self.progress.start()
        self._started = True

    def stop(self) -> None:
        """Draw a last time (print the lines not printed yet) and stop the live display."""
        if self.plain:
            for number, text in self._latest.items():
                printed = self._printed.get(number)
                if printed is None or printed[2] != text:
                    self.line(text)
                    self._printed[number] = (("", ""), 0.0, text)
        elif self._started:
            self.progress.refresh()
            self.progress.stop()
        self._started = False

    def line(self, text: str) -> None:
        """Print one line of text below the display, as it is (no markup).

        Args:
            text: The line to print.
        """
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def update(self, subtasks: Sequence[SubtaskProgress]) -> None:
        """Show these snapshots (one line per subtask number) and redraw.

        Args:
            subtasks: Snapshots of the run's subtasks.
        """
        if self.plain:
            self._print_lines(subtasks)
        else:
            self._draw(subtasks)

    def _print_lines(self, subtasks: Sequence[SubtaskProgress]) -> None:
        now = time.monotonic()
        for sub in subtasks:
            text = f"{sub.number}. {sub.name}: {_count(sub)} {_percent(sub)}".rstrip()
            text = f"{text} {sub.status.value}"
            if sub.message:
                text = f"{text} {sub.message}"
            self._latest[sub.number] = text
            state = (sub.status.value, sub.message or "")
            printed = self._printed.get(sub.number)
            if printed is not None:
                last_state, last_time, last_text = printed
                if last_text == text:
                    continue
                if last_state == state and now - last_time < _PLAIN_EVERY:
                    continue  # only counting: a line every few seconds is enough
            self._printed[sub.number] = (state, now, text)
            self.line(text)

    def _draw(self, subtasks: Sequence[SubtaskProgress]) -> None:
        from rich.markup import escape

        progress = self.progress
        for sub in subtasks:
            task_id = self._tasks.get(sub.number)
            description = escape(f"{sub.number}. {sub.name}")
            total: float | None = sub.items_total
            completed: float = sub.items_complete
            if total is None and sub.percent is not None:
                total, completed = 100.0, sub.percent
            if task_id is None:
                task_id = self._tasks[sub.number] = progress.add_task(
                    description, total=total, rate="", status="", count="", percent=""
                )
            progress.update(task_id, total=total, completed=completed)
            task = progress._tasks[task_id]
            speed = task.speed
            rate = "" if speed is None or not math.isfinite(speed) else f"{speed:,.0f}/s"
            progress.update(
                task_id,
                rate=rate,
                status=escape(_status(sub)),
                count=_count(sub),
                percent=_percent(sub),
            )
            if sub.status is not Status.RUNNING and not task.finished:
                progress.stop_task(task_id)
        rows = [(f"{sub.number}. {sub.name}", _count(sub), _status(sub)) for sub in subtasks]
        progress.columns = self._columns(_Layout.of(self.console.width, rows))
        progress.refresh()

    def _columns(self, layout: _Layout) -> tuple[ProgressColumn, ...]:
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.table import Column

        def fixed(width: int, justify: Any = "left") -> Column:
            return Column(width=width, no_wrap=True, overflow="ellipsis", justify=justify)

        columns: list[ProgressColumn] = [
            TextColumn("[bold]{task.description}", table_column=fixed(layout.name)),
            BarColumn(bar_width=layout.bar, table_column=fixed(layout.bar)),
            TextColumn(
                "{task.fields[count]}", justify="right", table_column=fixed(layout.count, "right")
            ),
            TextColumn("{task.fields[percent]}", justify="right", table_column=fixed(4, "right")),
        ]
        if layout.wide:
            columns += [
                TextColumn("{task.fields[rate]}", justify="right", table_column=fixed(9, "right")),
                TimeRemainingColumn(elapsed_when_finished=True, table_column=fixed(7)),
            ]
        columns.append(TextColumn("{task.fields[status]}", table_column=fixed(layout.status)))
        return tuple(columns)


def _title(run: Run | RunProgress) -> str:
    return f"run {run.id}: {run.type} {run.name}"


def _ended_line(run: RunProgress, url: str) -> str:
    """Return the line that says how a run ended, with its final message and a hint."""
    line = f"run {run.id} {run.status.value}"
    if run.message:
        line = f"{line}: {run.message}"
    hint = progress_hint(url, run.id)
    return f"{line} (see it again: {hint})" if hint else line


def _ago(when: datetime, now: datetime | None = None) -> str:
    """Return how long ago ``when`` was, for people: ``"12 s ago"``, ``"3 min ago"``."""
    seconds = max(0.0, ((now or datetime.now(when.tzinfo)) - when).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _items(subtasks: Sequence[SubtaskProgress]) -> str:
    done = sum(sub.items_complete for sub in subtasks)
    totals = [sub.items_total for sub in subtasks]
    if subtasks and all(total is not None for total in totals):
        return f"{done:,} of {sum(t for t in totals if t is not None):,} items"
    return f"{done:,} items"


async def _poll(tracker: ProgressTracker, run_id: int, bars: ProgressBars, refresh: float) -> None:
    while True:
        bars.update(await tracker.get(run_id))
        await anyio.sleep(refresh)


def _catches_sigint() -> bool:
    """Return whether Ctrl-C can be received here (in the main thread, not on Windows)."""
    return sys.platform != "win32" and threading.current_thread() is threading.main_thread()


def _is_reported(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_reported(inner) for inner in exc.exceptions)
    return bool(getattr(exc, "_corral_reported", False))


def _quiet_when_reported() -> None:
    """Have an uncaught interrupt that show_progress reported print nothing more.

    Wraps ``sys.excepthook`` once: an exception (or group) made only of interrupts
    marked as reported (their one line was printed) is not printed again with its
    traceback; every other exception goes to the hook that was there before.
    """
    previous = sys.excepthook
    if getattr(previous, "_corral_quiet", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not _is_reported(value):
            previous(kind, value, tb)

    hook._corral_quiet = True  # type: ignore[attr-defined]
    sys.excepthook = hook


class show_progress:
    """Show a live terminal display of ``run`` while the body of ``async with`` runs.

    One bar per subtask, with its count, percent, rate and ETA, redrawn every
    ``refresh`` seconds from the database, and drawn a last time when the body ends,
    followed by the run's status and final message once it has ended. Into a pipe or a
    file it prints plain lines instead (see the module documentation). An exception or
    cancellation in the body propagates as it is.

    Ctrl-C while it shows (in the main thread): the body is cancelled, the run is marked
    INTERRUPTED (unless it has ended), and one line says what was interrupted and what
    was kept, before ``KeyboardInterrupt`` is raised as Ctrl-C raises it; left uncaught,
    that one line is all the program prints of it, not the chained tracebacks.
    Needs rich (``pip install 'corral[cli]'``).

    Args:
        run: The run to show (from ``db.progress.start_run``).
        refresh: Seconds between two redraws from the database (> 0).
        console: The rich console to draw on; rich's default console if ``None``.

    Raises:
        MissingDriverError: If rich is not installed (``pip install 'corral[cli]'``).
        TypeError: If ``run`` is not a :class:`corral.Run`.
        RuntimeError: If it is entered a second time (it can be entered only once).
        KeyboardInterrupt: On Ctrl-C while it shows, once the run is marked
            INTERRUPTED.
    """

    def __init__(self, run: Run, *, refresh: float = 0.25, console: Console | None = None) -> None:
        check_type("run", run, Run, "a corral.Run (from db.progress.start_run)")
        check_number("refresh", refresh, above=0, unit="seconds")
        self._run = run
        self._refresh = refresh
        self._bars = ProgressBars(_title(run), console=console)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._interrupted = False

    async def __aenter__(self) -> None:
        if self._task_group is not None:
            raise RuntimeError("a show_progress(...) can be entered only once")
        self._bars.start()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(
            _poll, self._run._tracker, self._run.id, self._bars, self._refresh
        )
        if _catches_sigint():
            await self._task_group.start(self._catch_sigint)

    async def _catch_sigint(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """On the first Ctrl-C, cancel the body; restore the SIGINT handler at the end."""
        previous = signal.getsignal(signal.SIGINT)
        try:
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                task_status.started()
                async for _ in signals:
                    self._interrupted = True
                    assert self._task_group is not None
                    self._task_group.cancel_scope.cancel()
                    return
        finally:
            if previous is not None:  # the event loop's own (a second Ctrl-C: a hard stop)
                signal.signal(signal.SIGINT, previous)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task_group is not None
        run = self._run
        tracker = run._tracker
        subtasks: list[SubtaskProgress] = []
        ended: RunProgress | None = None
        marked = False
        try:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            with anyio.CancelScope(shield=True):
                try:
                    subtasks = await tracker.get(run.id)
                    self._bars.update(subtasks)
                    if self._interrupted:
                        marked = await tracker._interrupt(run.id, "interrupted: Ctrl-C")
                    ended = await tracker.run_progress(run.id)
                except Exception:
                    if exc is None and not self._interrupted:
                        raise  # else: the body's own exception is the one to see
        finally:
            self._bars.stop()
        if self._interrupted:
            self._bars.line(self._interrupted_line(subtasks, ended, marked))
            interrupt = KeyboardInterrupt(f"run {run.id} interrupted")
            interrupt._corral_reported = True  # type: ignore[attr-defined]
            _quiet_when_reported()
            raise interrupt from None
        if ended is not None and ended.status is not Status.RUNNING:
            self._bars.line(_ended_line(ended, tracker._db.url))

    def _interrupted_line(
        self, subtasks: Sequence[SubtaskProgress], ended: RunProgress | None, marked: bool
    ) -> str:
        run = self._run
        url = self._run._tracker._db.url
        if marked:
            state = "the run, marked INTERRUPTED"
        elif ended is not None:
            state = f"the run, {ended.status.value}"
        else:
            state = "the run, still RUNNING (the database did not answer)"
        line = (
            f"Interrupted (Ctrl-C): run {run.id} {run.type} {run.name!r} at "
            f"{_items(subtasks)}; kept in {redact(url)}: the counts committed and {state}"
        )
        hint = progress_hint(url, run.id)
        return f"{line}; see it with: {hint}" if hint else line


async def watch(
    tracker: ProgressTracker,
    run_id: int,
    *,
    refresh: float = 0.5,
    console: Console | None = None,
    abandoned_after: float = ABANDONED_AFTER,
    plain: bool | None = None,
) -> RunProgress:
    """Display ``run_id`` live until it is no longer RUNNING, or abandoned; return it.

    Abandoned: RUNNING with no heartbeat for ``abandoned_after`` seconds (see
    :func:`corral._progress.is_abandoned`); the caller tells the two apart with it.

    Args:
        tracker: The progress tracker of the run's database.
        run_id: The run's id.
        refresh: Seconds between two redraws from the database.
        console: The rich console to draw on; rich's default console if ``None``.
        abandoned_after: Seconds without a heartbeat after which a RUNNING run is
            abandoned.
        plain: Print plain lines rather than draw bars (see :class:`ProgressBars`).

    Returns:
        The run's last snapshot.
    """
    run = await tracker.run_progress(run_id)
    bars = ProgressBars(_title(run), console=console, plain=plain)
    bars.start()
    try:
        while True:
            bars.update(await tracker.get(run_id))
            run = await tracker.run_progress(run_id)
            if run.status is not Status.RUNNING or is_abandoned(run, after=abandoned_after):
                bars.update(await tracker.get(run_id))
                return run
            await anyio.sleep(refresh)
    finally:
        bars.stop()


async def wait_for_run(
    tracker: ProgressTracker,
    *,
    refresh: float = 0.5,
    abandoned_after: float = ABANDONED_AFTER,
    waiting: Any = None,
) -> RunProgress:
    """Return the latest RUNNING run that is not abandoned, waiting for one to start.

    The store's tables may not exist yet: they are waited for too, and never created.

    Args:
        tracker: The progress tracker of the database.
        refresh: Seconds between two looks at the database.
        abandoned_after: Seconds without a heartbeat after which a RUNNING run is
            abandoned.
        waiting: Called (with no arguments) once if there is no such run yet, to say
            so; ``None`` for nothing.

    Returns:
        A snapshot of the run.
    """
    said = False
    while True:
        if await tracker._exists():
            for run in await tracker.runs(limit=20):
                if run.status is Status.RUNNING and not is_abandoned(run, after=abandoned_after):
                    return run
        if not said and waiting is not None:
            waiting()
            said = True
        await anyio.sleep(refresh)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _shown_status(run: RunProgress, abandoned_after: float) -> str:
    return "ABANDONED" if is_abandoned(run, after=abandoned_after) else run.status.value


def runs_table(runs: Sequence[RunProgress], *, abandoned_after: float = ABANDONED_AFTER) -> Table:
    """Return a rich table of runs, newest first.

    A RUNNING run without a heartbeat for ``abandoned_after`` seconds shows as
    ABANDONED (a judgement: the stored status is RUNNING).

    Args:
        runs: Snapshots of the runs, newest first.
        abandoned_after: Seconds without a heartbeat after which a RUNNING run shows as
            ABANDONED.

    Returns:
        The table, to print on a rich console.
    """
    _rich()
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="runs")
    for column in ("id", "type", "name", "status", "started", "last update", "message"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for run in runs:
        table.add_row(
            str(run.id),
            escape(run.type),
            escape(run.name),
            _shown_status(run, abandoned_after),
            _when(run.started_at),
            _ago(last_update(run)),
            escape(run.message or ""),
        )
    return table


def subtasks_table(
    run: RunProgress,
    subtasks: Sequence[SubtaskProgress],
    *,
    abandoned_after: float = ABANDONED_AFTER,
) -> Table:
    """Return a rich table of one run's subtasks, titled with its status and message.

    Args:
        run: A snapshot of the run.
        subtasks: Snapshots of its subtasks.
        abandoned_after: Seconds without a heartbeat after which a RUNNING run shows as
            ABANDONED.

    Returns:
        The table, to print on a rich console.
    """
    _rich()
    from rich.markup import escape
    from rich.table import Table

    title = f"{_title(run)} ({_shown_status(run, abandoned_after)}, last update "
    title += f"{_ago(last_update(run))})"
    if run.message:
        title += f": {run.message}"
    table = Table(title=escape(title))
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
