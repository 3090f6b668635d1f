"""Databases: one per open URL, whose writer funnels every write through one place.

.. code-block:: python

    async with corral.connect("sqlite:///corral.db") as db:
        prices = db.table("prices", key=("ticker", "day"))
        await prices.put({"ticker": "ACME", "day": "2026-11-20", "close": 10.5})
        await db.flush()

The engine's side: :class:`Database` (its writer, its tables, and the hooks the domains
use) and :func:`open_database`, which runs the writer for the body of a block. It
imports no domain: the domains attach their views (``db.jobs``, ``db.progress``)
through :meth:`Database._view`, and the public :class:`corral.Database` (in
:mod:`corral._connect`, with :func:`corral.connect`) names them. The policy (what is
guaranteed, and what is raised where) is in :func:`corral.connect`'s docstring; the
batching is described in :mod:`corral._writer`.
"""

from __future__ import annotations

import operator
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._backends import Connection, check_identifier, open_backend, parse_url
from ._exceptions import (
    ColumnTypeError,
    DatabaseClosedError,
    MissingKeyError,
    SchemaError,
    UnknownColumnError,
)
from ._ports import Column, Store, TableSchema, redact
from ._validate import check_number, check_positive_int, check_type
from ._writer import Source, Writer

__all__ = ["Database", "DatabaseStatistics", "Table", "default_url", "open_database"]

T = TypeVar("T")
V = TypeVar("V")
D = TypeVar("D", bound="Database")

#: The URL :func:`connect` opens when given none and ``CORRAL_DB`` is not set.
DEFAULT_URL = "sqlite:///corral.db"
#: A table remembers the checks for at most this many different column orders (and
#: each of those, this many tuples of value types).
_MAX_PLANS = 64
#: A producer whose rows always find room yields to the event loop this often.
_CHECKPOINT_EVERY = 512


def _one_value(column: str) -> Callable[[Mapping[str, object]], tuple[object, ...]]:
    """Return what takes the one value of a row of one column, as a 1-tuple."""

    def values(row: Mapping[str, object]) -> tuple[object, ...]:
        return (row[column],)

    return values


def _unknown(row: Mapping[str, object]) -> None:
    """:attr:`_Plan.fast` before any values passed the checks: none is known good."""
    return None


def _fast_values(
    plan: _Plan, signature: tuple[type, ...]
) -> Callable[[Mapping[str, object]], tuple[object, ...] | None]:
    """Return a function of a row: its values if of types ``signature``, else None.

    What :meth:`Table._checked` does for values of a tuple of types that passed the
    checks once, compiled for one column order: one comparison per value (``type(v)
    is T``, and ``v == v`` where NaN is refused), where the general path builds and
    hashes the tuple of types. Written as source and compiled once per plan (as
    :func:`collections.namedtuple` and :mod:`dataclasses` do); the code holds only
    positions, the column names and types are bound as values.
    """
    names = [f"a{i}" for i in range(len(signature))]
    tests = [f"type(a{i}) is T{i}" for i in range(len(signature))]
    tests += [f"a{i} == a{i}" for i, _ in plan.nan_refused]
    source = (
        "def fast(row):\n"
        "    values = get(row)\n"
        f"    {', '.join(names)}, = values\n"
        f"    if {' and '.join(tests)}:\n"
        "        return values\n"
        "    return None\n"
    )
    namespace: dict[str, Any] = {"get": plan.values}
    namespace.update({f"T{i}": t for i, t in enumerate(signature)})
    exec(source, namespace)  # positions only: see the docstring
    fast: Callable[[Mapping[str, object]], tuple[object, ...] | None] = namespace["fast"]
    return fast


def default_url() -> str:
    """Return the database URL to use when none is given.

    The environment variable ``CORRAL_DB`` when it is set and not empty, else
    ``sqlite:///corral.db``: an embedded SQLite file in the current directory.
    """
    return os.environ.get("CORRAL_DB") or DEFAULT_URL


