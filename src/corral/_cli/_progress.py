"""``corral progress``: runs and subtasks, live with ``--watch``."""

from __future__ import annotations

import click

from .._connect import Database
from .._database import default_url
from .._display import runs_table, subtasks_table
from .._display import watch as watch_run
from .._ports import redact
from .._progress import Status
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
@_limit_option(20, "runs to list without RUN_ID")
@_json_option
def progress(run_id: int | None, url: str | None, watch: bool, refresh: float, limit: int) -> None:
    """Show runs, or one run's subtasks; --watch follows a run live.

    Without RUN_ID: the latest runs (with --watch: follow the latest running one).
    --json prints the runs, or the run with its subtasks, as JSON.
    """
    from rich.console import Console

    as_json = _json_wanted()
    if as_json and watch:
        raise click.UsageError("--json prints one snapshot; leave out --watch")

    console = Console()
    url = url or default_url()

    nothing_yet = f"no runs recorded in {redact(url)} yet"

    async def show(db: Database) -> None:
        nonlocal run_id
        tracker = db.progress
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
                _echo_json(runs)
                return
            if not watch:
                if not runs:
                    console.print(nothing_yet, markup=False, highlight=False)
                else:
                    console.print(runs_table(runs))
                return
            running = [run for run in runs if run.status is Status.RUNNING]
            if not running:
                console.print(f"no run is running in {redact(url)}", markup=False, highlight=False)
                return
            run_id = running[0].id
        if watch:
            final = await watch_run(tracker, run_id, refresh=refresh, console=console)
            console.print(f"run {final.id} {final.status.value}")
            return
        run = await tracker.run_progress(run_id)
        subtasks = await tracker.get(run_id)
        if as_json:
            _echo_json({**_to_json(run), "subtasks": _to_json(subtasks)})
            return
        console.print(subtasks_table(run, subtasks))

    _open(url, show, read_only=True)
