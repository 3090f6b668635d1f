"""PostgreSQL through asyncpg, on asyncio natively and on trio through a loop thread.

asyncpg runs on asyncio only. Under asyncio the writer awaits it directly; under trio
the connection lives on an asyncio event loop in one dedicated thread, started when the
database opens and joined when it closes, and each call (a whole batch is one call) is
handed to that loop and awaited from trio without blocking it.

The bulk path: each run of rows is copied (``COPY``, binary, through
``copy_records_to_table``) straight into the table, which is about three times as fast
as anything else when the keys are new; when that meets a key that exists already (or
straight away, for a while, after such a conflict), the run is copied into a temporary
staging table instead and moved into the table with one ``INSERT ... SELECT ... ON
CONFLICT (key) DO UPDATE``. Rows
with the same key in one run are collapsed to the last one first (``ON CONFLICT`` may
touch a row only once per statement), which is what writing them in order would leave.

Stalls and restarts: every statement has a timeout (``command_timeout``) and so has
connecting (``connect_timeout``), both read from the URL's query (see
:func:`split_settings`). A call that fails because the connection broke or timed out
terminates the connection and raises :class:`~corral.ConnectionLostError` (saying
whether ``COMMIT`` had been sent); every call after it raises the same at once, until
the writer asks for :meth:`PostgresBackend.reconnect`, which connects again with
exponential backoff for up to ``reconnect_timeout`` seconds and restores the
session's staging tables and ``LISTEN`` registrations.

Here: the session (:class:`PostgresConnection`) and the store (:class:`PostgresBackend`,
with the bulk path). Beside it: :mod:`._loop` (running asyncpg from trio),
:mod:`._settings` (the URL's timeouts), :mod:`._errors` (which errors mean the
connection is gone) and :mod:`._values` (column types).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import operator
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import asyncpg  # type: ignore[import-untyped]

from ..._exceptions import (
    ConnectError,
    ConnectionLostError,
    QueryError,
    SchemaError,
)
from ..._lowlevel import loop_scheduler
from ..._ports import Batch, Failure, Operation, Run, TableSchema, redact, scrub
from .._aioloop import Direct, LoopThread
from .._sql import SqlSession
from .._sql._batch import apply
from .._sql._tables import (
    check_key,
    create_table_sql,
    query_error,
    quote,
    upsert_sql,
)
from ._errors import broke
from ._search_path import missing_schemas, search_path_in, search_path_problem
from ._settings import SETTINGS, Settings, split_settings
from ._values import column_for, infer_type

__all__ = [
    "SETTINGS",
    "PostgresBackend",
    "Settings",
    "column_for",
    "infer_type",
    "numbered",
    "open_store",
]

T = TypeVar("T")

log = logging.getLogger("corral.database")

#: After conflicts in a row, the bulk path upserts straight away for up to this many
#: runs of a table before it tries a plain INSERT again.
_MAX_BACKOFF = 64

_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?")


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """Rewrite ``?`` placeholders as ``$1, $2, ...`` (quoted text is left alone)."""
    counter = itertools.count(1)

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        return f"${next(counter)}" if text == "?" else text

    return _PLACEHOLDER.sub(replace, sql)


#: A reconnection waits this long before its second attempt, twice as long before each
#: next one, and never more than _MAX_DELAY (the first attempt is at once).
_FIRST_DELAY = 0.05
_MAX_DELAY = 5.0


async def _connect(dsn: str, settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(
        dsn, timeout=settings.connect_timeout, command_timeout=settings.command_timeout
    )


async def _connect_checked(dsn: str, settings: Settings) -> tuple[asyncpg.Connection, list[str]]:
    """Connect, and check the schemas of its ``search_path``; return those missing.

    With some missing, the connection is closed (see :mod:`._search_path`).
    """
    conn = await _connect(dsn, settings)
    try:
        missing = await missing_schemas(conn, from_url=search_path_in(dsn))
    except BaseException:
        conn.terminate()
        raise
    if missing:
        conn.terminate()
    return conn, missing


# -- the backend -------------------------------------------------------------------------


class PostgresConnection(SqlSession):
    """The session of a PostgreSQL store: its ports, and SQL (``_sql.Connection``)."""

    dialect = "postgresql"

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` on the backend; if cancelled, only once the server stopped.

        Only an operation's calls can be cancelled (the writer's own are shielded); see
        :func:`_finish_cancel` for why the wait is here.
        """
        try:
            return await self._backend.call(fn, *args)
        except anyio.get_cancelled_exc_class():
            # A broken connection is the writer's to raise, at its next statement.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._backend.call(_finish_cancel, self._backend.conn)
            raise

    async def _query(self, method: Callable[..., Awaitable[T]], sql: str, *args: Any) -> T:
        try:
            return await self._call(method, numbered(sql), *args)
        except asyncpg.PostgresError as exc:
            raise query_error("PostgreSQL", sql, exc) from exc

    async def execute(self, sql: str, *args: object) -> None:
        """Run one statement (``?`` placeholders)."""
        await self._query(self._backend.conn.execute, sql, *args)

    async def executemany(self, sql: str, args: Iterable[Sequence[object]]) -> None:
        """Run one statement once for each sequence of arguments."""
        rows = [tuple(a) for a in args]
        await self._query(self._backend.conn.executemany, sql, rows)

    async def fetch(self, sql: str, *args: object) -> list[dict[str, object]]:
        """Run a query and return its rows as dicts."""
        records = await self._query(self._backend.conn.fetch, sql, *args)
        return [dict(record.items()) for record in records]

    async def fetch_rows(self, sql: str, *args: object) -> Sequence[Mapping[str, Any]]:
        """Run a query and return asyncpg's records (read by column name)."""
        records: Sequence[Mapping[str, Any]] = await self._query(
            self._backend.conn.fetch, sql, *args
        )
        return records

    async def fetchval(self, sql: str, *args: object) -> object:
        """Run a query and return the first column of its first row."""
        return await self._query(self._backend.conn.fetchval, sql, *args)

    async def listen(self, channel: str, callback: Callable[[], object]) -> None:
        """``LISTEN`` on ``channel`` once the transaction commits.

        Each notification from another connection calls ``callback()`` on the calling
        task's event loop, from whatever thread the driver runs on; once that loop has
        closed, they are dropped.
        """
        schedule = loop_scheduler(anyio.lowlevel.current_token())
        here = threading.get_ident()

        backend = self._backend

        def on_notify(_conn: object, pid: int, *_: object) -> None:
            if pid == backend.pid:  # this connection's own NOTIFY: its users know already
                return
            if threading.get_ident() == here:
                callback()
                return
            with contextlib.suppress(RuntimeError):  # that loop has closed
                schedule(callback)

        self._backend.listeners[(channel, callback)] = on_notify
        await self._call(self._backend.conn.add_listener, channel, on_notify)

    async def unlisten(self, channel: str, callback: Callable[[], object]) -> None:
        """Stop calling ``callback`` for ``channel`` (see :meth:`listen`)."""
        on_notify = self._backend.listeners.pop((channel, callback), None)
        if on_notify is not None:
            await self._call(self._backend.conn.remove_listener, channel, on_notify)


