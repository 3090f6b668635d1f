"""The contract of the writer's port (:class:`corral._ports.Store`), on every store.

Each test opens the store as the writer does (``open_backend(url)``), hands it batches
of runs, operations and sources (:meth:`Store.apply`), and checks one guarantee the
port's docstrings state. A new backend runs these by adding its URL to the
``store_url`` fixture (tests/conftest.py).

The port writes tables and never reads them (nothing in corral reads a user's table
back), so :func:`table_rows` is the one piece of this module that speaks a store's own
language: how a test reads a table. The work of operations and sources is observed
through the progress port, which every store has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from corral import ConnectionLostError, SchemaError
from corral._backends import open_backend
from corral._ports import Batch, Run, Session, Store, TableSchema

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
#: An integer no SQL store holds (beyond 64 bits): a row the store refuses.
UNSTORABLE = 2**70


class Boom(Exception):
    pass


class Call:
    """An :class:`~corral._ports.Operation`: the writer's, without its queue."""

    #: Its statements need the batch's transaction.
    autocommit = False

    def __init__(self, fn: Callable[[Any], Awaitable[object]], *, abandoned: bool = False):
        self.fn = fn
        self.abandoned = abandoned
        self.ran = False
        self.result: object = None
        self.error: Exception | None = None

    async def run(self, session: Session) -> bool:
        self.ran = True
        try:
            self.result = await self.fn(session)
        except ConnectionLostError:
            raise  # the batch's
        except Exception as exc:
            self.error = exc
            return False
        return True


class Pending:
    """A :class:`~corral._ports.Source` with something pending, written by ``fn``."""

    def __init__(self, fn: Callable[[Any], Awaitable[object]]) -> None:
        self.fn = fn

    def pending(self) -> bool:
        return True

    async def write(self, session: Session) -> None:
        await self.fn(session)


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store[Any]]:
    store = await open_backend(url)
    try:
        yield store
    finally:
        await store.close()


async def call(store: Store[Any], fn: Callable[[Any], Awaitable[Any]]) -> Any:
    """Apply a batch of one operation ``fn``; return its result or raise its error."""
    op = Call(fn)
    await store.apply(Batch([op], []))
    if op.error is not None:
        raise op.error
    return op.result


async def resolve(store: Store[Any], name: str, row: dict[str, object]) -> TableSchema:
    """Resolve table ``name`` keyed on ``k`` as the writer does: in an operation."""
    schema = await call(store, lambda _: store.resolve(name, ("k",), row))
    assert isinstance(schema, TableSchema)
    return schema


def run(schema: TableSchema, *rows: dict[str, object]) -> Run:
    """A run of ``rows`` (all with the same columns), converted as the writer does."""
    columns = tuple(rows[0])
    converts = [(i, schema.columns[c].convert) for i, c in enumerate(columns)]
    values = []
    for row in rows:
        assert tuple(row) == columns
        converted = list(row.values())
        for i, convert in converts:
            if convert is not None and converted[i] is not None:
                converted[i] = convert(converted[i])
        values.append(tuple(converted))
    return Run(schema, columns, values)


async def table_rows(session: Any, table: str) -> dict[object, dict[str, object]]:
    """Every row of ``table``, by its ``k``: the store's own query (see the module doc)."""
    if session.dialect == "dynamodb":  # no SQL: a scan, with the batch's rows merged in
        rows = await session.scan_table(table)
    else:
        rows = await session.fetch(f'SELECT * FROM "{table}"')
    return {row["k"]: row for row in rows}


async def committed(url: str, table: str) -> dict[object, dict[str, object]]:
    """The rows of ``table`` as another connection sees them: what was committed."""
    async with opened(url) as other:
        return await call(other, lambda session: table_rows(session, table))  # type: ignore[no-any-return]


async def run_names(store: Store[Any]) -> list[str]:
    runs = await call(store, lambda session: session.progress.runs(100))
    return sorted(r.name for r in runs)


def start_run(name: str) -> Callable[[Any], Awaitable[object]]:
    return lambda session: session.progress.start_run("STATIC", name, T0)


def failing(name: str) -> Callable[[Any], Awaitable[object]]:
    async def fn(session: Any) -> None:
        await session.progress.start_run("STATIC", name, T0)
        raise Boom(name)

    return fn


