"""Storage backends: each owns one driver connection and speaks one SQL dialect.

Only this package imports a database driver, and only when a URL asks for it:
:mod:`sqlite3` (the standard library, driven from one worker thread) for
``sqlite:///...`` and ``asyncpg`` for ``postgresql://...``. The writer
(:mod:`corral._writer`) is the one caller: it alone touches a backend, in order.

Every table and column name given by the caller is checked against :data:`IDENTIFIER`
before it is used, and every name is quoted (see :func:`quote`) whenever it is written
into a statement, so no name can carry SQL.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._exceptions import (
    DatabaseURLError,
    IdentifierError,
    MissingDriverError,
    QueryError,
    SchemaError,
)

__all__ = [
    "BYTES_TYPES",
    "Backend",
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

#: What a table or column name must match: a plain SQL identifier.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: PostgreSQL truncates longer names; SQLite would take them, but one rule serves both.
MAX_IDENTIFIER = 63
_SCHEMES = "sqlite:///path.db, sqlite:////absolute/path.db, postgresql://user@host:port/dbname"


def check_identifier(kind: str, name: object) -> str:
    """Return ``name`` if it is a plain identifier, else raise :class:`IdentifierError`."""
    if not isinstance(name, str):
        raise IdentifierError(f"{kind} name must be a str, got {type(name).__name__} {name!r}")
    if not IDENTIFIER.match(name) or len(name) > MAX_IDENTIFIER:
        raise IdentifierError(
            f"{kind} name {name!r} is not a plain identifier: use letters, digits and "
            f"underscores, not starting with a digit, at most {MAX_IDENTIFIER} characters"
        )
    return name


def quote(name: str) -> str:
    """Quote an identifier, doubling any ``"`` in it.

    A name is either checked by :func:`check_identifier` first, or read from the
    database (a column of an existing table), where it may be anything.
    """
    return '"' + name.replace('"', '""') + '"'


def query_error(database: str, sql: str, exc: BaseException) -> QueryError:
    """Return the :class:`~corral.QueryError` for ``exc``, raised by ``sql``."""
    statement = " ".join(sql.split())
    if len(statement) > 120:
        statement = statement[:117] + "..."
    return QueryError(f"{database} refused {statement!r}: {type(exc).__name__}: {exc}")


class Connection(Protocol):
    """The writer's connection, as given to hooks (``Database._run``, sources).

    Every call runs on the writer's one connection, inside the current batch
    transaction, so it sees every row accepted before it. SQL uses ``?`` placeholders
    on both databases (the PostgreSQL wrapper numbers them ``$1, $2, ...``); write
    names through :func:`quote` after :func:`check_identifier`.
    """

    #: ``"sqlite"`` or ``"postgresql"``.
    dialect: str

    async def execute(self, sql: str, *args: object) -> None:
        """Run one statement."""

    async def executemany(self, sql: str, args: Iterable[Sequence[object]]) -> None:
        """Run one statement once for each sequence of arguments."""

    async def fetch(self, sql: str, *args: object) -> list[dict[str, object]]:
        """Run a query and return its rows as dicts of column name to value."""

    async def fetch_rows(self, sql: str, *args: object) -> Sequence[Mapping[str, Any]]:
        """Run a query and return its rows, each read by column name (``row["name"]``).

        Unlike :meth:`fetch`, the rows may be the driver's own (not copied into dicts):
        for the many rows of a claim.
        """

    async def fetchval(self, sql: str, *args: object) -> object:
        """Run a query and return the first column of its first row (``None`` if none)."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table, with the Python types a value for it may have."""

    name: str
    sql_type: str
    #: Accepted Python types; ``None`` accepts anything (the driver decides).
    types: tuple[type, ...] | None = None
    #: Subclasses of ``types`` that are refused all the same (``bool`` for ``int``).
    exclude: tuple[type, ...] = ()
    #: Turns an accepted value into what the driver binds (SQLite: dates to text).
    convert: Callable[[object], object] | None = None

    def describe_types(self) -> str:
        """Name the accepted types for an error message."""
        if self.types is None:
            return "anything"
        return " or ".join(t.__name__ for t in self.types)


@dataclass(slots=True, eq=False)
class TableSchema:
    """A table as the writer knows it: its name, key and columns in order."""

    name: str
    key: tuple[str, ...]
    columns: dict[str, Column]
    #: Backend-private cache: statements per column tuple, a staging table name.
    cache: dict[object, object] = field(default_factory=dict)
    #: The writer's bookkeeping: the newest run of this table still in its queue.
    tail: Run | None = None


