"""``corral worker``: run a job processor with a handler."""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, cast

import anyio
import anyio.abc
import click

from .._cluster import Cluster
from .._connect import Database
from .._database import default_url
from .._exceptions import CommitUnknownError, JobKindError
from .._jobs._model import check_kind
from .._ports import redact
from ..jobs import (
    JobContext,
    LoggingNotifier,
    Processor,
    ProcessorConfig,
)
from ._common import _db_option, _open, cli, log

__all__: list[str] = []

# -- corral worker: a job processor -----------------------------------------------------------

#: The limits a worker runs with when its options leave them out.
_DEFAULTS = ProcessorConfig()

#: ``--log-level`` choices, quietest last.
_LOG_LEVELS = ("debug", "info", "warning", "error")

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
    example = "e.g. --handler myjobs:handle for async def handle(ctx) in myjobs.py"
    target, attr = _load(ref, "--handler", "function", example)
    _check_handler(target, f"--handler {ref!r}", attr.rpartition(".")[2], example)
    return cast(Handler, target)


def _load_app(ref: str) -> dict[str, Handler]:
    """Import ``module:mapping``, a mapping of job kind to handler (``--app``)."""
    example = (
        "e.g. --app myjobs:handlers for handlers = {'render': render, 'index': index} in myjobs.py"
    )
    target, _ = _load(ref, "--app", "mapping", example)
    if not isinstance(target, Mapping):
        raise click.ClickException(
            f"--app {ref!r} is a {type(target).__name__}, not a mapping of job kind to "
            f"handler; {example} (or give one handler for every kind with --handler)"
        )
    if not target:
        raise click.ClickException(
            f"--app {ref!r} is an empty mapping: map at least one job kind to its handler, "
            f"{example}"
        )
    handlers: dict[str, Handler] = {}
    for kind, handler in target.items():
        try:
            check_kind(kind, f"--app {ref!r}: the key")
        except JobKindError as exc:
            raise click.ClickException(f"{exc} (a job kind)") from None
        name = getattr(handler, "__name__", "handle")
        _check_handler(handler, f"--app {ref!r}: the handler of kind {kind!r}", name, example)
        handlers[kind] = cast(Handler, handler)
    return handlers


def _check_handler(target: object, what: str, name: str, example: str) -> None:
    """Refuse a handler that is not an async function (or another awaitable callable)."""
    if not callable(target):
        raise click.ClickException(
            f"{what} is a {type(target).__name__}, not a function; point it at "
            f"an async function taking the job's context, {example}"
        )
    if inspect.isroutine(target) and not inspect.iscoroutinefunction(target):
        raise click.ClickException(
            f"{what} is a plain function, and the worker awaits its handler; "
            f"define it with async def {name}(ctx)"
        )