#: After a statement's caller was cancelled, the cancel request is sent again after this
#: many seconds while the statement runs, then at twice the interval, up to the most.
_CANCEL_AGAIN_AFTER = 0.1
_CANCEL_AGAIN_MOST = 2.0


async def _finish_cancel(conn: asyncpg.Connection) -> None:
    """Return once the server has ended the statement whose caller was cancelled.

    Cancelled in a statement, asyncpg sends the server one cancel request (on a
    connection of its own) and leaves the statement to end. A request that arrives
    before the server has read the statement finds it idle and is ignored, and the
    statement runs to its end, holding the connection (the writer) that long: so while
    it runs, send the request again. An empty query, queued behind the cancellation
    (and allowed in a failed transaction), tells when it has ended; the requests sent
    are waited for, so that none arrives at the server later, in another statement.
    """
    loop = asyncio.get_running_loop()
    probe = loop.create_task(conn.execute(""))
    sent: list[asyncio.Future[None]] = []
    delay = _CANCEL_AGAIN_AFTER
    again = getattr(conn, "_cancel_current_command", None)  # asyncpg's, private
    while again is not None:
        done, _ = await asyncio.wait({probe}, timeout=delay)
        if done:
            break
        waiter: asyncio.Future[None] = loop.create_future()
        again(waiter)
        sent.append(waiter)
        delay = min(2 * delay, _CANCEL_AGAIN_MOST)
    await asyncio.gather(probe, *sent, return_exceptions=True)  # a broken connection:
    # the writer's next statement raises it


