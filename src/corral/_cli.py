"""The ``corral`` command line (click).

``corral progress`` shows runs and subtasks; ``corral jobs ...`` reads and changes the
job queue (status, list, show, enqueue, requeue); ``corral worker`` runs a job
processor. They read the database, so they show work that runs in another process or
on another host, from another terminal. Needs the ``cli`` extra:
``pip install 'corral[cli]'``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import anyio
import anyio.abc
import click

from ._backends import redact
from ._cluster import Cluster
from ._database import Database, connect, default_url
from ._display import _when, runs_table, subtasks_table
from ._display import watch as watch_run
from ._exceptions import CorralError, DuplicateJobError, JobNotFoundError, JobStateError
from ._progress import Status
from .jobs import (
    Job,
    JobContext,
    JobRecord,
    LastError,
    LoggingNotifier,
    Priority,
    Processor,
    ProcessorConfig,
    QueueDepth,
    State,
)

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

__all__ = ["cli"]

T = TypeVar("T")

log = logging.getLogger("corral.worker")


def _open(url: str, work: Callable[[Database], Awaitable[T]], *, create: bool = False) -> T:
    """Run ``work(db)`` on an event loop with ``url`` open; errors become click errors.

    A SQLite file must exist unless ``create``.
    """
    if url.startswith("sqlite:///") and not create:
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
    except BaseExceptionGroup as group:  # from a task group: one error inside, usually
        leaf = _only(group)
        if isinstance(leaf, CorralError | ValueError):
            raise click.ClickException(str(leaf)) from group
        if isinstance(leaf, Exception):
            raise leaf from None  # an unexpected error: its own traceback, not the group's
        raise


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """Return the one exception nested in ``group``, or None if it holds several."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner


_db_option = click.option(
    "--db",
    "url",
    default=None,
    metavar="URL",
    help="Database URL (default: $CORRAL_DB, else sqlite:///corral.db).",
)


@click.group()
@click.version_option(package_name="corral")
def cli() -> None:
    """corral: structured concurrency for batch work."""


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


# -- corral jobs: the queue --------------------------------------------------------------------

#: The states in the order of a job's life, as shown by ``corral jobs status``.
_STATES = (
    State.READY,
    State.IN_PROGRESS,
    State.RETRYING,
    State.COMPLETED,
    State.FAILED,
    State.DEAD,
)


@cli.group("jobs", short_help="Read and change the job queue.")
def jobs_group() -> None:
    """Read and change the job queue: status, list, show, enqueue, requeue."""


@jobs_group.command("status", short_help="Count the jobs in each state.")
@_db_option
@click.option("--cluster", metavar="NAME", help="Count only the jobs of this cluster.")
def jobs_status(url: str | None, cluster: str | None) -> None:
    """Show how many jobs are in each state, overall or on one cluster.

    A job belongs to the cluster its latest attempt ran on, or before it runs, to the
    cluster it is pinned to (its affinity).
    """
    url = url or default_url()

    async def read(db: Database) -> QueueDepth:
        return await (db.jobs.depth() if cluster is None else db.jobs.by_cluster(cluster))

    depth = _open(url, read)
    click.echo(f"jobs {'' if cluster is None else f'on cluster {cluster} '}in {redact(url)}")
    _print(_depth_table(depth))


@jobs_group.command("list", short_help="List jobs in claim order.")
@_db_option
@click.option(
    "--state",
    type=click.Choice([state.value for state in _STATES]),
    default=None,
    help="Only the jobs in this state.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="How many jobs to list at most.",
)
def jobs_list(url: str | None, state: str | None, limit: int) -> None:
    """List jobs in claim order (higher priority first, then oldest first)."""
    url = url or default_url()

    async def read(db: Database) -> tuple[list[JobRecord], QueueDepth]:
        return await db.jobs.list(state, limit=limit), await db.jobs.depth()

    records, depth = _open(url, read)
    matching = depth.total if state is None else getattr(depth, state)
    which = "jobs" if state is None else f"{state} jobs"
    if not records:
        click.echo(f"no {which} in {redact(url)}")
        return
    _print(_jobs_table(records, f"{which} in {redact(url)}"))
    if matching > len(records):
        click.echo(f"{len(records)} of {matching} {which} shown; pass --limit {matching} for all")


