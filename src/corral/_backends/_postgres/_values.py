"""PostgreSQL's column types: what a new column is created as, what a column takes."""

from __future__ import annotations

import datetime
import decimal
import uuid

from ..._exceptions import SchemaError
from ..._ports import Column
from .._sql._tables import BYTES_TYPES, infer_column_type

__all__ = ["column_for", "infer_type"]

_INFERRED: list[tuple[type, str]] = [
    (bool, "BOOLEAN"),
    (int, "BIGINT"),
    (float, "DOUBLE PRECISION"),
    (str, "TEXT"),
    (bytes, "BYTEA"),
    (bytearray, "BYTEA"),
    (memoryview, "BYTEA"),
    (datetime.datetime, "TIMESTAMP"),
    (datetime.date, "DATE"),
    (datetime.time, "TIME"),
    (datetime.timedelta, "INTERVAL"),
    (decimal.Decimal, "NUMERIC"),
    (uuid.UUID, "UUID"),
]


def infer_type(column: str, value: object) -> str:
    """Return the SQL type to create ``column`` with, from its first value."""
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return "TIMESTAMPTZ"
    sql_type = infer_column_type(column, value, _INFERRED)
    if sql_type is None:
        raise SchemaError(
            f"column {column!r}: cannot infer a PostgreSQL type for a {type(value).__name__}; "
            f"use bool, int, float, str, bytes, datetime, date, time, timedelta, Decimal or "
            f"UUID, or create the table yourself"
        )
    return sql_type


def column_for(name: str, sql_type: str) -> Column:
    """Return the column with the Python types asyncpg takes for ``sql_type``.

    ``sql_type`` is what ``format_type`` prints. Types not listed here (arrays, JSON,
    your own) take any value, and the driver decides when the batch is written.
    """
    t = sql_type.lower()
    if t in ("smallint", "integer", "bigint"):
        return Column(name, sql_type, (int,), exclude=(bool,))
    if t in ("real", "double precision"):
        return Column(name, sql_type, (float, int), exclude=(bool,))
    if t.startswith("numeric"):
        return Column(name, sql_type, (decimal.Decimal, int, float), exclude=(bool,))
    if t == "text" or t.startswith(("character", "varchar", "citext")):
        return Column(name, sql_type, (str,))
    if t == "boolean":
        return Column(name, sql_type, (bool,))
    if t == "bytea":
        return Column(name, sql_type, BYTES_TYPES)
    if t.startswith("timestamp"):
        return Column(name, sql_type, (datetime.datetime,))
    if t == "date":
        return Column(name, sql_type, (datetime.date,), exclude=(datetime.datetime,))
    if t.startswith("time"):
        return Column(name, sql_type, (datetime.time,))
    if t.startswith("interval"):
        return Column(name, sql_type, (datetime.timedelta,))
    if t == "uuid":
        return Column(name, sql_type, (uuid.UUID, str))
    return Column(name, sql_type, None)
