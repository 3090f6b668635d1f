"""``corral progress``: runs and subtasks, live with ``--watch``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .._database import Database, default_url
from .._display import runs_table, subtasks_table
from .._display import watch as watch_run
from .._progress import Status

if TYPE_CHECKING:
    pass

from ._common import _db_option, _limit_option, _open, cli

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
def progress(run_id: int | None, url: str | None, watch: bool, refresh: float, limit: int) -> None:
    """Show runs, or one run's subtasks; --watch follows a run live.

    Without RUN_ID: the latest runs (with --watch: follow the latest running one).
    """
    from rich.console import Console

    console = Console()
    url = url or default_url()

    async def show(db: Database) -> None:
        tracker = db.progress
        nonlocal run_id
        if run_id is None:
            runs = await tracker.runs(limit=limit)
            if not watch:
                if not runs:
                    console.print(f"no runs recorded in {db.url} yet")
                else:
                    console.print(runs_table(runs))
                return
            running = [run for run in runs if run.status is Status.RUNNING]
            if not running:
                console.print(f"no run is running in {db.url}")
                return
            run_id = running[0].id
        if watch:
            final = await watch_run(tracker, run_id, refresh=refresh, console=console)
            console.print(f"run {final.id} {final.status.value}")
            return
        run = await tracker.run_progress(run_id)
        console.print(subtasks_table(run, await tracker.get(run_id)))

    _open(url, show)
