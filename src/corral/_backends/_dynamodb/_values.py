"""DynamoDB's values: attribute values in and out, and the column types of user tables.

DynamoDB keeps strings (``S``), numbers (``N``: up to 38 significant digits), binary
(``B``), booleans and NULL; corral keeps dates and times as ISO-8601 text, and reads
them back by the column's type, recorded in the table's catalog item. What DynamoDB
cannot hold is refused before anything is written: at ``put()`` for a type or a float
it cannot store (NaN, infinities), and by the batch, as that row's ``WriteError``, for
a value only seen when it is encoded (an integer beyond 64 bits, as on the SQL stores,
so that data moves between stores; a ``Decimal`` of more than 38 digits; an empty
string in a key).
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..._exceptions import SchemaError
from ..._ports import Column
from .._sql._tables import check_identifier, infer_column_type

__all__ = [
    "COLUMN_TYPES",
    "KEY_TYPES",
    "column_for",
    "decode",
    "decode_item",
    "encode",
    "encode_item",
    "infer_type",
]

_INT64 = 2**63

#: The column types of a user table: name -> (accepted Python types, refused subclasses).
COLUMN_TYPES: dict[str, tuple[tuple[type, ...], tuple[type, ...]]] = {
    "BOOLEAN": ((bool,), ()),
    "INTEGER": ((int,), (bool,)),
    "REAL": ((float, int), (bool,)),
    "TEXT": ((str,), ()),
    "BINARY": ((bytes, bytearray, memoryview), ()),
    "TIMESTAMP": ((datetime.datetime,), ()),
    "DATE": ((datetime.date,), (datetime.datetime,)),
    "TIME": ((datetime.time,), ()),
    "NUMERIC": ((decimal.Decimal, int), (bool,)),
}

#: The DynamoDB key attribute type of each column type that can be a key.
KEY_TYPES = {
    "INTEGER": "N",
    "REAL": "N",
    "NUMERIC": "N",
    "TEXT": "S",
    "TIMESTAMP": "S",
    "DATE": "S",
    "TIME": "S",
    "BINARY": "B",
}

_INFERRED: list[tuple[type, str]] = [
    (bool, "BOOLEAN"),
    (int, "INTEGER"),
    (float, "REAL"),
    (str, "TEXT"),
    (bytes, "BINARY"),
    (bytearray, "BINARY"),
    (memoryview, "BINARY"),
    (datetime.datetime, "TIMESTAMP"),
    (datetime.date, "DATE"),
    (datetime.time, "TIME"),
    (decimal.Decimal, "NUMERIC"),
]

_CONTEXT = decimal.Context(prec=38)


def infer_type(column: str, value: object) -> str:
    """Return the column type to record for ``column``, from its first value.

    Raises :class:`~corral.SchemaError` for a name that is not a plain identifier
    (:class:`~corral.IdentifierError`, the SQL stores' rule: a table moves between
    stores), for None (no type to infer: the SQL stores' message) and for a type
    DynamoDB cannot hold.
    """
    check_identifier("column", column)
    found = infer_column_type(column, value, _INFERRED)
    if found is not None:
        return found
    raise SchemaError(
        f"column {column!r}: cannot store a {type(value).__name__} in DynamoDB; use bool, "
        f"int, float, str, bytes, datetime, date, time or Decimal"
    )


def _finite(name: str, table: str) -> Callable[[object], object]:
    def convert(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            raise SchemaError(
                f"column {name!r} of table {table!r} got {value!r}, which DynamoDB cannot "
                f"store (its numbers are finite): write None for a missing value"
            )
        if isinstance(value, decimal.Decimal) and not value.is_finite():
            raise SchemaError(
                f"column {name!r} of table {table!r} got Decimal {value}, which DynamoDB "
                f"cannot store (its numbers are finite): write None for a missing value"
            )
        return value

    return convert


def column_for(name: str, column_type: str, table: str) -> Column:
    """Return the :class:`Column` of a user table's column of type ``column_type``."""
    types, exclude = COLUMN_TYPES[column_type]
    convert = _finite(name, table) if column_type in ("REAL", "NUMERIC") else None
    return Column(name, column_type, types, exclude, convert)


def _number(value: int | float | decimal.Decimal, where: str) -> str:
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise SchemaError(
                f"{where} got {value}, beyond 64 bits: corral's integer columns hold "
                f"64-bit integers on every store; store it as a Decimal (up to 38 digits) "
                f"or as text"
            )
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError(f"{where} got {value!r}: DynamoDB numbers are finite")
        return repr(value)
    if not value.is_finite():
        raise SchemaError(f"{where} got Decimal {value}: DynamoDB numbers are finite")
    if len(value.as_tuple().digits) > 38:
        raise SchemaError(
            f"{where} got Decimal {value}, of more than 38 significant digits, which "
            f"DynamoDB cannot hold: round it, or store it as text"
        )
    return str(value)


def encode(value: object, where: str = "a value") -> dict[str, Any]:
    """Return the attribute value of a Python value (raise :class:`SchemaError` if none)."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float | decimal.Decimal):
        return {"N": _number(value, where)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"B": bytes(value)}
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return {"S": value.isoformat()}
    if isinstance(value, Mapping):
        return {"M": {str(k): encode(v, where) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [encode(v, where) for v in value]}
    if isinstance(value, set | frozenset) and value and all(isinstance(v, str) for v in value):
        return {"SS": sorted(value)}
    raise SchemaError(f"{where}: DynamoDB cannot store a {type(value).__name__} {value!r:.60}")


def _parse_number(text: str) -> int | float | decimal.Decimal:
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)


def decode(value: Mapping[str, Any], column_type: str | None = None) -> Any:
    """Return the Python value of an attribute value (by ``column_type`` where given)."""
    if "NULL" in value:
        return None
    if "BOOL" in value:
        return bool(value["BOOL"])
    if "N" in value:
        text = value["N"]
        if column_type == "NUMERIC":
            return decimal.Decimal(text)
        if column_type == "REAL":
            return float(text)
        if column_type == "INTEGER":
            return int(decimal.Decimal(text))
        return _parse_number(text)
    if "S" in value:
        text = value["S"]
        if column_type == "TIMESTAMP":
            return datetime.datetime.fromisoformat(text)
        if column_type == "DATE":
            return datetime.date.fromisoformat(text)
        if column_type == "TIME":
            return datetime.time.fromisoformat(text)
        return text
    if "B" in value:
        return bytes(value["B"])
    if "M" in value:
        return {k: decode(v) for k, v in value["M"].items()}
    if "L" in value:
        return [decode(v) for v in value["L"]]
    if "SS" in value:
        return set(value["SS"])
    if "NS" in value:
        return {_parse_number(v) for v in value["NS"]}
    raise ValueError(f"an attribute value corral does not read: {value!r:.80}")


def encode_item(values: Mapping[str, object]) -> dict[str, Any]:
    """Encode a mapping of attribute name to value, leaving out the Nones."""
    return {name: encode(v, f"attribute {name!r}") for name, v in values.items() if v is not None}


def decode_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """Decode every attribute of an item."""
    return {name: decode(v) for name, v in item.items()}
