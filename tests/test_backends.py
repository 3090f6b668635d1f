"""The backends: URLs, identifiers, SQL text, type mapping, and what each database stores."""

from __future__ import annotations

import datetime
import decimal
import math
import os
import re
import shutil
import traceback
import typing
import urllib.parse
import uuid
from pathlib import Path

import anyio
import pytest

import corral
from corral._backends import (
    Connection,
    SqliteOptions,
    TableSchema,
    _postgres,
    _sqlite,
    check_identifier,
    parse_url,
    quote,
    redact,
    scrub,
    sqlite_options,
    upsert_sql,
)
from corral._ports import Run


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///corral.db", ("sqlite", "corral.db")),
        ("sqlite:///data/run%201.db", ("sqlite", "data/run 1.db")),
        ("sqlite:////abs/path.db", ("sqlite", "/abs/path.db")),
        ("sqlite:///:memory:", ("sqlite", ":memory:")),
        ("SQLite:///x.db", ("sqlite", "x.db")),
        ("postgresql://u@h:5432/db", ("postgresql", "postgresql://u@h:5432/db")),
        ("postgres://u@h/db?search_path=s", ("postgresql", "postgres://u@h/db?search_path=s")),
    ],
)
def test_parse_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_url(url) == expected


def test_parse_url_refuses_what_it_does_not_know() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_url(None)
    with pytest.raises(ValueError, match="unsupported database URL scheme 'mongodb'"):
        parse_url("mongodb://table?region=eu")
    assert parse_url("dynamodb://table?region=eu") == ("dynamodb", "dynamodb://table?region=eu")
    with pytest.raises(ValueError, match=r"'mysql'.*'mysql://root:\*\*\*@h/db'"):
        parse_url("mysql://root:pw@h/db")


def test_redact() -> None:
    assert redact("postgresql://u:pw@h:5/db?x=1") == "postgresql://u:***@h:5/db?x=1"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"


# -- URLs: query parameters, secrets, refusals (issue 11: items 17, 18, 19) -------------------

#: A password, and every form of a PostgreSQL URL that can carry it (or another secret).
SECRET = "s3cr3t-Pw"
SECRET_FORMS = [
    f"postgresql://postgres:{SECRET}@127.0.0.1:1/test",
    f"postgres://postgres:{SECRET}@127.0.0.1:1/test?sslmode=disable",
    f"postgresql://postgres:{SECRET}%40x@127.0.0.1:1/test",  # percent-encoded (p@x)
    f"postgresql://postgres:{SECRET}@127.0.0.1:1,127.0.0.1:2/test",  # several hosts
    f"postgresql://postgres@127.0.0.1:1/test?password={SECRET}",
    f"postgresql://postgres@127.0.0.1:1/test?sslmode=disable&password={SECRET}",
    f"postgresql://postgres@127.0.0.1:1/test?pass%77ord={SECRET}",  # the key encoded
    f"postgresql://postgres@127.0.0.1:1/test?password={SECRET}&password={SECRET}2",
    f"postgresql://postgres@127.0.0.1:1/test?sslmode=disable&sslpassword={SECRET}",
]


@pytest.mark.parametrize("url", SECRET_FORMS)
def test_redact_hides_every_form_of_a_password(url: str) -> None:
    redacted = redact(url)
    assert SECRET not in redacted
    assert "***" in redacted
    assert "127.0.0.1:1" in redacted  # the rest of the URL stays readable


def test_redact_keeps_what_is_not_secret() -> None:
    url = "postgresql://u@h/db?passfile=/home/u/.pgpass&search_path=s&application_name=pw"
    assert redact(url) == url


@pytest.mark.parametrize("url", SECRET_FORMS)
def test_scrub_hides_the_passwords_in_a_drivers_message(url: str) -> None:
    password = f"{SECRET}@x" if "%40x" in url else SECRET  # as asyncpg decodes it
    message = f"could not log in as postgres with {password} ({urllib.parse.quote(password)})"
    assert SECRET not in scrub(message, url)
    assert scrub("connection refused", url) == "connection refused"


@pytest.mark.parametrize("url", SECRET_FORMS)
async def test_connect_error_hides_the_password(url: str) -> None:
    with pytest.raises(corral.ConnectError, match="could not connect to PostgreSQL") as info:
        async with corral.connect(url):
            pass
    shown = "".join(traceback.format_exception_only(info.value))
    assert SECRET not in shown
    assert "127.0.0.1:1" in shown