@jobs_group.command("show", short_help="Show one job's full record.")
@click.argument("job_id", metavar="ID")
@_db_option
def jobs_show(job_id: str, url: str | None) -> None:
    """Show one job's full record: payload, attempts, steps, last error, lease."""
    url = url or default_url()

    async def read(db: Database) -> JobRecord:
        try:
            return await db.jobs.get(job_id)
        except JobNotFoundError as exc:
            raise click.ClickException(f"{exc}; corral jobs list shows the ids") from exc

    _print(_record_table(_open(url, read)))


@jobs_group.command("requeue", short_help="Put dead or failed jobs back in the queue.")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@_db_option
def jobs_requeue(job_ids: tuple[str, ...], url: str | None) -> None:
    """Put dead or failed jobs back in the queue, ready, their attempts reset to 0.

    They resume after the steps they finished. Every ID is tried; if one cannot be
    requeued (unknown, or not dead or failed) the others still are, and the command
    exits with status 1.
    """
    url = url or default_url()

    async def requeue(db: Database) -> list[str]:
        problems: list[str] = []
        for job_id in dict.fromkeys(job_ids):
            try:
                before = await db.jobs.get(job_id)
                after = await db.jobs.requeue(job_id)
            except JobNotFoundError as exc:
                problems.append(f"{exc}; corral jobs list shows the ids")
                continue
            except JobStateError as exc:
                problems.append(
                    f"{exc}; a job still queued or running needs no requeue, and a "
                    f"completed one runs again only if enqueued under a new id"
                )
                continue
            resume = (
                f"; resumes after step(s) {', '.join(after.steps_done)}" if after.steps_done else ""
            )
            click.echo(
                f"requeued {job_id}: was {before.state.value} after {before.attempts} "
                f"attempt(s) ({_error_text(before.last_error, 200) or 'no error recorded'}), "
                f"now {after.state.value}{resume}"
            )
        return problems

    problems = _open(url, requeue)
    if problems:
        raise click.ClickException(
            f"{len(problems)} of {len(set(job_ids))} job(s) not requeued:\n  "
            + "\n  ".join(problems)
        )


#: The keys of one line of ``corral jobs enqueue --file``.
_JOB_KEYS = (
    "id",
    "payload",
    "priority",
    "customer",
    "affinity",
    "region",
    "requires",
    "max_retries",
)