@dataclass(frozen=True, slots=True)
class DatabaseStatistics:
    """A snapshot of one database's writer."""

    accepted: int
    """Rows accepted by ``put`` (and its variants) since the database opened."""
    committed: int
    """Accepted rows that are committed to the database."""
    batches: int
    """Transactions the writer has committed."""
    pending: int
    """Accepted rows neither committed nor failed yet: queued or being written."""
    failed: int
    """Accepted rows that could not be written (each a ``WriteError``, kept or dropped)."""
    errors_dropped: int = 0
    """Write errors not kept, as 100 waited to be raised already (a note says how many)."""


class _Plan:
    """The checks for rows of one table with one column order, worked out once."""

    __slots__ = (
        "checks",
        "columns",
        "converts",
        "fast",
        "key_index",
        "nan_refused",
        "schema",
        "signatures",
        "values",
        "width",
    )

    def __init__(self, table: Table, schema: TableSchema, columns: tuple[str, ...]) -> None:
        for name in columns:
            if name not in schema.columns:
                raise UnknownColumnError(
                    f"table {table.name!r} has no column {name!r}; its columns are "
                    f"{', '.join(schema.columns)}. Drop {name!r} from the row, or add the "
                    f"column to the table (ALTER TABLE) before writing"
                )
        for name in table.key:
            if name not in columns:
                raise MissingKeyError(
                    f"a row for table {table.name!r} has no value for its key column "
                    f"{name!r}; every row needs the whole key {table.key!r}"
                )
        #: The table's schema and the row's columns, in the row's order.
        self.schema = schema
        self.columns = columns
        self.key_index = tuple(columns.index(name) for name in table.key)
        described = [schema.columns[name] for name in columns]
        self.checks: list[tuple[int, Column, tuple[type, ...]]] = [
            (i, col, col.types) for i, col in enumerate(described) if col.types is not None
        ]
        self.converts: list[tuple[int, Callable[[object], object]]] = [
            (i, col.convert) for i, col in enumerate(described) if col.convert is not None
        ]
        #: The columns whose store cannot keep NaN, with the message that refuses it.
        self.nan_refused: tuple[tuple[int, str], ...] = tuple(
            (i, col.nan_error) for i, col in enumerate(described) if col.nan_error is not None
        )
        #: Tuples of the values' types that passed the checks: they pass again.
        self.signatures: set[tuple[type, ...]] = set()
        #: How many columns, and what takes a row's values in their order (a
        #: ``KeyError`` for a row without one of them).
        self.width = len(columns)
        self.values: Callable[[Mapping[str, object]], tuple[object, ...]] = (
            operator.itemgetter(*columns) if len(columns) > 1 else _one_value(columns[0])
        )
        #: A row's values if they are of the first tuple of types that passed the checks
        #: (and need no conversion); else None, for the full checks (:meth:`learn`).
        self.fast: Callable[[Mapping[str, object]], tuple[object, ...] | None] = _unknown

    def learn(self, signature: tuple[type, ...]) -> None:
        """Note that values of types ``signature`` passed :meth:`check`."""
        if not self.signatures and not self.converts:
            self.fast = _fast_values(self, signature)
        if len(self.signatures) < _MAX_PLANS:
            self.signatures.add(signature)

    def check(self, table: Table, values: tuple[object, ...]) -> None:
        """Raise unless ``values`` fit: no NULL key, every value of an accepted type."""
        for i in self.key_index:
            if values[i] is None:
                raise MissingKeyError(
                    f"a row for table {table.name!r} has None for its key column "
                    f"{self.columns[i]!r}; key values cannot be NULL"
                )
        for i, col, types in self.checks:
            value = values[i]
            if value is not None and (
                not isinstance(value, types) or isinstance(value, col.exclude)
            ):
                raise ColumnTypeError(
                    f"column {col.name!r} of table {table.name!r} is {col.sql_type}, which "
                    f"takes {col.describe_types()}; got {type(value).__name__} {value!r:.60}"
                )


