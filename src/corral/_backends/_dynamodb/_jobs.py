"""The job queue in DynamoDB: :class:`DynamoJobStore`.

**Items.** One item per job in ``PREFIX_jobs`` (key ``id``), with the columns of the
job port as attributes (None left out). A waiting job (ready, or retrying) also has
``wq = "w"`` and ``wsort = "PRIORITY#SEQ"``: the sparse global index ``waiting``
(``wq``, ``wsort``) holds the waiting jobs only, in claim order. ``seq`` comes from the
counter item ``seq#job`` of ``PREFIX_meta`` (``ADD``), one request per group commit.

**Enqueueing** (:meth:`DynamoJobStore.enqueue_groups`, the enqueues of many callers at
once): each caller's group is one ``TransactWriteItems`` of puts conditioned on
``attribute_not_exists(id)`` per 100 jobs (the limit of a transaction), the groups sent
at once. A group of up to 100 jobs is stored whole or not at all by DynamoDB itself; a
longer one whose later transaction is refused deletes what its earlier ones wrote (a
moment in which other hosts may see them, and claim them: enqueue such groups from one
place, or keep them to 100 jobs).

**Limits without a lock.** The in-progress jobs are counted by *counter items* of
``PREFIX_meta``: ``limit#all`` (``max_concurrent``), ``limit#cluster#NAME`` (a
cluster's capacity) and ``limit#customer#NAME`` (``per_customer``). Each holds a string
set ``hs`` of its holders, one element per job in progress (``[id, token, cluster,
customer]`` as JSON), and the set's size is the count. A claim is one
``TransactWriteItems``: an ``Update`` of each job claimed, conditioned on it still
waiting (``attribute_exists(wq)``, due, the attempts read), and one ``Update`` of each
counter it touches, adding its jobs' holders, conditioned on ``size(hs) <= max - k``.
DynamoDB applies the transaction whole or not at all, serializably against every other
write of those items, so no claim ever takes a job twice or goes past a limit, from any
number of hosts. Candidates come from the ``waiting`` index, which is eventually
consistent: the conditions decide, never the index read. A cancelled transaction's
reasons say which job was taken (left out) or which counter is full (read again).

**Shards** (``shards=N`` in the URL, recorded in the ``layout`` item of
``PREFIX_meta``): waiting jobs are spread over ``wq = "w#0"`` ... ``"w#N-1"`` (by job
id), and a claim merges the shards' pages by ``wsort`` (:class:`_Waiting`), so claim
order is that of one partition. Each counter is N items, ``KEY#0`` ... ``KEY#N-1``, each
allowing its share of the limit (the shares add up to it); a claim reads them all and
takes room where it finds it (:class:`_Shares`), recording the shards on the job
(``ls``) and in its holder, where its release deletes it. ``shards=1`` is the
unsharded layout above, unchanged.

**Releasing.** Finishing, releasing or reclaiming a job is a conditional write of the
job (fenced by its lease token), then a ``DELETE`` of its holder from each counter:
idempotent, and after the job's write, so a counter is never below the jobs in progress
(never over a limit). A worker that dies between the two leaves a *leaked* holder,
which a reclaim finds (a holder whose job is not in progress under that token) and
deletes from every counter it is on: each claim's reclaim reads ``limit#all`` and its
own clusters' counters, and once a minute per process (:data:`SWEEP_SECONDS`) every
counter item, customers' included.

**Leases** are compared with this host's clock: DynamoDB has none to offer. Hosts
sharing a queue need synchronized clocks (NTP), within a small part of a lease.

**Rollback.** What ``enqueue``, ``requeue``, ``cancel`` and ``purge`` wrote is undone
if the operation fails (see :mod:`._session`); a claim is given back. Each undo is
logged before its request is sent and is a conditional write itself, safe whether or
not the request applied (cancelled in flight, or its answer lost): the item is put back
only while it is as the operation's write left it (its state and the ``updated_at`` it
set; for a purge, while there is no item; for a cancel request to a running job, while
its ``cancel_mark`` is this request's), never over another host's write. Renewals,
outcomes, releases, steps and reclaims are final once written: each is fenced by its
token, so a repeated one changes nothing.

There are no wake-ups across hosts (:meth:`watch` is False): workers poll.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
import random
import secrets
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..._exceptions import DatabaseURLError, QueryError
from ..._ports._jobs import (
    Claimed,
    ClaimRequest,
    ClaimResult,
    NewJob,
    Outcome,
    Renewal,
    RequeueAnswer,
    State,
    StepRecord,
    enqueue_rounds,
    merge_step_records,
    requeue_answers,
)
from ._client import code, left_in, unprocessed
from ._expr import Expr
from ._tables import create_table, table_exists

if TYPE_CHECKING:
    from . import Names
    from ._client import Client
    from ._session import Undo

__all__ = ["COLUMNS", "DynamoJobStore"]

#: The columns of a job row, in order (see :mod:`corral._ports._jobs`).
COLUMNS = (
    "seq",
    "id",
    "kind",
    "payload",
    "priority",
    "customer",
    "affinity",
    "region",
    "requires",
    "max_retries",
    "state",
    "attempts",
    "cluster",
    "route_reason",
    "steps",
    "progress",
    "error_category",
    "error_step",
    "error_message",
    "error_attempt",
    "error_traceback",
    "cancel_requested",
    "lease_token",
    "lease_owner",
    "lease_expires",
    "created_at",
    "started_at",
    "run_at",
    "updated_at",
    "finished_at",
)
_TIMES = frozenset(
    {"lease_expires", "created_at", "started_at", "run_at", "updated_at", "finished_at"}
)
_WAITING = (State.READY.value, State.RETRYING.value)
_FINISHED = frozenset({"completed", "failed", "dead", "cancelled"})
#: The index of waiting jobs, and its one partition (unsharded: ``shards=1``).
INDEX = "waiting"
_WQ = "w"
#: The item of ``PREFIX_meta`` that records the number of shards the tables were made for.
_LAYOUT = "layout"
#: A claim reads at most this many waiting jobs it cannot place before it gives up.
MAX_SCAN = 5_000
#: Jobs per claim transaction (with their counters, well under the 100 actions).
_PER_TRANSACTION = 25
_ROUNDS = 12
#: How often (seconds) a process's reclaim reads every counter item, not only those
#: of ``limit#all`` and of its clusters (see :meth:`DynamoJobStore._reclaim`).
SWEEP_SECONDS = 60.0


def _token() -> int:
    return secrets.randbits(62)


def _now() -> float:
    return time.time()


def _wsort(priority: int, seq: int) -> str:
    return f"{priority}#{seq:020d}"


def _number(text: str, column: str) -> int | float:
    if column in _TIMES:
        return float(text)
    return int(text) if "." not in text and "e" not in text.lower() else float(text)


def row_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """Return the job row (every column, None where missing) of a job item."""
    row: dict[str, Any] = {}
    for column in COLUMNS:
        value = item.get(column)
        if value is None or "NULL" in value:
            row[column] = None
        elif "S" in value:
            row[column] = value["S"]
        elif "N" in value:
            row[column] = _number(value["N"], column)
        elif "BOOL" in value:
            row[column] = bool(value["BOOL"])
        else:  # pragma: no cover - corral writes none other
            row[column] = None
    if row["cancel_requested"] is None:
        row["cancel_requested"] = False
    return row


def _holder(
    job_id: str,
    token: int,
    cluster: str,
    customer: str | None,
    shards: Sequence[int] | None = None,
) -> str:
    if shards is None:
        return json.dumps([job_id, token, cluster, customer])
    return json.dumps([job_id, token, cluster, customer, list(shards)])


def _share(most: int, shards: int, shard: int) -> int:
    """Return shard ``shard``'s share of a limit ``most``: the shares add up to ``most``."""
    return most // shards + (1 if shard < most % shards else 0)


