"""``corral jobs ...``: read and change the job queue."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import anyio
import click

from .._connect import Database
from .._database import default_url
from .._display import _when
from .._exceptions import DuplicateJobError, JobKindError, JobNotFoundError, JobStateError
from .._jobs._model import check_kind
from .._ports import redact
from ..jobs import (
    Cancellation,
    Job,
    JobRecord,
    LastError,
    Priority,
    QueueDepth,
    State,
)

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

    from .._ports import Session

from ._common import (
    _cancel_on_signal,
    _db_option,
    _echo_json,
    _json_option,
    _json_wanted,
    _limit_option,
    _open,
    cli,
)

__all__: list[str] = []

# -- corral jobs: the queue --------------------------------------------------------------------

#: The states in the order of a job's life, as shown by ``corral jobs status``.
_STATES = (
    State.READY,
    State.IN_PROGRESS,
    State.RETRYING,
    State.COMPLETED,
    State.FAILED,
    State.DEAD,
    State.CANCELLED,
)
#: The finished states, which ``corral jobs purge`` deletes.
_FINISHED = (State.COMPLETED, State.FAILED, State.DEAD, State.CANCELLED)


async def _has_jobs(db: Database) -> bool:
    """Return whether the jobs table exists; if so, the queue reads it as it is.

    The reading commands create nothing: without the table there is nothing to show,
    and with it the queue is told not to create (or update) its schema.
    """
    if not await db._run(_jobs_exist):
        return False
    db.jobs._ready = True  # read as it is: no CREATE ... IF NOT EXISTS, no lock
    return True


async def _jobs_exist(conn: Session) -> bool:
    return await conn.jobs.exists()


def _nothing_yet(url: str) -> str:
    return f"no jobs in {redact(url)} yet"


#: ``corral jobs --help`` lists the subcommands in this order (a job's life), then any other.
_ORDER = ("enqueue", "status", "list", "show", "cancel", "requeue", "purge")


class _JobsGroup(click.Group):
    """``corral jobs``: its help names every subcommand, in the order of a job's life."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: index for index, name in enumerate(_ORDER)}
        return sorted(names, key=lambda name: (rank.get(name, len(_ORDER)), name))

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = ", ".join(self.list_commands(ctx))
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(f"Read and change the job queue: {names}.")


@cli.group("jobs", cls=_JobsGroup, short_help="Read and change the job queue.")
def jobs_group() -> None:
    """Read and change the job queue (the help lists every subcommand)."""


@jobs_group.command("status", short_help="Count the jobs in each state.")
@_db_option
@click.option("--cluster", metavar="NAME", help="Count only the jobs of this cluster.")
@click.option("--kind", metavar="KIND", help="Count only the jobs of this kind.")
@click.option("--by-kind", is_flag=True, help="Count the jobs of each kind apart: a column each.")
@_json_option
@click.option(
    "--watch",
    is_flag=True,
    help="Redraw live until Ctrl-C; into a pipe (or with --json), print the counts again "
    "each time they change.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.01),
    default=0.5,
    show_default=True,
    help="Seconds between reads with --watch.",
)
def jobs_status(
    url: str | None,
    cluster: str | None,
    kind: str | None,
    by_kind: bool,
    watch: bool,
    refresh: float,
) -> None:
    """Show how many jobs are in each state: overall, on one cluster, of one kind, by kind.

    A job belongs to the cluster its latest attempt ran on, or before it runs, to the
    cluster it is pinned to (its affinity). --by-kind counts each kind of job apart.
    --watch follows the counts live, as ``corral progress --watch`` follows a run.
    """
    url = url or default_url()
    given = [name for name, value in (("--cluster", cluster), ("--kind", kind)) if value]
    if by_kind:
        given.append("--by-kind")
    if len(given) > 1:
        raise click.UsageError(
            f"give one of {', '.join(given)}, not both: each counts the jobs another way"
        )
    if kind is not None:
        _check_kind(kind)
    view = _StatusView(url, cluster, kind, by_kind)
    if watch:
        _open(url, lambda db: _watch_depth(db, view, refresh), read_only=True)
        return
    counts = _open(url, view.read, read_only=True)
    if _json_wanted():
        _echo_json(view.json(counts))
        return
    if counts is None:
        click.echo(_nothing_yet(url))
        return
    click.echo(view.title)
    _print(view.table(counts))