@dataclass(slots=True, eq=False)
class Run:
    """Consecutive rows for one table with the same columns: one bulk statement."""

    table: TableSchema
    columns: tuple[str, ...]
    rows: list[tuple[object, ...]]
    #: The writer's bookkeeping: rows may still be added (the run is in its queue) ...
    open: bool = True
    #: ... if no operation was queued since the run was (operations order the rows).
    epoch: int = 0


#: A row that failed: (index of its run, index of the row in that run, the driver error).
Failure = tuple[int, int, Exception]


class Backend(Protocol):
    """What the writer needs from a database; implemented once per dialect."""

    dialect: str

    @property
    def connection(self) -> Connection:
        """The wrapper handed to hooks; it runs on the backend's one connection."""

    async def resolve(
        self, name: str, key: tuple[str, ...], row: Mapping[str, object]
    ) -> TableSchema:
        """Describe table ``name``, creating it from ``row`` when it does not exist."""

    async def write(self, runs: Sequence[Run], *, begin: bool, commit: bool) -> list[Failure]:
        """Upsert every run, each in a savepoint; return the rows that failed.

        A run whose bulk statement fails is rolled back to its savepoint and written
        again row by row, each row in its own savepoint, so that only failing rows are
        left out. ``begin`` opens the batch transaction first; ``commit`` commits it at
        the end. An error outside a row (the connection, the commit) is raised.
        """

    async def begin(self) -> None:
        """Open the batch transaction."""

    async def commit(self) -> None:
        """Commit the batch transaction."""

    async def rollback(self) -> None:
        """Roll the batch transaction back (after a fatal error); never raises."""

    async def savepoint(self, name: str) -> None:
        """Set a savepoint inside the batch transaction."""

    async def release(self, name: str) -> None:
        """Release a savepoint (keep its work)."""

    async def rollback_to(self, name: str) -> None:
        """Undo the work since a savepoint, and release it."""

    async def close(self) -> None:
        """Close the connection (and any thread the backend runs)."""


#: The bytes-like types a BLOB / BYTEA column takes.
BYTES_TYPES = (bytes, bytearray, memoryview)


def infer_column_type(
    column: str, value: object, inferred: Sequence[tuple[type, str]]
) -> str | None:
    """Return the SQL type of the first ``(python_type, sql_type)`` that ``value`` is.

    ``None`` when no entry matches (the backend names what it takes); a ``None`` value
    is a :class:`~corral.SchemaError`, since no type can be inferred from it.
    """
    if value is None:
        raise SchemaError(
            f"column {column!r} is None in the row that creates the table, so its type "
            f"cannot be inferred: give it a value in the first row, or create the table "
            f"yourself before writing to it"
        )
    for python_type, sql_type in inferred:
        if isinstance(value, python_type):
            return sql_type
    return None


