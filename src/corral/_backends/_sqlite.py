"""SQLite through the standard library's :mod:`sqlite3`, driven from one worker thread.

The connection lives in the writer: every call on it runs in a worker thread through
``anyio.to_thread.run_sync`` with a capacity limiter of one, so calls never overlap,
and this works the same on asyncio and trio (aiosqlite runs a thread too, but returns
asyncio futures, which trio cannot await). A batch is one thread call: ``BEGIN
IMMEDIATE``, an ``executemany`` of ``INSERT ... ON CONFLICT DO UPDATE`` per run, each in
a savepoint, and ``COMMIT``. The database is in WAL mode with ``synchronous=NORMAL``:
readers in other processes never block the writer, and a committed batch survives a
crash of the process (an operating-system crash or power cut may lose the last ones).
"""

from __future__ import annotations

import datetime
import decimal
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .._exceptions import ConnectError, SchemaError
from . import (
    BYTES_TYPES,
    Column,
    Failure,
    Run,
    TableSchema,
    check_key,
    create_table_sql,
    infer_column_type,
    query_error,
    quote,
    upsert_sql,
)

__all__ = ["SqliteBackend", "column_for", "infer_type"]

T = TypeVar("T")

#: Seconds a statement waits for another process's lock before failing.
BUSY_TIMEOUT = 30.0


def _to_text(value: object) -> object:
    """Bind dates, times and decimals as text (sqlite3's own adapters are deprecated)."""
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


_INFERRED: list[tuple[type, str]] = [
    (bool, "BOOLEAN"),
    (int, "INTEGER"),
    (float, "REAL"),
    (str, "TEXT"),
    (bytes, "BLOB"),
    (bytearray, "BLOB"),
    (memoryview, "BLOB"),
    (datetime.datetime, "TIMESTAMP"),
    (datetime.date, "DATE"),
    (datetime.time, "TIME"),
    (decimal.Decimal, "NUMERIC"),
]


def infer_type(column: str, value: object) -> str:
    """Return the SQL type to create ``column`` with, from its first value."""
    sql_type = infer_column_type(column, value, _INFERRED)
    if sql_type is None:
        raise SchemaError(
            f"column {column!r}: cannot store a {type(value).__name__} in SQLite; use bool, "
            f"int, float, str, bytes, datetime, date, time or Decimal"
        )
    return sql_type


def column_for(name: str, declared: str) -> Column:
    """Return the column with the Python types its declared SQL type takes.

    SQLite's type affinity rules decide, with the usual names for dates and booleans.
    """
    d = declared.upper()
    if "INT" in d:
        return Column(name, declared, (int,), exclude=(bool,))
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return Column(name, declared, (str,))
    if "BLOB" in d:
        return Column(name, declared, BYTES_TYPES)
    if not d:
        return Column(name, declared, None, convert=_to_text)
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return Column(name, declared, (float, int), exclude=(bool,))
    if "BOOL" in d:
        return Column(name, declared, (bool, int))
    if "TIMESTAMP" in d or "DATETIME" in d:
        return Column(name, declared, (datetime.datetime, str), convert=_to_text)
    if "DATE" in d:
        return Column(
            name, declared, (datetime.date, str), exclude=(datetime.datetime,), convert=_to_text
        )
    if "TIME" in d:
        return Column(name, declared, (datetime.time, str), convert=_to_text)
    if "DEC" in d or "NUM" in d:
        return Column(
            name, declared, (decimal.Decimal, int, float), exclude=(bool,), convert=_to_text
        )
    return Column(name, declared, None, convert=_to_text)


