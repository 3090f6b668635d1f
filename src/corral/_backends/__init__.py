"""Storage backends: the registry that picks one by URL scheme, and what they share.

Each backend is a package of its own, ``corral._backends.<name>``, that implements the
ports (:mod:`corral._ports`) on one driver: :mod:`._sqlite` (the standard library's
:mod:`sqlite3`, driven from one worker thread) and :mod:`._postgres` (asyncpg). A URL's
scheme names its backend through :data:`BACKENDS`, and the backend is imported only
when a URL asks for it (as anyio loads ``anyio._backends._<name>``), so only this
package imports a database driver, and only then. The module's ``open_store(url)``
makes the :class:`~corral._ports.Store` the writer owns; the writer
(:mod:`corral._writer`) is its one caller, in order.

What the SQL backends share (statements, checked and quoted names, the batch
transaction) is in :mod:`._sql`.
"""

from __future__ import annotations

import importlib
import os.path
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .._exceptions import DatabaseURLError, MissingDriverError
from .._ports import Column, Failure, Run, Store, TableSchema, redact, scrub, seconds
from ._sql._connection import Connection
from ._sql._tables import (
    BYTES_TYPES,
    IDENTIFIER,
    MAX_IDENTIFIER,
    check_identifier,
    check_key,
    create_table_sql,
    infer_column_type,
    query_error,
    quote,
    tables_exist,
    upsert_sql,
)

__all__ = [
    "BACKENDS",
    "BYTES_TYPES",
    "IDENTIFIER",
    "MAX_IDENTIFIER",
    "Column",
    "Connection",
    "Failure",
    "Run",
    "SqliteOptions",
    "TableSchema",
    "check_identifier",
    "check_key",
    "create_table_sql",
    "infer_column_type",
    "open_backend",
    "parse_url",
    "query_error",
    "quote",
    "redact",
    "scrub",
    "sqlite_options",
    "tables_exist",
    "upsert_sql",
]

#: The backend of each URL scheme: the module ``corral._backends.<name>``, imported when
#: a URL of that scheme is opened. Adding a store adds a folder and an entry here.
BACKENDS: dict[str, str] = {
    "sqlite": "_sqlite",
    "postgresql": "_postgres",
    "postgres": "_postgres",
    "dynamodb": "_dynamodb",
}

_SCHEMES = (
    "sqlite:///path.db, sqlite:////absolute/path.db, postgresql://user@host:port/dbname, "
    "dynamodb://prefix?region=REGION"
)


@dataclass(frozen=True, slots=True)
class SqliteOptions:
    """What the query string of an ``sqlite:///`` URL asks for (see :func:`sqlite_options`)."""

    #: ``ro`` (read only), ``rw`` (read and write an existing file) or ``rwc`` (create it).
    mode: str = "rwc"
    #: ``PRAGMA synchronous``: ``NORMAL``, ``FULL`` or ``EXTRA``.
    synchronous: str = "NORMAL"
    #: Seconds a statement waits for another connection's lock before it fails.
    timeout: float = 30.0


_SQLITE_PARAMETERS = (
    "mode=ro|rw|rwc, synchronous=normal|full|extra and timeout=SECONDS "
    "(e.g. sqlite:///jobs.db?mode=ro or sqlite:///jobs.db?synchronous=full)"
)


def sqlite_options(url: str) -> SqliteOptions:
    """Read the query parameters of an ``sqlite:///`` URL; refuse unknown or bad ones.

    ``mode=ro`` opens the file read-only (writes raise :class:`~corral.ReadOnlyError`),
    ``mode=rw`` opens it only if it exists, ``mode=rwc`` (the default) creates it if
    need be. ``synchronous=full`` (or ``extra``) makes every commit durable across an
    operating-system crash or a power cut, at the cost of an fsync per batch; the
    default ``normal`` keeps the database consistent then, but may lose the last
    commits. ``timeout`` is the seconds a statement waits for another process's lock
    (30 by default). Raises :class:`~corral.DatabaseURLError`.
    """
    query = url.partition("?")[2]
    given: dict[str, str] = {}
    for piece in query.split("&") if query else ():
        raw, _, raw_value = piece.partition("=")
        name = urllib.parse.unquote_plus(raw)
        value = urllib.parse.unquote_plus(raw_value)
        if name not in ("mode", "synchronous", "timeout"):
            raise DatabaseURLError(
                f"{url!r}: unknown parameter {name!r}; an SQLite URL takes {_SQLITE_PARAMETERS}"
            )
        if name in given:
            raise DatabaseURLError(f"{url!r} gives {name!r} twice: give it once")
        given[name] = value
    mode = given.get("mode", "rwc").lower()
    if mode not in ("ro", "rw", "rwc"):
        raise DatabaseURLError(
            f"{url!r}: mode={given['mode']!r} is not a mode; write mode=ro (read only), rw "
            f"(read and write, the file must exist) or rwc (create it if need be, the default)"
        )
    synchronous = given.get("synchronous", "normal").upper()
    if synchronous not in ("NORMAL", "FULL", "EXTRA"):
        raise DatabaseURLError(
            f"{url!r}: synchronous={given['synchronous']!r} is not a level; write normal, "
            f"full or extra (full: every commit survives an operating-system crash)"
        )
    timeout = 30.0
    if "timeout" in given:
        parsed = seconds(given["timeout"])
        if parsed is None:
            raise DatabaseURLError(
                f"{url!r}: timeout={given['timeout']!r} is not a number of seconds >= 0; "
                f"write e.g. timeout=30 (how long a statement waits for another's lock)"
            )
        timeout = parsed
    return SqliteOptions(mode, synchronous, timeout)


