"""Tables: corral's own (made on first use, on-demand billing) and ``db.table(...)`` rows.

A user table ``name`` is the DynamoDB table ``PREFIX_t_name``, keyed by its key
columns (at most two: a partition key and a sort key). DynamoDB has no columns, so the
columns and their types are kept in a catalog item of ``PREFIX_meta``
(``pk = "table#name"``), written when the table is made from its first row, and read
by every later ``resolve``.

Rows are upserted as on the SQL stores: a row replaces the stored row in the columns it
names. The rows of a batch are merged by key in memory (the last write of a column
wins); a merged row that names every column is a ``PutRequest`` of ``BatchWriteItem``
(25 a request, unprocessed items sent again with backoff), one that names fewer is an
``UpdateItem`` of its columns. A row DynamoDB refuses is reported alone (the request
is retried row by row to find it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..._exceptions import SchemaError
from ..._ports import Run, TableSchema
from ._client import code, gather, left_in, unprocessed
from ._values import KEY_TYPES, column_for, decode, encode, infer_type

if TYPE_CHECKING:
    from ._client import Client

__all__ = [
    "MAX_KEY_COLUMNS",
    "Staged",
    "create_table",
    "resolve",
    "scan_table",
    "table_exists",
    "write_staged",
]

#: A DynamoDB table has a partition key and, at most, a sort key.
MAX_KEY_COLUMNS = 2

#: The codes the callers below read themselves (see ``Client.send``'s ``passing``).
_NOT_FOUND = frozenset({"ResourceNotFoundException"})
_IN_USE = frozenset({"ResourceInUseException"})
_INVALID = frozenset({"ValidationException"})

#: Rows written at once (concurrent ``UpdateItem`` calls, ``BatchWriteItem`` requests).
_CONCURRENCY = 16


async def table_exists(client: Client, name: str) -> bool:
    """Return whether table ``name`` exists (creating nothing)."""
    try:
        await client.call("describe_table", TableName=name, passing=_NOT_FOUND)
    except ClientError as exc:
        if code(exc) == "ResourceNotFoundException":
            return False
        raise
    return True


async def create_table(
    client: Client,
    name: str,
    keys: Sequence[tuple[str, str]],
    indexes: Sequence[tuple[str, Sequence[tuple[str, str]]]] = (),
) -> None:
    """Create table ``name`` (on-demand) if it is missing, and wait until it is active.

    ``keys``: ``(attribute, type)`` of its partition key and sort key; ``indexes``: its
    global secondary indexes, ``(name, keys)``, projecting every attribute. Safe from
    several processes at once (one creates it, the others wait for it).
    """
    attributes: dict[str, str] = dict(keys)
    for _, index_keys in indexes:
        attributes.update(index_keys)

    def schema(pairs: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        kinds = ["HASH", "RANGE"]
        return [{"AttributeName": a, "KeyType": kinds[i]} for i, (a, _) in enumerate(pairs)]

    request: dict[str, Any] = {
        "TableName": name,
        "KeySchema": schema(keys),
        "AttributeDefinitions": [
            {"AttributeName": a, "AttributeType": t} for a, t in attributes.items()
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if indexes:
        request["GlobalSecondaryIndexes"] = [
            {
                "IndexName": index,
                "KeySchema": schema(pairs),
                "Projection": {"ProjectionType": "ALL"},
            }
            for index, pairs in indexes
        ]
    try:
        await client.call("create_table", passing=_IN_USE, **request)
    except ClientError as exc:
        if code(exc) != "ResourceInUseException":
            raise
    delay = 0.05
    while True:
        described = await client.call("describe_table", TableName=name)
        table = described["Table"]
        statuses = [table.get("TableStatus")]
        statuses += [i.get("IndexStatus") for i in table.get("GlobalSecondaryIndexes", ())]
        if all(s in (None, "ACTIVE") for s in statuses):
            return
        await asyncio.sleep(delay)
        delay = min(2 * delay, 1.0)


def _table_name(prefix: str, name: str) -> str:
    return f"{prefix}_t_{name}"


async def resolve(
    client: Client,
    prefix: str,
    meta: str,
    name: str,
    key: tuple[str, ...],
    row: Mapping[str, object],
) -> TableSchema:
    """Describe user table ``name``, creating it (and its catalog item) from ``row``."""
    if len(key) > MAX_KEY_COLUMNS:
        raise SchemaError(_too_many_keys(name, key))
    found = await client.call(
        "get_item", TableName=meta, Key={"pk": {"S": f"table#{name}"}}, ConsistentRead=True
    )
    item = found.get("Item")
    if item is None:
        inferred = {column: infer_type(column, value) for column, value in row.items()}
        for column in key:
            if column not in inferred:
                raise SchemaError(f"table {name!r}: the first row has no key column {column!r}")
            if inferred[column] not in KEY_TYPES:
                raise SchemaError(
                    f"table {name!r}: key column {column!r} is {inferred[column]}, which "
                    f"DynamoDB cannot key on; key on text, numbers, dates or bytes"
                )
        await create_table(
            client,
            _table_name(prefix, name),
            [(column, KEY_TYPES[inferred[column]]) for column in key],
        )
        item = {
            "pk": {"S": f"table#{name}"},
            "key": {"L": [{"S": c} for c in key]},
            "columns": {"L": [{"L": [{"S": c}, {"S": t}]} for c, t in inferred.items()]},
        }
        try:
            await client.call(
                "put_item",
                TableName=meta,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:  # made by another process meanwhile: read theirs
            if code(exc) != "ConditionalCheckFailedException":
                raise
            return await resolve(client, prefix, meta, name, key, row)
    stored_key = tuple(v["S"] for v in item["key"]["L"])
    described = {pair["L"][0]["S"]: pair["L"][1]["S"] for pair in item["columns"]["L"]}
    if stored_key != key:
        raise SchemaError(
            f"table {name!r} is keyed on {stored_key!r} in DynamoDB, and rows can be upserted "
            f"on that key only, not on {key!r}: use key={stored_key!r}"
        )
    columns = {c: column_for(c, t, name) for c, t in described.items()}
    return TableSchema(name, key, columns)


def _too_many_keys(name: str, key: tuple[str, ...]) -> str:
    return (
        f"table {name!r}: key={key!r} has {len(key)} columns, and a DynamoDB table is keyed "
        f"by at most two (a partition key and a sort key): key on one or two columns, or "
        f"join the others into one text column"
    )


class Staged:
    """The rows of one batch, merged by key per table, until they are written."""

    def __init__(self) -> None:
        #: table name -> key -> (schema, merged attribute values (None: REMOVE), origin).
        self.tables: dict[
            str, dict[tuple[Any, ...], tuple[TableSchema, dict[str, Any], tuple[Run, int]]]
        ] = {}

    def stage(self, run: Run, failures: list[tuple[Run, int, Exception]]) -> None:
        """Encode and merge the rows of ``run``; a row that cannot be encoded fails alone."""
        schema = run.table
        table = self.tables.setdefault(schema.name, {})
        key_index = [run.columns.index(k) for k in schema.key]
        names = run.columns
        for index, row in enumerate(run.rows):
            try:
                encoded: dict[str, Any] = {}
                for column, value in zip(names, row, strict=True):
                    where = f"column {column!r} of table {schema.name!r}"
                    if value is None:
                        encoded[column] = None
                    elif column in schema.key and value == "":
                        raise SchemaError(f"{where}: DynamoDB keys cannot be empty strings")
                    else:
                        encoded[column] = encode(value, where)
            except SchemaError as exc:
                failures.append((run, index, exc))
                continue
            key = tuple(_hashable(encoded[names[i]]) for i in key_index)
            held = table.get(key)
            if held is None:
                table[key] = (schema, encoded, (run, index))
            else:
                held[1].update(encoded)
                table[key] = (schema, held[1], (run, index))

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Return the staged rows of ``table`` (their attribute values), for reads in the batch."""
        return [values for _, values, _ in self.tables.get(table, {}).values()]