@jobs_group.command("enqueue", short_help="Add a job, or many from a JSONL file.")
@click.argument("job_id", metavar="[ID]", required=False)
@_db_option
@click.option(
    "--payload",
    metavar="JSON",
    help="The job's payload as JSON, e.g. '{\"n\": 3}' (default: null).",
)
@click.option(
    "--priority",
    type=click.Choice([priority.value for priority in Priority]),
    default=None,
    help="How soon it runs (default: normal).",
)
@click.option("--customer", help="Whose job it is (for the worker's --per-customer limit).")
@click.option("--affinity", metavar="CLUSTER", help="Run it on this cluster only.")
@click.option("--region", help="Where its data lives: a cluster in this region is preferred.")
@click.option(
    "--requires",
    metavar="LABEL",
    multiple=True,
    help="A label the cluster running it must have; repeat for several.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=None,
    help="Retries of a retryable failure before the dead letter queue (default: 3).",
)
@click.option(
    "--file",
    "jsonl",
    type=click.File("r", encoding="utf-8"),
    metavar="FILE.jsonl",
    help="Enqueue one job per line of FILE ('-' for stdin): a JSON object with the keys "
    "id, payload, priority, customer, affinity, region, requires (a list), max_retries; "
    "the options above fill in the keys a line leaves out.",
)
def jobs_enqueue(
    job_id: str | None,
    url: str | None,
    payload: str | None,
    priority: str | None,
    customer: str | None,
    affinity: str | None,
    region: str | None,
    requires: tuple[str, ...],
    max_retries: int | None,
    jsonl: IO[str] | None,
) -> None:
    """Add a job (ID) or many (--file FILE.jsonl) to the queue, ready to run.

    All or nothing: if an id is already stored, no job is added.
    """
    url = url or default_url()
    defaults: dict[str, Any] = {
        "priority": priority,
        "customer": customer,
        "affinity": affinity,
        "region": region,
        "requires": requires or None,
        "max_retries": max_retries,
    }
    if payload is not None:
        try:
            defaults["payload"] = json.loads(payload)
        except ValueError as exc:
            raise click.BadParameter(
                f"{payload!r} is not JSON ({exc}); quote it for the shell, e.g. "
                f"--payload '{{\"n\": 3}}', and write a string as --payload '\"text\"'",
                param_hint="--payload",
            ) from None
    defaults = {key: value for key, value in defaults.items() if value is not None}
    if (job_id is None) == (jsonl is None):
        raise click.UsageError(
            "give a job ID, or --file FILE.jsonl for many jobs"
            if job_id is None
            else "give a job ID or --file FILE.jsonl, not both"
        )
    if jsonl is not None:
        batch = _read_jobs(jsonl, defaults)
    else:
        assert job_id is not None
        batch = [_job({"id": job_id, **defaults}, "")]

    async def enqueue(db: Database) -> int:
        try:
            return await db.jobs.enqueue_many(batch)
        except DuplicateJobError as exc:
            raise click.ClickException(
                f"{exc}; nothing was enqueued (corral jobs requeue ID puts a dead or failed "
                f"job back in the queue)"
            ) from exc

    count = _open(url, enqueue, create=True)
    if jsonl is None:
        job = batch[0]
        click.echo(f"enqueued {job.id} ({Priority(job.priority).value}) in {redact(url)}")
    else:
        click.echo(f"enqueued {count} job(s) from {jsonl.name} in {redact(url)}")


def _read_jobs(lines: IO[str], defaults: dict[str, Any]) -> list[Job]:
    """Read one job per non-blank line of ``lines``; errors name the line and the fix."""
    batch: list[Job] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{lines.name} line {number}: "
        try:
            fields = json.loads(line)
        except ValueError as exc:
            raise click.ClickException(
                f"{where}not JSON ({exc}); write one JSON object per line, such as "
                f'{{"id": "ws-1", "payload": {{"n": 3}}, "priority": "high"}}'
            ) from None
        if not isinstance(fields, dict):
            raise click.ClickException(
                f"{where}a JSON {type(fields).__name__}, not an object; write one object "
                f'per line, such as {{"id": "ws-1", "payload": {{"n": 3}}}}'
            )
        unknown = sorted(set(fields) - set(_JOB_KEYS))
        if unknown:
            raise click.ClickException(
                f"{where}unknown key(s) {', '.join(map(repr, unknown))}; "
                f"the keys are {', '.join(_JOB_KEYS)}"
            )
        if "id" not in fields:
            raise click.ClickException(f'{where}no "id"; give each job a unique "id"')
        job = _job({**defaults, **fields}, where)
        if job.id in seen:
            raise click.ClickException(
                f"{where}id {job.id!r} is on line {seen[job.id]} too; give each job its own id"
            )
        seen[job.id] = number
        batch.append(job)
    return batch


def _job(fields: dict[str, Any], where: str) -> Job:
    """Build a Job from command-line or JSON fields; a bad value is a click error."""
    requires = fields.get("requires", ())
    if not isinstance(requires, list | tuple) or not all(isinstance(x, str) for x in requires):
        raise click.ClickException(
            f'{where}"requires" must be a list of labels (strings), e.g. "requires": '
            f'["gpu"], got {json.dumps(requires)}'
        )
    try:
        return Job(**{**fields, "requires": frozenset(requires)})
    except (TypeError, ValueError) as exc:
        raise click.ClickException(f"{where}{exc}") from None