def parse_url(url: object) -> tuple[str, str]:
    """Return ``(dialect, target)``: an SQLite path or a PostgreSQL DSN.

    ``sqlite:///relative.db``, ``sqlite:////absolute/path.db`` and ``sqlite:///:memory:``,
    with the query parameters :func:`sqlite_options` reads; ``postgresql://user@host:port/dbname``
    (``postgres://`` too, query parameters go to asyncpg); a URL of another scheme in
    :data:`BACKENDS` is its own target, read by its backend (its dialect: the scheme).
    Anything else raises :class:`~corral.DatabaseURLError` naming what is supported.
    """
    if not isinstance(url, str):
        raise TypeError(f"database URL must be a str, got {type(url).__name__} {url!r}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _no_scheme(url)
    if scheme == "sqlite":
        if not rest.startswith("/"):
            raise DatabaseURLError(
                f"{redact(url)!r}: an SQLite URL has no host and three slashes before the "
                f"path: sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        path = urllib.parse.unquote(rest[1:].split("?", 1)[0])
        if not path:
            raise DatabaseURLError(f"{url!r} names no file: write sqlite:///path.db")
        if "\x00" in path:
            raise DatabaseURLError(
                f"{url!r}: the path holds a NUL character (%00), which no file name can "
                f"hold; remove it from the URL"
            )
        sqlite_options(url)
        return "sqlite", path
    if scheme in ("postgresql", "postgres"):
        return "postgresql", url
    if scheme in BACKENDS:  # a store whose URL its own open_store() reads
        return scheme, url
    raise DatabaseURLError(
        f"unsupported database URL scheme {scheme!r} in {redact(url)!r}; corral supports {_SCHEMES}"
    )


def _no_scheme(url: str) -> DatabaseURLError:
    """Return the error for ``url`` without ``scheme://``: a bare path, or a server's address.

    A bare path is taken for an SQLite file, ``user@host/db`` for a PostgreSQL server,
    and the error asks whether that was meant; ``user:password@host`` shows no password.
    """
    if "@" in url:
        meant = redact(f"postgresql://{url}")
        shown = meant.removeprefix("postgresql://")
    elif ":" not in url or url == ":memory:":
        meant, shown = f"sqlite:///{os.path.expanduser(url)}", url
    else:
        return DatabaseURLError(
            f"{redact(url)!r} is not a database URL (it has no scheme); corral supports {_SCHEMES}"
        )
    return DatabaseURLError(
        f"{shown!r} is not a database URL (it has no scheme): did you mean {meant}? corral "
        f"supports {_SCHEMES}"
    )


#: What a backend's import needs, and the error when it is missing: the name its
#: driver's ImportError gives (a prefix), and the message (``{url}``: the URL, redacted).
_DRIVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "_sqlite": (
        ("sqlite3", "_sqlite3"),
        "SQLite needs Python's sqlite3 module, and this Python was built without "
        "it: install your platform's SQLite development package and rebuild "
        "Python, or use a postgresql:// URL",
    ),
    "_postgres": (
        ("asyncpg",),
        "{url!r} needs the asyncpg driver, which is not installed: pip install 'corral[postgres]'",
    ),
    "_dynamodb": (
        ("aioboto3", "aiobotocore", "boto3", "botocore", "aiohttp"),
        "{url!r} needs aioboto3 (the async AWS SDK), which is not installed: "
        "pip install 'corral[aws]'",
    ),
}


async def open_backend(url: str) -> Store[Connection]:
    """Open the store at ``url``: import its backend (and driver) only now, by scheme.

    Raises :class:`~corral.DatabaseURLError` for a URL no backend takes, and
    :class:`~corral.MissingDriverError` naming what to install when the backend's
    driver is not installed.
    """
    parse_url(url)
    name = BACKENDS[url.partition("://")[0].lower()]
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        driver = _DRIVERS.get(name)
        if driver is None or not (exc.name or "").startswith(driver[0]):
            raise
        raise MissingDriverError(driver[1].format(url=redact(url))) from exc
    open_store: Callable[[str], Awaitable[Store[Connection]]] = module.open_store
    return await open_store(url)
