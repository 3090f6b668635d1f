"""SQLite through the standard library's :mod:`sqlite3`, driven from one worker thread.

The connection lives in the writer: every call on it runs in a worker thread through
``anyio.to_thread.run_sync`` with a capacity limiter of one, so calls never overlap,
and this works the same on asyncio and trio (aiosqlite runs a thread too, but returns
asyncio futures, which trio cannot await). A batch is one thread call: ``BEGIN
IMMEDIATE``, the upsert of each run (``INSERT ... VALUES (...), (...) ON CONFLICT DO
UPDATE``, up to :data:`ROWS_PER_STATEMENT` rows to a statement), each run in a savepoint,
and ``COMMIT``. The database is in WAL mode with ``synchronous=NORMAL``:
readers in other processes never block the writer, and a committed batch survives a
crash of the process (an operating-system crash or power cut may lose the last ones;
``?synchronous=full`` in the URL keeps them too, at an fsync per batch).

The URL's query (:func:`~corral._backends.sqlite_options`) also sets the open mode
(``mode=ro`` refuses every write with :class:`~corral.ReadOnlyError`) and the busy
timeout. After every commit the path is checked to still name the file that was
opened (same device and inode): SQLite would go on committing into a deleted or
replaced file, and the writer stops with :class:`~corral.DatabaseMovedError` instead
(checked after the commit, so that a batch committed as the file went away is counted
as failed, not committed).

SQLite cannot store some values faithfully, and they are refused by ``put()`` (a
:class:`~corral.SchemaError`): NaN, which it stores as NULL (in a key, NULL makes a new
row at every put), and in a NUMERIC column a ``Decimal`` that its 64-bit integer or
float would round (``Decimal("3.14159265358979323846")``), or a non-finite one (see
:mod:`._values`, which holds the column types and those conversions).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..._exceptions import ConnectError, DatabaseMovedError, ReadOnlyError, SchemaError
from ..._ports import Batch, Failure, Operation, Run, TableSchema
from .. import SqliteOptions, parse_url, sqlite_options
from .._sql import SqlSession
from .._sql._batch import apply
from .._sql._tables import (
    check_key,
    create_table_sql,
    query_error,
    quote,
    upsert_sql,
)
from ._values import column_for, infer_type

__all__ = ["SqliteBackend", "column_for", "infer_type", "open_store"]

T = TypeVar("T")

#: Seconds a statement waits for another process's lock before failing (``?timeout=``).
BUSY_TIMEOUT = SqliteOptions().timeout

#: Rows upserted by one statement, at most (fewer where the columns times the rows would
#: pass SQLite's limit on ``?`` in a statement): one ``INSERT ... VALUES (...), (...)``
#: of 1,024 rows, with the statement reused for every full 1,024, wrote 100,000 rows
#: two to three times as fast as an ``executemany`` of one-row inserts, and takes the
#: GIL back from the producers once per statement, not once per row.
ROWS_PER_STATEMENT = 1024


def _identity(path: str) -> tuple[int, int] | None:
    """Return the (device, inode) of the file at ``path``; None if no file is there."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


def _open(
    path: str, options: SqliteOptions
) -> tuple[sqlite3.Connection, str | None, tuple[int, int] | None]:
    """Connect; return the connection, the file's absolute path and its identity.

    The path is made absolute once, here: a process that changes its directory still
    has its file. In memory, there is no file (None, None).
    """
    file = None if path == ":memory:" else os.path.abspath(path)
    # file:///abs/path, an empty authority: a path that starts with // is no host.
    target = ":memory:" if file is None else f"//{urllib.parse.quote(file)}"
    conn = sqlite3.connect(
        f"file:{target}?mode={options.mode}",
        uri=True,
        timeout=options.timeout,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        if options.mode != "ro":  # a read-only connection cannot change the journal
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={options.synchronous}")
        identity = None if file is None else _identity(file)
    except BaseException:
        conn.close()
        raise
    return conn, file, identity


def _why_unopenable(path: str, options: SqliteOptions) -> str | None:
    """Say why SQLite could not open ``path``, with the fix, if it is a path's fault.

    SQLite says "unable to open database file" whatever the cause; these are the
    common ones: a folder that does not exist (corral creates the file, not the folders
    above it), a file where a folder should be, and no file with ``mode=ro`` or ``rw``.
    """
    if path == ":memory:":
        return None
    file = os.path.abspath(path)
    folder = os.path.dirname(file)
    if not os.path.isdir(folder):
        existing = folder  # the nearest folder above that exists (or a file in the way)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            return (
                f"{existing!r} is a file, not a folder, so no database can be in it; give "
                f"the database a path in a folder"
            )
        return (
            f"its folder {folder!r} does not exist, and corral creates the database file, "
            f"not the folders above it: create the folder first (mkdir -p {folder}), or "
            f"give a path in a folder that exists"
        )
    if options.mode != "rwc" and not os.path.exists(file):
        return (
            f"the file does not exist, and mode={options.mode} opens only a database that "
            f"exists; check the path, or drop mode= from the URL (mode=rwc, the default, "
            f"creates the file)"
        )
    return None