def _check_kind(kind: str) -> None:
    """Refuse a ``--kind`` that is no job kind (a usage error, exit status 2)."""
    try:
        check_kind(kind, "--kind")
    except JobKindError as exc:
        raise click.BadParameter(str(exc), param_hint="--kind") from None


#: What ``corral jobs status`` reads: the counts of one view, or of each kind.
_Counts = QueueDepth | dict[str, QueueDepth]


@dataclasses.dataclass(frozen=True, slots=True)
class _StatusView:
    """Which counts ``corral jobs status`` shows, and how: a table, or JSON."""

    url: str
    cluster: str | None
    kind: str | None
    by_kind: bool

    async def read(self, db: Database) -> _Counts | None:
        if not await _has_jobs(db):
            return None
        if self.by_kind:
            return await db.jobs.depth_by_kind()
        if self.cluster is not None:
            return await db.jobs.by_cluster(self.cluster)
        return await db.jobs.depth(kind=self.kind)

    @property
    def title(self) -> str:
        where = ""
        if self.cluster is not None:
            where = f"on cluster {self.cluster} "
        elif self.kind is not None:
            where = f"of kind {self.kind} "
        elif self.by_kind:
            where = "by kind "
        return f"jobs {where}in {redact(self.url)}"

    def table(self, counts: _Counts) -> Table:
        if isinstance(counts, dict):
            return _kinds_table(counts)
        return _depth_table(counts)

    def json(self, counts: _Counts | None) -> dict[str, object]:
        """``corral jobs status --json``: the database, what was counted, the counts."""
        head: dict[str, object] = {"database": redact(self.url), "cluster": self.cluster}
        head["kind"] = self.kind
        if self.by_kind:
            kinds = counts if isinstance(counts, dict) else {}
            return {**head, "kinds": {name: _counts_json(d) for name, d in kinds.items()}}
        depth = counts if isinstance(counts, QueueDepth) else QueueDepth()
        return {**head, **_counts_json(depth)}


@jobs_group.command("list", short_help="List jobs in claim order.")
@_db_option
@click.option(
    "--state",
    type=click.Choice([state.value for state in _STATES]),
    default=None,
    help="Only the jobs in this state.",
)
@click.option("--kind", metavar="KIND", help="Only the jobs of this kind.")
@_limit_option(50, "jobs to list")
@_json_option
def jobs_list(url: str | None, state: str | None, kind: str | None, limit: int) -> None:
    """List jobs in claim order (higher priority first, then oldest first)."""
    url = url or default_url()
    if kind is not None:
        _check_kind(kind)

    async def read(db: Database) -> tuple[list[JobRecord], QueueDepth] | None:
        if not await _has_jobs(db):
            return None
        records = await db.jobs.list(state, limit=limit, kind=kind)
        return records, await db.jobs.depth(kind=kind)

    found = _open(url, read, read_only=True)
    as_json = _json_wanted()
    if found is None:
        if as_json:
            _echo_json([])
        else:
            click.echo(_nothing_yet(url))
        return
    records, depth = found
    matching = depth.total if state is None else getattr(depth, state)
    which = "jobs" if state is None else f"{state} jobs"
    if kind is not None:
        which += f" of kind {kind}"
    if as_json:
        _echo_json(records)
    elif not records:
        click.echo(f"no {which} in {redact(url)}")
        return
    else:
        _print(_jobs_table(records, f"{which} in {redact(url)}"))
    if matching > len(records):
        click.echo(
            f"{len(records)} of {matching} {which} shown; pass --limit {matching} for all",
            err=as_json,  # stdout holds the JSON alone
        )


