"""corral.connect, Database and Table: on SQLite files, PostgreSQL and DynamoDB (moto).

Tests of ``any_url`` run on every store (DynamoDB on asyncio only, but with
CORRAL_TEST_AWS_TRIO=1), reading rows back with :func:`rows`; tests of ``db_url`` run
SQL (tables made by ``CREATE TABLE``, CHECK constraints, statements) or break the SQL
store's own methods, and run on SQLite and PostgreSQL, on asyncio and trio.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import random
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio

import corral
import corral.jobs
from corral import _database
from corral._backends import Connection

pytestmark = pytest.mark.timeout(60)


async def fetch(db: corral.Database, sql: str, *args: object) -> list[dict[str, object]]:
    """Read through the writer: after every row accepted so far."""

    async def read(conn: Connection) -> list[dict[str, object]]:
        return await conn.fetch(sql, *args)

    return await db._run(read)


async def execute(db: corral.Database, sql: str, *args: object) -> None:
    async def run(conn: Connection) -> None:
        await conn.execute(sql, *args)

    await db._run(run)


async def read_table(url: str, sql: str) -> list[dict[str, object]]:
    """Open the database afresh and read: what was really committed."""
    async with corral.connect(url) as db:
        return await fetch(db, sql)


async def rows(
    db: corral.Database, table: str, *columns: str, order_by: tuple[str, ...] = ()
) -> list[dict[str, object]]:
    """The rows of ``table`` (their ``columns``, or all), read through the writer: on
    any store (``SELECT *`` on SQL, a scan on DynamoDB), sorted by ``order_by``."""

    async def read(session: Any) -> list[dict[str, object]]:
        if session.dialect == "dynamodb":
            return await session.scan_table(table)  # type: ignore[no-any-return]
        return await session.fetch(f'SELECT * FROM "{table}"')  # type: ignore[no-any-return]

    got = await db._run(read)
    if columns:
        got = [{c: row[c] for c in columns} for row in got]
    return sorted(got, key=lambda row: tuple(row[c] for c in order_by))


async def read_back(url: str, table: str, *columns: str, order_by: tuple[str, ...] = ()) -> Any:
    """Open the database afresh and read ``table`` (see :func:`rows`): what was committed."""
    async with corral.connect(url) as db:
        return await rows(db, table, *columns, order_by=order_by)


# -- the happy path ------------------------------------------------------------------------


async def test_put_flush_and_read_back(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        prices = db.table("prices", key=("ticker", "day"))
        assert prices.columns is None
        await prices.put({"ticker": "ACME", "day": "2026-11-20", "close": 10.5})
        await prices.put({"ticker": "ACME", "day": "2026-11-21", "close": 11.0})
        await db.flush()
        stats = db.statistics()
        assert (stats.accepted, stats.committed, stats.pending, stats.failed) == (2, 2, 0, 0)
        assert stats.batches >= 1
        assert prices.columns is not None
        assert list(prices.columns) == ["ticker", "day", "close"]
    rows = await read_back(any_url, "prices", order_by=("day",))
    assert rows == [
        {"ticker": "ACME", "day": "2026-11-20", "close": 10.5},
        {"ticker": "ACME", "day": "2026-11-21", "close": 11.0},
    ]


async def test_upsert_replaces_the_columns_a_row_names(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        t = db.table("t", key="id")
        await t.put({"id": 1, "a": "first", "b": 1.0})
        await t.put({"id": 1, "a": "second", "b": 2.0})  # same key: replaces
        await t.put({"id": 2, "a": "other", "b": 3.0})
        await db.flush()
        await t.put({"id": 1, "b": 4.0})  # names only b: a is kept
        await t.put({"id": 3, "b": 5.0})  # a new key: a is NULL
        await db.flush()
        assert await rows(db, "t", order_by=("id",)) == [
            {"id": 1, "a": "second", "b": 4.0},
            {"id": 2, "a": "other", "b": 3.0},
            {"id": 3, "a": None, "b": 5.0},
        ]


async def test_duplicate_keys_in_one_batch_keep_the_last(any_url: str) -> None:
    async with corral.connect(any_url, flush_interval=3600) as db:
        t = db.table("t", key="id")
        for i in range(100):
            await t.put({"id": i % 7, "v": i})
        await db.flush()
        got = await rows(db, "t", "id", "v", order_by=("id",))
    assert got == [{"id": k, "v": max(i for i in range(100) if i % 7 == k)} for k in range(7)]


async def test_a_key_only_table_ignores_duplicates(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        tags = db.table("tags", key=("item", "tag"))
        await tags.put_many([{"item": 1, "tag": "a"}, {"item": 1, "tag": "a"}])
        await db.flush()
        assert await rows(db, "tags") == [{"item": 1, "tag": "a"}]


async def test_types_are_inferred_from_the_first_row(any_url: str) -> None:
    when = datetime.datetime(2026, 11, 20, 9, 30, 15)
    row: dict[str, object] = {
        "id": 7,
        "name": "ACME",
        "close": 10.5,
        "open": True,
        "blob": b"\x00\xff",
        "day": datetime.date(2026, 11, 20),
        "at": when,
        "amount": decimal.Decimal("12.34"),
    }
    async with corral.connect(any_url) as db:
        t = db.table("typed", key="id")
        await t.put(row)
        await db.flush()
        columns = t.columns
        assert columns is not None
        got = (await rows(db, "typed"))[0]
    if any_url.startswith("dynamodb"):
        # The catalog's types; every value is read back as it was put (by its type).
        assert columns == {
            "id": "INTEGER",
            "name": "TEXT",
            "close": "REAL",
            "open": "BOOLEAN",
            "blob": "BINARY",
            "day": "DATE",
            "at": "TIMESTAMP",
            "amount": "NUMERIC",
        }
        assert got == row
    elif any_url.startswith("sqlite"):
        assert columns == {
            "id": "INTEGER",
            "name": "TEXT",
            "close": "REAL",
            "open": "BOOLEAN",
            "blob": "BLOB",
            "day": "DATE",
            "at": "TIMESTAMP",
            "amount": "NUMERIC",
        }
        # SQLite keeps dates as ISO text, booleans as 0/1, decimals as numbers
        assert got == {
            "id": 7,
            "name": "ACME",
            "close": 10.5,
            "open": 1,
            "blob": b"\x00\xff",
            "day": "2026-11-20",
            "at": "2026-11-20 09:30:15",
            "amount": 12.34,
        }
    else:
        assert columns == {
            "id": "bigint",
            "name": "text",
            "close": "double precision",
            "open": "boolean",
            "blob": "bytea",
            "day": "date",
            "at": "timestamp without time zone",
            "amount": "numeric",
        }
        assert got == row


async def test_an_existing_table_is_written_with_its_own_columns(db_url: str) -> None:
    async with corral.connect(db_url) as db:
        await execute(
            db,
            'CREATE TABLE "quotes" ("sym" TEXT NOT NULL, "px" REAL, "n" INTEGER, '
            '"note" TEXT DEFAULT \'none\', PRIMARY KEY ("sym"))',
        )
        quotes = db.table("quotes", key="sym")
        await quotes.put({"sym": "A", "px": 1, "n": 2})  # an int is fine for REAL
        await db.flush()
        assert quotes.columns is not None
        assert list(quotes.columns) == ["sym", "px", "n", "note"]
        with pytest.raises(corral.ColumnTypeError, match=r"column 'n' of table 'quotes'"):
            await quotes.put({"sym": "B", "n": "two"})
        with pytest.raises(corral.UnknownColumnError, match="no column 'volume'"):
            await quotes.put({"sym": "B", "volume": 3})
        rows = await fetch(db, 'SELECT * FROM "quotes"')
    assert rows == [{"sym": "A", "px": 1.0, "n": 2, "note": "none"}]


async def test_a_unique_index_can_serve_as_the_key(db_url: str) -> None:
    async with corral.connect(db_url) as db:
        await execute(db, 'CREATE TABLE "u" ("id" INTEGER PRIMARY KEY, "code" TEXT, "v" TEXT)')
        await execute(db, 'CREATE UNIQUE INDEX "u_code" ON "u" ("code")')
        u = db.table("u", key="code")
        await u.put({"id": 1, "code": "x", "v": "one"})
        await u.put({"id": 1, "code": "x", "v": "two"})
        await db.flush()
        assert await fetch(db, 'SELECT "v" FROM "u"') == [{"v": "two"}]


async def test_a_key_that_is_not_unique_is_refused(db_url: str) -> None:
    async with corral.connect(db_url) as db:
        await execute(db, 'CREATE TABLE "loose" ("a" TEXT, "b" TEXT)')
        loose = db.table("loose", key="a")
        with pytest.raises(corral.SchemaError, match="neither the primary key nor a unique"):
            await loose.put({"a": "x", "b": "y"})
        other = db.table("other_key", key="missing")
        await execute(db, 'CREATE TABLE "other_key" ("a" TEXT PRIMARY KEY)')
        with pytest.raises(corral.SchemaError, match="no column 'missing'"):
            await other.put({"missing": 1})
        assert db.statistics().accepted == 0


async def test_many_tables_in_one_database(any_url: str) -> None:
    async with corral.connect(any_url, batch_size=7) as db:
        tables = [db.table(f"t{i}", key="k") for i in range(5)]
        async with anyio.create_task_group() as tg:
            for table in tables:
                tg.start_soon(table.put_many, ({"k": k, "v": str(k)} for k in range(40)))
        await db.flush()
        for table in tables:
            assert len(await rows(db, table.name)) == 40
    assert db.table("t0", key="k") is tables[0]


# -- bad input -----------------------------------------------------------------------------


async def test_bad_rows_are_refused_before_they_are_accepted(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        t = db.table("t", key=("a", "b"))
        with pytest.raises(TypeError, match="a row must be a mapping"):
            await t.put([("a", 1)])  # type: ignore[arg-type]
        with pytest.raises(corral.MissingKeyError, match="key column 'b'"):
            await t.put({"a": 1, "v": 1.0})  # before the table exists
        await t.put({"a": 1, "b": 2, "v": 1.0, "s": "x"})
        with pytest.raises(TypeError, match="a row must be a mapping"):
            await t.put("a=1")  # type: ignore[arg-type]
        with pytest.raises(corral.MissingKeyError, match="key column 'b'"):
            await t.put({"a": 1, "v": 1.0})
        with pytest.raises(corral.MissingKeyError, match="None for its key column 'a'"):
            await t.put({"a": None, "b": 2})
        with pytest.raises(corral.UnknownColumnError, match="no column 'w'") as unknown:
            await t.put({"a": 1, "b": 2, "w": 1.0})
        assert isinstance(unknown.value, ValueError)
        with pytest.raises(corral.ColumnTypeError, match=r"column 'v'.*got str") as wrong:
            await t.put({"a": 1, "b": 2, "v": "1.0"})
        assert isinstance(wrong.value, TypeError)
        assert isinstance(wrong.value, corral.SchemaError)
        with pytest.raises(corral.ColumnTypeError, match=r"column 'a'.*got bool"):
            await t.put({"a": True, "b": 2})
        with pytest.raises(corral.ColumnTypeError, match=r"column 's'.*got int"):
            await t.put({"a": 1, "b": 3, "s": 5})
        await t.put({"a": 1, "b": 3, "v": None, "s": None})  # NULL is fine outside the key
        await db.flush()
        assert db.statistics().accepted == 2
        assert len(await rows(db, "t")) == 2


@pytest.mark.parametrize(
    "name",
    [
        'prices"; DROP TABLE "victim"; --',
        "prices; DROP TABLE victim",
        "a b",
        "1abc",
        "",
        "naïve",
        "x" * 64,
        'a"b',
    ],
)
async def test_names_cannot_carry_sql(any_url: str, name: str) -> None:
    async with corral.connect(any_url) as db:
        victim = db.table("victim", key="id")
        await victim.put({"id": 1})
        await db.flush()
        with pytest.raises(corral.IdentifierError, match="not a plain identifier"):
            db.table(name, key="id")
        with pytest.raises(corral.IdentifierError):
            db.table("ok", key=name)
        with pytest.raises(corral.IdentifierError, match="column name"):
            await db.table("fresh", key="id").put({"id": 1, name: 2})
        with pytest.raises(corral.UnknownColumnError):
            await victim.put({"id": 2, name: 2})
        assert len(await rows(db, "victim")) == 1


async def test_an_existing_column_with_a_quote_in_its_name_is_quoted(db_url: str) -> None:
    # Column names read from an existing table are not plain identifiers necessarily:
    # they must be quoted (an embedded " doubled), never pasted into the SQL as they are.
    name = 'say "hi", "id'
    async with corral.connect(db_url) as db:
        await execute(db, 'CREATE TABLE "odd" ("id" INTEGER PRIMARY KEY, "say ""hi"", ""id" TEXT)')
        odd = db.table("odd", key="id")
        await odd.put({"id": 1, name: "one"})
        await odd.put({"id": 1, name: "two"})
        await db.flush()
        assert await fetch(db, 'SELECT * FROM "odd"') == [{"id": 1, name: "two"}]


async def test_table_arguments_are_checked(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        with pytest.raises(ValueError, match="key of table 't' is empty"):
            db.table("t", key=())
        with pytest.raises(ValueError, match="names a column twice"):
            db.table("t", key=("a", "a"))
        with pytest.raises(TypeError, match="name must be a str"):
            db.table(3, key="a")  # type: ignore[arg-type]
        db.table("t", key="a")
        with pytest.raises(ValueError, match="already used with key=\\('a',\\)"):
            db.table("t", key="b")


async def test_a_type_cannot_be_inferred_from_none(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        t = db.table("t", key="id")
        with pytest.raises(corral.SchemaError, match="column 'v' is None"):
            await t.put({"id": 1, "v": None})
        with pytest.raises(corral.SchemaError, match=r"cannot .* list"):
            await t.put({"id": 1, "v": [1, 2]})
        await t.put({"id": 1, "v": 2.5})  # a later row may create it
        await db.flush()
        assert await rows(db, "t") == [{"id": 1, "v": 2.5}]


# -- errors committing ---------------------------------------------------------------------


async def _checked_table(db: corral.Database) -> corral.Table:
    await execute(
        db, 'CREATE TABLE "checked" ("id" INTEGER PRIMARY KEY, "qty" INTEGER CHECK ("qty" >= 0))'
    )
    return db.table("checked", key="id")


async def test_a_failing_row_is_named_and_the_others_are_committed(db_url: str) -> None:
    async with corral.connect(db_url, flush_interval=3600) as db:
        checked = await _checked_table(db)
        for i in range(10):
            await checked.put({"id": i, "qty": -1 if i == 6 else i})
        with pytest.raises(corral.WriteError) as caught:
            await db.flush()
        error = caught.value
        assert error.table == "checked"
        assert error.row == {"id": 6, "qty": -1}
        assert "table 'checked'" in str(error)
        assert "'id': 6" in str(error)
        assert error.__cause__ is not None
        assert type(error.__cause__).__module__.split(".")[0] in ("sqlite3", "asyncpg")
        stats = db.statistics()
        assert (stats.accepted, stats.committed, stats.failed, stats.pending) == (10, 9, 1, 0)
        await db.flush()  # raised once: the next flush is clean
        rows = await fetch(db, 'SELECT "id" FROM "checked" ORDER BY "id"')
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4, 5, 7, 8, 9]


async def test_a_write_error_is_raised_by_the_next_put(db_url: str) -> None:
    async with corral.connect(db_url) as db:
        checked = await _checked_table(db)
        await checked.put({"id": 1, "qty": -5})
        await fetch(db, "SELECT 1 AS one")  # a commit after the failed row
        with pytest.raises(corral.WriteError, match="'qty': -5"):
            await checked.put({"id": 2, "qty": 2})
        await checked.put({"id": 2, "qty": 2})


async def test_a_write_error_is_raised_at_exit(db_url: str) -> None:
    async def body() -> None:
        async with corral.connect(db_url) as db:
            checked = await _checked_table(db)
            await checked.put({"id": 1, "qty": 1})
            await checked.put({"id": 2, "qty": -1})
            await checked.put({"id": 3, "qty": -3})

    with pytest.raises(corral.WriteError, match="table 'checked'") as caught:
        await body()
    assert caught.value.row == {"id": 2, "qty": -1}
    assert any("'qty': -3" in note for note in caught.value.__notes__)
    rows = await read_table(db_url, 'SELECT "id" FROM "checked"')
    assert rows == [{"id": 1}]


async def test_the_body_exception_wins_and_names_write_errors(db_url: str) -> None:
    async def body() -> None:
        async with corral.connect(db_url) as db:
            checked = await _checked_table(db)
            await checked.put({"id": 1, "qty": -1})
            raise KeyError("from the body")

    with pytest.raises(KeyError, match="from the body") as caught:
        await body()
    assert any("WriteError" in note and "'qty': -1" in note for note in caught.value.__notes__)


async def test_a_value_the_driver_refuses_is_a_write_error(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        t = db.table("big", key="id")
        await t.put({"id": 1})
        await t.put({"id": 2**70})  # an int, but too big for a 64-bit column
        with pytest.raises(corral.WriteError, match="table 'big'") as caught:
            await db.flush()
        assert caught.value.row == {"id": 2**70}
        assert await rows(db, "big") == [{"id": 1}]


# -- URLs, drivers, lifecycle ---------------------------------------------------------------


def test_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_DB", raising=False)
    assert _database.default_url() == "sqlite:///corral.db"
    monkeypatch.setenv("CORRAL_DB", "")
    assert _database.default_url() == "sqlite:///corral.db"
    monkeypatch.setenv("CORRAL_DB", "postgresql://u@h/db")
    assert _database.default_url() == "postgresql://u@h/db"


async def test_connect_without_a_url_uses_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CORRAL_DB", raising=False)
    async with corral.connect() as db:
        assert db.url == "sqlite:///corral.db"
        assert db.dialect == "sqlite"
        await db.table("t", key="k").put({"k": 1})
    assert (tmp_path / "corral.db").is_file()
    monkeypatch.setenv("CORRAL_DB", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    async with corral.connect() as db:
        await db.table("t", key="k").put({"k": 1})
    assert (tmp_path / "elsewhere.db").is_file()


async def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for url, path in [
        ("sqlite:///sub/relative.db", tmp_path / "sub" / "relative.db"),
        (f"sqlite:///{tmp_path}/absolute.db", tmp_path / "absolute.db"),
    ]:
        async with corral.connect(url) as db:
            await db.table("t", key="k").put({"k": 1})
        assert path.is_file(), url
    async with corral.connect("sqlite:///:memory:") as db:
        await db.table("t", key="k").put({"k": 1})
        assert await fetch(db, 'SELECT * FROM "t"') == [{"k": 1}]


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://root@localhost/db", "unsupported database URL scheme 'mysql'.*postgresql://"),
        (
            "corral.db",
            r"not a database URL \(it has no scheme\): did you mean sqlite:///corral.db\?",
        ),
        ("sqlite://corral.db", "three slashes"),
        ("sqlite:///", "names no file"),
    ],
)
async def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        async with corral.connect(url):
            pass


async def test_connect_arguments_are_checked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for kwargs, error in [
        ({"batch_size": 0}, ValueError),
        ({"max_pending": 1.5}, TypeError),
        ({"flush_interval": 0}, ValueError),
        ({"flush_interval": float("inf")}, ValueError),
        ({"flush_interval": "1"}, TypeError),
    ]:
        with pytest.raises(error):
            async with corral.connect(url, **kwargs):
                pass


async def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import corral._backends

    monkeypatch.delitem(sys.modules, "corral._backends._postgres", raising=False)
    monkeypatch.delattr(corral._backends, "_postgres", raising=False)
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(corral.MissingDriverError, match=r"pip install 'corral\[postgres\]'"):
        async with corral.connect("postgresql://user:secret@localhost/db"):
            pass


async def test_an_unreachable_server_is_a_connect_error() -> None:
    url = "postgresql://postgres:secret@127.0.0.1:1/test"
    with pytest.raises(corral.ConnectError, match=r"127\.0\.0\.1:1") as caught:
        async with corral.connect(url):
            pass
    assert "secret" not in str(caught.value)
    assert caught.value.__cause__ is not None


async def test_an_unopenable_sqlite_file_is_a_connect_error(tmp_path: Path) -> None:
    with pytest.raises(corral.ConnectError, match="could not open SQLite"):
        async with corral.connect(f"sqlite:///{tmp_path}/missing/dir/x.db"):
            pass


async def test_a_closed_database_refuses_writes(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        t = db.table("t", key="k")
        await t.put({"k": 1})
    with pytest.raises(corral.DatabaseClosedError, match="block has ended"):
        await t.put({"k": 2})
    with pytest.raises(corral.DatabaseClosedError):
        await db.flush()
    with pytest.raises(corral.DatabaseClosedError):
        await rows(db, "t")
    with pytest.raises(corral.DatabaseClosedError):
        await anyio.to_thread.run_sync(t.put_from_thread, {"k": 3})
    assert db.statistics().accepted == 1


async def test_statistics_are_a_frozen_snapshot(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        before = db.statistics()
        await db.table("t", key="k").put({"k": 1})
        await db.flush()
        after = db.statistics()
    assert before == corral.DatabaseStatistics(0, 0, 0, 0, 0)
    assert after.accepted == after.committed == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.accepted = 5  # type: ignore[misc]
    assert any(name in repr(db) for name in ("postgresql", "sqlite", "dynamodb"))


async def test_the_password_is_hidden_in_repr(postgres_url: str) -> None:
    async with corral.connect(postgres_url) as db:
        assert db.dialect == "postgresql"
        assert db.url == postgres_url
        assert "postgresql://postgres@127.0.0.1" in repr(db) or "postgresql://" in repr(db)
    url = "postgresql://postgres:hunter2@127.0.0.1:1/test"
    assert "hunter2" not in repr(_database.redact(url))


# -- threads and put_many -------------------------------------------------------------------


async def test_put_from_threads(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1, "who": "loop"})

        def worker(start: int) -> None:
            for k in range(start, start + 50):
                t.put_from_thread({"k": k, "who": "worker"})

        def many(start: int) -> int:
            return t.put_many_from_thread({"k": k, "who": "many"} for k in range(start, start + 50))

        plain = [threading.Thread(target=worker, args=(1000 + 100 * i,)) for i in range(3)]
        for thread in plain:
            thread.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, worker, 0)
            tg.start_soon(anyio.to_thread.run_sync, many, 100)
            tg.start_soon(corral.to_thread, worker, 200)
        await anyio.to_thread.run_sync(lambda: [thread.join() for thread in plain])
        with pytest.raises(RuntimeError, match="event loop's own thread"):
            t.put_from_thread({"k": 0})
        await db.flush()
        got = Counter(row["who"] for row in await rows(db, "t"))
    assert got == {"loop": 1, "many": 50, "worker": 250}


async def test_errors_reach_the_thread(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        t = db.table("t", key="k")
        await t.put({"k": 1, "v": 1.0})

        def bad() -> None:
            t.put_from_thread({"k": 2, "v": "text"})

        with pytest.raises(corral.ColumnTypeError):
            await anyio.to_thread.run_sync(bad)


async def test_put_many_names_the_refused_row(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        t = db.table("t", key="k")
        rows: list[Mapping[str, Any]] = [{"k": 0}, {"k": 1}, {"k": 2, "x": 1}, {"k": 3}]
        with pytest.raises(corral.UnknownColumnError) as caught:
            await t.put_many(rows)
        assert "corral: raised for row 2 of put_many()" in caught.value.__notes__
        assert await t.put_many(iter([{"k": 5}, {"k": 6}])) == 2
        await db.flush()
        assert db.statistics().accepted == 4


async def test_a_refused_statement_is_a_query_error_naming_it(db_url: str) -> None:
    async def bad(conn: Connection) -> None:
        await conn.execute("SELECT * FROM no_such_table")

    async with corral.connect(db_url) as db:
        with pytest.raises(corral.QueryError, match="refused 'SELECT \\* FROM no_such_table'"):
            await db._run(bad)
        with pytest.raises(corral.QueryError) as caught:
            await db._run(bad)
        assert "no_such_table" in str(caught.value.__cause__)
        # The database goes on working.
        await db.jobs.enqueue(corral.jobs.Job("after"))
        assert (await db.jobs.depth()).ready == 1


# -- cancellation: a put that raised Cancelled did not happen -----------------------------


async def _committed_keys(db: corral.Database, table: str) -> set[int]:
    await db.flush()
    return {int(str(row["k"])) for row in await rows(db, table)}


async def test_a_put_in_a_cancelled_scope_either_raised_or_accepted(any_url: str) -> None:
    # trio's rule: an operation that raises Cancelled did not happen. A put that finds
    # room does not check for cancellation, so it accepts its row and returns, every
    # one of them: every _CHECKPOINT_EVERY-th put (which yields) included.
    async with corral.connect(any_url) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1})  # resolves the table
        returned: set[int] = set()
        raised: set[int] = set()
        for k in range(3 * _database._CHECKPOINT_EVERY + 5):
            with anyio.CancelScope() as scope:
                scope.cancel()
                try:
                    await t.put({"k": k})
                except anyio.get_cancelled_exc_class():
                    raised.add(k)
                    raise
                returned.add(k)
        assert raised == set()
        assert await _committed_keys(db, "t") == returned | {-1}
        assert db.statistics().accepted == len(returned) + 1


async def test_puts_cancelled_at_random_points_on_a_full_queue(any_url: str) -> None:
    # Producers put into a small queue (so that they wait for room), and are cancelled
    # after a seeded random number of scheduling points: while they wait for room, while
    # they yield at a _CHECKPOINT_EVERY-th put, or in a scope cancelled before their next
    # put. Whatever raised Cancelled left no row; whatever returned is committed.
    rng = random.Random(20261203)
    async with corral.connect(any_url, max_pending=400, batch_size=100) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1})
        returned: set[int] = set()
        raised: set[int] = set()

        async def produce(base: int, scope: anyio.CancelScope) -> None:
            with scope:
                for j in range(300):
                    try:
                        await t.put({"k": base + j})
                    except anyio.get_cancelled_exc_class():
                        raised.add(base + j)
                        raise
                    returned.add(base + j)

        for round_ in range(30):
            scopes = [anyio.CancelScope() for _ in range(2)]
            async with anyio.create_task_group() as tg:
                for p, scope in enumerate(scopes):
                    tg.start_soon(produce, (round_ * 2 + p) * 1000, scope)
                for scope in scopes:
                    for _ in range(rng.randrange(40)):
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()
            await db.flush()  # each round starts with room for 400 rows
        committed = await _committed_keys(db, "t")
        assert raised, "no put was cancelled: the test did not test anything"
        assert raised.isdisjoint(committed), sorted(raised & committed)[:10]
        assert committed == returned | {-1}
        stats = db.statistics()
        assert (stats.accepted, stats.committed) == (len(returned) + 1, len(returned) + 1)


async def test_put_many_cancelled_says_how_many_rows_it_accepted(any_url: str) -> None:
    rng = random.Random(7)
    async with corral.connect(any_url, max_pending=50, batch_size=20) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1})
        expected: set[int] = {-1}
        outcomes: list[tuple[int, BaseException | None]] = []

        async def produce(base: int, scope: anyio.CancelScope) -> None:
            with scope:
                try:
                    n = await t.put_many({"k": base + j} for j in range(200))
                except anyio.get_cancelled_exc_class() as exc:
                    outcomes.append((exc.corral_accepted, exc))  # type: ignore[union-attr]
                    raise
                outcomes.append((n, None))

        for round_ in range(40):
            scope = anyio.CancelScope()
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce, round_ * 1000, scope)
                for _ in range(rng.randrange(120)):
                    await anyio.lowlevel.checkpoint()
                scope.cancel()
            await db.flush()  # each round starts with room for 50 rows
            n, error = outcomes[-1]
            assert (error is None) == (n == 200)
            if error is not None:
                assert (
                    f"corral: put_many() was cancelled after accepting {n} rows"
                    in (error.__notes__[0])
                )
            expected |= {round_ * 1000 + j for j in range(n)}  # the first n rows, only them
        assert any(0 < n < 200 for n, _ in outcomes), "no put_many was interrupted midway"
        assert await _committed_keys(db, "t") == expected
        assert db.statistics().committed == len(expected)


async def test_put_many_refused_says_how_many_rows_it_accepted(any_url: str) -> None:
    async with corral.connect(any_url) as db:
        t = db.table("t", key="k")
        rows: list[Mapping[str, Any]] = [{"k": 0}, {"k": 1}, {"k": 2, "x": 1}, {"k": 3}]
        with pytest.raises(corral.UnknownColumnError) as caught:
            await t.put_many(rows)
        assert caught.value.corral_accepted == 2  # type: ignore[attr-defined]
        assert await _committed_keys(db, "t") == {0, 1}


# -- the writer stops while the body runs a task group ---------------------------------------


def _break_writes(db: corral.Database) -> None:
    """Make every later batch fail as a broken disk would: a fatal error for the writer."""

    async def broken(*args: object, **kwargs: object) -> list[object]:
        raise OSError("disk on fire")

    db._backend.write = broken  # type: ignore[method-assign,assignment]
    db._backend.commit = broken  # type: ignore[method-assign,assignment]


def _task_group(kind: str) -> Any:
    """An anyio task group, or the event loop's own (a trio nursery, an asyncio.TaskGroup)."""
    if kind == "anyio":
        return anyio.create_task_group()
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.open_nursery()
    import asyncio

    return asyncio.TaskGroup()