# -- resolve -----------------------------------------------------------------------------------


async def test_resolve_creates_a_table_from_a_row_then_describes_it(store_url: str) -> None:
    async with opened(store_url) as store:
        assert isinstance(store.dialect, str)
        assert isinstance(store.reconnects, bool)
        schema = await resolve(store, "t", {"k": 1, "name": "x", "n": 2})
        assert (schema.name, schema.key, list(schema.columns)) == ("t", ("k",), ["k", "name", "n"])
        for column, value in (("k", 1), ("name", "x"), ("n", 2)):
            types = schema.columns[column].types
            assert types is None or isinstance(value, types)
    async with opened(store_url) as other:  # an existing table: described, not made from the row
        schema = await resolve(other, "t", {"k": 5, "other": 1.5})
        assert list(schema.columns) == ["k", "name", "n"]
        await other.apply(Batch([[run(schema, {"k": 5, "name": "y"})]], []))
    assert (await committed(store_url, "t"))[5] == {"k": 5, "name": "y", "n": None}


async def test_resolve_refuses_a_key_nothing_is_unique_on(store_url: str) -> None:
    async with opened(store_url) as store:
        await resolve(store, "t", {"k": 1, "v": 1})
        with pytest.raises(SchemaError):
            await call(store, lambda _: store.resolve("t", ("v",), {"k": 1, "v": 1}))


# -- rows --------------------------------------------------------------------------------------


async def test_the_rows_of_a_batch_are_committed_and_the_last_write_of_a_key_wins(
    store_url: str,
) -> None:
    async with opened(store_url) as store:
        schema = await resolve(store, "t", {"k": 0, "a": 0, "b": 0})
        first = run(
            schema, {"k": 1, "a": 1, "b": 1}, {"k": 2, "a": 2, "b": 2}, {"k": 1, "a": 3, "b": 3}
        )
        second = run(schema, {"k": 2, "b": 20}, {"k": 3, "b": 30})
        await store.apply(Batch([[first, second]], []))
        await store.apply(Batch([[run(schema, {"k": 1, "a": 100})]], []))
    assert await committed(store_url, "t") == {
        1: {"k": 1, "a": 100, "b": 3},
        2: {"k": 2, "a": 2, "b": 20},
        3: {"k": 3, "a": None, "b": 30},
    }


async def test_many_rows_in_one_run(store_url: str) -> None:
    async with opened(store_url) as store:
        schema = await resolve(store, "t", {"k": 0, "v": 0})
        rows = [{"k": k % 5000, "v": k} for k in range(10_000)]
        await store.apply(Batch([[run(schema, *rows)]], []))
    got = await committed(store_url, "t")
    assert got == {k: {"k": k, "v": 5000 + k} for k in range(5000)}


#: The shapes of a batch a store may treat apart: rows alone, rows with an operation,
#: rows with a source.
SHAPES = ["rows", "rows and an operation", "rows and a source"]


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_refused_row_is_reported_and_left_out_alone(store_url: str, shape: str) -> None:
    async with opened(store_url) as store:
        await call(store, lambda session: session.progress.ensure_schema())
        schema = await resolve(store, "t", {"k": 0, "v": 0})
        bad = run(schema, {"k": 1, "v": 1}, {"k": 2, "v": UNSTORABLE}, {"k": 3, "v": 3})
        good = run(schema, {"k": 4, "v": 4})
        op = Call(start_run("op"))
        batch = Batch[Any]([[bad, good]], [])
        if shape == "rows and an operation":
            batch.segments.append(op)
        elif shape == "rows and a source":
            batch.sources.append(Pending(start_run("source")))
        await store.apply(batch)
        assert [(r, i) for r, i, _ in batch.failures] == [(bad, 1)]
        assert isinstance(batch.failures[0][2], Exception)
        assert sorted(await committed(store_url, "t")) == [1, 3, 4]
        expected = {"rows": [], "rows and an operation": ["op"], "rows and a source": ["source"]}
        assert await run_names(store) == expected[shape]