async def test_repr_of_a_database_hides_the_password(postgres_url: str) -> None:
    """Trust authentication ignores the password: the connections are real."""
    assert postgres_url.startswith("postgresql://postgres@")
    for url in [
        postgres_url.replace("postgres@", f"postgres:{SECRET}@", 1),
        f"{postgres_url}&password={SECRET}",
        f"{postgres_url}&sslpassword={SECRET}",
    ]:
        async with corral.connect(url) as db:
            for shown in (repr(db), repr(db.jobs), repr(db.progress)):
                assert SECRET not in shown
                assert "***" in shown


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", SqliteOptions()),
        ("?mode=ro", SqliteOptions(mode="ro")),
        ("?mode=RW&synchronous=full", SqliteOptions(mode="rw", synchronous="FULL")),
        ("?synchronous=extra&timeout=2.5", SqliteOptions(synchronous="EXTRA", timeout=2.5)),
        ("?synchronous=Normal&mode=rwc", SqliteOptions()),
    ],
)
def test_sqlite_url_parameters(query: str, expected: SqliteOptions) -> None:
    assert parse_url(f"sqlite:///x.db{query}") == ("sqlite", "x.db")
    assert sqlite_options(f"sqlite:///x.db{query}") == expected


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("?mod=ro", r"unknown parameter 'mod'.*takes mode=ro\|rw\|rwc, synchronous="),
        ("?mode=readonly", r"mode='readonly'.*mode=ro \(read only\), rw .*rwc"),
        ("?synchronous=sometimes", r"synchronous='sometimes'.*normal, full or extra"),
        ("?timeout=soon", r"timeout='soon'.*seconds"),
        ("?timeout=-1", r"timeout='-1'.*seconds"),
        ("?timeout=nan", r"timeout='nan'.*seconds"),
        ("?mode=ro&mode=rw", r"gives 'mode' twice"),
        ("?mode", r"mode=''"),
    ],
)
def test_sqlite_url_refuses_unknown_and_bad_parameters(query: str, match: str) -> None:
    with pytest.raises(corral.DatabaseURLError, match=match):
        parse_url(f"sqlite:///x.db{query}")


@pytest.mark.parametrize("url", ["sqlite:///a%00b.db", "sqlite:///a\x00b.db"])
async def test_a_nul_in_a_sqlite_path_is_a_url_error(url: str) -> None:
    with pytest.raises(corral.DatabaseURLError, match=r"NUL character.*no file name"):
        parse_url(url)
    with pytest.raises(corral.DatabaseURLError):
        async with corral.connect(url):
            pass


def test_url_errors_are_value_errors_and_hide_passwords() -> None:
    with pytest.raises(corral.DatabaseURLError) as info:
        parse_url(f"mysql://root:{SECRET}@h/db")
    assert isinstance(info.value, ValueError)  # as before: a bad value
    assert SECRET not in str(info.value)
    with pytest.raises(corral.DatabaseURLError, match="has no host") as info:
        parse_url(f"sqlite://root:{SECRET}@h/x.db")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("name", ["a", "_a", "A_1", "prices", "x" * 63])
def test_plain_identifiers_pass(name: str) -> None:
    assert check_identifier("table", name) == name
    assert quote(name) == f'"{name}"'


@pytest.mark.parametrize(
    "name", ["", "1a", "a-b", "a b", 'a"', "a;", "é", "x" * 64, "a\x00", "a.b", "a\n"]
)
def test_other_names_fail(name: str) -> None:
    with pytest.raises(corral.IdentifierError, match="not a plain identifier"):
        check_identifier("column", name)


def test_upsert_sql_quotes_every_name() -> None:
    table = TableSchema("prices", ("ticker", "day"), {})
    sql = upsert_sql(table, ("ticker", "day", "close"), "VALUES (?, ?, ?)")
    assert sql == (
        'INSERT INTO "prices" ("ticker", "day", "close") VALUES (?, ?, ?) '
        'ON CONFLICT ("ticker", "day") DO UPDATE SET "close" = excluded."close"'
    )
    assert upsert_sql(table, ("ticker", "day"), "VALUES (?, ?)").endswith("DO NOTHING")


