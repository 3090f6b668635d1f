"""The backends' pure parts: URLs, identifiers, SQL text, type mapping."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pytest

import corral
from corral._backends import (
    TableSchema,
    _postgres,
    _sqlite,
    check_identifier,
    parse_url,
    quote,
    redact,
    upsert_sql,
)


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
    with pytest.raises(ValueError, match="unsupported database URL scheme 'dynamodb'"):
        parse_url("dynamodb://table?region=eu")
    with pytest.raises(ValueError, match=r"'mysql'.*'mysql://root:\*\*\*@h/db'"):
        parse_url("mysql://root:pw@h/db")


def test_redact() -> None:
    assert redact("postgresql://u:pw@h:5/db?x=1") == "postgresql://u:***@h:5/db?x=1"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"


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