@pytest.mark.parametrize("group", ["anyio", "native"])
@pytest.mark.parametrize("trigger", ["timer", "flush", "operation"])
async def test_the_writer_stopping_under_a_task_group_raises_the_write_error(
    db_url: str, trigger: str, group: str
) -> None:
    # On trio the body's nursery raises a group of the Cancelled that the writer's stop
    # delivered (with the WriteError of a task that flushed or ran an operation, on
    # both loops): connect must raise the documented WriteError itself, not a group,
    # and not a Cancelled outside its scope.
    started = 0

    async def sleeper() -> None:
        nonlocal started
        started += 1
        await anyio.sleep_forever()

    async def body() -> None:
        # The timer: the writer commits the row on its own, flush_interval after it.
        interval = 0.01 if trigger == "timer" else 3600
        async with corral.connect(db_url, flush_interval=interval) as db:
            t = db.table("t", key="k")
            await t.put({"k": 0})
            await db.flush()
            _break_writes(db)
            async with _task_group(group) as tg:
                if hasattr(tg, "start_soon"):  # anyio, trio
                    start = tg.start_soon
                else:  # asyncio.TaskGroup
                    start = lambda fn, *args: tg.create_task(fn(*args))  # noqa: E731
                for _ in range(3):
                    start(sleeper)
                await anyio.wait_all_tasks_blocked()
                await t.put({"k": 1})
                if trigger == "flush":
                    start(db.flush)
                elif trigger == "operation":
                    start(db._run, lambda conn: conn.fetchval("SELECT 1"))
                await anyio.sleep_forever()
            pytest.fail("the body went on after the writer stopped")

    with pytest.raises(corral.WriteError, match="writer stopped: OSError: disk on fire") as info:
        await body()
    assert type(info.value) is corral.WriteError
    assert isinstance(info.value.__cause__, OSError)
    assert started == 3