def test_numbered_placeholders() -> None:
    assert _postgres.numbered("SELECT ? , ?") == "SELECT $1 , $2"
    assert _postgres.numbered("SELECT '?', \"a?\", ?") == "SELECT '?', \"a?\", $1"
    assert _postgres.numbered("SELECT 'it''s ?' WHERE x = ?") == "SELECT 'it''s ?' WHERE x = $1"
    assert _postgres.numbered("SELECT 1") == "SELECT 1"


@pytest.mark.parametrize(
    ("value", "sqlite", "postgres"),
    [
        (True, "BOOLEAN", "BOOLEAN"),
        (1, "INTEGER", "BIGINT"),
        (1.5, "REAL", "DOUBLE PRECISION"),
        ("s", "TEXT", "TEXT"),
        (b"b", "BLOB", "BYTEA"),
        (datetime.datetime(2026, 1, 1), "TIMESTAMP", "TIMESTAMP"),
        (datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), "TIMESTAMP", "TIMESTAMPTZ"),
        (datetime.date(2026, 1, 1), "DATE", "DATE"),
        (datetime.time(1, 2), "TIME", "TIME"),
        (decimal.Decimal("1.5"), "NUMERIC", "NUMERIC"),
    ],
)
def test_inferred_types(value: object, sqlite: str, postgres: str) -> None:
    assert _sqlite.infer_type("c", value) == sqlite
    assert _postgres.infer_type("c", value) == postgres


def test_types_that_cannot_be_inferred() -> None:
    for infer in (_sqlite.infer_type, _postgres.infer_type):
        with pytest.raises(corral.SchemaError, match="column 'c' is None"):
            infer("c", None)
        with pytest.raises(corral.SchemaError, match="dict"):
            infer("c", {"a": 1})
    assert _postgres.infer_type("c", uuid.uuid4()) == "UUID"
    with pytest.raises(corral.SchemaError, match="UUID"):
        _sqlite.infer_type("c", uuid.uuid4())


def _accepts(column: object, value: object) -> bool:
    types = column.types  # type: ignore[attr-defined]
    exclude = column.exclude  # type: ignore[attr-defined]
    return types is None or (isinstance(value, types) and not isinstance(value, exclude))


@pytest.mark.parametrize(
    ("declared", "good", "bad"),
    [
        ("INTEGER", [1], [True, 1.5, "1"]),
        ("BIGINT", [1], [True]),
        ("VARCHAR(20)", ["x"], [1]),
        ("REAL", [1.5, 2], [True, "1.5"]),
        ("DOUBLE PRECISION", [1.5], [b"x"]),
        ("BOOLEAN", [True, 0], ["yes"]),
        ("BLOB", [b"x", bytearray(b"x")], ["x"]),
        ("TIMESTAMP", [datetime.datetime(2026, 1, 1), "2026-01-01 00:00:00"], [1]),
        ("DATE", [datetime.date(2026, 1, 1), "2026-01-01"], [datetime.datetime(2026, 1, 1)]),
        ("NUMERIC(10, 2)", [decimal.Decimal("1.5"), 1, 1.5], [True, "1"]),
        ("", [1, "x", b"x", None], []),
        ("JSON", [1, "x"], []),
    ],
)
def test_sqlite_columns_take_what_their_affinity_stores(
    declared: str, good: list[object], bad: list[object]
) -> None:
    column = _sqlite.column_for("c", declared)
    for value in good:
        assert _accepts(column, value), (declared, value)
    for value in bad:
        assert not _accepts(column, value), (declared, value)