def _load(ref: str, option: str, what: str, example: str) -> tuple[object, str]:
    """Import ``module:attribute`` for ``option``; return it and its attribute's name."""
    module_name, colon, attr = (part.strip() for part in ref.partition(":"))
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        stem = Path(module_name).stem
        default = "handle" if option == "--handler" else "handlers"
        raise click.BadParameter(
            f"{ref!r} names a file: give the module's import name, e.g. {option} "
            f"{stem}:{attr or default}, run from the directory that holds {stem}.py "
            f"(or with that directory on PYTHONPATH)",
            param_hint=option,
        )
    if not colon or not module_name or not attr:
        raise click.BadParameter(
            f"{ref!r} is not module:{what}; name the module and the {what} in it, {example}",
            param_hint=option,
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
            define = (
                f"define async def {attr.rpartition('.')[2]}(ctx) in it{hint}"
                if option == "--handler"
                else f"define {attr.rpartition('.')[2]} = {{'kind': handler, ...}} in it"
            )
            raise click.ClickException(
                f"the handler module {module_name!r} ({module.__file__}) has no {attr!r}; {define}"
            )
        target = getattr(target, part)
    return target, attr


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
    metavar="MODULE:FUNCTION",
    help="The async function that runs every job, whatever its kind, e.g. myjobs:handle "
    "(the current directory is importable).",
)
@click.option(
    "--app",
    "app_ref",
    metavar="MODULE:MAPPING",
    help="Or a mapping of job kind to handler, e.g. myjobs:handlers for handlers = "
    "{'render': render, 'index': index}: the worker takes only the jobs of those kinds.",
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
    "--max-concurrent",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_concurrent,
    show_default=True,
    help="Jobs running at once, in all.",
)
@click.option(
    "--per-customer", type=click.IntRange(min=1), help="Jobs of one customer at once (no limit)."
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.lease_seconds,
    show_default=True,
    help="How long a claim holds without renewal; a dead worker's jobs are reclaimed "
    "after this long.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.poll_interval,
    show_default=True,
    help="Seconds an idle worker waits before looking for work again, at most.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=_DEFAULTS.batch_size,
    show_default=True,
    help="Jobs claimed in one transaction, at most: larger claims fewer times for many "
    "short jobs, smaller leaves more for other workers.",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="The least severe log lines shown: debug adds each job's start, warning keeps "
    "failures, dead letters and lease changes only.",
)
@click.option("--name", help="This worker's name in leases and logs (default: host:pid:random).")
@click.option(
    "--until-idle",
    is_flag=True,
    help="Stop once no job this worker could take is left (default: run until stopped).",
)
def worker(
    url: str | None,
    handler_ref: str | None,
    app_ref: str | None,
    clusters: list[Cluster],
    max_concurrent: int,
    per_customer: int | None,
    lease_seconds: float,
    poll_interval: float,
    batch_size: int,
    log_level: str,
    name: str | None,
    until_idle: bool,
) -> None:
    """Run queued jobs with a handler, on clusters, within limits; logs to stderr.

    --handler runs every job with one handler; --app maps job kinds to handlers, and
    the worker takes only the jobs of those kinds. Ctrl-C or SIGTERM stops it cleanly:
    the jobs still running are cancelled and given back to the queue, ready at once,
    the attempt not counted. Any number of workers
    may share a database (PostgreSQL, DynamoDB: on any number of hosts). On PostgreSQL
    it outlives a server restart, on DynamoDB an endpoint that stops answering: its
    writer reconnects (waits for the endpoint), with backoff, for up to
    ``reconnect_timeout`` seconds (a URL parameter, 30 by default).
    """
    url = url or default_url()
    if name is not None and not name.strip():
        raise click.BadParameter("is empty; give a name, or leave it out", param_hint="--name")
    try:
        config = ProcessorConfig(
            max_concurrent=max_concurrent,
            per_customer=per_customer,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            batch_size=batch_size,
        )
    except (TypeError, ValueError) as exc:
        raise click.UsageError(f"{exc}; give a finite number") from None
    if (handler_ref is None) == (app_ref is None):
        raise click.UsageError(
            "give --handler MODULE:FUNCTION (one handler for every job) or --app "
            "MODULE:MAPPING (a handler per job kind)"
            + ("" if handler_ref is None else ", not both")
        )
    handler: Handler | dict[str, Handler]
    if handler_ref is not None:
        handler = _load_handler(handler_ref)
        serving = f"handler {handler_ref}"
    else:
        assert app_ref is not None
        handler = _load_app(app_ref)
        serving = f"app {app_ref} (kinds {', '.join(sorted(handler))})"
    logging.basicConfig(
        level=log_level.upper(),
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
            "worker %s: %s on %s; %s; max_concurrent=%d per_customer=%s "
            "lease_seconds=%g batch_size=%d; database %s; %s",
            processor.name,
            serving,
            ", ".join(repr(cluster) for cluster in processor.clusters),
            "until the queue is idle" if until_idle else "until stopped (Ctrl-C or SIGTERM)",
            config.max_concurrent,
            config.per_customer,
            config.lease_seconds,
            config.batch_size,
            redact(url),
            f"pid {os.getpid()}",
        )
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(_stop_on_signal, tg.cancel_scope)
            while True:
                try:
                    await processor.run(until_idle=until_idle)
                except CommitUnknownError as exc:
                    # The connection broke while a claim, a renewal or an outcome was
                    # committing; the writer has reconnected. What that write did is
                    # unknown: its jobs are reclaimed when their leases expire.
                    log.warning("worker %s: %s; running on", processor.name, exc)
                    continue
                except Exception as exc:  # raised below, outside the task group
                    failure = exc
                break
            tg.cancel_scope.cancel()
        stats = processor.statistics()
        log.info(
            "worker %s stopped: %d claimed, %d completed, %d retried, %d failed, %d dead, "
            "%d cancelled, %d reclaimed, %d lease lost",
            processor.name,
            stats.claimed,
            stats.completed,
            stats.retried,
            stats.failed,
            stats.dead,
            stats.cancelled,
            stats.reclaimed,
            stats.lease_lost,
        )
        if failure is not None:
            raise failure

    _open(url, serve, create=True)