class Table:
    """A table of a :class:`Database`, written to by upserting rows on its key.

    Made by :meth:`Database.table`. A row is a mapping of column name to value; it
    replaces the stored row with the same key in the columns it names (columns it
    leaves out keep their stored values, or are NULL for a new key). Rows are checked
    when they are put, before they are accepted: against the table's columns, which the
    first ``put`` reads from the database, or creates the table from, through the
    writer.

    Args:
        db: The database the table is in.
        name: The table's name.
        key: The key columns rows are upserted on.
    """

    def __init__(self, db: _Database, name: str, key: tuple[str, ...]) -> None:
        #: The table's name.
        self.name = name
        #: The key columns rows are upserted on.
        self.key = key
        self._db = db
        self._writer = db._writer
        self._schema: TableSchema | None = None
        self._resolving: anyio.Event | None = None
        self._plans: dict[tuple[str, ...], _Plan] = {}
        #: The plan of the last row put: the next row most likely has its columns.
        self._last: _Plan | None = None
        self._puts = 0

    def __repr__(self) -> str:
        return f"<corral.Table {self.name!r} key={self.key!r}>"

    @property
    def columns(self) -> dict[str, str] | None:
        """Column name to SQL type, once the first ``put`` has read them; else ``None``."""
        if self._schema is None:
            return None
        return {name: col.sql_type for name, col in self._schema.columns.items()}

    # -- checking ----------------------------------------------------------------------------

    def _check_mapping(self, row: object) -> Mapping[str, object]:
        if not isinstance(row, Mapping):
            raise TypeError(
                f"a row must be a mapping of column name to value (a dict), got "
                f"{type(row).__name__} {row!r:.80}"
            )
        return row

    async def _plan_for(self, row: object) -> _Plan:
        """Return the plan for the columns of ``row`` (checked), making it on first use."""
        schema = self._schema
        if schema is None:
            schema = await self._schema_for(row)
        mapping = row if type(row) is dict else self._check_mapping(row)
        columns = tuple(mapping)
        plan = self._plans.get(columns)
        if plan is None:
            plan = _Plan(self, schema, columns)
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[columns] = plan
        self._last = plan
        return plan

    def _checked(self, plan: _Plan, values: tuple[object, ...]) -> tuple[object, ...]:
        """Return a row's ``values`` (in ``plan``'s columns) checked and converted."""
        if tuple(map(type, values)) not in plan.signatures:
            plan.check(self, values)
            plan.learn(tuple(map(type, values)))
        for i, message in plan.nan_refused:
            value = values[i]
            if value != value:  # NaN, the one value unequal to itself
                raise SchemaError(message)
        if plan.converts:
            converted = list(values)
            for i, convert in plan.converts:
                if converted[i] is not None:
                    converted[i] = convert(converted[i])
            values = tuple(converted)
        return values

    async def _schema_for(self, row: object) -> TableSchema:
        """Return the table's schema, reading it (or creating the table) on first use."""
        while self._schema is None:
            if self._resolving is not None:
                # Its resolution is queued for the writer: the writer cannot wait for it.
                self._db._writer._check_not_writer("put() on a table not resolved yet")
                await self._resolving.wait()
                continue
            mapping = self._check_mapping(row)
            for name in self.key:
                if mapping.get(name) is None:
                    raise MissingKeyError(
                        f"a row for table {self.name!r} has no value for its key column "
                        f"{name!r}; every row needs the whole key {self.key!r}"
                    )
            event = self._resolving = anyio.Event()
            try:
                self._schema = await self._db._run(self._resolver(dict(mapping)))
            finally:
                self._resolving = None
                event.set()
        return self._schema

    def _resolver(self, row: dict[str, object]) -> Callable[[Connection], Awaitable[TableSchema]]:
        backend = self._db._backend
        return lambda _: backend.resolve(self.name, self.key, row)

    # -- writing -----------------------------------------------------------------------------

    async def put(self, row: Mapping[str, object]) -> None:
        """Accept ``row`` for writing, waiting for room while the writer's queue is full.

        Returns once the row is accepted (queued), not committed: ``await db.flush()``
        waits for that. If ``put`` is cancelled while it waits for room, the row was not
        accepted.

        For speed, a row that finds room is accepted without yielding to the event loop
        and without checking for cancellation, even in a cancelled scope; every 512th
        such ``put`` on a table yields all the same, shielded from cancellation. So
        ``put`` is a cancellation point only while it waits for room (and while the
        first ``put`` on a table reads its columns), and follows trio's rule: a ``put``
        that raised the cancellation did not accept its row; one that returned did, and
        the row is committed like any other.

        Args:
            row: Column name to value.

        Raises:
            TypeError: If ``row`` is not a mapping (before accepting it).
            UnknownColumnError: If ``row`` names a column the table does not have.
            MissingKeyError: If ``row`` lacks a key column, or its value is ``None``.
            ColumnTypeError: If a value's type does not fit its column.
            WriteError: For an earlier row that failed to commit.
            DatabaseClosedError: Once the database is closed.
        """
        plan = self._last
        values = None
        if plan is not None and type(row) is dict and len(row) == plan.width:
            try:  # the common case: the last row's columns, of types known good
                values = plan.fast(row)
            except KeyError:  # the row has other columns than the last one
                values = None
        if values is None or plan is None:
            plan, values = await self._values_of(row)
        writer = self._writer
        if writer.put_nowait(plan.schema, plan.columns, values):
            # A row that finds room is accepted without a trip through the event loop;
            # yield now and then all the same, so that a producer cannot starve it.
            self._puts += 1
            if self._puts % _CHECKPOINT_EVERY == 0:
                await anyio.lowlevel.cancel_shielded_checkpoint()  # accepted: no Cancelled
            return
        await writer.put(plan.schema, plan.columns, values)

    async def _values_of(self, row: Mapping[str, object]) -> tuple[_Plan, tuple[object, ...]]:
        """Return the plan for ``row`` and its values, checked and converted."""
        plan = self._last
        if plan is None or type(row) is not dict or len(row) != plan.width:
            plan = await self._plan_for(row)
        try:
            values = plan.values(row)
        except KeyError:  # the row has other columns than the last one
            plan = await self._plan_for(row)
            values = plan.values(row)
        return plan, self._checked(plan, values)

    async def put_many(self, rows: Iterable[Mapping[str, object]]) -> int:
        """Put every row of ``rows`` in order, as :meth:`put` does; return how many.

        Rows are accepted one by one (the iterable is read lazily). If ``put_many`` is
        interrupted, the rows before the interruption stay accepted (and are committed
        like any other), and the exception it raises says how many they were in an
        attribute, ``corral_accepted`` (an int: the first ``corral_accepted`` rows of
        ``rows`` were accepted, no other), and in a note. That is so for a row that is
        refused (the note names its index) or an error from the iterable, and for a
        cancellation while it waits for room, which is raised as it is (never turned
        into another exception), with the attribute set::

            try:
                await table.put_many(rows)
            except anyio.get_cancelled_exc_class() as exc:
                log.info("%d rows accepted before the cancellation", exc.corral_accepted)
                raise

        A ``put_many`` that returns was not cancelled after it accepted its last row.

        Args:
            rows: The rows (each a mapping of column name to value), read lazily.

        Returns:
            How many rows were accepted.

        Raises:
            Exception: What :meth:`put` raises for a row, or what the iterable raised,
                with ``corral_accepted`` set to the number of rows accepted before.
        """
        count = 0
        try:
            for row in rows:
                await self.put(row)
                count += 1
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                exc.add_note(
                    f"corral: put_many() was cancelled after accepting {count} rows (its "
                    f"first {count}, which will be committed); the rest were not accepted"
                )
            else:
                exc.add_note(f"corral: raised for row {count} of put_many()")
            exc.corral_accepted = count  # type: ignore[attr-defined]
            raise
        await anyio.lowlevel.cancel_shielded_checkpoint()  # every row accepted: no Cancelled
        return count

    def put_from_thread(self, row: Mapping[str, object]) -> None:
        """Like :meth:`put`, from a thread: block the calling thread until accepted.

        Works from any thread other than the event loop's own (an anyio worker thread, a
        ``corral.to_thread`` or ``corral.map`` thread, a thread you started), as long as
        the ``connect`` block is open; the row goes through the event loop that
        connected, with the same checks and backpressure.

        Args:
            row: Column name to value.

        Raises:
            RuntimeError: If called on the event loop's own thread, where it would block
                the loop.
            DatabaseClosedError: Once the database is closed.
        """
        self._from_thread(self.put, row)

    def put_many_from_thread(self, rows: Iterable[Mapping[str, object]]) -> int:
        """Like :meth:`put_many`, from a thread: one hop to the event loop for them all.

        Args:
            rows: The rows (each a mapping of column name to value).

        Returns:
            How many rows were accepted.

        Raises:
            RuntimeError: If called on the event loop's own thread, where it would block
                the loop.
            DatabaseClosedError: Once the database is closed.
        """
        return self._from_thread(self.put_many, list(rows))

    def _from_thread(self, fn: Callable[[Any], Coroutine[Any, Any, T]], arg: Any) -> T:
        db = self._db
        if threading.get_ident() == db._thread:
            raise RuntimeError(
                f"{fn.__name__}_from_thread() was called on the event loop's own thread, "
                f"where it would block the loop: use `await table.{fn.__name__}(...)`"
            )
        if db._writer.closed:
            db._writer._raise_closed()
        try:
            return anyio.from_thread.run(fn, arg, token=db._token)
        except RuntimeError:
            if db._writer.closed:  # the event loop has finished
                db._writer._raise_closed()
            raise


