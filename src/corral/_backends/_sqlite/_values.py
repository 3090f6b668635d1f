"""SQLite's values: the column types, and the conversions of what it cannot store as is.

SQLite's type affinity decides what a declared column takes (:func:`column_for`);
dates, times and decimals are bound as text, and the values SQLite would not give
back as they were (NaN, a ``Decimal`` its 64-bit integer or float would round) are
refused with a :class:`~corral.SchemaError` naming the column.
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Callable

from ..._exceptions import SchemaError
from ..._ports import Column
from .._sql._tables import BYTES_TYPES, infer_column_type

__all__ = ["column_for", "infer_type"]


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


def _where(name: str, table: str | None) -> str:
    return f"column {name!r}" + ("" if table is None else f" of table {table!r}")


def _nan_error(name: str, table: str | None) -> str:
    """Return the message refusing NaN in a column: SQLite would store it as NULL."""
    return (
        f"{_where(name, table)} got NaN, which SQLite stores as NULL (as a key, a new row "
        f"at every put): write None for a missing value, or keep NaN on PostgreSQL, which "
        f"stores it"
    )


def _refuse_nan(name: str, table: str | None) -> Callable[[object], object]:
    """Return the convert of a column that takes floats: NaN would be stored as NULL."""
    message = _nan_error(name, table)

    def convert(value: object) -> object:
        if value != value:  # NaN, the one value unequal to itself
            raise SchemaError(message)
        return value

    return convert


def _any_value(name: str, table: str | None) -> Callable[[object], object]:
    """Return the convert of a column without affinity: dates as text, and no NaN."""
    refuse_nan = _refuse_nan(name, table)

    def convert(value: object) -> object:
        if isinstance(value, float):
            return refuse_nan(value)
        return _to_text(value)

    return convert


#: SQLite's INTEGER: what a NUMERIC column keeps an integral value as.
_INT64 = range(-(2**63), 2**63)


def _numeric(name: str, declared: str, table: str | None) -> Callable[[object], object]:
    """Return the convert of a NUMERIC column: the number SQLite keeps, or a SchemaError.

    SQLite stores a NUMERIC value as a 64-bit integer or float: a ``Decimal`` that one
    of those cannot hold exactly (to the shortest repr of the float) would come back
    rounded, and a non-finite one as text. Those are refused; the others are bound as
    the int or float SQLite would keep.
    """
    refuse_nan = _refuse_nan(name, table)

    def convert(value: object) -> object:
        if not isinstance(value, decimal.Decimal):
            return refuse_nan(value)
        kept: float | int | None = None
        if value.is_finite():
            # adjusted(): the exponent of the first digit (int() of 1E+100000000 is slow).
            if (
                value.adjusted() < 19
                and value == value.to_integral_value()
                and int(value) in _INT64
            ):
                kept = int(value)
            else:
                number = float(value)
                if math.isfinite(number) and decimal.Decimal(repr(number)) == value:
                    kept = number
        if kept is None:
            raise SchemaError(
                f"{_where(name, table)} is {declared}, which SQLite stores as a 64-bit "
                f"integer or float: {value!r} would not come back as it is (at most 15 "
                f"to 17 significant digits, finite); store str(value) in a TEXT column "
                f"to keep every digit, or round it first"
            )
        return kept

    return convert


def column_for(name: str, declared: str, table: str | None = None) -> Column:
    """Return the column with the Python types its declared SQL type takes.

    SQLite's type affinity rules decide, with the usual names for dates and booleans.
    ``table`` is named in the errors of values SQLite cannot store faithfully.
    """
    d = declared.upper()
    if "INT" in d:
        return Column(name, declared, (int,), exclude=(bool,))
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return Column(name, declared, (str,))
    if "BLOB" in d:
        return Column(name, declared, BYTES_TYPES)
    if not d:
        return Column(name, declared, None, convert=_any_value(name, table))
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return Column(
            name, declared, (float, int), exclude=(bool,), nan_error=_nan_error(name, table)
        )
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
            name,
            declared,
            (decimal.Decimal, int, float),
            exclude=(bool,),
            convert=_numeric(name, declared, table),
        )
    return Column(name, declared, None, convert=_any_value(name, table))