# -- the tables -------------------------------------------------------------------------------


def _print(table: Table) -> None:
    from rich.console import Console

    Console().print(table)


def _text(value: object) -> Text:
    """Return a table cell showing ``value`` as it is (brackets in it are not markup)."""
    from rich.text import Text

    return Text("" if value is None else str(value))


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _error_text(error: LastError | None, width: int) -> str:
    """``CATEGORY in step: message``, shortened to ``width`` characters."""
    if error is None:
        return ""
    step = f" in {error.step}" if error.step else ""
    return _shorten(f"{error.category.value}{step}: {error.message}", width)


def _depth_table(depth: QueueDepth) -> Table:
    from rich.table import Table

    table = Table()
    table.add_column("state")
    table.add_column("jobs", justify="right")
    for state in _STATES:
        table.add_row(state.value, f"{getattr(depth, state.value):,}")
    table.add_section()
    table.add_row("pending", f"{depth.pending:,}")
    table.add_row("total", f"{depth.total:,}")
    return table


def _jobs_table(records: Iterable[JobRecord], title: str) -> Table:
    from rich.table import Table

    table = Table(title=_text(title))
    columns = ("id", "state", "priority", "customer", "cluster", "attempts", "last error")
    for column in (*columns, "updated"):
        table.add_column(
            column,
            justify="right" if column == "attempts" else "left",
            overflow="fold" if column == "id" else "ellipsis",  # an id is never cut short
        )
    for job in records:
        table.add_row(
            _text(job.id),
            job.state.value,
            job.priority.value,
            _text(job.customer),
            _text(job.cluster or (f"({job.affinity})" if job.affinity else "")),
            f"{job.attempts}/{job.max_retries + 1}",
            _text(_error_text(job.last_error, 60)),
            _when(job.updated_at),
        )
    return table


