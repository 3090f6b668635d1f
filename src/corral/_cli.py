"""The ``corral`` command line (click): ``corral progress`` shows runs and subtasks.

It reads the database, so it shows work that runs in another process or on another
host, from another terminal. Needs the ``cli`` extra: ``pip install 'corral[cli]'``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import click

from ._database import Database, connect, default_url
from ._display import runs_table, subtasks_table
from ._display import watch as watch_run
from ._exceptions import CorralError
from ._progress import Status

__all__ = ["cli"]

T = TypeVar("T")


def _open(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work(db)`` on an event loop with ``url`` open; errors become click errors."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path != ":memory:" and not os.path.exists(path):
            raise click.ClickException(
                f"no database at {path!r} (from {url}); pass --db URL or set CORRAL_DB"
            )

    async def main() -> T:
        async with connect(url) as db:
            return await work(db)

    try:
        return anyio.run(main)
    except (CorralError, ValueError) as exc:  # a bad URL is a ValueError
        raise click.ClickException(str(exc)) from exc


@click.group()
@click.version_option(package_name="corral")
def cli() -> None:
    """corral: structured concurrency for batch work."""


@cli.command()
@click.argument("run_id", type=int, required=False)
@click.option(
    "--db",
    "url",
    default=None,
    metavar="URL",
    help="Database URL (default: $CORRAL_DB, else sqlite:///corral.db).",
)
@click.option("--watch", is_flag=True, help="Redraw live until the run ends (Ctrl-C to stop).")
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds between redraws with --watch.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many runs to list without RUN_ID.",
)
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
