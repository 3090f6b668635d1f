"""``corral progress``: runs and subtasks, live with ``--watch``."""

from __future__ import annotations

import sys

import click

from .._connect import Database
from .._database import default_url
from .._display import _ago, _ended_line, runs_table, subtasks_table, wait_for_run
from .._display import watch as watch_run
from .._ports import redact
from .._progress import ABANDONED_AFTER, is_abandoned, last_update
from ._common import (
    _db_option,
    _echo_json,
    _json_option,
    _json_wanted,
    _limit_option,
    _open,
    _to_json,
    cli,
)

__all__: list[str] = []


@cli.command()
@click.argument("run_id", type=int, required=False)
@_db_option
@click.option("--watch", is_flag=True, help="Redraw live until the run ends (Ctrl-C to stop).")
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds between redraws with --watch.",
)
@click.option(
    "--abandoned-after",
    type=click.FloatRange(min=0),
    default=ABANDONED_AFTER,
    show_default=True,
    metavar="SECONDS",
    help="A RUNNING run without a heartbeat for this long is shown as ABANDONED "
    "(its program died); raise it with connect(heartbeat=...).",
)
@_limit_option(20, "runs to list without RUN_ID")
@_json_option
def progress(
    run_id: int | None,
    url: str | None,
    watch: bool,
    refresh: float,
    abandoned_after: float,
    limit: int,
) -> None:
    """Show runs, or one run's subtasks; --watch follows a run live.

    Without RUN_ID: the latest runs (with --watch: follow the latest running one that is
    not abandoned, waiting for one to start if there is none). --json prints the runs,
    or the run with its subtasks, as JSON. Into a pipe, --watch prints plain lines.
    """
    from rich.console import Console

    as_json = _json_wanted()
    if as_json and watch:
        raise click.UsageError("--json prints one snapshot; leave out --watch")

    console = Console()
    url = url or default_url()

    nothing_yet = f"no runs recorded in {redact(url)} yet"
    shown = redact(url)

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    async def show(db: Database) -> None:
        nonlocal run_id
        tracker = db.progress
        if watch and run_id is None:
            run = await wait_for_run(
                tracker,
                refresh=refresh,
                abandoned_after=abandoned_after,
                waiting=lambda: say(f"waiting for a run to start in {shown} (Ctrl-C to stop)"),
            )
            run_id = run.id
        if not await tracker._exists():  # a reader creates nothing
            if run_id is not None:
                raise click.ClickException(f"no run {run_id}: {nothing_yet}")
            if as_json:
                _echo_json([])
            else:
                console.print(nothing_yet, markup=False, highlight=False)
            return
        if run_id is None:
            runs = await tracker.runs(limit=limit)
            if as_json:
                _echo_json(
                    [
                        {**_to_json(run), "abandoned": is_abandoned(run, after=abandoned_after)}
                        for run in runs
                    ]
                )
                return
            if not runs:
                console.print(nothing_yet, markup=False, highlight=False)
            else:
                console.print(runs_table(runs, abandoned_after=abandoned_after))
            return
        if watch:
            final = await watch_run(
                tracker, run_id, refresh=refresh, console=console, abandoned_after=abandoned_after
            )
            if is_abandoned(final, after=abandoned_after):
                say(
                    f"run {final.id} looks abandoned: RUNNING, last update "
                    f"{_ago(last_update(final))} (its program stopped without ending it)"
                )
            else:
                say(_ended_line(final, url))
            return
        run = await tracker.run_progress(run_id)
        subtasks = await tracker.get(run_id)
        if as_json:
            abandoned = is_abandoned(run, after=abandoned_after)
            _echo_json({**_to_json(run), "abandoned": abandoned, "subtasks": _to_json(subtasks)})
            return
        console.print(subtasks_table(run, subtasks, abandoned_after=abandoned_after))

    try:
        _open(url, show, read_only=True)
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        if not _interrupted(exc):
            raise
        what = f"watching run {run_id}" if run_id is not None else "waiting for a run"
        say(f"stopped {what} (Ctrl-C); nothing in {shown} was changed")
        sys.exit(130)


def _interrupted(exc: BaseException) -> bool:
    """Return whether ``exc`` is a KeyboardInterrupt, or a group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_interrupted(inner) for inner in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)
