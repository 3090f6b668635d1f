"""Tables in SQL: checked and quoted names, ``CREATE TABLE`` and upserts, key checks.

What both SQL backends share to describe, create and upsert into a table. Every table
and column name given by the caller is checked against :data:`IDENTIFIER` before it is
used, and every name is quoted (see :func:`quote`) whenever it is written into a
statement, so no name can carry SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..._exceptions import IdentifierError, QueryError, SchemaError
from ..._ports import TableSchema
from ._dialect import dialect_of

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = [
    "BYTES_TYPES",
    "IDENTIFIER",
    "MAX_IDENTIFIER",
    "check_identifier",
    "check_key",
    "create_table_sql",
    "infer_column_type",
    "query_error",
    "quote",
    "tables_exist",
    "upsert_sql",
]

#: What a table or column name must match: a plain SQL identifier.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: PostgreSQL truncates longer names; SQLite would take them, but one rule serves both.
MAX_IDENTIFIER = 63


def check_identifier(kind: str, name: object) -> str:
    """Return ``name`` if it is a plain identifier, else raise :class:`IdentifierError`."""
    if not isinstance(name, str):
        raise IdentifierError(f"{kind} name must be a str, got {type(name).__name__} {name!r}")
    if not IDENTIFIER.match(name) or len(name) > MAX_IDENTIFIER:
        raise IdentifierError(
            f"{kind} name {name!r} is not a plain identifier: use letters, digits and "
            f"underscores, not starting with a digit, at most {MAX_IDENTIFIER} characters"
        )
    return name


def quote(name: str) -> str:
    """Quote an identifier, doubling any ``"`` in it.

    A name is either checked by :func:`check_identifier` first, or read from the
    database (a column of an existing table), where it may be anything.
    """
    return '"' + name.replace('"', '""') + '"'


def query_error(database: str, sql: str, exc: BaseException) -> QueryError:
    """Return the :class:`~corral.QueryError` for ``exc``, raised by ``sql``."""
    statement = " ".join(sql.split())
    if len(statement) > 120:
        statement = statement[:117] + "..."
    return QueryError(f"{database} refused {statement!r}: {type(exc).__name__}: {exc}")


#: The bytes-like types a BLOB / BYTEA column takes.
BYTES_TYPES = (bytes, bytearray, memoryview)


def infer_column_type(
    column: str, value: object, inferred: Sequence[tuple[type, str]]
) -> str | None:
    """Return the SQL type of the first ``(python_type, sql_type)`` that ``value`` is.

    ``None`` when no entry matches (the backend names what it takes); a ``None`` value
    is a :class:`~corral.SchemaError`, since no type can be inferred from it.
    """
    if value is None:
        raise SchemaError(
            f"column {column!r} is None in the row that creates the table, so its type "
            f"cannot be inferred: give it a value in the first row, or create the table "
            f"yourself before writing to it"
        )
    for python_type, sql_type in inferred:
        if isinstance(value, python_type):
            return sql_type
    return None


def create_table_sql(
    name: str,
    key: tuple[str, ...],
    row: Mapping[str, object],
    infer: Callable[[str, object], str],
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` with ``row``'s columns, typed by ``infer``, keyed."""
    columns = []
    for column, value in row.items():
        check_identifier("column", column)
        columns.append(f"{quote(column)} {infer(column, value)}")
    keys = ", ".join(quote(k) for k in key)
    return f"CREATE TABLE IF NOT EXISTS {quote(name)} ({', '.join(columns)}, PRIMARY KEY ({keys}))"


def upsert_sql(table: TableSchema, columns: tuple[str, ...], source: str) -> str:
    """``INSERT INTO table (columns) <source> ON CONFLICT (key) DO UPDATE SET ...``.

    ``source`` is ``VALUES (...)`` or a ``SELECT``; the columns outside the key are
    replaced by the new row's (``DO NOTHING`` when every column is in the key).
    """
    names = ", ".join(quote(c) for c in columns)
    key = ", ".join(quote(k) for k in table.key)
    updates = [f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in table.key]
    action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    return f"INSERT INTO {quote(table.name)} ({names}) {source} ON CONFLICT ({key}) {action}"


def check_key(
    name: str, key: tuple[str, ...], columns: Mapping[str, object], unique: list[set[str]]
) -> None:
    """Raise :class:`SchemaError` unless ``key`` is the primary key or a unique index."""
    missing = [k for k in key if k not in columns]
    if missing:
        raise SchemaError(
            f"table {name!r} has no column {missing[0]!r} named in key={key!r}; its columns "
            f"are {', '.join(columns)}"
        )
    if set(key) not in unique:
        raise SchemaError(
            f"key={key!r} is neither the primary key nor a unique index of table {name!r}, "
            f"so rows cannot be upserted on it: pass the table's primary key, or add a "
            f"unique index on those columns"
        )


async def tables_exist(conn: Connection, *names: str) -> bool:
    """Return whether every table of ``names`` exists (PostgreSQL: on the search path)."""
    d = dialect_of(conn)
    for name in names:
        found = await conn.fetchval(d.table_exists, name)
        if not found:
            return False
    return True