class _Shares:
    """The room a claim found on each shard of the limits, and the shards it takes.

    ``free[key]``: the room left on each shard of the counter ``key`` (absent for a
    counter with no limit). :meth:`take` fills one shard, chosen at random, before the
    next, so that a claim touches as few counter items as it can.
    """

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.free: dict[str, list[int]] = {}
        self._start: dict[str, int] = {}

    def room(self, key: str) -> int:
        """The room left on every shard of ``key`` together."""
        return sum(self.free[key])

    def take(self, key: str) -> int:
        """Return the shard of ``key`` a job is admitted on (one with room), and take it."""
        start = self._start.setdefault(key, random.randrange(self.shards))
        free = self.free.get(key)
        if free is None:
            return start
        for step in range(self.shards):
            shard = (start + step) % self.shards
            if free[shard] > 0:
                free[shard] -= 1
                self._start[key] = shard
                return shard
        return start  # no room found: the transaction's condition refuses it


class _Waiting:
    """The waiting index read in claim order: the pages of its shards, merged by ``wsort``.

    Each shard is one partition of the index, sorted by ``wsort`` (priority, then
    enqueue order); :meth:`next` returns the next items of all of them in that order,
    as one partition would (a shard's next page is read before any item that could
    follow it is returned). Unsharded, this is the one partition's pages.
    """

    def __init__(self, store: DynamoJobStore, limit: int) -> None:
        self._store = store
        self._limit = limit
        partitions = store._wqs()
        per = -(-limit // len(partitions))
        self._requests: list[dict[str, Any]] = [
            {
                "TableName": store._table,
                "IndexName": INDEX,
                "KeyConditionExpression": "wq = :w",
                "ExpressionAttributeValues": {":w": {"S": wq}},
                "Limit": per,
            }
            for wq in partitions
        ]
        self._buffers: list[deque[dict[str, Any]]] = [deque() for _ in partitions]
        self._open = [True] * len(partitions)

    @property
    def done(self) -> bool:
        """Whether every item of every shard has been returned."""
        return not any(self._open) and not any(self._buffers)

    async def _fill(self) -> None:
        """Read the next page of each shard that has more but none buffered."""
        empty = [i for i, b in enumerate(self._buffers) if not b and self._open[i]]

        def page(i: int) -> Callable[[], Any]:
            async def call() -> dict[str, Any]:
                return await self._store._client.send("query", self._requests[i])

            return call

        for i, result in zip(empty, await self._store._gather(page(i) for i in empty), strict=True):
            request = self._requests[i]
            self._buffers[i].extend(result.get("Items", ()))
            if "LastEvaluatedKey" in result:
                request["ExclusiveStartKey"] = result["LastEvaluatedKey"]
                request["Limit"] = min(2 * request["Limit"], 1000)
            else:
                self._open[i] = False

    async def next(self) -> list[dict[str, Any]]:
        """Return the next items in claim order: a page (twice as many as the last)."""
        items: list[dict[str, Any]] = []
        while len(items) < self._limit:
            await self._fill()
            heads = [b for b in self._buffers if b]
            if not heads:
                break
            first = min(heads, key=lambda b: b[0]["wsort"]["S"])
            items.append(first.popleft())
        self._limit = min(2 * self._limit, 1000)
        return items


def _counter_keys(cluster: str, customer: str | None) -> list[str]:
    keys = ["limit#all", f"limit#cluster#{cluster}"]
    if customer is not None:
        keys.append(f"limit#customer#{customer}")
    return keys


def _reasons(exc: ClientError) -> list[str]:
    """Return the cancellation reason code of each action of a cancelled transaction."""
    reasons = exc.response.get("CancellationReasons") or []
    return [str(r.get("Code", "None")) for r in reasons]


def _new_item(job: NewJob, seq: int, now: str, wq: str = _WQ) -> dict[str, Any]:
    """The item of a new job, ready now (and in the index of waiting jobs)."""
    job_id, payload, priority, customer, affinity, region, requires, max_retries, kind = job
    order = _wsort(priority, seq)
    item: dict[str, Any] = {
        "id": {"S": job_id},
        "seq": {"N": str(seq)},
        "kind": {"S": kind},
        "payload": {"S": payload},
        "priority": {"N": str(priority)},
        "requires": {"S": requires},
        "max_retries": {"N": str(max_retries)},
        "state": {"S": State.READY.value},
        "attempts": {"N": "0"},
        "steps": {"S": "[]"},
        "progress": {"N": "0"},
        "created_at": {"N": now},
        "run_at": {"N": now},
        "updated_at": {"N": now},
        "wq": {"S": wq},
        "wsort": {"S": order},
        "order": {"S": order},
    }
    for name, value in (("customer", customer), ("affinity", affinity), ("region", region)):
        if value is not None:
            item[name] = {"S": value}
    return item


class DynamoJobStore:
    """:class:`~corral._ports._jobs.JobStore` on DynamoDB (see the module docstring)."""

    def __init__(self, client: Client, names: Names, undo_log: list[Undo]) -> None:
        self._client = client
        self._names = names
        self._table = names.jobs
        self._meta = names.meta
        self._undo = undo_log
        self._shards = names.shards
        #: When (``time.monotonic()``) a reclaim last read every counter item, if ever.
        self._swept_at: float | None = None

    # -- storage ---------------------------------------------------------------------------

    async def prepare(self) -> str:
        """Create the jobs table (with its index of waiting jobs) and the meta table."""
        await create_table(self._client, self._meta, [("pk", "S")])
        await create_table(
            self._client,
            self._table,
            [("id", "S")],
            [(INDEX, [("wq", "S"), ("wsort", "S")])],
        )
        await self._check_layout()
        return f"{self._names.prefix}_jobs"

    async def _check_layout(self) -> None:
        """Record the number of shards in ``PREFIX_meta``, or refuse one that differs.

        The first process to prepare the tables records its ``shards``; every later one
        compares. Tables made before the layout was recorded are unsharded: a claim of
        ``seq#job`` (jobs were enqueued) without a ``layout`` item counts as ``shards=1``,
        checked in the same transaction as the record.
        """
        item = {"pk": {"S": _LAYOUT}, "shards": {"N": str(self._shards)}}
        put: dict[str, Any] = {
            "TableName": self._meta,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        try:
            if self._shards == 1:
                await self._client.call("put_item", **put)
            else:
                unused = {
                    "TableName": self._meta,
                    "Key": {"pk": {"S": "seq#job"}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
                await self._client.call(
                    "transact_write_items",
                    TransactItems=[{"Put": put}, {"ConditionCheck": unused}],
                )
            return
        except ClientError as exc:
            if code(exc) not in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                raise
        found = await self._client.call(
            "get_item", TableName=self._meta, Key={"pk": {"S": _LAYOUT}}, ConsistentRead=True
        )
        stored = int(found["Item"]["shards"]["N"]) if "Item" in found else 1
        if stored != self._shards:
            raise DatabaseURLError(
                f"the tables under prefix {self._names.prefix!r} were made with shards="
                f"{stored}, but this URL asks for shards={self._shards}: every process that "
                f"shares the tables must use the same shards; give shards={stored} in the "
                f"URL (or use a new prefix for another number of shards)"
            )

    async def exists(self) -> bool:
        """Return whether the jobs table exists."""
        return await table_exists(self._client, self._table)

    async def announce(self) -> None:
        """Do nothing: DynamoDB has no wake-ups across hosts."""

    async def watch(self, callback: Callable[[], object]) -> bool:
        """Return False: no wake-ups across hosts here; the processor polls."""
        return False

    async def unwatch(self, callback: Callable[[], object]) -> None:
        """Do nothing (see :meth:`watch`)."""

    # -- helpers ---------------------------------------------------------------------------

    def _key(self, job_id: str) -> dict[str, Any]:
        return {"id": {"S": job_id}}

    def _wq(self, job_id: str) -> str:
        """The partition of job ``job_id`` in the waiting index (stable for a job)."""
        if self._shards == 1:
            return _WQ
        return f"{_WQ}#{zlib.crc32(job_id.encode()) % self._shards}"

    def _wqs(self) -> builtins.list[str]:
        """Every partition of the waiting index."""
        if self._shards == 1:
            return [_WQ]
        return [f"{_WQ}#{n}" for n in range(self._shards)]

    def _sharded(self, key: str, shard: int) -> str:
        """The item of shard ``shard`` of counter ``key`` (``key`` itself, unsharded)."""
        return key if self._shards == 1 else f"{key}#{shard}"

    def _all_shards(self, keys: Iterable[str]) -> builtins.list[str]:
        """The items of every shard of counters ``keys``."""
        return [self._sharded(k, n) for k in keys for n in range(self._shards)]

    def _holder_keys(self, element: str, cluster: str, customer: str | None) -> builtins.list[str]:
        """The counter items holder ``element`` was added to (every shard, if it says none)."""
        keys = _counter_keys(cluster, customer)
        if self._shards == 1:
            return keys
        parsed = json.loads(element)
        shards = parsed[4] if len(parsed) > 4 else None
        if not isinstance(shards, list) or len(shards) != len(keys):
            return self._all_shards(keys)
        return [self._sharded(k, int(n)) for k, n in zip(keys, shards, strict=True)]

    def _fill_shares(
        self, shares: _Shares, key: str, most: int | None, counters: Mapping[str, set[str]]
    ) -> int:
        """Note the room on each shard of counter ``key`` (limit ``most``); return it all."""
        if most is None:
            return 0
        shares.free[key] = [
            max(0, _share(most, self._shards, n) - len(counters[self._sharded(key, n)]))
            for n in range(self._shards)
        ]
        return shares.room(key)

    def _put_back(self, old: Mapping[str, Any], if_ours: Callable[[Expr], str]) -> Undo:
        """Log, before the write it undoes is sent, the undo that puts item ``old`` back.

        ``if_ours(expr)`` is the undo's condition: that the item is as the write left
        it (its state and the ``updated_at`` the write set, which every write of a job
        sets anew), or, for a delete, that there is no item. So the undo is safe
        whether or not the write applied: if it did not (refused, or never sent), or if
        another host wrote the item since, the condition fails and the undo changes
        nothing. Returns the undo, for :meth:`_drop_undo` once the write is refused.
        """
        client, table = self._client, self._table
        expr = Expr()
        request: dict[str, Any] = {
            "TableName": table,
            "Item": dict(old),
            "ConditionExpression": if_ours(expr),
        }
        if expr.names:
            request["ExpressionAttributeNames"] = expr.names
        if expr.values:
            request["ExpressionAttributeValues"] = expr.values

        async def undo() -> None:
            await self._if_still_ours(client.call("put_item", **request))

        self._undo.append(undo)
        return undo

    @staticmethod
    async def _if_still_ours(write: Awaitable[object]) -> None:
        """Await an undo's conditional ``write``; a failed condition is no error."""
        try:
            await write
        except ClientError as exc:
            if code(exc) != "ConditionalCheckFailedException":
                raise

    def _drop_undo(self, undo: Undo) -> None:
        """Forget ``undo``: its write was refused (applied nothing)."""
        self._undo.remove(undo)

    async def _item(self, job_id: str) -> dict[str, Any] | None:
        """Return the item of job ``job_id`` as stored (a consistent read), or None."""
        found = await self._client.call(
            "get_item", TableName=self._table, Key=self._key(job_id), ConsistentRead=True
        )
        item: dict[str, Any] | None = found.get("Item")
        return item

    @staticmethod
    def _unchanged(expr: Expr, item: Mapping[str, Any]) -> str:
        """The condition that job ``item`` is still as read: its state and ``updated_at``."""
        condition = f"{expr.n('state')} = {expr.raw(item['state'])}"
        if "updated_at" in item:
            return f"{condition} AND {expr.n('updated_at')} = {expr.raw(item['updated_at'])}"
        return f"{condition} AND attribute_not_exists({expr.n('updated_at')})"

    @staticmethod
    def _left_by(state: str, now: float) -> Callable[[Expr], str]:
        """The condition that a job is as a write left it: in ``state``, updated at ``now``."""

        def condition(expr: Expr) -> str:
            return f"{expr.n('state')} = {expr.v(state)} AND {expr.n('updated_at')} = {expr.v(now)}"

        return condition

    async def _gather(self, calls: Iterable[Callable[[], Any]]) -> list[Any]:
        """Run the coroutine functions ``calls`` at once, on the client's loop.

        Every call has ended when this returns or raises (the first error): none goes
        on writing after an undo that follows the error.
        """
        pending = list(calls)
        if not pending:
            return []

        async def run() -> list[Any]:
            results = await asyncio.gather(*(c() for c in pending), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return list(results)

        return await self._client.run(run)

    async def _update(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """One conditional ``UpdateItem`` (from the client's loop); None if refused."""
        try:
            return await self._client.send("update_item", request)
        except ClientError as exc:
            if code(exc) == "ConditionalCheckFailedException":
                return None
            raise

    async def _scan(
        self,
        projection: Sequence[str] | None = None,
        index: str | None = None,
        *,
        filter: tuple[str, Expr] | None = None,
    ) -> list[dict[str, Any]]:
        """Read every job item (of the index ``index``, if given).

        ``filter``: a condition and the :class:`Expr` of its placeholders; only the
        items it holds for come back (DynamoDB still reads, and bills, every item).
        """
        request: dict[str, Any] = {"TableName": self._table}
        if index is None:
            request["ConsistentRead"] = True
        else:
            request["IndexName"] = index
        names: dict[str, str] = {}
        if projection:
            request["ProjectionExpression"] = ", ".join(f"#{p}" for p in projection)
            names.update({f"#{p}": p for p in projection})
        if filter is not None:
            condition, expr = filter
            request["FilterExpression"] = condition
            names.update(expr.names)
            if expr.values:
                request["ExpressionAttributeValues"] = expr.values
        if names:
            request["ExpressionAttributeNames"] = names
        items: list[dict[str, Any]] = []
        while True:
            page = await self._client.call("scan", **request)
            items.extend(page.get("Items", ()))
            if "LastEvaluatedKey" not in page:
                return items
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def _batch_get(
        self, table: str, keys: list[dict[str, Any]], projection: str | None = None
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            spec: dict[str, Any] = {"Keys": keys[start : start + 100], "ConsistentRead": True}
            if projection:
                spec["ProjectionExpression"] = projection
            pending: dict[str, Any] = {table: spec}
            attempt = 0
            while pending:
                result = await self._client.call("batch_get_item", RequestItems=pending)
                items.extend(result.get("Responses", {}).get(table, ()))
                pending = result.get("UnprocessedKeys") or {}
                if pending:
                    await _sleep(unprocessed("a BatchGetItem", attempt, left_in(pending)))
                    attempt += 1
        return items

    # -- enqueue and the queue's reads -----------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> builtins.list[str]:
        """Store ``jobs`` whole or not at all; return the ids stored already."""
        return (await self.enqueue_groups([jobs]))[0]

    async def enqueue_groups(
        self, groups: Sequence[Sequence[NewJob]]
    ) -> builtins.list[builtins.list[str]]:
        """Store each group whole or not at all; return, per group, the ids refused.

        One ``ADD`` of ``seq#job`` numbers every job of the call; then each group is one
        ``TransactWriteItems`` of conditional puts (``attribute_not_exists(id)``) per
        100 jobs, the groups of a round sent at once. A group of more than 100 jobs
        whose later transaction is refused deletes what its earlier ones wrote. Groups
        sharing an id go in successive rounds, so that the result is what enqueueing
        them one after another would leave.
        """
        refused: list[list[str]] = [[] for _ in groups]
        total = sum(len(group) for group in groups)
        if not total:
            return refused
        counted = await self._client.call(
            "update_item",
            TableName=self._meta,
            Key={"pk": {"S": "seq#job"}},
            UpdateExpression="ADD v :n",
            ExpressionAttributeValues={":n": {"N": str(total)}},
            ReturnValues="UPDATED_NEW",
        )
        seq = int(counted["Attributes"]["v"]["N"]) - total + 1
        now = repr(_now())
        items: list[list[dict[str, Any]]] = []
        for group in groups:
            items.append(
                [_new_item(job, seq + n, now, self._wq(job[0])) for n, job in enumerate(group)]
            )
            seq += len(group)
        # The undo is logged before anything is sent: an enqueue cancelled while its
        # transactions are in flight (applied, their answers lost) is undone too. It
        # deletes only the items this call wrote (their seq), never a job stored before.
        ours: dict[int, list[tuple[str, str]]] = {}

        async def undo() -> None:
            await self._delete_ours([job for jobs in ours.values() for job in jobs])

        self._undo.append(undo)
        for members in enqueue_rounds(groups):
            sent = [n for n in members if items[n]]
            for n in sent:
                ours[n] = [(item["id"]["S"], item["seq"]["N"]) for item in items[n]]
            stored = await self._gather(functools.partial(self._put_group, items[n]) for n in sent)
            for n, found in zip(sent, stored, strict=True):
                if found:  # refused whole: nothing of it is stored
                    refused[n] = found
                    del ours[n]
        return refused

    async def _delete_ours(self, jobs: builtins.list[tuple[str, str]]) -> None:
        """Delete the jobs ``(id, seq)`` that an enqueue stored, each only if still its own."""
        client, table = self._client, self._table

        def one(job_id: str, seq: str) -> Callable[[], Any]:
            async def call() -> None:
                request = {
                    "TableName": table,
                    "Key": {"id": {"S": job_id}},
                    "ConditionExpression": "#seq = :seq",
                    "ExpressionAttributeNames": {"#seq": "seq"},
                    "ExpressionAttributeValues": {":seq": {"N": seq}},
                }
                try:
                    await client.send("delete_item", request)
                except ClientError as exc:  # not there, or another job's: not ours to delete
                    if code(exc) != "ConditionalCheckFailedException":
                        raise

            return call

        await self._gather(one(job_id, seq) for job_id, seq in jobs)

    async def _put_group(self, items: list[dict[str, Any]]) -> list[str]:
        """Put one group's items unless one's id is stored; return those ids (client loop)."""
        for start in range(0, len(items), 100):
            taken = await self._put_new(items[start : start + 100])
            if not taken:
                continue
            written, rest = items[:start], items[start + 100 :]
            if rest:  # name every id of the group stored already, as SQL does
                found = await self._stored_ids([item["id"]["S"] for item in rest])
                taken.extend(found)
            for first in range(0, len(written), 25):
                chunk = written[first : first + 25]
                await self._delete_all([item["id"]["S"] for item in chunk])
            return sorted(taken)
        return []

    async def _stored_ids(self, ids: list[str]) -> list[str]:
        """Return which of ``ids`` are stored (consistent reads; client loop)."""
        found: list[str] = []
        for start in range(0, len(ids), 100):
            pending: dict[str, Any] = {
                self._table: {
                    "Keys": [self._key(i) for i in ids[start : start + 100]],
                    "ConsistentRead": True,
                    "ProjectionExpression": "id",
                }
            }
            attempt = 0
            while pending:
                result = await self._client.send("batch_get_item", {"RequestItems": pending})
                found.extend(i["id"]["S"] for i in result.get("Responses", {}).get(self._table, ()))
                pending = result.get("UnprocessedKeys") or {}
                if pending:
                    await asyncio.sleep(unprocessed("a BatchGetItem", attempt, left_in(pending)))
                    attempt += 1
        return found

    async def _delete_all(self, ids: list[str]) -> None:
        """Delete up to 25 jobs by id (one ``BatchWriteItem``, retried; client loop)."""
        pending: dict[str, Any] = {
            self._table: [{"DeleteRequest": {"Key": self._key(i)}} for i in ids]
        }
        attempt = 0
        while pending:
            result = await self._client.send("batch_write_item", {"RequestItems": pending})
            pending = result.get("UnprocessedItems") or {}
            if pending:
                await asyncio.sleep(unprocessed("a BatchWriteItem", attempt, left_in(pending)))
                attempt += 1

    async def _put_new(self, items: list[dict[str, Any]]) -> list[str]:
        """Put ``items`` in one transaction unless one's id is stored; return those ids.

        Runs on the client's loop (:meth:`_gather`).
        """
        actions = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": item,
                    "ConditionExpression": "attribute_not_exists(id)",
                }
            }
            for item in items
        ]
        delay = 0.02
        for _ in range(_ROUNDS):
            try:
                await self._client.send("transact_write_items", {"TransactItems": actions})
            except ClientError as exc:
                if code(exc) != "TransactionCanceledException":
                    raise
                reasons = _reasons(exc)
                taken = [
                    items[i]["id"]["S"]
                    for i, r in enumerate(reasons)
                    if r == "ConditionalCheckFailed"
                ]
                if taken:
                    return taken
                await asyncio.sleep(delay * (0.5 + random.random()))  # a conflict: again
                delay = min(2 * delay, 1.0)
                continue
            return []
        raise QueryError(
            f"DynamoDB cancelled the enqueue's TransactWriteItems on table {self._table!r} "
            f"{_ROUNDS} times (conflicts with other writers, or throttling): nothing of it "
            f"is stored; enqueue it again, or from fewer writers at once"
        )

    async def get(self, job_id: str) -> Mapping[str, Any] | None:
        """Return the row of job ``job_id``, or None."""
        found = await self._client.call(
            "get_item", TableName=self._table, Key=self._key(job_id), ConsistentRead=True
        )
        item = found.get("Item")
        return None if item is None else row_of(item)

    async def depth(self, kind: str | None = None) -> dict[str, int]:
        """Count the jobs (of ``kind``) in each state: a scan of the table."""
        counts: dict[str, int] = {}
        for item in await self._scan(("state", "kind")):
            if kind is not None and item.get("kind", {}).get("S", "default") != kind:
                continue
            state = item["state"]["S"]
            counts[state] = counts.get(state, 0) + 1
        return counts

    async def depth_by_kind(self) -> dict[str, dict[str, int]]:
        """Count the jobs of each kind in each state: a scan of the table."""
        counts: dict[str, dict[str, int]] = {}
        for item in await self._scan(("state", "kind")):
            by_state = counts.setdefault(item.get("kind", {}).get("S", "default"), {})
            state = item["state"]["S"]
            by_state[state] = by_state.get(state, 0) + 1
        return counts

    async def by_cluster(self, cluster: str) -> dict[str, int]:
        """Count, by state, the jobs whose latest attempt ran on ``cluster``."""
        counts: dict[str, int] = {}
        for item in await self._scan(("state", "cluster", "affinity")):
            ran = item.get("cluster", {}).get("S")
            if ran == cluster or (ran is None and item.get("affinity", {}).get("S") == cluster):
                state = item["state"]["S"]
                counts[state] = counts.get(state, 0) + 1
        return counts

    async def list(
        self, state: State | None, limit: int, kind: str | None = None
    ) -> Sequence[Mapping[str, Any]]:
        """Return up to ``limit`` rows (in ``state``, of ``kind``), in claim order."""
        rows = [row_of(item) for item in await self._scan()]
        rows = [
            r
            for r in rows
            if (state is None or r["state"] == state.value) and (kind is None or r["kind"] == kind)
        ]
        rows.sort(key=lambda r: (r["priority"], r["seq"]))
        return rows[:limit]

    async def purge(self, states: Sequence[State], older_than: float) -> int:
        """Delete the jobs in ``states`` finished ``older_than`` seconds ago or more.

        Each job is one ``DeleteItem`` conditioned on the item being as the scan read it
        (state and ``updated_at``), so that its undo, logged before the delete is sent,
        puts back exactly what was deleted, and only where nothing has taken its place.
        """
        wanted = sorted({s.value for s in states})
        if not wanted:
            return 0
        cutoff = _now() - older_than
        expr = Expr()
        listed = ", ".join(expr.v(state) for state in wanted)
        candidates = await self._scan(
            filter=(
                f"{expr.n('state')} IN ({listed}) AND {expr.n('finished_at')} <= {expr.v(cutoff)}",
                expr,
            )
        )
        gone = 0
        for item in candidates:
            expr = Expr()
            request: dict[str, Any] = {
                "TableName": self._table,
                "Key": {"id": item["id"]},
                "ConditionExpression": self._unchanged(expr, item),
                "ExpressionAttributeNames": expr.names,
                "ExpressionAttributeValues": expr.values,
            }
            undo = self._put_back(item, lambda e: f"attribute_not_exists({e.n('id')})")
            try:
                await self._client.call("delete_item", **request)
            except ClientError as exc:
                if code(exc) == "ConditionalCheckFailedException":
                    self._drop_undo(undo)  # changed since the scan: left alone
                    continue
                raise
            gone += 1
        return gone

    async def requeue(self, job_id: str) -> str | None:
        """Put a dead, failed or cancelled job back to ready, its attempts 0.

        A conditional ``UpdateItem`` on the item as read (state and ``updated_at``); its
        undo is logged before it is sent (see :meth:`_put_back`). Read again and tried
        again if the job changed in between.
        """
        while True:
            item = await self._item(job_id)
            if item is None:
                return "missing"
            row = row_of(item)
            if row["state"] not in ("dead", "failed", "cancelled"):
                return str(row["state"])
            now = _now()
            expr = Expr()
            expr.set("state", State.READY.value).set("attempts", 0).set("run_at", now)
            expr.set("updated_at", now).set("cancel_requested", False)
            expr.set("wq", self._wq(job_id)).set("wsort", _wsort(row["priority"], row["seq"]))
            expr.remove("finished_at")
            request = expr.request(self._table, self._key(job_id), self._unchanged(expr, item))
            undo = self._put_back(item, self._left_by(State.READY.value, now))
            if await self._client.run(self._update, request) is not None:
                return None
            self._drop_undo(undo)  # changed meanwhile: read it again

    async def requeue_many(self, job_ids: Sequence[str]) -> builtins.list[RequeueAnswer]:
        """Requeue each job, one after another; return, per id, its row or why not.

        A loop over :meth:`requeue` and, for each job requeued, a consistent read of
        its row: no fewer requests than as many separate requeues (DynamoDB has no
        statement of many conditional updates that each may fail alone), but one
        operation of the writer for them all.
        """
        answers: dict[str, RequeueAnswer] = {}
        for job_id in dict.fromkeys(job_ids):
            refused = await self.requeue(job_id)
            if refused is None:
                row = await self.get(job_id)
                answers[job_id] = "missing" if row is None else row
            else:
                answers[job_id] = refused
        return requeue_answers(job_ids, answers)

    async def cancel(self, job_id: str) -> str:
        """Cancel a waiting job, or ask its worker to (in progress); return what was done.

        Its undo is logged before the write is sent, safe whether or not it applies: a
        waiting job's item is put back if it is still as the cancel left it (see
        :meth:`_put_back`); a request to a worker is taken back (``cancel_requested``
        as it was) if the item still carries this cancel's mark, ``cancel_mark``, which
        the worker's renewals leave alone.
        """
        while True:
            item = await self._item(job_id)
            if item is None:
                return "missing"
            state = item["state"]["S"]
            now = _now()
            expr = Expr()
            if state in _WAITING:
                expr.set("state", State.CANCELLED.value).set("finished_at", now)
                expr.set("updated_at", now).remove("wq", "wsort")
                condition = self._unchanged(expr, item)
                undo = self._put_back(item, self._left_by(State.CANCELLED.value, now))
                done = "cancelled"
            elif state == State.IN_PROGRESS.value:
                expr.set("cancel_requested", True).set("updated_at", now)
                expr.set("cancel_mark", now)
                condition = f"{expr.n('state')} = {expr.v(state)}"
                undo = self._take_back_request(job_id, item, now)
                done = "requested"
            else:
                return str(state)
            request = expr.request(self._table, self._key(job_id), condition)
            if await self._client.run(self._update, request) is not None:
                return done
            self._drop_undo(undo)  # changed meanwhile: read it again

    def _take_back_request(self, job_id: str, item: Mapping[str, Any], mark: float) -> Undo:
        """Log the undo of a cancel request marked ``mark``, before it is sent.

        As :meth:`_put_back`, but of ``cancel_requested`` and ``cancel_mark`` alone (as
        they were), leaving the worker's writes, and only while the mark is ``mark``.
        """
        expr = Expr()
        for name in ("cancel_requested", "cancel_mark"):
            if name in item:
                expr.set_expr(name, expr.raw(item[name]))
            else:
                expr.remove(name)
        request = expr.request(
            self._table, self._key(job_id), f"{expr.n('cancel_mark')} = {expr.v(mark)}"
        )
        client = self._client

        async def undo() -> None:
            await self._if_still_ours(client.call("update_item", **request))

        self._undo.append(undo)
        return undo

    async def stranded(
        self,
        clusters: Sequence[str],
        labels: Sequence[frozenset[str]],
        kinds: frozenset[str] | None = None,
    ) -> builtins.dict[tuple[str | None, str], int]:
        """Count the waiting jobs these clusters could never take, by why."""
        left: dict[tuple[str | None, str], int] = {}
        for item in await self._waiting_items():
            row = row_of(item)
            if row["state"] not in _WAITING:
                continue
            if kinds is not None and row["kind"] not in kinds:
                continue
            affinity, requires = row["affinity"], row["requires"]
            if affinity is None:
                needed = frozenset(json.loads(requires))
                if any(needed <= have for have in labels):
                    continue
            elif affinity in clusters:
                continue
            key = (affinity, requires)
            left[key] = left.get(key, 0) + 1
        return left

    async def _waiting_items(self) -> builtins.list[dict[str, Any]]:
        """Every item of the waiting index, of every shard (eventually consistent)."""
        items: builtins.list[dict[str, Any]] = []
        for wq in self._wqs():
            request: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": INDEX,
                "KeyConditionExpression": "wq = :w",
                "ExpressionAttributeValues": {":w": {"S": wq}},
            }
            while True:
                page = await self._client.call("query", **request)
                items.extend(page.get("Items", ()))
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return items

    async def outlook(
        self,
        clusters: Sequence[str],
        labels: Sequence[frozenset[str]],
        kinds: frozenset[str] | None = None,
    ) -> tuple[int, float | None]:
        """Count the unfinished jobs these clusters could take; and when the next is due."""
        now = _now()
        count = 0
        due: float | None = None
        for item in await self._scan(("state", "kind", "affinity", "requires", "run_at", "wq")):
            state = item["state"]["S"]
            if state not in (*_WAITING, State.IN_PROGRESS.value):
                continue
            row = row_of(item)
            if kinds is not None and row["kind"] not in kinds:
                continue
            if row["affinity"] is not None and row["affinity"] not in clusters:
                continue
            needed = frozenset(json.loads(row["requires"]))
            if needed and not any(needed <= have for have in labels):
                continue
            count += 1
            if state in _WAITING:
                wait = float(row["run_at"]) - now
                due = wait if due is None else min(due, wait)
        return count, due

    # -- counters --------------------------------------------------------------------------

    async def _counters(self, keys: Iterable[str]) -> dict[str, set[str]]:
        """Read the holders of counter items (consistently); a missing one holds none."""
        wanted = sorted(set(keys))
        found = {k: set() for k in wanted}  # type: dict[str, set[str]]
        items = await self._batch_get(self._meta, [{"pk": {"S": k}} for k in wanted])
        for item in items:
            found[item["pk"]["S"]] = set(item.get("hs", {}).get("SS", ()))
        return found

    async def _every_counter(self) -> dict[str, set[str]]:
        """Read the holders of every counter item (``limit#...``) of ``PREFIX_meta``."""
        request: dict[str, Any] = {
            "TableName": self._meta,
            "ConsistentRead": True,
            "FilterExpression": "begins_with(pk, :limit)",
            "ExpressionAttributeValues": {":limit": {"S": "limit#"}},
        }
        found: dict[str, set[str]] = {}
        while True:
            page = await self._client.call("scan", **request)
            for item in page.get("Items", ()):
                found[item["pk"]["S"]] = set(item.get("hs", {}).get("SS", ()))
            if "LastEvaluatedKey" not in page:
                return found
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def _drop_holders(self, holders: Iterable[tuple[str, str, str | None]]) -> None:
        """Delete holders ``(element, cluster, customer)`` from their counters (idempotent)."""
        by_counter: dict[str, set[str]] = {}
        for element, cluster, customer in holders:
            for key in self._holder_keys(element, cluster, customer):
                by_counter.setdefault(key, set()).add(element)
        meta, client = self._meta, self._client

        def drop(key: str, elements: set[str]) -> Callable[[], Any]:
            async def call() -> None:
                expr = Expr().delete("hs", elements)
                await client.send("update_item", expr.request(meta, {"pk": {"S": key}}))

            return call

        await self._gather(drop(k, e) for k, e in by_counter.items())

    # -- claims ----------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> ClaimResult:
        """Take back the expired leases, then claim jobs within the limits (see the module)."""
        reclaimed = await self._reclaim(request.capacity) if request.reclaim else []
        if request.limit <= 0:
            return ClaimResult([], reclaimed, True)
        chosen_all: builtins.list[Claimed] = []
        # Logged before any transaction is sent: a claim cancelled while one is in
        # flight (applied, its answer lost) is given back too. The give-back is fenced by
        # the fresh tokens, so it changes nothing where a transaction did not apply.
        sent: builtins.list[Claimed] = []

        async def undo() -> None:
            await self._give_back([(c, 0) for c in sent], uncount=True)

        self._undo.append(undo)
        taken_here: dict[str, int] = {}
        customers_here: dict[str, int] = {}
        skip: set[str] = set()
        limited = False
        delay = 0.02
        for _ in range(_ROUNDS):
            want = request.limit - len(chosen_all)
            if want <= 0:
                limited = True
                break
            chosen, room, full, shares = await self._choose(request, want, taken_here, skip)
            if full:
                limited = True
            if not chosen:
                limited = limited or room <= 0
                break
            outcome = await self._take(request, chosen, shares, sent)
            if outcome is None:  # taken whole
                chosen_all.extend(chosen)
                for c in chosen:
                    taken_here[c.cluster] = taken_here.get(c.cluster, 0) + 1
                    customer = c.row["customer"]
                    if customer is not None:
                        customers_here[customer] = customers_here.get(customer, 0) + 1
                if len(chosen) >= room:
                    limited = True
                    break
                continue
            gone, conflict = outcome
            skip |= gone
            if conflict:
                await _sleep(delay * (0.5 + random.random()))
                delay = min(2 * delay, 0.5)
        return ClaimResult(chosen_all, reclaimed, limited)

    async def _choose(
        self, req: ClaimRequest, want: int, taken_here: dict[str, int], skip: set[str]
    ) -> tuple[builtins.list[Claimed], int, bool, _Shares]:
        """Read the counters and the waiting jobs; choose up to ``want`` within the limits.

        Returns the jobs chosen, the room found under ``max_concurrent``, whether a
        limit (not a want of jobs) stopped the choice before it began, and the room
        found on each shard of the counters (where the claim will take it).
        """
        shares = _Shares(self._shards)
        cluster_keys = {name: f"limit#cluster#{name}" for name in req.capacity}
        counters = await self._counters(self._all_shards(["limit#all", *cluster_keys.values()]))
        room = min(want, self._fill_shares(shares, "limit#all", req.max_concurrent, counters))
        free = {
            name: min(
                req.local_free.get(name, 0) - taken_here.get(name, 0),
                self._fill_shares(shares, cluster_keys[name], cap, counters),
            )
            for name, cap in req.capacity.items()
        }
        if room <= 0 or max(free.values(), default=0) <= 0:
            return [], room, True, shares
        now = _now()
        by_customer: dict[str, int] = {}
        known: set[str] = set()
        chosen: builtins.list[Claimed] = []
        pages = _Waiting(self, max(room, 25))
        scanned = 0
        while len(chosen) < room and scanned < MAX_SCAN:
            items = await pages.next()
            scanned += len(items)
            rows = []
            for item in items:
                row = row_of(item)
                if row["id"] in skip or row["state"] not in _WAITING:
                    continue
                if float(row["run_at"]) > now:
                    continue
                if req.kinds is not None and row["kind"] not in req.kinds:
                    continue
                if row["affinity"] is not None and free.get(row["affinity"], 0) <= 0:
                    continue
                rows.append(row)
            unknown = {r["customer"] for r in rows if r["customer"] is not None} - known
            if unknown and req.per_customer is not None:
                keys = {c: f"limit#customer#{c}" for c in unknown}
                held = await self._counters(self._all_shards(keys.values()))
                for customer, key in keys.items():
                    # What the shards leave, as the jobs in progress place() compares.
                    left = self._fill_shares(shares, key, req.per_customer, held)
                    by_customer[customer] = req.per_customer - left
            known |= unknown
            for row in rows:
                if len(chosen) >= room:
                    break
                claimed = req.place(row, free, by_customer, _token)
                if claimed is not None:
                    chosen.append(claimed)
            if pages.done:
                break
        return chosen, room, False, shares

    async def _take(
        self,
        req: ClaimRequest,
        chosen: builtins.list[Claimed],
        shares: _Shares,
        sent: builtins.list[Claimed],
    ) -> tuple[set[str], bool] | None:
        """Claim ``chosen`` in transactions; None if every one was taken.

        Each transaction's jobs are added to ``sent`` before it is sent, and taken out
        of it again if DynamoDB cancels it (then nothing of it was applied).

        Otherwise returns the ids found taken by another worker (to leave out) and
        whether the transaction conflicted (to wait a moment before the next round);
        the jobs of the transactions that went through before are claimed, and
        removed from ``chosen``.
        """
        done = 0
        for start in range(0, len(chosen), _PER_TRANSACTION):
            chunk = chosen[start : start + _PER_TRANSACTION]
            actions, owners = self._claim_actions(req, chunk, shares)
            sent.extend(chunk)
            try:
                await self._client.call("transact_write_items", TransactItems=actions)
            except ClientError as exc:
                if code(exc) != "TransactionCanceledException":
                    raise
                del sent[len(sent) - len(chunk) :]
                gone: set[str] = set()
                conflict = False
                for i, reason in enumerate(_reasons(exc)):
                    owner = owners[i] if i < len(owners) else None
                    if reason == "ConditionalCheckFailed" and owner is not None:
                        gone.add(owner)
                    elif reason in ("TransactionConflict", "ThrottlingError"):
                        conflict = True
                del chosen[done:]
                return gone, conflict
            done += len(chunk)
        return None

    def _claim_actions(
        self, req: ClaimRequest, chunk: builtins.list[Claimed], shares: _Shares
    ) -> tuple[builtins.list[dict[str, Any]], builtins.list[str | None]]:
        """Return the transaction of one claim: its jobs' and its counters' updates.

        And, for each action, the id of its job (None for a counter's). Each job takes
        one shard of each of its counters with room (``shares``), recorded on the job
        (``ls``, when sharded) and in its holder, for its release. At most 25 jobs and
        3 counter items a job: never more than the 100 actions of a transaction.
        """
        now = _now()
        actions: builtins.list[dict[str, Any]] = []
        owners: builtins.list[str | None] = []
        holders: dict[tuple[str, int], set[str]] = {}
        for c in chunk:
            row = c.row
            expr = Expr()
            expr.set("state", State.IN_PROGRESS.value).set("attempts", c.attempt)
            expr.set("cluster", c.cluster).set("route_reason", c.route_reason)
            expr.set("lease_token", c.token).set("lease_owner", req.owner)
            expr.set("lease_expires", now + req.lease_seconds).set("updated_at", now)
            expr.set_expr("started_at", f"if_not_exists({expr.n('started_at')}, {expr.v(now)})")
            expr.remove("wq", "wsort")
            keys = _counter_keys(c.cluster, row["customer"])
            shards = [shares.take(key) for key in keys]
            if self._shards > 1:
                expr.set("ls", json.dumps(shards))
            condition = (
                f"attribute_exists({expr.n('wq')}) AND {expr.n('attempts')} = "
                f"{expr.v(row['attempts'])} AND {expr.n('run_at')} <= {expr.v(now)}"
            )
            actions.append({"Update": expr.request(self._table, self._key(c.id), condition)})
            owners.append(c.id)
            sharded = shards if self._shards > 1 else None
            element = _holder(c.id, c.token, c.cluster, row["customer"], sharded)
            for key, shard in zip(keys, shards, strict=True):
                holders.setdefault((key, shard), set()).add(element)
        for (key, shard), elements in holders.items():
            if key == "limit#all":
                most: int | None = req.max_concurrent
            elif key.startswith("limit#cluster#"):
                most = req.capacity[key.removeprefix("limit#cluster#")]
            else:
                most = req.per_customer
            if most is not None:
                most = _share(most, self._shards, shard)
            expr = Expr().add("hs", elements)
            limit_condition: str | None = None
            if most is not None:
                hs = expr.n("hs")
                limit_condition = (
                    f"attribute_not_exists({hs}) OR size({hs}) <= {expr.v(most - len(elements))}"
                )
            item = {"pk": {"S": self._sharded(key, shard)}}
            actions.append({"Update": expr.request(self._meta, item, limit_condition)})
            owners.append(None)
        return actions, owners

    # -- reclaiming --------------------------------------------------------------------------

    async def _reclaim(self, clusters: Iterable[str]) -> builtins.list[dict[str, Any]]:
        """Take back the expired leases, and delete the holders leaked by dead workers.

        The holders are read from the counters of ``limit#all`` and of ``clusters``
        (the claim's), every shard; and, once every :data:`SWEEP_SECONDS` per process,
        from every counter item there is (a scan of ``PREFIX_meta``): a worker that dies
        while it deletes its holders from its counters (one request per counter, sent at
        once) can leave one on a cluster's or a customer's counter alone.
        """
        now_monotonic = time.monotonic()
        if self._swept_at is None or now_monotonic - self._swept_at >= SWEEP_SECONDS:
            counters = await self._every_counter()  # those below among them
            self._swept_at = now_monotonic
        else:
            keys = ["limit#all", *(f"limit#cluster#{c}" for c in clusters)]
            counters = await self._counters(self._all_shards(keys))
        holders: set[str] = set()
        for held in counters.values():
            holders |= held
        if not holders:
            return []
        parsed = [(e, *json.loads(e)[:4]) for e in holders]
        ids = sorted({job_id for _, job_id, _, _, _ in parsed})
        items = {
            item["id"]["S"]: item
            for item in await self._batch_get(self._table, [self._key(i) for i in ids])
        }
        now = _now()
        leaked: builtins.list[tuple[str, str, str | None]] = []
        expired: builtins.list[tuple[str, dict[str, Any], str, str | None]] = []
        for element, job_id, token, cluster, customer in parsed:
            item = items.get(job_id)
            row = None if item is None else row_of(item)
            if (
                row is None
                or row["state"] != State.IN_PROGRESS.value
                or row["lease_token"] != token
            ):
                leaked.append((element, cluster, customer))
            elif row["lease_expires"] is not None and float(row["lease_expires"]) < now:
                expired.append((element, row, cluster, customer))
        reclaimed: builtins.list[dict[str, Any]] = []

        def take_back(row: dict[str, Any]) -> Callable[[], Any]:
            async def call() -> dict[str, Any] | None:
                dead = row["attempts"] > row["max_retries"]
                state = State.DEAD.value if dead else State.READY.value
                message = (
                    f"lease expired: worker {row['lease_owner'] or '?'} stopped renewing it "
                    f"(killed or stuck)"
                )
                expr = Expr()
                expr.set("state", state).set("error_category", "TRANSIENT")
                expr.set("error_message", message).set("error_attempt", row["attempts"])
                expr.remove("error_step", "error_traceback", "lease_token", "lease_owner")
                expr.remove("lease_expires")
                expr.set("run_at", now).set("updated_at", now)
                if dead:
                    expr.set("finished_at", now)
                else:
                    expr.set("wq", self._wq(row["id"]))
                    expr.set("wsort", _wsort(row["priority"], row["seq"]))
                condition = (
                    f"{expr.n('state')} = {expr.v(State.IN_PROGRESS.value)} AND "
                    f"{expr.n('lease_token')} = {expr.v(row['lease_token'])} AND "
                    f"{expr.n('lease_expires')} < {expr.v(now)}"
                )
                done = await self._update(
                    expr.request(self._table, self._key(row["id"]), condition)
                )
                if done is None:
                    return None
                return {
                    "id": row["id"],
                    "kind": row["kind"],
                    "state": state,
                    "error_message": message,
                    "attempts": row["attempts"],
                    "cluster": row["cluster"],
                }

            return call

        results = await self._gather(take_back(row) for _, row, _, _ in expired)
        for (element, _, cluster, customer), result in zip(expired, results, strict=True):
            if result is not None:
                reclaimed.append(result)
                leaked.append((element, cluster, customer))
        if leaked:
            await self._drop_holders(leaked)
        return reclaimed

    # -- what workers write ------------------------------------------------------------------

    def _fence(self, expr: Expr, token: int) -> str:
        return (
            f"{expr.n('lease_token')} = {expr.v(token)} AND "
            f"{expr.n('state')} = {expr.v(State.IN_PROGRESS.value)}"
        )

    async def renew(self, leases: Sequence[tuple[Claimed, int]], lease_seconds: float) -> Renewal:
        """Extend the leases held, adding their progress; report those asked to cancel."""
        now = _now()

        def one(claimed: Claimed, progress: int) -> Callable[[], Any]:
            async def call() -> tuple[int, bool] | None:
                expr = Expr().set("lease_expires", now + lease_seconds).set("updated_at", now)
                if progress:
                    expr.add("progress", progress)
                request = expr.request(
                    self._table, self._key(claimed.id), self._fence(expr, claimed.token)
                )
                request["ReturnValues"] = "ALL_NEW"
                done = await self._update(request)
                if done is None:
                    return None
                cancel = done.get("Attributes", {}).get("cancel_requested", {}).get("BOOL", False)
                return claimed.token, bool(cancel)

            return call

        results = await self._gather(one(c, p) for c, p in leases)
        held = {r[0] for r in results if r is not None}
        cancel = {r[0] for r in results if r is not None and r[1]}
        return Renewal(held, cancel)

    async def finish(self, outcomes: Sequence[Outcome]) -> set[int]:
        """Write how attempts ended, fenced by their tokens; then free their slots."""
        now = _now()

        def one(o: Outcome) -> Callable[[], Any]:
            async def call() -> tuple[int, dict[str, Any]] | None:
                expr = Expr()
                expr.set("state", o.state.value).set("run_at", now + o.delay)
                expr.set("updated_at", now)
                expr.remove("lease_token", "lease_owner", "lease_expires")
                if o.progress:
                    expr.add("progress", o.progress)
                if o.category is not None:
                    expr.set("error_category", o.category.value).set("error_step", o.step)
                    expr.set("error_traceback", o.traceback)
                    expr.set_expr("error_attempt", expr.n("attempts"))
                if o.message is not None:
                    expr.set("error_message", o.message)
                if o.state.value in _FINISHED:
                    expr.set("finished_at", now)
                else:
                    expr.remove("finished_at")
                if o.state.value in _WAITING:  # back in the index, in its place
                    expr.set("wq", self._wq(o.id)).set_expr("wsort", expr.n("order"))
                request = expr.request(self._table, self._key(o.id), self._fence(expr, o.token))
                request["ReturnValues"] = "ALL_OLD"
                done = await self._update(request)
                return None if done is None else (o.token, done.get("Attributes", {}))

            return call

        results = await self._gather(one(o) for o in outcomes)
        return await self._freed(results)

    async def _freed(self, results: Sequence[tuple[int, dict[str, Any]] | None]) -> set[int]:
        """Delete the holders of the jobs that left progress; return their tokens."""
        accepted: set[int] = set()
        holders: builtins.list[tuple[str, str, str | None]] = []
        for result in results:
            if result is None:
                continue
            token, old = result
            accepted.add(token)
            row = row_of(old)
            sharded = self._shards > 1 and "ls" in old
            shards = json.loads(old["ls"]["S"]) if sharded else None
            holders.append(
                (
                    _holder(row["id"], token, row["cluster"], row["customer"], shards),
                    row["cluster"],
                    row["customer"],
                )
            )
        if holders:
            await self._drop_holders(holders)
        return accepted

    async def release(self, leases: Sequence[tuple[Claimed, int]]) -> None:
        """Give claimed jobs back, ready at once, the attempt not counted."""
        await self._give_back(leases, uncount=True)

    async def _give_back(self, leases: Sequence[tuple[Claimed, int]], *, uncount: bool) -> None:
        now = _now()

        def one(claimed: Claimed, progress: int) -> Callable[[], Any]:
            async def call() -> tuple[int, dict[str, Any]] | None:
                row = claimed.row
                expr = Expr().set("state", State.READY.value).set("run_at", now)
                expr.set("updated_at", now)
                expr.remove("lease_token", "lease_owner", "lease_expires")
                if uncount:
                    expr.set("attempts", claimed.attempt - 1)
                if progress:
                    expr.add("progress", progress)
                expr.set("wq", self._wq(claimed.id))
                expr.set("wsort", _wsort(row["priority"], row["seq"]))
                request = expr.request(
                    self._table, self._key(claimed.id), self._fence(expr, claimed.token)
                )
                request["ReturnValues"] = "ALL_OLD"
                done = await self._update(request)
                return None if done is None else (claimed.token, done.get("Attributes", {}))

            return call

        await self._freed(await self._gather(one(c, p) for c, p in leases))

    async def step_done(self, claimed: Claimed, steps: str, progress: int) -> bool:
        """Store the finished steps of a claimed job; False if its lease was taken over."""
        expr = Expr().set("steps", steps).set("updated_at", _now())
        if progress:
            expr.add("progress", progress)
        request = expr.request(self._table, self._key(claimed.id), self._fence(expr, claimed.token))
        return await self._client.run(self._update, request) is not None

    async def step_done_many(self, records: Sequence[StepRecord]) -> set[int]:
        """Store the finished steps of many claimed jobs; return the tokens of the leases held.

        :meth:`step_done` for each lease (its records merged first,
        :func:`merge_step_records`), the leases' updates sent at once: as many
        requests as separate step records, in one operation of the writer.
        """
        merged = merge_step_records(records)

        def one(record: StepRecord) -> Callable[[], Any]:
            async def call() -> int | None:
                claimed, steps, progress = record
                expr = Expr().set("steps", steps).set("updated_at", _now())
                if progress:
                    expr.add("progress", progress)
                request = expr.request(
                    self._table, self._key(claimed.id), self._fence(expr, claimed.token)
                )
                return None if await self._update(request) is None else claimed.token

            return call

        results = await self._gather(one(record) for record in merged)
        return {token for token in results if token is not None}


async def _sleep(seconds: float) -> None:
    """Wait a moment (on whichever loop the caller is: a backoff, not a wait for an event)."""
    import anyio

    await anyio.sleep(seconds)


if TYPE_CHECKING:
    from ..._ports._jobs import JobStore

    _conforms: type[JobStore] = DynamoJobStore