def create_table_sql(
    name: str,
    key: tuple[str, ...],
    row: Mapping[str, object],
    infer: Callable[[str, object], str],
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` with ``row``'s columns, typed by ``infer``, keyed."""
    columns = []
    for column, value in row.items():
        check_identifier("column", column)
        columns.append(f"{quote(column)} {infer(column, value)}")
    keys = ", ".join(quote(k) for k in key)
    return f"CREATE TABLE IF NOT EXISTS {quote(name)} ({', '.join(columns)}, PRIMARY KEY ({keys}))"


def upsert_sql(table: TableSchema, columns: tuple[str, ...], source: str) -> str:
    """``INSERT INTO table (columns) <source> ON CONFLICT (key) DO UPDATE SET ...``.

    ``source`` is ``VALUES (...)`` or a ``SELECT``; the columns outside the key are
    replaced by the new row's (``DO NOTHING`` when every column is in the key).
    """
    names = ", ".join(quote(c) for c in columns)
    key = ", ".join(quote(k) for k in table.key)
    updates = [f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in table.key]
    action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    return f"INSERT INTO {quote(table.name)} ({names}) {source} ON CONFLICT ({key}) {action}"


def check_key(
    name: str, key: tuple[str, ...], columns: Mapping[str, object], unique: list[set[str]]
) -> None:
    """Raise :class:`SchemaError` unless ``key`` is the primary key or a unique index."""
    missing = [k for k in key if k not in columns]
    if missing:
        raise SchemaError(
            f"table {name!r} has no column {missing[0]!r} named in key={key!r}; its columns "
            f"are {', '.join(columns)}"
        )
    if set(key) not in unique:
        raise SchemaError(
            f"key={key!r} is neither the primary key nor a unique index of table {name!r}, "
            f"so rows cannot be upserted on it: pass the table's primary key, or add a "
            f"unique index on those columns"
        )


#: Query parameters whose value is a secret: asyncpg's (and libpq's) names for them.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact(url: str) -> str:
    """Return ``url`` with every secret in it replaced by ``***``.

    The password of ``user:password@host``, and the value of every ``password=`` and
    ``sslpassword=`` query parameter, however its name is percent-encoded (asyncpg
    decodes the names). A URL that cannot be parsed is hidden whole but for its scheme.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # say, an unbalanced [ in the host
        return f"{url.partition(':')[0]}://***"
    netloc = parts.netloc
    if "@" in netloc:
        auth, host = netloc.rsplit("@", 1)
        if ":" in auth:
            netloc = f"{auth.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        f"{piece.partition('=')[0]}=***"
        if urllib.parse.unquote_plus(piece.partition("=")[0]) in _SECRET_PARAMETERS
        else piece
        for piece in parts.query.split("&")
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _secrets(url: str) -> set[str]:
    """Every secret in ``url``, as written and decoded (see :func:`redact`)."""
    found: set[str] = set()
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return found
    if "@" in parts.netloc:
        auth = parts.netloc.rsplit("@", 1)[0]
        if ":" in auth:
            # asyncpg takes the password up to the first @; redact() hides up to the last.
            for password in (auth.split(":", 1)[1], auth.split("@", 1)[0].partition(":")[2]):
                found.update((password, urllib.parse.unquote(password)))
    for piece in parts.query.split("&"):
        name, _, value = piece.partition("=")
        if urllib.parse.unquote_plus(name) in _SECRET_PARAMETERS:
            found.update((value, urllib.parse.unquote_plus(value)))
    found.discard("")
    return found


def scrub(text: str, url: str) -> str:
    """Return ``text`` (a driver's message) with every secret of ``url`` replaced by ``***``."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


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
        try:
            timeout = float(given["timeout"])
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout >= 0):
            raise DatabaseURLError(
                f"{url!r}: timeout={given['timeout']!r} is not a number of seconds >= 0; "
                f"write e.g. timeout=30 (how long a statement waits for another's lock)"
            )
    return SqliteOptions(mode, synchronous, timeout)


def parse_url(url: object) -> tuple[str, str]:
    """Return ``(dialect, target)``: an SQLite path or a PostgreSQL DSN.

    ``sqlite:///relative.db``, ``sqlite:////absolute/path.db`` and ``sqlite:///:memory:``,
    with the query parameters :func:`sqlite_options` reads; ``postgresql://user@host:port/dbname``
    (``postgres://`` too, query parameters go to asyncpg). Anything else raises
    :class:`~corral.DatabaseURLError` naming what is supported.
    """
    if not isinstance(url, str):
        raise TypeError(f"database URL must be a str, got {type(url).__name__} {url!r}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise DatabaseURLError(f"{redact(url)!r} is not a database URL; corral supports {_SCHEMES}")
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
    raise DatabaseURLError(
        f"unsupported database URL scheme {scheme!r} in {redact(url)!r}; corral supports {_SCHEMES}"
    )


async def tables_exist(conn: Connection, *names: str) -> bool:
    """Return whether every table of ``names`` exists (PostgreSQL: on the search path)."""
    for name in names:
        if conn.dialect == "postgresql":
            found = await conn.fetchval("SELECT to_regclass(?) IS NOT NULL", quote(name))
        else:
            found = await conn.fetchval(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", name
            )
        if not found:
            return False
    return True


async def open_backend(url: str) -> Backend:
    """Open the database at ``url``, importing its driver only now."""
    dialect, target = parse_url(url)
    if dialect == "sqlite":
        try:
            from . import _sqlite
        except ImportError as exc:  # pragma: no cover - a Python built without sqlite3
            raise MissingDriverError(
                "SQLite needs Python's sqlite3 module, and this Python was built without "
                "it: install your platform's SQLite development package and rebuild "
                "Python, or use a postgresql:// URL"
            ) from exc
        return await _sqlite.SqliteBackend.open(target, sqlite_options(url))
    try:
        from . import _postgres
    except ImportError as exc:
        if not (exc.name or "").startswith("asyncpg"):
            raise
        raise MissingDriverError(
            f"{redact(url)!r} needs the asyncpg driver, which is not installed: "
            f"pip install 'corral[postgres]'"
        ) from exc
    return await _postgres.PostgresBackend.open(target)