def test_sqlite_converts_dates_and_decimals_to_text() -> None:
    convert = _sqlite.column_for("c", "TIMESTAMP").convert
    assert convert is not None
    assert convert(datetime.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02 03:04:05"
    assert convert(datetime.date(2026, 1, 2)) == "2026-01-02"
    assert convert(decimal.Decimal("1.50")) == "1.50"
    assert convert("as is") == "as is"


# -- SQLite: what it cannot store faithfully is refused (issue 11: item 8) --------------------


async def _fetch(db: corral.Database, sql: str) -> list[dict[str, object]]:
    async def read(conn: Connection) -> list[dict[str, object]]:
        return await conn.fetch(sql)

    return await db._run(read)


async def _execute(db: corral.Database, sql: str) -> None:
    async def run(conn: Connection) -> None:
        await conn.execute(sql)

    await db._run(run)


def _sqlite_url(tmp_path: Path, query: str = "") -> str:
    return f"sqlite:///{tmp_path / 'test.db'}{query}"


async def test_sqlite_refuses_nan_in_any_column(tmp_path: Path) -> None:
    async with corral.connect(_sqlite_url(tmp_path)) as db:
        await _execute(db, "CREATE TABLE t (k REAL PRIMARY KEY, v REAL, n NUMERIC, u)")
        t = db.table("t", key="k")
        for row, column in [
            ({"k": float("nan"), "v": 1.0}, "k"),  # a NULL key: every put a new row
            ({"k": 1.0, "v": float("nan")}, "v"),
            ({"k": 1.0, "n": float("nan")}, "n"),
            ({"k": 1.0, "u": float("nan")}, "u"),
        ]:
            with pytest.raises(
                corral.SchemaError,
                match=rf"column '{column}' of table 't' got NaN, which SQLite stores as NULL",
            ):
                await t.put(row)
        await t.put({"k": 1.0, "v": float("inf"), "n": float("-inf"), "u": 2.5})
        await db.flush()
        assert db.statistics().accepted == 1  # the refused rows were never accepted
        rows = await _fetch(db, "SELECT k, v, n, u FROM t")
    assert rows == [{"k": 1.0, "v": float("inf"), "n": float("-inf"), "u": 2.5}]


async def test_sqlite_numeric_takes_only_the_decimals_it_keeps(tmp_path: Path) -> None:
    kept = [decimal.Decimal(text) for text in ("1.50", "0.1", "1E+19", "9.3E+18", "-1E-300")]
    kept.append(decimal.Decimal(-(2**63)))
    lost = ["3.14159265358979323846", "12345678901234567890", "1E+400", "NaN", "-Infinity"]
    async with corral.connect(_sqlite_url(tmp_path)) as db:
        t = db.table("d", key="k")
        for k, value in enumerate(kept):
            await t.put({"k": k, "n": value})  # the first creates n NUMERIC
        assert t.columns == {"k": "INTEGER", "n": "NUMERIC"}
        for text in lost:
            shown = re.escape(repr(decimal.Decimal(text)))
            with pytest.raises(
                corral.SchemaError,
                match=rf"column 'n' of table 'd' is NUMERIC.*{shown}.*TEXT column",
            ):
                await t.put({"k": 9, "n": decimal.Decimal(text)})
        await db.flush()
        rows = await _fetch(db, "SELECT n FROM d ORDER BY k")
    assert [decimal.Decimal(str(row["n"])) for row in rows] == kept  # same values
    assert db.statistics().accepted == len(kept)


async def test_sqlite_keeps_a_decimal_as_text_in_an_untyped_column(tmp_path: Path) -> None:
    value = decimal.Decimal("3.14159265358979323846")
    async with corral.connect(_sqlite_url(tmp_path)) as db:
        await _execute(db, "CREATE TABLE u (k INTEGER PRIMARY KEY, v)")
        await db.table("u", key="k").put({"k": 1, "v": value})
        await db.flush()
        assert await _fetch(db, "SELECT v FROM u") == [{"v": str(value)}]


async def test_postgres_stores_nan_and_every_digit(postgres_url: str) -> None:
    """What SQLite refuses, PostgreSQL stores faithfully (docs/database.md says both)."""
    digits = decimal.Decimal("3.14159265358979323846")
    async with corral.connect(postgres_url) as db:
        t = db.table("t", key="k")
        await t.put({"k": float("nan"), "v": float("nan"), "n": digits})
        await t.put({"k": float("nan"), "v": 2.0, "n": digits})  # the same key: NaN = NaN
        await db.flush()
        await t.put({"k": float("nan"), "v": 3.0, "n": digits})
        await db.flush()
        rows = await _fetch(db, "SELECT k, v, n FROM t")
    assert len(rows) == 1
    assert math.isnan(typing.cast(float, rows[0]["k"]))
    assert (rows[0]["v"], rows[0]["n"]) == (3.0, digits)


# -- SQLite: URL parameters, a file that goes away, limits (issue 11: items 9, 18, 19) --------


@pytest.mark.parametrize(
    ("query", "level"),
    [("", 1), ("?synchronous=full", 2), ("?synchronous=EXTRA", 3), ("?synchronous=normal", 1)],
)
async def test_sqlite_synchronous_from_the_url(tmp_path: Path, query: str, level: int) -> None:
    async with corral.connect(_sqlite_url(tmp_path, query)) as db:
        [row] = await _fetch(db, "PRAGMA synchronous")
        assert row == {"synchronous": level}  # 1 NORMAL, 2 FULL, 3 EXTRA


async def test_sqlite_timeout_from_the_url(tmp_path: Path) -> None:
    async with corral.connect(_sqlite_url(tmp_path, "?timeout=2.5")) as db:
        assert await _fetch(db, "PRAGMA busy_timeout") == [{"timeout": 2500}]


async def test_sqlite_mode_ro_refuses_writes(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    async with corral.connect(url) as db:
        await db.table("t", key="k").put({"k": 1, "v": 1})
    async with corral.connect(f"{url}?mode=ro") as db:
        assert await _fetch(db, "SELECT k, v FROM t") == [{"k": 1, "v": 1}]
        t = db.table("t", key="k")
        with pytest.raises(corral.ReadOnlyError, match=r"read-only \(mode=ro\).*table 't'"):
            await t.put({"k": 2, "v": 2})
        with pytest.raises(corral.ReadOnlyError, match=r"read-only \(mode=ro\).*table 'new'"):
            await db.table("new", key="k").put({"k": 1})
        with pytest.raises(corral.ReadOnlyError, match=r"read-only \(mode=ro\)"):
            await db.progress.start_run("STATIC", "x")  # a write through the writer
        await db.flush()
        assert db.statistics().accepted == 0
    async with corral.connect(url) as db:
        assert await _fetch(db, "SELECT k, v FROM t") == [{"k": 1, "v": 1}]
        tables = await _fetch(db, "SELECT name FROM sqlite_master WHERE type = 'table'")
        assert tables == [{"name": "t"}]


async def test_sqlite_mode_rw_does_not_create_the_file(tmp_path: Path) -> None:
    with pytest.raises(corral.ConnectError, match="file does not exist, and mode=rw opens only"):
        async with corral.connect(_sqlite_url(tmp_path, "?mode=rw")):
            pass
    assert not (tmp_path / "test.db").exists()
    async with corral.connect(_sqlite_url(tmp_path, "?mode=rwc")):
        pass
    assert (tmp_path / "test.db").exists()


async def test_sqlite_path_with_url_characters(tmp_path: Path) -> None:
    folder = tmp_path / "a b?c#d%e"
    folder.mkdir()
    url = f"sqlite:///{urllib.parse.quote(str(folder / 'x.db'))}?mode=rwc"
    async with corral.connect(url) as db:
        await db.table("t", key="k").put({"k": 1})
    assert (folder / "x.db").exists()


@pytest.mark.parametrize("how", ["rmtree", "replace", "rename"])
async def test_sqlite_file_removed_while_open_stops_the_writer(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "x.db"

    async def run() -> None:
        async with corral.connect(f"sqlite:///{path}") as db:
            t = db.table("t", key="k")
            await t.put({"k": 1})
            await db.flush()
            if how == "rmtree":
                shutil.rmtree(folder)
            elif how == "replace":
                (folder / "other.db").write_bytes(b"")
                os.replace(folder / "other.db", path)
            else:
                os.rename(path, folder / "moved.db")
            await t.put({"k": 2})
            await db.flush()  # raises, and so does connect's exit: the writer stopped

    with pytest.raises(corral.WriteError, match="moved, replaced or deleted") as info:
        await run()
    assert isinstance(info.value.__cause__, corral.DatabaseMovedError)
    assert "rows not committed before" in str(info.value.__cause__)
    assert str(path) in str(info.value.__cause__)


async def test_sqlite_a_relative_path_survives_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is the one opened, wherever the process moves: not 'moved'."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    async with corral.connect("sqlite:///test.db") as db:
        t = db.table("t", key="k")
        await t.put({"k": 1})
        await db.flush()
        monkeypatch.chdir(tmp_path / "elsewhere")
        await t.put({"k": 2})
        await db.flush()
        assert await _fetch(db, "SELECT k FROM t") == [{"k": 1}, {"k": 2}]


class _Float(float):
    """A float subclass, as numpy's float64 is."""


async def test_sqlite_refuses_nan_of_a_float_subclass_and_huge_decimals(tmp_path: Path) -> None:
    async with corral.connect(_sqlite_url(tmp_path)) as db:
        await _execute(db, "CREATE TABLE t (k INTEGER PRIMARY KEY, v REAL, n NUMERIC, u)")
        t = db.table("t", key="k")
        for column in ("v", "n", "u"):
            with pytest.raises(corral.SchemaError, match=f"column '{column}' .* got NaN"):
                await t.put({"k": 1, column: _Float("nan")})
        for huge in ("1E+100000000", "-1E+100000000", "1E-100000000"):
            with pytest.raises(corral.SchemaError, match="would not come back as it is"):
                await t.put({"k": 1, "n": decimal.Decimal(huge)})  # refused at once
        assert db.statistics().accepted == 0


@pytest.mark.parametrize("count", [1, 2, 3, 1023, 1024, 1025, 2 * 1024 + 777])
async def test_sqlite_upserts_runs_of_every_size_many_rows_to_a_statement(
    tmp_path: Path, count: int
) -> None:
    # A run is written in statements of up to ROWS_PER_STATEMENT rows, the rest in
    # falling powers of two: every row lands, and a key given twice (within one
    # statement, and across two) keeps its last row.
    backend = await _sqlite.SqliteBackend.open(str(tmp_path / "t.db"))
    try:
        schema = await backend.resolve("t", ("k",), {"k": 0, "v": "x"})
        columns = ("k", "v")
        rows: list[tuple[object, ...]] = [(i % max(count - 5, 1), f"v{i}") for i in range(count)]
        failures = await backend.write([Run(schema, columns, rows)], begin=True, commit=True)
        assert failures == []
        expected = {k: v for k, v in rows}
        stored = await backend.call(
            lambda: dict(backend.conn.execute('SELECT "k", "v" FROM "t"').fetchall())
        )
        assert stored == expected
    finally:
        await backend.close()


async def test_sqlite_a_failing_row_in_a_many_row_statement_is_found(tmp_path: Path) -> None:
    backend = await _sqlite.SqliteBackend.open(str(tmp_path / "t.db"))
    try:
        await backend.call(
            lambda: backend.conn.execute(
                'CREATE TABLE "c" ("k" INTEGER PRIMARY KEY, "v" INTEGER CHECK ("v" >= 0))'
            ).close()
        )
        schema = await backend.resolve("c", ("k",), {"k": 0, "v": 0})
        rows: list[tuple[object, ...]] = [(i, -1 if i in (5, 1500) else i) for i in range(3000)]
        failures = await backend.write([Run(schema, ("k", "v"), rows)], begin=True, commit=True)
        assert [(run, index) for run, index, _ in failures] == [(0, 5), (0, 1500)]
        count = await backend.call(
            lambda: backend.conn.execute('SELECT count(*) FROM "c"').fetchone()[0]
        )
        assert count == 2998
    finally:
        await backend.close()


async def test_sqlite_too_many_columns_is_a_schema_error(tmp_path: Path) -> None:
    async with corral.connect(_sqlite_url(tmp_path)) as db:
        row = {"k": 1, **{f"c{i}": i for i in range(2000)}}
        with pytest.raises(corral.SchemaError, match=r"2001 columns.*at most 2000"):
            await db.table("wide", key="k").put(row)
        await db.table("ok", key="k").put({"k": 1, **{f"c{i}": i for i in range(1999)}})
        await db.flush()


@pytest.mark.parametrize(
    ("sql_type", "good", "bad"),
    [
        ("integer", [1], [True, 1.5]),
        ("bigint", [1], ["1"]),
        ("double precision", [1.5, 1], [True]),
        ("numeric(10,2)", [decimal.Decimal("1"), 1, 1.5], [True]),
        ("text", ["x"], [1]),
        ("character varying(10)", ["x"], [1]),
        ("boolean", [True], [1]),
        ("bytea", [b"x", memoryview(b"x")], ["x"]),
        ("timestamp with time zone", [datetime.datetime(2026, 1, 1)], ["2026-01-01"]),
        ("date", [datetime.date(2026, 1, 1)], [datetime.datetime(2026, 1, 1), "x"]),
        ("time without time zone", [datetime.time(1)], ["01:00"]),
        ("interval", [datetime.timedelta(1)], [1]),
        ("uuid", [uuid.uuid4(), "0" * 32], [1]),
        ("jsonb", [1, "x"], []),
        ("integer[]", [[1]], []),
    ],
)
def test_postgres_columns_take_what_asyncpg_encodes(
    sql_type: str, good: list[object], bad: list[object]
) -> None:
    column = _postgres.column_for("c", sql_type)
    for value in good:
        assert _accepts(column, value), (sql_type, value)
    for value in bad:
        assert not _accepts(column, value), (sql_type, value)


# -- PostgreSQL: the driver's errors, translated ----------------------------------------------


async def test_postgresql_a_row_with_too_many_columns_is_a_schema_error(postgres_url: str) -> None:
    async with corral.connect(postgres_url) as db:
        wide = db.table("wide", key="c0")
        with pytest.raises(corral.SchemaError, match=r"at most 1600 columns.*1601") as caught:
            await wide.put({f"c{i}": i for i in range(1601)})
        assert type(caught.value.__cause__).__name__ == "TooManyColumnsError"
        narrow = db.table("narrow", key="k")
        await narrow.put({"k": 1})  # the database goes on
        await db.flush()


async def test_postgresql_a_statement_timeout_is_a_query_error(postgres_url: str) -> None:
    # Another transaction creates the table and holds on: creating it here waits for that
    # one, until the server's statement_timeout cancels it.
    timeout = urllib.parse.quote("-c statement_timeout=200")
    url = f"{postgres_url}&options={timeout}"
    async with corral.connect(postgres_url) as other, corral.connect(url) as db:
        creating, release = anyio.Event(), anyio.Event()

        async def create(conn: Connection) -> None:
            await conn.execute('CREATE TABLE "t" ("k" BIGINT PRIMARY KEY)')
            creating.set()
            await release.wait()
            raise RuntimeError("rolled back")

        async def hold() -> None:
            with pytest.raises(RuntimeError, match="rolled back"):
                await other._run(create)

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await creating.wait()
            try:
                with pytest.raises(corral.QueryError, match="statement timeout") as caught:
                    await db.table("t", key="k").put({"k": 1})
            finally:
                release.set()
        assert type(caught.value.__cause__).__name__ == "QueryCanceledError"

        async def sleeps(conn: Connection) -> None:
            await conn.execute("SELECT pg_sleep(60)")

        with pytest.raises(corral.QueryError, match="statement timeout") as caught:
            await db._run(sleeps)
        assert type(caught.value.__cause__).__name__ == "QueryCanceledError"


async def test_postgresql_a_dropped_connection_names_its_cause(postgres_url: str) -> None:
    # The writer's INSERT waits for a key another transaction holds, and its server process
    # is terminated meanwhile: the error names the termination, not what the writer tried
    # next on the dead connection (a savepoint's rollback: "connection is closed").
    url = f"{postgres_url}&reconnect_timeout=0"
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE pid = ? AND wait_event_type = 'Lock'"
    terminate = "SELECT pg_terminate_backend(CAST(? AS INTEGER))"
    async with corral.connect(postgres_url) as other, corral.connect(postgres_url) as admin:
        holding = anyio.Event()

        async def hold(conn: Connection) -> None:
            await conn.execute('INSERT INTO "t" VALUES (5)')
            holding.set()
            await anyio.sleep_forever()  # until cancelled: rolled back

        async def flush(db: corral.Database) -> None:
            with pytest.raises(corral.WriteError):
                await db.flush()

        async def body() -> None:
            async with corral.connect(url, flush_interval=3600) as db:
                t = db.table("t", key="k")
                await t.put({"k": 0})
                await db.flush()
                pid = await db._run(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(other._run, hold)
                    await holding.wait()
                    for k in range(1, 10):
                        await t.put({"k": k})
                    tg.start_soon(flush, db)
                    while not await admin._run(lambda conn: conn.fetchval(waiting, pid)):
                        pass
                    await admin._run(lambda conn: conn.execute(terminate, pid))
                    await anyio.sleep_forever()  # cancelled when the writer stops

        with pytest.raises(corral.WriteError, match="writer stopped") as caught:
            await body()
    message = str(caught.value)
    assert "administrator command" in message, message
    assert "connection is closed" not in message, message
    assert "cannot switch to state" not in message, message