def _record_table(job: JobRecord) -> Table:
    from rich.table import Table

    table = Table(title=_text(f"job {job.id}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    error = job.last_error
    rows: list[tuple[str, object]] = [
        ("state", job.state.value),
        ("priority", job.priority.value),
        ("customer", job.customer),
        ("affinity", job.affinity),
        ("region", job.region),
        ("requires", ", ".join(sorted(job.requires))),
        ("attempts", f"{job.attempts} of {job.max_retries + 1}"),
        ("cluster", job.cluster),
        ("route", job.route_reason),
        ("steps done", ", ".join(job.steps_done)),
        ("progress", f"{job.progress:,}"),
        ("last error", None if error is None else _error_text(error, 10_000)),
        ("error attempt", None if error is None else error.attempt),
        ("lease owner", job.lease_owner),
        ("lease expires", _when(job.lease_expires_at)),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("run at", _when(job.run_at)),
        ("updated", _when(job.updated_at)),
        ("finished", _when(job.finished_at)),
        ("payload", json.dumps(job.payload, indent=2, ensure_ascii=False)),
    ]
    for field, value in rows:
        table.add_row(field, _text(value))
    return table


# -- corral worker: a job processor -----------------------------------------------------------

_SPEC = "name=capacity[,region=R][,cost=C][,labels=a+b]"
_SPEC_EXAMPLE = "--cluster gpu=4,region=us-west-2,cost=0.6,labels=gpu+ssd"


def _cluster(spec: str) -> Cluster:
    """Parse ``name=capacity[,region=R][,cost=C][,labels=a+b]``; BadParameter if bad."""

    def fail(problem: str) -> NoReturn:
        raise click.BadParameter(
            f"{spec!r}: {problem}; write {_SPEC}, e.g. {_SPEC_EXAMPLE}", param_hint="--cluster"
        )

    head, *rest = spec.split(",")
    name, equals, capacity_text = (part.strip() for part in head.partition("="))
    if not equals or not name:
        fail("it does not start with name=capacity")
    try:
        capacity = int(capacity_text)
    except ValueError:
        fail(f"capacity {capacity_text!r} is not a whole number")
    if capacity < 1:
        fail(f"capacity {capacity} is not >= 1 (the most jobs running on {name} at once)")
    options: dict[str, str] = {}
    for item in rest:
        key, equals, text = (part.strip() for part in item.partition("="))
        if not equals or not text:
            fail(f"{item!r} is not key=value")
        if key not in ("region", "cost", "labels"):
            fail(f"unknown key {key!r} (the keys are region, cost and labels)")
        if key in options:
            fail(f"{key} is given twice")
        options[key] = text
    cost = None
    if "cost" in options:
        try:
            cost = float(options["cost"])
        except ValueError:
            fail(f"cost {options['cost']!r} is not a number")
        if not math.isfinite(cost):
            fail(f"cost {options['cost']!r} is not a finite number")
    labels = [label.strip() for label in options.get("labels", "").split("+")]
    if "labels" in options and not all(labels):
        fail(f"labels {options['labels']!r} holds an empty label")
    return Cluster(
        name,
        capacity,
        region=options.get("region"),
        cost=cost,
        labels=labels if "labels" in options else (),
    )


def _clusters(ctx: click.Context, param: click.Parameter, specs: tuple[str, ...]) -> list[Cluster]:
    """Parse every ``--cluster`` spec (the option's callback); names must differ."""
    clusters = [_cluster(spec) for spec in specs]
    names = [cluster.name for cluster in clusters]
    for name in names:
        if names.count(name) > 1:
            raise click.BadParameter(
                f"two clusters are named {name!r}; give each --cluster its own name",
                param_hint="--cluster",
            )
    return clusters


Handler = Callable[[JobContext], Awaitable[object]]


def _load_handler(ref: str) -> Handler:
    """Import ``module:function`` (the current directory is importable too)."""
    module_name, colon, attr = (part.strip() for part in ref.partition(":"))
    example = "e.g. --handler myjobs:handle for async def handle(ctx) in myjobs.py"
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        stem = Path(module_name).stem
        raise click.BadParameter(
            f"{ref!r} names a file: give the module's import name, e.g. --handler "
            f"{stem}:{attr or 'handle'}, run from the directory that holds {stem}.py "
            f"(or with that directory on PYTHONPATH)",
            param_hint="--handler",
        )
    if not colon or not module_name or not attr:
        raise click.BadParameter(
            f"{ref!r} is not module:function; name the module and the async function in "
            f"it, {example}",
            param_hint="--handler",
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(f"{exc.name}.")
        ):
            raise click.ClickException(
                f"cannot import the handler module {module_name!r} ({exc}); run corral "
                f"worker in the directory that holds {module_name.replace('.', '/')}.py, or "
                f"add that directory to PYTHONPATH"
            ) from None
        raise click.ClickException(
            f"importing the handler module {module_name!r} failed: {exc} (at "
            f"{_where(exc)}); install {exc.name!r} in this Python environment"
        ) from None
    except Exception as exc:
        raise click.ClickException(
            f"importing the handler module {module_name!r} raised "
            f"{type(exc).__name__}: {exc} (at {_where(exc)}); fix the module and start the "
            f"worker again"
        ) from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            found = sorted(
                name
                for name, value in vars(module).items()
                if inspect.iscoroutinefunction(value) and not name.startswith("_")
            )
            hint = f", or use one of its async functions: {', '.join(found)}" if found else ""
            raise click.ClickException(
                f"the handler module {module_name!r} ({module.__file__}) has no {attr!r}; "
                f"define async def {attr.rpartition('.')[2]}(ctx) in it{hint}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise click.ClickException(
            f"--handler {ref!r} is a {type(target).__name__}, not a function; point it at "
            f"an async function taking the job's context, {example}"
        )
    if inspect.isroutine(target) and not inspect.iscoroutinefunction(target):
        raise click.ClickException(
            f"--handler {ref!r} is a plain function, and the worker awaits its handler; "
            f"define it with async def {attr.rpartition('.')[2]}(ctx)"
        )
    return cast(Handler, target)


def _where(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised (for a SyntaxError: the bad line)."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


async def _stop_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Cancel ``scope`` on the first SIGINT or SIGTERM (a second one acts as usual)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info(
                "%s received: stopping; the jobs still running are given back to the queue",
                signal.Signals(signum).name,
            )
            scope.cancel()
            return


@cli.command(short_help="Run queued jobs with a handler (a job processor).")
@_db_option
@click.option(
    "--handler",
    "handler_ref",
    required=True,
    metavar="MODULE:FUNCTION",
    help="The async function that runs a job, e.g. myjobs:handle (the current directory "
    "is importable).",
)
@click.option(
    "--cluster",
    "clusters",
    metavar="SPEC",
    multiple=True,
    callback=_clusters,
    help=f"A cluster jobs run on: {_SPEC}; repeat for several "
    "(default: one cluster, 'default', with --max-concurrent slots).",
)
@click.option(
    "--max-concurrent", type=click.IntRange(min=1), help="Jobs running at once, in all (10)."
)
@click.option(
    "--per-customer", type=click.IntRange(min=1), help="Jobs of one customer at once (no limit)."
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="How long a claim holds without renewal; a dead worker's jobs are reclaimed "
    "after this long (60).",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds an idle worker waits before looking for work again, at most (1).",
)
@click.option("--name", help="This worker's name in leases and logs (default: host:pid:random).")
@click.option(
    "--until-idle",
    is_flag=True,
    help="Stop once no job this worker could take is left (default: run until stopped).",
)
def worker(
    url: str | None,
    handler_ref: str,
    clusters: list[Cluster],
    max_concurrent: int | None,
    per_customer: int | None,
    lease_seconds: float | None,
    poll_interval: float | None,
    name: str | None,
    until_idle: bool,
) -> None:
    """Run queued jobs with a handler, on clusters, within limits; logs to stderr.

    Ctrl-C or SIGTERM stops it cleanly: the jobs still running are cancelled and given
    back to the queue, ready at once, the attempt not counted. Any number of workers
    may share a database (PostgreSQL: on any number of hosts).
    """
    url = url or default_url()
    if name is not None and not name.strip():
        raise click.BadParameter("is empty; give a name, or leave it out", param_hint="--name")
    given: dict[str, Any] = {
        "max_concurrent": max_concurrent,
        "per_customer": per_customer,
        "lease_seconds": lease_seconds,
        "poll_interval": poll_interval,
    }
    try:
        config = ProcessorConfig(**{k: v for k, v in given.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise click.UsageError(f"{exc}; give a finite number") from None
    handler = _load_handler(handler_ref)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def serve(db: Database) -> None:
        processor = Processor(
            db,
            handler,
            clusters=clusters or None,
            config=config,
            notifier=LoggingNotifier(),
            name=name,
        )
        log.info(
            "worker %s: handler %s on %s; %s; max_concurrent=%d per_customer=%s "
            "lease_seconds=%g; database %s; %s",
            processor.name,
            handler_ref,
            ", ".join(repr(cluster) for cluster in processor.clusters),
            "until the queue is idle" if until_idle else "until stopped (Ctrl-C or SIGTERM)",
            config.max_concurrent,
            config.per_customer,
            config.lease_seconds,
            redact(url),
            f"pid {os.getpid()}",
        )
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(_stop_on_signal, tg.cancel_scope)
            try:
                await processor.run(until_idle=until_idle)
            except Exception as exc:  # raised below, outside the task group
                failure = exc
            tg.cancel_scope.cancel()
        stats = processor.statistics()
        log.info(
            "worker %s stopped: %d claimed, %d completed, %d retried, %d failed, %d dead, "
            "%d reclaimed, %d lease lost",
            processor.name,
            stats.claimed,
            stats.completed,
            stats.retried,
            stats.failed,
            stats.dead,
            stats.reclaimed,
            stats.lease_lost,
        )
        if failure is not None:
            raise failure

    _open(url, serve, create=True)