@jobs_group.command("show", short_help="Show one job's full record.")
@click.argument("job_id", metavar="ID")
@_db_option
@_json_option
def jobs_show(job_id: str, url: str | None) -> None:
    """Show one job's full record: payload, attempts, steps, last error, lease.

    The last error's traceback, if it has one, follows the table (with ``--json``: the
    record's ``error_traceback``).
    """
    url = url or default_url()

    async def read(db: Database) -> JobRecord:
        if not await _has_jobs(db):
            raise click.ClickException(f"no job with id {job_id!r}: {_nothing_yet(url)}")
        try:
            return await db.jobs.get(job_id)
        except JobNotFoundError as exc:
            raise click.ClickException(f"{exc}; corral jobs list shows the ids") from exc

    record = _open(url, read, read_only=True)
    shown = _record_table(record)
    _print(shown)
    if record.error_traceback and not isinstance(shown, _AsJson):  # JSON has it as a field
        attempt = record.last_error.attempt if record.last_error is not None else "?"
        click.echo(f"\ntraceback of attempt {attempt}:")
        click.echo(record.error_traceback.rstrip())


@jobs_group.command("cancel", short_help="Cancel waiting or running jobs.")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@_db_option
def jobs_cancel(job_ids: tuple[str, ...], url: str | None) -> None:
    """Cancel jobs: a waiting one at once, a running one at its worker's next renewal.

    A running job's worker cancels its handler at its next lease renewal (every third
    of its --lease-seconds) and finishes it cancelled, its steps and progress kept. A
    cancelled job is not retried: corral jobs requeue ID runs it again. Every ID is
    tried; if one cannot be cancelled (unknown, or finished already) the others still
    are, and the command exits with status 1.
    """
    url = url or default_url()

    async def cancel(db: Database) -> list[str]:
        problems: list[str] = []
        for job_id in dict.fromkeys(job_ids):
            try:
                before = await db.jobs.get(job_id)
                done = await db.jobs.cancel(job_id)
            except JobNotFoundError as exc:
                problems.append(f"{exc}; corral jobs list shows the ids")
                continue
            except JobStateError as exc:
                problems.append(f"{exc}; corral jobs requeue ID runs a finished job again")
                continue
            if done is Cancellation.CANCELLED and before.state is State.CANCELLED:
                click.echo(f"{job_id} was cancelled already")
            elif done is Cancellation.CANCELLED:
                click.echo(f"cancelled {job_id}: was {before.state.value}")
            else:
                worker = f"worker {before.lease_owner}" if before.lease_owner else "its worker"
                click.echo(
                    f"cancel requested for {job_id}: in progress on {worker}, which stops "
                    f"it at its next lease renewal"
                )
        return problems

    problems = _open(url, cancel)
    if problems:
        raise click.ClickException(
            f"{len(problems)} of {len(set(job_ids))} job(s) not cancelled:\n  "
            + "\n  ".join(problems)
        )


