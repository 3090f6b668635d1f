"""The ``corral`` group, and opening a database for a command."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import signal
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import click

from .._backends import parse_url
from .._connect import Database, connect
from .._exceptions import CorralError
from .._ports import redact

if TYPE_CHECKING:
    pass

__all__ = [
    "_cancel_on_signal",
    "_db_option",
    "_echo_json",
    "_json_option",
    "_json_wanted",
    "_limit_option",
    "_open",
    "cli",
    "log",
]

T = TypeVar("T")

log = logging.getLogger("corral.worker")


def _open(
    url: str,
    work: Callable[[Database], Awaitable[T]],
    *,
    create: bool = False,
    read_only: bool = False,
) -> T:
    """Run ``work(db)`` on an event loop with ``url`` open; errors become click errors.

    A SQLite file must exist unless ``create``. ``read_only``: the command only reads,
    and an SQLite file is opened with ``mode=ro`` (whatever mode its URL names).
    """
    try:
        dialect, path = parse_url(url)
    except CorralError as exc:
        raise click.ClickException(str(exc)) from exc
    if dialect == "sqlite" and not create:
        if path != ":memory:" and not os.path.exists(path):
            raise click.ClickException(
                f"no database at {path!r} (from {redact(url)}); pass --db URL or set CORRAL_DB"
            )
        if read_only:
            url = _read_only(url)

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


def _read_only(url: str) -> str:
    """Return the SQLite ``url`` with ``mode=ro`` in place of any mode it names."""
    base, _, query = url.partition("?")
    kept = [
        piece
        for piece in query.split("&")
        if piece and urllib.parse.unquote_plus(piece.partition("=")[0]) != "mode"
    ]
    return f"{base}?{'&'.join([*kept, 'mode=ro'])}"


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """Return the one exception nested in ``group``, or None if it holds several."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner


#: Where ``corral --db URL`` (given before the subcommand) keeps its URL in ``ctx.meta``.
_GROUP_DB = "corral.db"

_DB_HELP = "Database URL (default: $CORRAL_DB, else sqlite:///corral.db)."


def _group_db(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Return a subcommand's ``--db``, else the one given before the subcommand."""
    return value if value is not None else ctx.meta.get(_GROUP_DB)


_db_option = click.option(
    "--db", "url", default=None, metavar="URL", callback=_group_db, help=_DB_HELP
)


@click.group()
@click.option("--db", "url", default=None, metavar="URL", help=_DB_HELP)
@click.version_option(package_name="corral")
@click.pass_context
def cli(ctx: click.Context, url: str | None) -> None:
    """corral: structured concurrency for batch work.

    --db URL may come before the subcommand (corral --db URL jobs status) or after it
    (corral jobs status --db URL); given in both places, the one after it wins.
    """
    ctx.meta[_GROUP_DB] = url


_F = TypeVar("_F", bound=Callable[..., Any])


def _limit_option(default: int, what: str) -> Callable[[_F], _F]:
    """Return the ``--limit N`` option: how many ``what`` to show at most."""
    return click.option(
        "--limit",
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        help=f"How many {what} at most.",
    )


#: Where ``--json`` keeps its flag in ``ctx.meta`` (for a command that reads it there).
_JSON = "corral.json"


def _remember_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta[_JSON] = value
    return value


_json_option = click.option(
    "--json",
    is_flag=True,
    expose_value=False,  # a command reads it with _json_wanted()
    callback=_remember_json,
    help="Print JSON for scripts (the keys are listed in docs/jobs.md), not a table.",
)


def _json_wanted() -> bool:
    """Return whether the running command was given ``--json``."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and bool(ctx.meta.get(_JSON))


def _to_json(value: object) -> Any:
    """Return ``value`` as plain JSON data: a dataclass as an object of its fields.

    Enums become their value, datetimes ISO 8601 text with their UTC offset, sets sorted
    lists, tuples lists. The keys of a record are the names of its public fields.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _to_json(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if not field.name.startswith("_")
        }
    if isinstance(value, enum.Enum):
        return _to_json(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, frozenset | set):
        return sorted(_to_json(item) for item in value)
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _to_json(item) for key, item in value.items()}
    return value


def _echo_json(value: object) -> None:
    """Print ``value`` (see :func:`_to_json`) as one JSON document on stdout."""
    click.echo(json.dumps(_to_json(value), indent=2, ensure_ascii=False))


async def _cancel_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Cancel ``scope`` on the first SIGINT or SIGTERM: a quiet stop, no traceback."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return