def _hashable(value: Mapping[str, Any]) -> tuple[str, Any]:
    (kind, inner), *_ = value.items()
    return kind, inner


async def write_staged(
    client: Client, prefix: str, staged: Staged, failures: list[tuple[Run, int, Exception]]
) -> None:
    """Write every staged row; append the rows DynamoDB refused to ``failures``."""
    puts: list[tuple[str, dict[str, Any], tuple[Run, int]]] = []
    updates: list[tuple[str, TableSchema, dict[str, Any], tuple[Run, int]]] = []
    for name, rows in staged.tables.items():
        table = _table_name(prefix, name)
        for schema, values, origin in rows.values():
            if set(values) >= set(schema.columns):
                item = {c: v for c, v in values.items() if v is not None}
                puts.append((table, item, origin))
            else:
                updates.append((table, schema, values, origin))
    refused: list[tuple[tuple[Run, int], Exception]] = []
    await client.run(_write_all, client, puts, updates, refused)
    failures.extend((run, index, exc) for (run, index), exc in refused)


async def _write_all(
    client: Client,
    puts: list[tuple[str, dict[str, Any], tuple[Run, int]]],
    updates: list[tuple[str, TableSchema, dict[str, Any], tuple[Run, int]]],
    refused: list[tuple[tuple[Run, int], Exception]],
) -> None:
    """On the client's loop: the puts in requests of 25, the updates one by one."""
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def batch(chunk: list[tuple[str, dict[str, Any], tuple[Run, int]]]) -> None:
        async with limit:
            await _batch_write(client, chunk, refused)

    async def update(table: str, schema: TableSchema, values: dict[str, Any], origin: Any) -> None:
        async with limit:
            try:
                await client.send("update_item", _update_request(table, schema, values), _INVALID)
            except ClientError as exc:
                if code(exc) != "ValidationException":
                    raise
                refused.append((origin, exc))

    jobs = [batch(puts[i : i + 25]) for i in range(0, len(puts), 25)]
    jobs += [update(*u) for u in updates]
    await gather(*jobs)  # every one ended before an error is raised