@jobs_group.command("requeue", short_help="Put dead, failed or cancelled jobs back.")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@_db_option
def jobs_requeue(job_ids: tuple[str, ...], url: str | None) -> None:
    """Put dead, failed or cancelled jobs back in the queue, ready, their attempts reset to 0.

    They resume after the steps they finished. Every ID is tried; if one cannot be
    requeued (unknown, or not dead, failed or cancelled) the others still are, and the
    command exits with status 1.
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


@jobs_group.command("purge", short_help="Delete old finished jobs.")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    help="Delete the jobs that finished more than this many seconds ago (0: all of them).",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in _FINISHED]),
    help="Which finished jobs to delete; repeat for several (default: completed).",
)
@_db_option
def jobs_purge(older_than: float, states: tuple[str, ...], url: str | None) -> None:
    """Delete finished jobs, completed by default, that finished long enough ago."""
    url = url or default_url()
    chosen = states or (State.COMPLETED.value,)

    async def purge(db: Database) -> int:
        return await db.jobs.purge(older_than=older_than, states=chosen)

    deleted = _open(url, purge)
    click.echo(f"deleted {deleted} {'/'.join(chosen)} job(s) finished over {older_than:g} s ago")


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
    "kind",
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
    "--kind",
    metavar="KIND",
    help="Which handler runs it: a worker's --app maps kinds to handlers (default: default).",
)
@click.option(
    "--file",
    "jsonl",
    type=click.File("r", encoding="utf-8"),
    metavar="FILE.jsonl",
    help="Enqueue one job per line of FILE ('-' for stdin): a JSON object with the keys "
    "id, payload, priority, customer, affinity, region, requires (a list), max_retries, "
    "kind; "
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
    kind: str | None,
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
        "kind": kind,
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
        of_kind = "" if job.kind == "default" else f", kind {job.kind}"
        click.echo(f"enqueued {job.id} ({Priority(job.priority).value}{of_kind}) in {redact(url)}")
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


async def _watch_depth(db: Database, view: _StatusView, refresh: float) -> None:
    """``corral jobs status --watch``: read every ``refresh`` seconds until a signal.

    On a terminal the table is redrawn in place (rich ``Live``); into a pipe, or with
    ``--json`` (one object a line), the counts are printed once, then again each time
    they change, so a script or a log sees every change and nothing twice.
    """
    from rich.console import Console, Group
    from rich.live import Live

    console = Console()
    as_json = _json_wanted()
    live = None if as_json or not console.is_terminal else Live(console=console, auto_refresh=False)
    title = view.title
    empty: _Counts = {} if view.by_kind else QueueDepth()
    shown: _Counts | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(_cancel_on_signal, tg.cancel_scope)
        if live is not None:
            live.start()
        try:
            while True:
                depth = await view.read(db) or empty
                if live is not None:
                    now = _text(f"{title} at {datetime.now():%H:%M:%S} (Ctrl-C to stop)")
                    live.update(Group(now, view.table(depth)), refresh=True)
                elif depth != shown:
                    if as_json:
                        click.echo(json.dumps(view.json(depth)))
                    else:
                        console.print(Group(_text(title), view.table(depth)))
                    sys.stdout.flush()
                shown = depth
                await anyio.sleep(refresh)
        finally:
            if live is not None:
                live.stop()


# -- the tables -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _AsJson:
    """What ``--json`` prints in place of a table."""

    value: object


def _print(table: Table | _AsJson) -> None:
    if isinstance(table, _AsJson):
        _echo_json(table.value)
        return
    from rich.console import Console

    Console().print(table)


def _counts_json(depth: QueueDepth) -> dict[str, int]:
    """One count per state, then ``pending`` and ``total``."""
    counts = {field.name: getattr(depth, field.name) for field in dataclasses.fields(depth)}
    return {**counts, "pending": depth.pending, "total": depth.total}


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


def _kinds_table(by_kind: dict[str, QueueDepth]) -> Table:
    """``corral jobs status --by-kind``: a row per state, a column per kind (and all)."""
    from rich.table import Table

    columns = list(by_kind.items())  # a list: a kind named "all" keeps its own column
    if len(by_kind) > 1:
        every = {
            field.name: sum(getattr(d, field.name) for d in by_kind.values())
            for field in dataclasses.fields(QueueDepth)
        }
        columns.append(("all", QueueDepth(**every)))
    table = Table()
    table.add_column("state")
    for kind, _ in columns:
        table.add_column(_text(kind), justify="right", overflow="fold")
    depths = [depth for _, depth in columns]
    for state in _STATES:
        table.add_row(state.value, *(f"{getattr(d, state.value):,}" for d in depths))
    table.add_section()
    table.add_row("pending", *(f"{d.pending:,}" for d in depths))
    table.add_row("total", *(f"{d.total:,}" for d in depths))
    return table


def _jobs_table(records: Iterable[JobRecord], title: str) -> Table:
    from rich.table import Table

    table = Table(title=_text(title))
    columns = ("id", "state", "priority", "customer", "cluster", "attempts", "last error", "kind")
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
            _text(job.kind),
            _when(job.updated_at),
        )
    return table


def _record_table(job: JobRecord) -> Table | _AsJson:
    """Return the table ``corral jobs show`` prints (with ``--json``: the record as JSON)."""
    if _json_wanted():
        return _AsJson(job)
    from rich.table import Table

    table = Table(title=_text(f"job {job.id}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    error = job.last_error
    state = job.state.value
    if job.cancel_requested and job.state is State.IN_PROGRESS:
        state += " (cancel requested: stops at its worker's next lease renewal)"
    elif job.cancel_requested and job.state in (State.READY, State.RETRYING):
        state += " (cancel requested while it ran: cancelled when next claimed)"
    rows: list[tuple[str, object]] = [
        ("kind", job.kind),
        ("state", state),
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
