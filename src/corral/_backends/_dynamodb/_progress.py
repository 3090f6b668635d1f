"""Runs and subtasks in DynamoDB: :class:`DynamoProgressStore`.

One table, ``PREFIX_progress``: a run is the item ``(pk="run#ID", sk="run")``, its
subtask ``N`` the item ``(pk="run#ID", sk="sub#N")``, so that a run's subtasks are one
``Query``. Run ids come from the counter item ``seq#run`` of ``PREFIX_meta`` (``ADD``:
unique across hosts, never reused). Counts are ``ADD items_complete :n``, conditioned
on the subtask existing: exact and atomic on DynamoDB's side, from any number of hosts.
A flush of counts is one ``UpdateItem`` per subtask, sent concurrently (DynamoDB has no
batch of updates short of a transaction, which would cost twice and fail whole).
Times are ISO-8601 text in UTC.

**Undo** (see :mod:`._session`). Each write logs its undo before it is sent, and the
undo is right whether or not the write applied: its answer may be lost (the endpoint
stopped answering), and botocore may have sent it more than once. So every write but a
new run's (whose undo, a delete of an item nobody else has, is right either way) also
sets this store's *mark*, an attribute ``w#ID`` (one ID per open store, that is per
``Database``) holding a number new to the write:

- an ``ADD`` of a count is conditioned on the mark not holding its number (a second
  delivery adds nothing), and its undo subtracts the count only where the mark holds
  it, removing the mark (an ``ADD`` that never applied is not subtracted);
- an update's undo puts back the item as it was (from the answer, ``ALL_OLD``); with
  no answer, it reads the item: without the mark's number, the update never applied
  and there is nothing to undo; with it, the update applied and what it replaced is
  unknown: the undo fails, and the batch is reported as possibly applied.

A mark stays on the item (a few bytes per ``Database`` that wrote to it).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from botocore.exceptions import ClientError

from ..._exceptions import QueryError
from ..._ports._progress import RunProgress, Status, SubtaskProgress
from ._client import code, gather, left_in, unprocessed
from ._tables import create_table, table_exists

if TYPE_CHECKING:
    from . import Names
    from ._client import Client
    from ._session import Undo

__all__ = ["DynamoProgressStore"]


def _t(value: datetime) -> dict[str, str]:
    return {"S": value.astimezone(UTC).isoformat()}


def _time(item: Mapping[str, Any], name: str) -> datetime | None:
    value = item.get(name)
    return None if value is None else datetime.fromisoformat(value["S"])


def _str(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return None if value is None else str(value["S"])


def _run_key(run_id: int) -> dict[str, Any]:
    return {"pk": {"S": f"run#{run_id}"}, "sk": {"S": "run"}}


def _sub_key(run_id: int, number: int) -> dict[str, Any]:
    return {"pk": {"S": f"run#{run_id}"}, "sk": {"S": f"sub#{number}"}}


#: What an update's undo knows of the item it wrote: nothing yet (no answer) ...
_UNKNOWN: Any = object()
#: ... or that the update did not apply (its condition failed): nothing to undo.
_NOT_APPLIED: Any = object()


class _Before:
    """The item an update replaced, as its answer says (``ALL_OLD``): its undo's input.

    :data:`_UNKNOWN` until the answer comes; None for an item the update made.
    """

    __slots__ = ("item",)

    def __init__(self) -> None:
        self.item: Any = _UNKNOWN


class DynamoProgressStore:
    """:class:`~corral._ports._progress.ProgressStore` on DynamoDB."""

    def __init__(self, client: Client, names: Names, undo_log: list[Undo]) -> None:
        self._client = client
        self._names = names
        self._table = names.progress
        self._undo = undo_log
        #: This store's mark (see the module docstring), and the numbers of its writes.
        self._mark = f"w#{secrets.token_hex(6)}"
        self._numbers = itertools.count(1)

    # -- undo --------------------------------------------------------------------------

    def _number(self) -> dict[str, str]:
        """A number for the mark new to this write."""
        return {"N": str(next(self._numbers))}

    def _log_delete(self, key: dict[str, Any]) -> None:
        """Log the undo of a put of a new item at ``key``: delete it (if it is there)."""
        client, table = self._client, self._table

        async def undo() -> None:
            await client.call("delete_item", TableName=table, Key=key)

        self._undo.append(undo)

    def _log_restore(self, key: dict[str, Any], number: dict[str, str]) -> _Before:
        """Log the undo of an update of the item at ``key`` marked with ``number``.

        Logged before the update is sent; the caller fills in what the answer says.
        The undo puts back the item as it was (or deletes one the update made); with
        no answer, it reads the item's mark to learn whether the update applied.
        """
        client, table, mark = self._client, self._table, self._mark
        before = _Before()

        async def undo() -> None:
            old = before.item
            if old is _NOT_APPLIED:
                return
            if old is _UNKNOWN:
                found = await client.call("get_item", TableName=table, Key=key, ConsistentRead=True)
                if found.get("Item", {}).get(mark) != number:
                    return  # it never applied
                raise QueryError(
                    f"cannot undo an UpdateItem on table {table!r}: it was applied, but "
                    f"its answer (the item as it was before) was lost"
                )
            if old:
                await client.call("put_item", TableName=table, Item=dict(old))
            else:
                await client.call("delete_item", TableName=table, Key=key)

        self._undo.append(undo)
        return before

    # -- schema ------------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        """Create the progress and meta tables where missing."""
        await create_table(self._client, self._names.meta, [("pk", "S")])
        await create_table(self._client, self._table, [("pk", "S"), ("sk", "S")])

    async def exists(self) -> bool:
        """Return whether the progress table exists."""
        return await table_exists(self._client, self._table)

    # -- runs --------------------------------------------------------------------------

    async def start_run(self, type: str, name: str, started_at: datetime) -> int:
        """Record a new run, RUNNING; return its id (from the ``seq#run`` counter)."""
        counted = await self._client.call(
            "update_item",
            TableName=self._names.meta,
            Key={"pk": {"S": "seq#run"}},
            UpdateExpression="ADD v :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        )
        run_id = int(counted["Attributes"]["v"]["N"])
        key = _run_key(run_id)
        self._log_delete(key)  # a new id: nobody else writes this item
        await self._client.call(
            "put_item",
            TableName=self._table,
            Item={
                **key,
                "id": {"N": str(run_id)},
                "type": {"S": type},
                "name": {"S": name},
                "status": {"S": Status.RUNNING.value},
                "started_at": _t(started_at),
                "updated_at": _t(started_at),
            },
        )
        return run_id

    async def finish_run(
        self, run_id: int, status: Status, message: str | None, ended_at: datetime
    ) -> None:
        """Set a run's status, end time, heartbeat and (if given) message; unknown: skipped."""
        request = self._end_request(run_id, status, message, ended_at)
        await self._send_logged(request)

    def _end_request(
        self, run_id: int, status: Status, message: str | None, ended_at: datetime
    ) -> dict[str, Any]:
        """The ``UpdateItem`` that ends one run (see :meth:`finish_run`), unmarked."""
        values: dict[str, Any] = {":s": {"S": status.value}, ":e": _t(ended_at)}
        names = {"#s": "status"}
        expression = "SET #s = :s, ended_at = :e, updated_at = :e"
        if message is not None:
            values[":m"] = {"S": message}
            names["#m"] = "message"
            expression += ", #m = :m"
        return {
            "TableName": self._table,
            "Key": _run_key(run_id),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ConditionExpression": "attribute_exists(pk)",
            "ReturnValues": "ALL_OLD",
        }

    async def end_running(
        self,
        run_ids: Collection[int],
        status: Status,
        message: str | None,
        ended_at: datetime,
    ) -> list[int]:
        """Finish those of ``run_ids`` still RUNNING: conditional updates, sent at once.

        Each is an ``UpdateItem`` conditioned on ``status = RUNNING`` (DynamoDB has no
        update of many items short of a transaction, which would fail whole when one
        run was finished elsewhere); the conditions decide, atomically per run.
        """
        ids = sorted(set(run_ids))
        if not ids:
            return []
        requests = []
        for run_id in ids:
            request = self._end_request(run_id, status, message, ended_at)
            request["ConditionExpression"] += " AND #s = :running"
            request["ExpressionAttributeValues"][":running"] = {"S": Status.RUNNING.value}
            requests.append(request)

        marked = self._marked(requests)  # the undos logged first, here

        async def all_of() -> list[bool]:
            return await gather(*(self._send_marked(m) for m in marked))

        applied = await self._client.run(all_of)
        return [run_id for run_id, done in zip(ids, applied, strict=True) if done]

    async def touch_runs(self, run_ids: Collection[int], updated_at: datetime) -> None:
        """Set the heartbeat of those of ``run_ids`` still RUNNING (updates sent at once).

        Not logged for undo: a heartbeat put back would only be older.
        """
        ids = sorted(set(run_ids))
        if not ids:
            return
        client, table = self._client, self._table
        values = {":u": _t(updated_at), ":running": {"S": Status.RUNNING.value}}

        async def one(run_id: int) -> None:
            try:
                await client.send(
                    "update_item",
                    {
                        "TableName": table,
                        "Key": _run_key(run_id),
                        "UpdateExpression": "SET updated_at = :u",
                        "ConditionExpression": "attribute_exists(pk) AND #s = :running",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": values,
                    },
                )
            except ClientError as exc:
                if code(exc) != "ConditionalCheckFailedException":
                    raise

        async def all_of() -> None:
            await gather(*(one(i) for i in ids))

        await client.run(all_of)

    def _marked(self, requests: list[dict[str, Any]]) -> list[tuple[dict[str, Any], _Before]]:
        """Mark each ``UpdateItem`` (``ReturnValues=ALL_OLD``) and log its undo, in order."""
        marked = []
        for request in requests:
            number = self._number()
            expression: str = request["UpdateExpression"]
            assert expression.startswith("SET "), expression
            request["UpdateExpression"] = f"SET #w = :w, {expression[4:]}"
            request.setdefault("ExpressionAttributeNames", {})["#w"] = self._mark
            request.setdefault("ExpressionAttributeValues", {})[":w"] = number
            request["ReturnValues"] = "ALL_OLD"
            if "ConditionExpression" in request:
                request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
            marked.append((request, self._log_restore(request["Key"], number)))
        return marked

    async def _send_marked(self, marked: tuple[dict[str, Any], _Before]) -> bool:
        """Send one marked update (from the client's loop); False if its condition failed.

        An item that holds the update's own mark already was written by an earlier
        delivery of it (botocore sent it again): it applied, and what it replaced is
        unknown (its undo then reads the mark, and fails).
        """
        request, before = marked
        mark, number = self._mark, request["ExpressionAttributeValues"][":w"]
        try:
            result = await self._client.send("update_item", request)
        except ClientError as exc:
            if code(exc) != "ConditionalCheckFailedException":
                raise
            if exc.response.get("Item", {}).get(mark) == number:
                return True  # applied by an earlier delivery; before.item stays unknown
            before.item = _NOT_APPLIED
            return False
        old = result.get("Attributes")
        if old is None or old.get(mark) != number:
            before.item = old
        return True

    async def _send_logged(self, request: dict[str, Any]) -> bool:
        """Mark one update, log its undo and send it; False if its condition failed."""
        [marked] = self._marked([request])
        return await self._client.run(self._send_marked, marked)

    async def _update(
        self,
        key: dict[str, Any],
        expression: str,
        names: dict[str, str],
        values: dict[str, Any],
        condition: str | None,
    ) -> bool:
        """Update one item, logging its undo first; False if ``condition`` failed."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": key,
            "UpdateExpression": expression,
            "ExpressionAttributeNames": dict(names),
            "ExpressionAttributeValues": dict(values),
        }
        if condition is not None:
            request["ConditionExpression"] = condition
        return await self._send_logged(request)

    # -- subtasks ----------------------------------------------------------------------

    async def start_subtask(
        self,
        run_id: int,
        number: int,
        name: str,
        items_total: int | None,
        started_at: datetime,
    ) -> None:
        """Record (or restart) subtask ``number`` of a run, RUNNING since ``started_at``."""
        values: dict[str, Any] = {
            ":n": {"S": name},
            ":s": {"S": Status.RUNNING.value},
            ":t": _t(started_at),
            ":zero": {"N": "0"},
            ":num": {"N": str(number)},
        }
        sets = (
            "SET #n = :n, #s = :s, updated_at = :t, started_at = if_not_exists(started_at, :t), "
            "items_complete = if_not_exists(items_complete, :zero), num = :num"
        )
        if items_total is not None:
            values[":total"] = {"N": str(items_total)}
            sets += ", items_total = :total"
            expression = f"{sets} REMOVE ended_at"
        else:
            expression = f"{sets} REMOVE ended_at, items_total"
        await self._update(
            _sub_key(run_id, number), expression, {"#n": "name", "#s": "status"}, values, None
        )

    async def update_subtask(
        self,
        run_id: int,
        number: int,
        *,
        updated_at: datetime,
        ended: bool,
        status: Status | None = None,
        percent: float | None = None,
        message: str | None = None,
        items_total: int | None = None,
    ) -> None:
        """Set the fields given of one subtask, the others kept; an unknown one is skipped."""
        values: dict[str, Any] = {":u": _t(updated_at)}
        names: dict[str, str] = {}
        sets = ["updated_at = :u"]
        if ended:
            sets.append("ended_at = :u")
        if status is not None:
            names["#s"] = "status"
            values[":s"] = {"S": status.value}
            sets.append("#s = :s")
        if percent is not None:
            names["#p"] = "percent"
            values[":p"] = {"N": repr(float(percent))}
            sets.append("#p = :p")
        if message is not None:
            names["#m"] = "message"
            values[":m"] = {"S": message}
            sets.append("#m = :m")
        if items_total is not None:
            values[":total"] = {"N": str(items_total)}
            sets.append("items_total = :total")
        await self._update(
            _sub_key(run_id, number),
            "SET " + ", ".join(sets),
            names,
            values,
            "attribute_exists(pk)",
        )

    async def add(self, counts: Mapping[tuple[int, int], int], updated_at: datetime) -> None:
        """Add each count to its subtask (``ADD``, exact); unknown subtasks are skipped.

        Each ``ADD`` is marked and conditioned on its mark (see the module docstring):
        delivered twice, it adds once; its undo, logged before it is sent, subtracts it
        only where it applied.
        """
        client, table, mark = self._client, self._table, self._mark
        stamp = _t(updated_at)
        sends = []
        for (run_id, number), n in counts.items():
            key = _sub_key(run_id, number)
            token = self._number()
            before = _Before()
            self._undo.append(self._subtract(key, n, token, before))
            sends.append((key, n, token, before))

        async def one(key: dict[str, Any], n: int, token: dict[str, str], before: _Before) -> None:
            try:
                result = await client.send(
                    "update_item",
                    {
                        "TableName": table,
                        "Key": key,
                        "UpdateExpression": "ADD items_complete :n SET updated_at = :u, #w = :w",
                        "ConditionExpression": (
                            "attribute_exists(pk) AND (attribute_not_exists(#w) OR #w <> :w)"
                        ),
                        "ExpressionAttributeNames": {"#w": mark},
                        "ExpressionAttributeValues": {
                            ":n": {"N": str(n)},
                            ":u": stamp,
                            ":w": token,
                        },
                        "ReturnValues": "UPDATED_OLD",
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    },
                )
            except ClientError as exc:
                if code(exc) == "ConditionalCheckFailedException":
                    # A subtask that does not exist is skipped; one whose mark holds
                    # this number got the ADD already (botocore sent it again).
                    return
                raise
            before.item = result.get("Attributes", {}).get("updated_at")

        async def all_of() -> None:
            await gather(*(one(*send) for send in sends))

        await client.run(all_of)

    def _subtract(
        self, key: dict[str, Any], n: int, token: dict[str, str], before: _Before
    ) -> Undo:
        """Return the undo of a marked addition: subtract it where it applied.

        Conditioned on the mark holding ``token``: an ``ADD`` that never applied is not
        subtracted, nor one undone already; other hosts' counts are kept. The heartbeat
        is put back too when the answer said what it was.
        """
        client, table, mark = self._client, self._table, self._mark

        async def undo() -> None:
            expression = "ADD items_complete :n REMOVE #w"
            values: dict[str, Any] = {":n": {"N": str(-n)}, ":w": token}
            stamp = before.item
            if stamp is not _UNKNOWN and stamp is not None:
                expression += " SET updated_at = :u"
                values[":u"] = stamp
            try:
                await client.call(
                    "update_item",
                    TableName=table,
                    Key=key,
                    UpdateExpression=expression,
                    ConditionExpression="#w = :w",
                    ExpressionAttributeNames={"#w": mark},
                    ExpressionAttributeValues=values,
                )
            except ClientError as exc:
                if code(exc) != "ConditionalCheckFailedException":
                    raise

        return undo

    # -- reads -------------------------------------------------------------------------

    def _run(self, item: Mapping[str, Any]) -> RunProgress:
        return RunProgress(
            id=int(item["id"]["N"]),
            type=str(item["type"]["S"]),
            name=str(item["name"]["S"]),
            status=Status(item["status"]["S"]),
            message=_str(item, "message"),
            started_at=_time(item, "started_at"),  # type: ignore[arg-type]
            ended_at=_time(item, "ended_at"),
            updated_at=_time(item, "updated_at"),
        )

    async def run(self, run_id: int) -> RunProgress | None:
        """Return a snapshot of one run, or None."""
        found = await self._client.call(
            "get_item", TableName=self._table, Key=_run_key(run_id), ConsistentRead=True
        )
        item = found.get("Item")
        return None if item is None else self._run(item)

    async def runs(self, limit: int) -> list[RunProgress]:
        """Return the latest ``limit`` runs, newest first (by id, down from the counter)."""
        counter = await self._client.call(
            "get_item",
            TableName=self._names.meta,
            Key={"pk": {"S": "seq#run"}},
            ConsistentRead=True,
        )
        item = counter.get("Item")
        top = 0 if item is None else int(item["v"]["N"])
        found: list[RunProgress] = []
        while top > 0 and len(found) < limit:
            ids = list(range(top, max(0, top - 100), -1))
            top -= len(ids)
            got = await self._batch_get([_run_key(i) for i in ids])
            by_id = {int(i["id"]["N"]): i for i in got}
            found.extend(self._run(by_id[i]) for i in ids if i in by_id)
        return found[:limit]

    async def _batch_get(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        pending: dict[str, Any] = {self._table: {"Keys": keys, "ConsistentRead": True}}
        attempt = 0
        while pending:
            result = await self._client.call("batch_get_item", RequestItems=pending)
            items.extend(result.get("Responses", {}).get(self._table, ()))
            pending = result.get("UnprocessedKeys") or {}
            if pending:  # throttled: sent again with backoff (it was sent again at once)
                await anyio.sleep(unprocessed("a BatchGetItem", attempt, left_in(pending)))
                attempt += 1
        return items

    async def subtasks(self, run_id: int) -> list[SubtaskProgress]:
        """Return every subtask of a run, by number."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :sub)",
            "ExpressionAttributeValues": {":pk": {"S": f"run#{run_id}"}, ":sub": {"S": "sub#"}},
            "ConsistentRead": True,
        }
        found: list[SubtaskProgress] = []
        while True:
            page = await self._client.call("query", **request)
            found.extend(self._subtask(run_id, item) for item in page.get("Items", ()))
            if "LastEvaluatedKey" not in page:
                break
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(found, key=lambda s: s.number)

    def _subtask(self, run_id: int, item: Mapping[str, Any]) -> SubtaskProgress:
        total = None if "items_total" not in item else int(item["items_total"]["N"])
        complete = int(item.get("items_complete", {"N": "0"})["N"])
        percent: float | None
        if "percent" in item:
            percent = float(item["percent"]["N"])
        elif total:
            percent = min(100.0, 100.0 * complete / total)
        else:
            percent = None
        return SubtaskProgress(
            run_id=run_id,
            number=int(item["num"]["N"]),
            name=str(item["name"]["S"]),
            status=Status(item["status"]["S"]),
            items_total=total,
            items_complete=complete,
            percent=percent,
            message=_str(item, "message"),
            started_at=_time(item, "started_at"),  # type: ignore[arg-type]
            ended_at=_time(item, "ended_at"),
            updated_at=_time(item, "updated_at"),  # type: ignore[arg-type]
        )

    async def subtask_name(self, run_id: int, number: int) -> str | None:
        """Return the name of a subtask, or None."""
        found = await self._client.call(
            "get_item", TableName=self._table, Key=_sub_key(run_id, number), ConsistentRead=True
        )
        item = found.get("Item")
        return None if item is None else str(item["name"]["S"])


if TYPE_CHECKING:
    from ..._ports._progress import ProgressStore

    _conforms: type[ProgressStore] = DynamoProgressStore