def _open(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteConnection:
    """The :class:`~corral._backends.Connection` on an SQLite connection."""

    dialect = "sqlite"

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend

    async def _query(self, sql: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._backend.conn
        try:
            return await self._backend.call(lambda: fn(conn))
        except sqlite3.Error as exc:
            raise query_error("SQLite", sql, exc) from exc

    async def execute(self, sql: str, *args: object) -> None:
        """Run one statement."""
        await self._query(sql, lambda conn: conn.execute(sql, args).close())

    async def executemany(self, sql: str, args: Iterable[Sequence[object]]) -> None:
        """Run one statement once for each sequence of arguments."""
        rows = [tuple(a) for a in args]
        await self._query(sql, lambda conn: conn.executemany(sql, rows).close())

    async def fetch(self, sql: str, *args: object) -> list[dict[str, object]]:
        """Run a query and return its rows as dicts."""

        def fetch(conn: sqlite3.Connection) -> list[dict[str, object]]:
            cursor = conn.execute(sql, args)
            try:
                names = [d[0] for d in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            finally:
                cursor.close()

        return await self._query(sql, fetch)

    async def fetch_rows(self, sql: str, *args: object) -> Sequence[Mapping[str, Any]]:
        """Run a query and return its rows as dicts (as :meth:`fetch`)."""
        return await self.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: object) -> object:
        """Run a query and return the first column of its first row."""

        def fetchval(conn: sqlite3.Connection) -> object:
            cursor = conn.execute(sql, args)
            try:
                row = cursor.fetchone()
            finally:
                cursor.close()
            return None if row is None else row[0]

        return await self._query(sql, fetchval)


class SqliteBackend:
    """One SQLite connection, used from one worker thread at a time."""

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, limiter: anyio.CapacityLimiter) -> None:
        self.conn = conn
        self._limiter = limiter
        self.connection = SqliteConnection(self)

    @classmethod
    async def open(cls, path: str) -> SqliteBackend:
        """Open (or create) the database file at ``path``."""
        limiter = anyio.CapacityLimiter(1)
        try:
            conn = await anyio.to_thread.run_sync(_open, path, limiter=limiter)
        except sqlite3.Error as exc:
            raise ConnectError(f"could not open SQLite database {path!r}: {exc}") from exc
        return cls(conn, limiter)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in the connection's worker thread."""
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)

    # -- schema --------------------------------------------------------------------------

    async def resolve(
        self, name: str, key: tuple[str, ...], row: Mapping[str, object]
    ) -> TableSchema:
        """Describe table ``name``, creating it from ``row`` when it does not exist."""
        return await self.call(lambda: self._resolve(name, key, row))

    def _resolve(self, name: str, key: tuple[str, ...], row: Mapping[str, object]) -> TableSchema:
        info = self.conn.execute("SELECT name, type, pk FROM pragma_table_info(?)", (name,))
        described = info.fetchall()
        if not described:
            self.conn.execute(create_table_sql(name, key, row, infer_type))
            described = self.conn.execute(
                "SELECT name, type, pk FROM pragma_table_info(?)", (name,)
            ).fetchall()
        columns_by_name = {col: column_for(col, declared) for col, declared, _ in described}
        unique = [{col for col, _, pk in described if pk}]
        for _, index, is_unique, _, partial in self.conn.execute(
            'SELECT seq, name, "unique", origin, partial FROM pragma_index_list(?)', (name,)
        ).fetchall():
            if is_unique and not partial:
                cols = self.conn.execute(
                    "SELECT name FROM pragma_index_info(?)", (index,)
                ).fetchall()
                unique.append({c for (c,) in cols})
        check_key(name, key, columns_by_name, unique)
        return TableSchema(name, key, columns_by_name)

    # -- writing ---------------------------------------------------------------------------

    def _upsert_sql(self, run: Run) -> str:
        cache = run.table.cache
        sql = cache.get(run.columns)
        if sql is None:
            values = ", ".join("?" * len(run.columns))
            sql = upsert_sql(run.table, run.columns, f"VALUES ({values})")
            cache[run.columns] = sql
        assert isinstance(sql, str)
        return sql

    async def write(self, runs: Sequence[Run], *, begin: bool, commit: bool) -> list[Failure]:
        """Upsert every run in one thread call; see :class:`~corral._backends.Backend`."""
        return await self.call(lambda: self._write(runs, begin, commit))

    def _write(self, runs: Sequence[Run], begin: bool, commit: bool) -> list[Failure]:
        conn = self.conn
        failures: list[Failure] = []
        if begin:
            conn.execute("BEGIN IMMEDIATE")
        for number, run in enumerate(runs):
            sql = self._upsert_sql(run)
            conn.execute("SAVEPOINT corral_run")
            try:
                conn.executemany(sql, run.rows)
            except Exception:
                conn.execute("ROLLBACK TO corral_run")
                for index, row in enumerate(run.rows):
                    conn.execute("SAVEPOINT corral_row")
                    try:
                        conn.execute(sql, row)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO corral_row")
                        failures.append((number, index, exc))
                    conn.execute("RELEASE corral_row")
            conn.execute("RELEASE corral_run")
        if commit:
            conn.execute("COMMIT")
        return failures

    async def begin(self) -> None:
        """Open the batch transaction, taking the write lock at once."""
        await self.call(lambda: self.conn.execute("BEGIN IMMEDIATE").close())

    async def commit(self) -> None:
        """Commit the batch transaction."""
        await self.call(lambda: self.conn.execute("COMMIT").close())

    async def rollback(self) -> None:
        """Roll the batch transaction back, if one is open; never raises."""

        def rollback() -> None:
            try:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

        await self.call(rollback)

    async def savepoint(self, name: str) -> None:
        """Set a savepoint."""
        await self.call(lambda: self.conn.execute(f"SAVEPOINT {quote(name)}").close())

    async def release(self, name: str) -> None:
        """Release a savepoint."""
        await self.call(lambda: self.conn.execute(f"RELEASE {quote(name)}").close())

    async def rollback_to(self, name: str) -> None:
        """Undo the work since a savepoint, and release it."""

        def rollback_to() -> None:
            self.conn.execute(f"ROLLBACK TO {quote(name)}")
            self.conn.execute(f"RELEASE {quote(name)}")

        await self.call(rollback_to)

    async def close(self) -> None:
        """Close the connection."""
        await self.call(self.conn.close)