class Database:
    """An open database: its writer, its tables, and the hooks corral's domains use.

    Made by :func:`corral.connect`, valid inside its ``async with`` block. All writes
    go through one writer coroutine, which owns the connection and commits in batches.

    Args:
        url: The URL the database was opened with.
        backend: The store's backend (made by corral).
        writer: The writer that owns the connection (made by corral).
        batch_size: Rows per batch transaction, at most.
        flush_interval: Seconds a row (or a pending source) waits, at most, before its
            batch commits.
        max_pending: Rows the writer's queue holds before ``put`` waits for room.
    """

    def __init__(
        self,
        url: str,
        backend: _Backend,
        writer: _Writer,
        *,
        batch_size: int,
        flush_interval: float,
        max_pending: int,
    ) -> None:
        #: The URL the database was opened with.
        self.url = url
        #: The domains' views of this database, by what makes them (see _view).
        self._views: dict[Callable[[Any], object], object] = {}
        #: ``"sqlite"`` or ``"postgresql"``.
        self.dialect: str = backend.dialect
        #: Rows per batch transaction, at most.
        self.batch_size = batch_size
        #: Seconds a row (or a pending source) waits, at most, before its batch commits.
        self.flush_interval = flush_interval
        #: Rows the writer's queue holds before ``put`` waits for room.
        self.max_pending = max_pending
        self._backend = backend
        self._writer = writer
        self._tables: dict[str, Table] = {}
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.get_ident()

    def __repr__(self) -> str:
        return f"<corral.Database {redact(self.url)!r}>"

    def table(self, name: str, *, key: str | Iterable[str]) -> Table:
        """Return the table ``name``, whose rows are upserted on ``key``.

        ``key`` is a column name or a sequence of them: the table's primary key (or the
        columns of a unique index). If the table does not exist, the first ``put``
        creates it from its row: one column per key of the row, with a type inferred
        from the value (``int`` → INTEGER/BIGINT, ``float`` → REAL/DOUBLE PRECISION,
        ``str`` → TEXT, ``bytes``, ``bool``, ``datetime``, ``date``, ``Decimal`` ...) and
        ``key`` as the primary key. Names must be plain identifiers.

        Args:
            name: The table's name (a plain identifier).
            key: A column name or a sequence of them: the table's primary key (or the
                columns of a unique index).

        Returns:
            The table (the same :class:`Table` for the same name).

        Raises:
            ValueError: If ``key`` is empty or names a column twice, or the table is
                already used with another key.
            SchemaError: If the store keys a table on fewer columns than ``key`` names
                (DynamoDB: two).
        """
        check_type("name", name, str, "a str (a table name)")
        check_identifier("table", name)
        if not isinstance(key, str):
            check_type("key", key, Iterable, "a column name or a sequence of them")
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys:
            raise ValueError(
                f"key of table {name!r} is empty: name the column(s) rows are upserted on"
            )
        for column in keys:
            check_identifier("key column", column)
        if len(set(keys)) != len(keys):
            raise ValueError(f"key of table {name!r} names a column twice: {keys!r}")
        most = getattr(self._backend, "max_key_columns", None)  # DynamoDB: two
        if most is not None and len(keys) > most:
            raise SchemaError(
                f"table {name!r}: key={keys!r} has {len(keys)} columns, and a {self.dialect} "
                f"table is keyed by at most {most} (a partition key and a sort key): key on "
                f"fewer columns, or join the others into one text column"
            )
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = Table(self, name, keys)
        elif table.key != keys:
            raise ValueError(f"table {name!r} is already used with key={table.key!r}, not {keys!r}")
        return table

    async def flush(self) -> None:
        """Wait until every write accepted before this call is committed.

        Includes the pending writes of registered sources.

        Raises:
            WriteError: The oldest one not raised yet, if any row failed.
        """
        await self._writer.flush()

    def statistics(self) -> DatabaseStatistics:
        """Return a frozen snapshot: rows accepted, committed, pending, failed; batches.

        Returns:
            The writer's counts now (:class:`DatabaseStatistics`).
        """
        w = self._writer
        return DatabaseStatistics(
            accepted=w.accepted,
            committed=w.committed,
            batches=w.batches,
            pending=w.accepted - w.committed - w.failed,
            failed=w.failed,
            errors_dropped=w.errors_dropped,
        )

    # -- hooks for corral's domains (progress, jobs) -------------------------------------------

    def _view(self, make: Callable[[Database], V]) -> V:
        """Return the view ``make(self)`` of this database, made on first use, then kept.

        How a domain attaches itself (``JobQueue.of(db)`` is ``db._view(JobQueue)``):
        one view per ``make`` and database, so all its users share its state.
        """
        view = self._views.get(make)
        if view is None:
            view = self._views[make] = make(self)
        return cast("V", view)

    async def _run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` in the writer, in order with the rows accepted before.

        ``fn`` runs inside a batch transaction, in a savepoint, on the writer's
        connection (so it sees every row accepted before the call: reads go through here
        too). Returns ``fn``'s result once that transaction is committed. If ``fn``
        raises, only its own statements are rolled back and its exception is raised
        here. Cancelling the caller cancels ``fn`` (and rolls it back) if it is running,
        and skips it if it has not started; once ``fn`` has returned, its work is
        committed with its batch even if the caller is cancelled meanwhile. ``fn`` runs
        in the writer's task, so it must not wait on the database itself (``flush``,
        ``_run``, ``put`` on a full queue): that raises ``RuntimeError``.
        """
        result: T = await self._writer.run_op(fn)
        return result

    async def _run_grouped(
        self,
        fn: Callable[[Connection, list[Any]], Awaitable[list[Any]]],
        arg: object,
        *,
        one_statement: bool = False,
    ) -> Any:
        """Run ``fn(connection, [arg, ...])`` in the writer, for this call and its neighbours.

        Group commit: calls with the same ``fn`` (equal, as bound methods of one object
        are) queued one after another while the writer is busy are one operation of one
        batch, ``fn`` called once with every call's ``arg`` in order. ``fn`` returns one
        answer per argument: an exception instance is raised to that caller alone (``fn``
        must have undone that call's own work), anything else is returned to it once
        the batch is committed. If ``fn`` raises, the work of every call is rolled back
        and each raises the error. Otherwise as :meth:`_run`, except that a caller
        cancelled once its group has begun does not stop the group: its work is
        committed with the others'. ``one_statement``: ``fn`` called with ``[arg]`` alone
        runs one statement, atomic by itself, so that a call alone in its batch may run
        outside a transaction (PostgreSQL: one round trip, one commit).
        """
        return await self._writer.run_grouped(fn, fn, arg, one_statement=one_statement)

    def _register_source(self, source: Source[Connection]) -> None:
        """Have the writer call ``source.write(connection)`` whenever it has something.

        ``source.pending()`` is polled at every batch, at least every flush interval
        when nothing else arrives, and once more while the writer drains at exit;
        ``flush()`` includes it.
        """
        self._writer.register(source)


#: The names the constructors are annotated with: private, as the classes are not made
#: directly (``connect`` and ``Database.table`` make them).
_Database = Database
_Backend = Store[Connection]
_Writer = Writer[Connection]


def _check_interval(value: object) -> float:
    return check_number("flush_interval", value, above=0, unit="seconds")


def _without_consequences(error: BaseException, fatal: BaseException) -> BaseException | None:
    """Return the body's ``error`` less what the writer's stop caused in it, or None.

    The stop cancelled the body (through the task group's scope, which has exited by
    the time ``connect`` raises: a ``Cancelled`` raised from there would be outside its
    scope), and tasks of the body may have raised ``fatal`` itself (a ``flush`` or an
    operation) or a ``DatabaseClosedError`` chained from it. Groups (a task group in
    the body, a trio nursery) lose those leaves; what is left is the body's own.
    """
    cancelled = anyio.get_cancelled_exc_class()

    def caused(exc: BaseException) -> bool:
        return (
            isinstance(exc, cancelled)
            or exc is fatal
            or (isinstance(exc, DatabaseClosedError) and exc.__cause__ is fatal)
        )

    if isinstance(error, BaseExceptionGroup):
        return error.split(caused)[1]
    return None if caused(error) else error


@asynccontextmanager
async def open_database(
    make: type[D],
    url: str | None = None,
    *,
    batch_size: int = 50_000,
    flush_interval: float = 0.05,
    max_pending: int = 100_000,
) -> AsyncIterator[D]:
    """Open a database as a ``make`` and run its writer for the body of a block.

    :func:`corral.connect` with the class of the database to yield; see its docstring.
    """
    url = default_url() if url is None else url
    parse_url(url)
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_pending", max_pending)
    interval = _check_interval(flush_interval)
    backend = await open_backend(url)
    body_error: BaseException | None = None
    writer: Writer[Connection] | None = None
    try:
        try:
            async with anyio.create_task_group() as tg:
                writer = Writer(
                    backend,
                    batch_size=batch_size,
                    flush_interval=interval,
                    max_pending=max_pending,
                    cancel_body=tg.cancel_scope.cancel,
                )
                db = make(
                    url,
                    backend,
                    writer,
                    batch_size=batch_size,
                    flush_interval=interval,
                    max_pending=max_pending,
                )
                tg.start_soon(writer.run)
                try:
                    yield db
                except BaseException as exc:  # raised again below, once the writer is done
                    body_error = exc
                with anyio.CancelScope(shield=True):
                    await writer.close()
        except BaseException as exc:  # the task group's exit: an outer cancellation
            if body_error is None:
                body_error = exc
    finally:
        with anyio.CancelScope(shield=True):
            await backend.close()
    assert writer is not None
    if writer.fatal is not None and body_error is not None:
        body_error = _without_consequences(body_error, writer.fatal)
    errors: list[BaseException] = [*([writer.fatal] if writer.fatal else []), *writer.take_errors()]
    errors = [error for error in errors if error is not body_error]
    cancelled = isinstance(body_error, anyio.get_cancelled_exc_class())
    dropped = writer.take_dropped_note()  # those not kept: counted, in one note
    if body_error is not None and not cancelled:
        for error in errors:
            body_error.add_note(f"corral: also, a write failed: {type(error).__name__}: {error}")
        if dropped is not None:
            body_error.add_note(dropped)
        raise body_error
    if errors:
        first = errors[0]
        for error in errors[1:]:
            first.add_note(f"corral: also, a write failed: {type(error).__name__}: {error}")
        if dropped is not None:
            first.add_note(dropped)
        raise first
    if body_error is not None:
        raise body_error