class SqliteConnection(SqlSession):
    """The session of an SQLite store: its ports, and SQL (``_sql.Connection``)."""

    dialect = "sqlite"

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend

    async def _query(self, sql: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        backend = self._backend
        conn = backend.conn
        try:
            return await backend.call(lambda: fn(conn))
        except sqlite3.Error as exc:
            if backend.read_only and exc.sqlite_errorcode == sqlite3.SQLITE_READONLY:
                raise backend.read_only_error(f"it refused {' '.join(sql.split())[:80]!r}") from exc
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


async def open_store(url: str) -> SqliteBackend:
    """Open the ``sqlite:///`` URL's file as its query asks (see ``sqlite_options``)."""
    _, path = parse_url(url)
    return await SqliteBackend.open(path, sqlite_options(url))


class SqliteBackend:
    """One SQLite connection, used from one worker thread at a time: a ``Store``."""

    dialect = "sqlite"
    #: A local file does not go away as a server connection does: nothing to restore.
    reconnects = False

    def __init__(
        self,
        conn: sqlite3.Connection,
        limiter: anyio.CapacityLimiter,
        *,
        path: str = ":memory:",
        file: str | None = None,
        read_only: bool = False,
        identity: tuple[int, int] | None = None,
    ) -> None:
        self.conn = conn
        self._limiter = limiter
        #: How many ``?`` one statement may hold (SQLITE_LIMIT_VARIABLE_NUMBER).
        self._variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        #: What operations and sources are given.
        self.session = SqliteConnection(self)
        #: The file's path, as given in the URL.
        self.path = path
        #: Opened with ``mode=ro``: every write is refused.
        self.read_only = read_only
        #: The absolute path of the file (None in memory), and its (device, inode) as
        #: opened: checked after every commit.
        self._file = file
        self._identity = identity

    @classmethod
    async def open(cls, path: str, options: SqliteOptions | None = None) -> SqliteBackend:
        """Open the database file at ``path`` as ``options`` ask (create it by default)."""
        options = SqliteOptions() if options is None else options
        limiter = anyio.CapacityLimiter(1)
        try:
            conn, file, identity = await anyio.to_thread.run_sync(
                _open, path, options, limiter=limiter
            )
        except sqlite3.Error as exc:
            why = _why_unopenable(path, options) or str(exc)
            raise ConnectError(f"could not open SQLite database {path!r}: {why}") from exc
        read_only = options.mode == "ro"
        return cls(conn, limiter, path=path, file=file, read_only=read_only, identity=identity)

    def read_only_error(self, what: str) -> ReadOnlyError:
        """Return the error for a write refused because the database is open read-only."""
        return ReadOnlyError(
            f"SQLite database {self.path!r} is open read-only (mode=ro): {what}; open it "
            f"without mode=ro in its URL to write to it"
        )

    def _check_file(self) -> None:
        """Raise :class:`DatabaseMovedError` unless the path still names the open file."""
        if self._file is None or _identity(self._file) == self._identity:
            return
        raise DatabaseMovedError(
            f"the SQLite database file {self._file!r} was moved, replaced or "
            f"deleted while it was open (its folder removed, say): SQLite would go on "
            f"committing into the file it holds open, where nobody can read it again, so "
            f"the rows not committed before it went away are not stored. Put the file "
            f"back, or point the URL at its new place, and run again"
        )

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
        if self.read_only:
            raise self.read_only_error(f"table {name!r} cannot be written")
        info = self.conn.execute("SELECT name, type, pk FROM pragma_table_info(?)", (name,))
        described = info.fetchall()
        if not described:
            limit = self.conn.getlimit(sqlite3.SQLITE_LIMIT_COLUMN)
            if len(row) > limit:
                raise SchemaError(
                    f"table {name!r} would have {len(row)} columns, and this SQLite takes "
                    f"at most {limit} in a table (SQLITE_MAX_COLUMN): split the row over "
                    f"tables that share its key, or store the values in a TEXT column "
                    f"as JSON"
                )
            sql = create_table_sql(name, key, row, infer_type)
            try:
                self.conn.execute(sql)
            except sqlite3.Error as exc:
                raise query_error("SQLite", sql, exc) from exc
            described = self.conn.execute(
                "SELECT name, type, pk FROM pragma_table_info(?)", (name,)
            ).fetchall()
        columns_by_name = {col: column_for(col, declared, name) for col, declared, _ in described}
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

    def _upsert_sql(self, run: Run, rows: int = 1) -> str:
        """The upsert of ``rows`` rows of ``run``'s columns in one ``VALUES`` list."""
        cache = run.table.cache
        sql = cache.get((run.columns, rows))
        if sql is None:
            one = f"({', '.join('?' * len(run.columns))})"
            sql = upsert_sql(run.table, run.columns, f"VALUES {', '.join([one] * rows)}")
            cache[(run.columns, rows)] = sql
        assert isinstance(sql, str)
        return sql

    def _upsert(self, conn: sqlite3.Connection, run: Run) -> None:
        """Upsert ``run``'s rows, many to a statement (see :data:`ROWS_PER_STATEMENT`).

        Full statements of ``per`` rows, then the rest in statements of falling powers
        of two: at most a dozen statement texts per column set, each compiled once (and
        kept by the connection's statement cache). A key given twice is upserted twice
        in order, within one statement as across two: the last row wins.
        """
        rows = run.rows
        width = len(run.columns)
        per = 1
        while per * 2 <= min(ROWS_PER_STATEMENT, self._variables // width):
            per *= 2
        if per == 1 or len(rows) == 1:
            conn.executemany(self._upsert_sql(run), rows).close()
            return
        values = list(itertools.chain.from_iterable(rows))
        start = 0
        while start < len(rows):
            while per > len(rows) - start:
                per //= 2
            end = start + (len(rows) - start) // per * per
            step = per * width
            sql = self._upsert_sql(run, per)
            conn.executemany(
                sql, [values[i : i + step] for i in range(start * width, end * width, step)]
            ).close()
            start = end

    async def apply(self, batch: Batch[SqliteConnection]) -> None:
        """Write ``batch`` in one transaction (see :mod:`corral._backends._sql._batch`)."""
        await apply(self, batch)

    async def reconnect(self) -> None:
        """Do nothing: SQLite never loses its connection (:attr:`reconnects` is false)."""

    async def write(self, runs: Sequence[Run], *, begin: bool, commit: bool) -> list[Failure]:
        """Upsert every run in one thread call; see ``_sql._batch.Transactional.write``."""
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
                self._upsert(conn, run)
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
            self._check_file()
        return failures

    async def begin(self) -> None:
        """Open the batch transaction, taking the write lock at once (unless read-only)."""
        begin = "BEGIN" if self.read_only else "BEGIN IMMEDIATE"
        await self.call(lambda: self.conn.execute(begin).close())

    async def run_alone(self, op: Operation[SqliteConnection]) -> None:
        """Run a one-statement operation as any lone one: in a transaction of its own.

        (SQLite's transaction costs no round trip; its write lock covers the checks.)
        """
        await self.begin()
        if await op.run(self.session):
            await self.commit()
        else:
            await self.rollback()

    async def commit(self) -> None:
        """Commit the batch transaction; raise if the file is no longer where it was opened."""

        def commit() -> None:
            self.conn.execute("COMMIT")
            self._check_file()

        await self.call(commit)

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