_DESCRIBE = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_UNIQUE = """
SELECT ARRAY(
    SELECT a.attname FROM unnest(i.indkey) AS k(attnum)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
)
FROM pg_index i
WHERE i.indrelid = to_regclass($1) AND i.indisunique
    AND i.indpred IS NULL AND i.indexprs IS NULL
"""


async def open_store(url: str) -> PostgresBackend:
    """Connect to the server of the ``postgresql://`` URL (its timeouts from its query)."""
    return await PostgresBackend.open(url)


class PostgresBackend:
    """One asyncpg connection, owned by the writer: a ``Store``."""

    dialect = "postgresql"
    #: A lost connection is made again (see :meth:`reconnect`).
    reconnects = True

    def __init__(
        self,
        conn: asyncpg.Connection,
        runner: Direct | LoopThread,
        dsn: str = "",
        settings: Settings | None = None,
    ) -> None:
        self.conn = conn
        #: The server process of the connection (it changes with a reconnection).
        self.pid: int = conn.get_server_pid()
        self._runner = runner
        self._dsn = dsn
        self.settings = settings or Settings(**SETTINGS)
        #: Set when the connection broke: every call raises it until reconnect().
        self._lost: ConnectionLostError | None = None
        #: Whether the current transaction's COMMIT has been sent.
        self._commit_sent = False
        #: When the connection was first lost, since a COMMIT last succeeded; and the
        #: wait before the next attempt to connect again.
        self._outage: float | None = None
        self._delay = 0.0
        #: The session's own statements (temporary tables), run again on a new connection.
        self._session: list[str] = []
        self._stages = itertools.count()
        #: The staging tables written to in the current transaction: they may hold rows
        #: (``ON COMMIT DELETE ROWS`` empties them at the commit only), so the next copy
        #: into one empties it first. Forgotten at every BEGIN, COMMIT and ROLLBACK.
        self._staged: set[str] = set()
        #: What operations and sources are given.
        self.session = PostgresConnection(self)
        #: LISTEN callbacks by (channel, callback): see PostgresConnection.listen.
        self.listeners: dict[tuple[str, Callable[[], object]], Callable[..., None]] = {}

    @classmethod
    async def open(cls, dsn: str) -> PostgresBackend:
        """Connect to the server at ``dsn`` (its timeouts read from its query)."""
        server_dsn, settings = split_settings(dsn)
        native = anyio.lowlevel.current_token().native_token
        runner: Direct | LoopThread
        runner = Direct() if isinstance(native, asyncio.AbstractEventLoop) else LoopThread()
        try:
            conn, missing = await runner.call(_connect_checked, server_dsn, settings)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await runner.close()
            if isinstance(exc, Exception):
                raise ConnectError(
                    f"could not connect to PostgreSQL at {redact(dsn)!r}: "
                    f"{type(exc).__name__}: {scrub(str(exc), dsn)}"
                ) from exc
            raise
        if missing:
            with anyio.CancelScope(shield=True):
                await runner.close()
            problem = search_path_problem(missing, redact(dsn), from_url=search_path_in(dsn))
            raise ConnectError(problem)
        return cls(conn, runner, server_dsn, settings)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` on the event loop that owns the connection.

        Raises :class:`~corral.ConnectionLostError` if the connection broke (or timed
        out) in the call, or before it and :meth:`reconnect` was not called since.
        """
        lost = self._lost
        if lost is not None:
            raise ConnectionLostError(str(lost), commit_sent=lost.commit_sent) from lost
        return await self._runner.call(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` (on the connection's loop); a broken connection is dropped."""
        conn = self.conn
        try:
            return await fn(*args)
        except Exception as exc:
            if not broke(conn, exc):
                raise
            conn.terminate()  # nothing waits on it again: a stalled server stays stalled
            if self._outage is None:
                self._outage = time.monotonic()
            if isinstance(exc, TimeoutError):
                why = (
                    f"no answer within command_timeout={self.settings.command_timeout:g} s "
                    f"(TimeoutError)"
                )
            else:
                why = f"{type(exc).__name__}: {scrub(str(exc), self._dsn)}"
            when = "after COMMIT was sent" if self._commit_sent else "before COMMIT"
            lost = self._lost = ConnectionLostError(
                f"lost the connection to PostgreSQL at {redact(self._dsn)!r} ({when}): {why}",
                commit_sent=self._commit_sent,
            )
            raise lost from exc

    async def reconnect(self) -> None:
        """Connect again after the connection was lost, with backoff; restore the session.

        The first attempt is at once, the next after 0.05 s, twice as long after each
        failure (5 s at most), for as long as ``reconnect_timeout`` seconds since the
        connection was first lost without a COMMIT succeeding since. On the new
        connection, the staging tables are made again and every ``LISTEN`` is
        registered again. Raises :class:`~corral.ConnectionLostError` once that time
        is spent (at once if ``reconnect_timeout`` is 0).
        """
        lost = self._lost
        if lost is None:
            return
        budget = self.settings.reconnect_timeout
        start = self._outage if self._outage is not None else time.monotonic()
        attempts = 0
        last: BaseException = lost
        if budget:
            log.warning("%s; reconnecting (for up to %g s)", lost, budget)
        while True:
            delay = self._delay
            elapsed = time.monotonic() - start
            if budget == 0 or elapsed + delay > budget:
                tried = (
                    "reconnect_timeout=0: not reconnecting"
                    if budget == 0
                    else f"gave up reconnecting after {attempts} attempts in {elapsed:.1f} s "
                    f"(reconnect_timeout={budget:g})"
                )
                raise ConnectionLostError(f"{lost}; {tried}", commit_sent=lost.commit_sent) from (
                    last
                )
            await anyio.sleep(delay)
            self._delay = min(max(2 * delay, _FIRST_DELAY), _MAX_DELAY)
            attempts += 1
            try:
                conn = await self._runner.call(self._reopen)
            except Exception as exc:
                last = exc
                continue
            log.warning("reconnected to PostgreSQL after %d attempts; the writer goes on", attempts)
            self.conn = conn
            self.pid = conn.get_server_pid()
            self._lost = None
            self._commit_sent = False
            self._staged.clear()
            return

    async def _reopen(self) -> asyncpg.Connection:
        """Open a new connection with the session's temporary tables and LISTENs in place."""
        conn = await _connect(self._dsn, self.settings)
        try:
            for sql in self._session:
                await conn.execute(sql)
            for (channel, _), on_notify in self.listeners.items():
                await conn.add_listener(channel, on_notify)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _committed(self) -> None:
        """Note that a COMMIT succeeded: the connection is well again."""
        self._outage = None
        self._delay = 0.0

    # -- schema ----------------------------------------------------------------------------

    async def resolve(
        self, name: str, key: tuple[str, ...], row: Mapping[str, object]
    ) -> TableSchema:
        """Describe table ``name``, creating it from ``row`` when it does not exist.

        Raises :class:`~corral.SchemaError` for a row with more columns than a table
        can have, :class:`~corral.QueryError` for any other refusal (a
        ``statement_timeout``, missing privileges), the driver's error chained.
        """
        try:
            return await self.call(self._resolve, name, key, row)
        except asyncpg.TooManyColumnsError as exc:
            raise SchemaError(
                f"table {name!r} cannot be created from this row: PostgreSQL tables have "
                f"at most 1600 columns and the row has {len(row)}; split the columns over "
                f"several tables with the same key, or create the table yourself with some "
                f"of them in one JSONB or array column"
            ) from exc
        except asyncpg.PostgresError as exc:
            raise QueryError(
                f"PostgreSQL refused to read or create table {name!r}: {type(exc).__name__}: {exc}"
            ) from exc

    async def _resolve(
        self, name: str, key: tuple[str, ...], row: Mapping[str, object]
    ) -> TableSchema:
        conn = self.conn
        described = await conn.fetch(_DESCRIBE, quote(name))
        if not described:
            await conn.execute(create_table_sql(name, key, row, infer_type))
            described = await conn.fetch(_DESCRIBE, quote(name))
        columns_by_name = {r[0]: column_for(r[0], r[1]) for r in described}
        unique = [set(r[0]) for r in await conn.fetch(_UNIQUE, quote(name))]
        check_key(name, key, columns_by_name, unique)
        stage = f"_corral_stage_{next(self._stages)}"
        create_stage = (
            f"CREATE TEMPORARY TABLE {quote(stage)} ON COMMIT DELETE ROWS "
            f"AS SELECT * FROM {quote(name)} WITH NO DATA"
        )
        await conn.execute(create_stage)
        self._session.append(create_stage)  # made again on a new connection
        schema = TableSchema(name, key, columns_by_name)
        schema.cache["stage"] = stage
        return schema

    # -- writing ---------------------------------------------------------------------------

    async def apply(self, batch: Batch[PostgresConnection]) -> None:
        """Write ``batch`` in one transaction (see :mod:`corral._backends._sql._batch`)."""
        await apply(self, batch)

    async def write(self, runs: Sequence[Run], *, begin: bool, commit: bool) -> list[Failure]:
        """Upsert every run; see ``_sql._batch.Transactional.write``."""
        if begin:
            self._commit_sent = False
        failures = await self.call(self._write, runs, begin, commit)
        if commit:
            self._committed()
        return failures

    async def _write(self, runs: Sequence[Run], begin: bool, commit: bool) -> list[Failure]:
        conn = self.conn
        failures: list[Failure] = []
        if begin:
            self._staged.clear()
        if begin and not runs:
            await conn.execute("BEGIN")
        for number, run in enumerate(runs):
            first = "BEGIN; " if begin and number == 0 else ""
            await conn.execute(f"{first}SAVEPOINT corral_run")
            try:
                await self._bulk(run)
            except Exception as exc:
                if broke(conn, exc):  # raise what broke it, not a rollback's failure
                    raise
                await conn.execute("ROLLBACK TO SAVEPOINT corral_run")
                await self._one_by_one(number, run, failures)
                await conn.execute("RELEASE SAVEPOINT corral_run")
        if commit:
            self._staged.clear()
            self._commit_sent = True
            await conn.execute("COMMIT")
        return failures

    async def _bulk(self, run: Run) -> None:
        table = run.table
        stage = table.cache["stage"]
        assert isinstance(stage, str)
        statements = table.cache.get(("bulk", run.columns))
        if statements is None:
            names = ", ".join(quote(c) for c in run.columns)
            select = f"SELECT {names} FROM {quote(stage)}"
            statements = f"{upsert_sql(table, run.columns, select)}; RELEASE SAVEPOINT corral_run"
            table.cache["bulk", run.columns] = statements
        assert isinstance(statements, str)
        upsert = statements
        # A COPY straight into the table is about three times as fast as staging the
        # rows and upserting them (INSERT ... ON CONFLICT) when the keys are new, the
        # usual case in bulk loads, and leaves what the upsert would: try it first (in
        # the run's savepoint), and upsert if a key exists already (or repeats in the
        # run). After a conflict, upsert straight away for a while (longer after each
        # conflict in a row) before trying again.
        skip = table.cache.get("skip", 0)
        assert isinstance(skip, int)
        if skip:
            table.cache["skip"] = skip - 1
        else:
            try:
                await self.conn.copy_records_to_table(
                    table.name, records=run.rows, columns=run.columns
                )
            except asyncpg.UniqueViolationError:
                await self.conn.execute("ROLLBACK TO SAVEPOINT corral_run")
                backoff = table.cache.get("backoff", 1)
                assert isinstance(backoff, int)
                table.cache["skip"] = backoff
                table.cache["backoff"] = min(2 * backoff, _MAX_BACKOFF)
            else:
                await self.conn.execute("RELEASE SAVEPOINT corral_run")
                table.cache["backoff"] = 1
                return
        rows = run.rows
        if len(rows) > 1:  # ON CONFLICT may touch a row once: keep each key's last row
            where = [run.columns.index(k) for k in table.key]
            latest = dict(zip(map(operator.itemgetter(*where), rows), rows, strict=True))
            if len(latest) < len(rows):
                rows = list(latest.values())
        await self._stage(stage, rows, run.columns)
        await self.conn.execute(upsert)

    async def _stage(
        self, stage: str, rows: list[tuple[object, ...]], columns: tuple[str, ...]
    ) -> None:
        """Copy ``rows`` into the staging table, emptied first if this transaction used it.

        Emptied per transaction, not per :meth:`write`: a batch with operations writes
        its runs in several calls, and rows left from an earlier one would be upserted
        again (with this run's columns).
        """
        if stage in self._staged:
            await self.conn.execute(f"DELETE FROM {quote(stage)}")
        await self.conn.copy_records_to_table(stage, records=rows, columns=columns)
        self._staged.add(stage)

    async def _one_by_one(self, number: int, run: Run, failures: list[Failure]) -> None:
        conn = self.conn
        sql = run.table.cache.get(("row", run.columns))
        if sql is None:
            values = ", ".join(f"${i}" for i in range(1, len(run.columns) + 1))
            sql = upsert_sql(run.table, run.columns, f"VALUES ({values})")
            run.table.cache["row", run.columns] = sql
        assert isinstance(sql, str)
        for index, row in enumerate(run.rows):
            await conn.execute("SAVEPOINT corral_row")
            try:
                await conn.execute(sql, *row)
            except Exception as exc:
                if broke(conn, exc):
                    raise
                await conn.execute("ROLLBACK TO SAVEPOINT corral_row")
                failures.append((number, index, exc))
            await conn.execute("RELEASE SAVEPOINT corral_row")

    async def begin(self) -> None:
        """Open the batch transaction."""
        self._staged.clear()
        self._commit_sent = False
        await self.call(self.conn.execute, "BEGIN")

    async def run_alone(self, op: Operation[PostgresConnection]) -> None:
        """Run a one-statement operation outside a transaction: it commits on its own."""
        self._staged.clear()
        self._commit_sent = True  # a connection lost in it may have committed it
        await op.run(self.session)
        self._committed()

    async def commit(self) -> None:
        """Commit the batch transaction."""
        self._staged.clear()
        self._commit_sent = True
        await self.call(self.conn.execute, "COMMIT")
        self._committed()

    async def rollback(self) -> None:
        """Roll the batch transaction back, if one is open; never raises."""
        self._staged.clear()
        if self._lost is not None:  # the server rolled it back when the connection went
            return

        async def rollback() -> None:
            if self.conn.is_closed() or not self.conn.is_in_transaction():
                return
            try:
                await self.conn.execute("ROLLBACK")
            except Exception:
                self.conn.terminate()

        await self.call(rollback)

    async def savepoint(self, name: str) -> None:
        """Set a savepoint."""
        await self.call(self.conn.execute, f"SAVEPOINT {quote(name)}")

    async def release(self, name: str) -> None:
        """Release a savepoint."""
        await self.call(self.conn.execute, f"RELEASE SAVEPOINT {quote(name)}")

    async def rollback_to(self, name: str) -> None:
        """Undo the work since a savepoint, and release it."""
        sql = f"ROLLBACK TO SAVEPOINT {quote(name)}; RELEASE SAVEPOINT {quote(name)}"
        await self.call(self.conn.execute, sql)

    async def close(self) -> None:
        """Close the connection, then the loop thread if there is one; never raises.

        A server that does not answer within ``command_timeout`` has its connection
        dropped instead.
        """
        conn = self.conn
        timeout = self.settings.command_timeout

        async def close() -> None:
            try:
                await conn.close(timeout=timeout)
            except Exception:
                conn.terminate()

        try:
            with anyio.CancelScope(shield=True):
                await self._runner.call(close)
        finally:
            with anyio.CancelScope(shield=True):
                await self._runner.close()