async def test_runs_around_an_operation_write_their_own_rows_in_order(store_url: str) -> None:
    async with opened(store_url) as store:
        schema = await resolve(store, "t", {"k": 0, "a": 0, "b": 0})
        await store.apply(
            Batch([[run(schema, {"k": 1, "a": 1, "b": 1}, {"k": 2, "a": 2, "b": 2})]], [])
        )
        seen = Call(lambda session: table_rows(session, "t"))
        await store.apply(
            Batch(
                [
                    [run(schema, {"k": 1, "b": 10})],
                    seen,
                    [run(schema, {"k": 2, "a": 20})],
                    Call(lambda session: table_rows(session, "t")),
                    [run(schema, {"k": 2, "a": 21}), run(schema, {"k": 1, "b": 11, "a": 11})],
                ],
                [],
            )
        )
    # An operation sees the rows before it in the batch.
    assert seen.result == {1: {"k": 1, "a": 1, "b": 10}, 2: {"k": 2, "a": 2, "b": 2}}
    assert await committed(store_url, "t") == {
        1: {"k": 1, "a": 11, "b": 11},
        2: {"k": 2, "a": 21, "b": 2},
    }


# -- operations and sources --------------------------------------------------------------------


async def test_an_operation_is_kept_only_if_it_succeeded(store_url: str) -> None:
    async with opened(store_url) as store:
        await call(store, lambda session: session.progress.ensure_schema())
        schema = await resolve(store, "t", {"k": 0})
        ok, bad = Call(start_run("kept")), Call(failing("undone"))
        await store.apply(
            Batch(
                [
                    [run(schema, {"k": 1})],
                    ok,
                    bad,
                    [run(schema, {"k": 2})],
                    Call(start_run("after")),
                ],
                [],
            )
        )
        assert isinstance(bad.error, Boom)
        assert ok.error is None
        assert isinstance(ok.result, int)
        assert await run_names(store) == ["after", "kept"]
        assert sorted(await committed(store_url, "t")) == [1, 2]


async def test_an_operation_alone_that_fails_keeps_nothing(store_url: str) -> None:
    async with opened(store_url) as store:
        await call(store, lambda session: session.progress.ensure_schema())
        with pytest.raises(Boom):
            await call(store, failing("undone"))
        assert await call(store, lambda session: session.progress.runs(10)) == []


@pytest.mark.parametrize("alone", [True, False])
async def test_an_abandoned_operation_is_not_run(store_url: str, alone: bool) -> None:
    async with opened(store_url) as store:
        await call(store, lambda session: session.progress.ensure_schema())
        abandoned = Call(start_run("abandoned"), abandoned=True)
        segments: list[Any] = [abandoned] if alone else [Call(start_run("a")), abandoned]
        await store.apply(Batch(segments, []))
        assert not abandoned.ran
        assert await run_names(store) == ([] if alone else ["a"])


async def test_sources_are_written_after_the_segments_and_kept_only_if_they_succeed(
    store_url: str,
) -> None:
    async with opened(store_url) as store:
        await call(store, lambda session: session.progress.ensure_schema())
        seen: list[str] = []

        async def count_runs(session: Any) -> None:
            seen.extend(r.name for r in await session.progress.runs(10))
            await session.progress.start_run("STATIC", "source", T0)

        good, bad = Pending(count_runs), Pending(failing("bad source"))
        batch = Batch[Any]([Call(start_run("op"))], [bad, good])
        await store.apply(batch)
        assert seen == ["op"]
        assert batch.written == [good]
        assert [(s, type(e)) for s, e in batch.source_errors] == [(bad, Boom)]
        assert await run_names(store) == ["op", "source"]


# -- the batch, whole ------------------------------------------------------------------------


async def test_a_batch_that_fails_outside_its_rows_and_operations_keeps_nothing(
    store_url: str,
) -> None:
    async def lost(session: Any) -> None:
        raise ConnectionLostError("gone (a test's)")

    async with opened(store_url) as store:
        await call(store, lambda session: session.progress.ensure_schema())
        schema = await resolve(store, "t", {"k": 0})
        batch = Batch[Any]([[run(schema, {"k": 1})], Call(start_run("op")), Call(lost)], [])
        with pytest.raises(ConnectionLostError, match="a test's"):
            await store.apply(batch)
    async with opened(store_url) as store:
        assert await run_names(store) == []
    assert await committed(store_url, "t") == {}