def _update_request(table: str, schema: TableSchema, values: dict[str, Any]) -> dict[str, Any]:
    key = {c: values[c] for c in schema.key}
    sets: list[str] = []
    removes: list[str] = []
    names: dict[str, str] = {}
    attrs: dict[str, Any] = {}
    for i, (column, value) in enumerate(values.items()):
        if column in schema.key:
            continue
        names[f"#c{i}"] = column
        if value is None:
            removes.append(f"#c{i}")
        else:
            attrs[f":v{i}"] = value
            sets.append(f"#c{i} = :v{i}")
    request: dict[str, Any] = {"TableName": table, "Key": key}
    expression = ""
    if sets:
        expression += "SET " + ", ".join(sets)
    if removes:
        expression += " REMOVE " + ", ".join(removes)
    if expression:
        request["UpdateExpression"] = expression.strip()
        request["ExpressionAttributeNames"] = names
        if attrs:
            request["ExpressionAttributeValues"] = attrs
    return request


async def _batch_write(
    client: Client,
    chunk: list[tuple[str, dict[str, Any], tuple[Run, int]]],
    refused: list[tuple[tuple[Run, int], Exception]],
) -> None:
    """One ``BatchWriteItem`` of up to 25 puts, sending the unprocessed ones again."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for table, item, _ in chunk:
        by_table.setdefault(table, []).append({"PutRequest": {"Item": item}})
    try:
        pending: dict[str, Any] = by_table
        attempt = 0
        while True:
            result = await client.send("batch_write_item", {"RequestItems": pending}, _INVALID)
            pending = result.get("UnprocessedItems") or {}
            if not pending:
                return
            what = f"a BatchWriteItem on {', '.join(repr(t) for t in sorted(pending))}"
            await asyncio.sleep(unprocessed(what, attempt, left_in(pending)))
            attempt += 1
    except ClientError as exc:
        if code(exc) != "ValidationException":
            raise
    # The request was refused as a whole: find the row(s) it refused, one put each.
    for table, item, origin in chunk:
        try:
            await client.send("put_item", {"TableName": table, "Item": item}, _INVALID)
        except ClientError as exc:
            if code(exc) != "ValidationException":
                raise
            refused.append((origin, exc))


async def scan_table(
    client: Client, prefix: str, schema: TableSchema, staged: Staged
) -> list[dict[str, Any]]:
    """Read every row of a user table, with the rows staged in this batch merged in."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    request: dict[str, Any] = {
        "TableName": _table_name(prefix, schema.name),
        "ConsistentRead": True,
    }
    while True:
        page = await client.call("scan", **request)
        for item in page.get("Items", ()):
            rows[tuple(_hashable(item[k]) for k in schema.key)] = dict(item)
        if "LastEvaluatedKey" not in page:
            break
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    for key, (_, values, _) in staged.tables.get(schema.name, {}).items():
        row = rows.setdefault(key, {})
        for column, value in values.items():
            if value is None:
                row.pop(column, None)
            else:
                row[column] = value
    return [
        {
            c: None if c not in item else decode(item[c], col.sql_type)
            for c, col in schema.columns.items()
        }
        for item in rows.values()
    ]