async def test_a_postgresql_writer_that_cannot_reconnect_under_a_task_group(
    postgres_url: str,
) -> None:
    # The real thing: the server ends the writer's session and reconnecting is off.
    url = f"{postgres_url}&reconnect_timeout=0"

    async def body() -> None:
        async with corral.connect(url, flush_interval=3600) as db:
            t = db.table("t", key="k")
            await t.put({"k": 0})
            await db.flush()
            pid = await db._run(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(anyio.sleep_forever)
                async with corral.connect(postgres_url) as admin:
                    terminate = "SELECT pg_terminate_backend(CAST(? AS INTEGER))"
                    await admin._run(lambda conn: conn.execute(terminate, pid))
                await t.put({"k": 1})
                tg.start_soon(db.flush)
                await anyio.sleep_forever()

    with pytest.raises(corral.WriteError, match="writer stopped") as info:
        await body()
    assert type(info.value) is corral.WriteError
    assert await read_table(postgres_url, 'SELECT "k" FROM "t"') == [{"k": 0}]


async def test_the_body_s_own_error_under_a_stopped_writer_keeps_only_its_own_leaves(
    db_url: str,
) -> None:
    async def cleanup_fails() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            raise ValueError("cleanup failed")  # the body's own error

    async def body() -> None:
        async with corral.connect(db_url, flush_interval=0.01) as db:
            t = db.table("t", key="k")
            await t.put({"k": 0})
            await db.flush()
            _break_writes(db)
            async with _task_group("native") as tg:
                if hasattr(tg, "start_soon"):
                    tg.start_soon(anyio.sleep_forever)
                    tg.start_soon(cleanup_fails)
                else:
                    tg.create_task(anyio.sleep_forever())
                    tg.create_task(cleanup_fails())
                await anyio.wait_all_tasks_blocked()
                await t.put({"k": 1})
                await anyio.sleep_forever()

    with pytest.raises(ExceptionGroup) as info:
        await body()
    leaves = info.value.exceptions
    assert [type(leaf) for leaf in leaves] == [ValueError]
    notes = getattr(info.value, "__notes__", [])
    assert any("also, a write failed: WriteError" in note for note in notes)


async def test_rows_put_after_the_first_are_checked_as_fully_as_it_was(any_url: str) -> None:
    # put() compiles the checks that the first row's types passed (its fast path): every
    # later row it lets through must be one the full checks let through, and every row
    # they refuse it refuses, with the same error, before accepting it.
    nan_refused = not any_url.startswith("postgresql")  # SQLite and DynamoDB refuse NaN
    async with corral.connect(any_url) as db:
        t = db.table("fast", key="k")
        for k in range(3):  # types learned, then the fast path taken
            await t.put({"k": k, "a": "x", "b": 0.5})
        with pytest.raises(corral.ColumnTypeError):
            await t.put({"k": 10, "a": "x", "b": "not a number"})
        with pytest.raises(corral.MissingKeyError):
            await t.put({"k": None, "a": "x", "b": 0.5})
        with pytest.raises(corral.UnknownColumnError):
            await t.put({"k": 11, "a": "x", "c": 0.5})  # same width, other columns
        if nan_refused:
            with pytest.raises(corral.SchemaError, match=r"(?i)nan"):
                await t.put({"k": 12, "a": "x", "b": float("nan")})
        await t.put({"k": 13, "b": 1.5, "a": "y"})  # other order: a plan of its own
        await t.put({"k": 14, "a": None, "b": 2.5})  # NULL: other types, full checks
        await t.put({"k": 15, "a": "z", "b": 3})  # an int in a float column
        await t.put({"k": 16, "a": "w", "b": 4.5})  # the fast path again
        await db.flush()
        got = {int(str(r["k"])): (r["a"], float(str(r["b"]))) for r in await rows(db, "fast")}
        assert got == {
            0: ("x", 0.5),
            1: ("x", 0.5),
            2: ("x", 0.5),
            13: ("y", 1.5),
            14: (None, 2.5),
            15: ("z", 3.0),
            16: ("w", 4.5),
        }
        assert db.statistics().accepted == 7
