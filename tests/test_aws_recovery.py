"""What the DynamoDB store puts right after a failure, on the serialized moto.

- An operation's undo is logged before its write is sent, and is safe whether or not
  the write applied: a request that DynamoDB applied but whose answer was lost (raised
  from botocore's ``after-call`` hook, after the response is read) is undone with the
  operation; one that never reached DynamoDB (raised from ``before-call``) undoes
  nothing, not even what another host wrote to the item meanwhile.
- A slot leaked on any counter (a cluster's, a customer's, not only ``limit#all``) is
  found and released by the workers' reclaim.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest

import corral
from corral._ports import Session
from corral._ports._jobs import ClaimRequest, Outcome, State

pytestmark = pytest.mark.timeout(90)


class _AnswerLost(RuntimeError):
    """What the hooks raise: a request whose answer never came back."""


def _request(
    limit: int,
    *,
    capacity: dict[str, int] | None = None,
    per_customer: int | None = None,
    lease_seconds: float = 60,
) -> ClaimRequest:
    caps = capacity or {"a": 100}

    def route(row: Any, free: Any) -> tuple[str, str] | None:
        return next(((name, "free") for name, n in free.items() if n > 0), None)

    return ClaimRequest(
        owner="w",
        limit=limit,
        max_concurrent=100,
        per_customer=per_customer,
        capacity=caps,
        local_free=dict(caps),
        lease_seconds=lease_seconds,
        route=route,
    )


def _new(job_id: str, customer: str | None = None) -> tuple[Any, ...]:
    return (job_id, "{}", 2, customer, None, None, "[]", 3, "default")


@contextmanager
def _fail_once(
    db: corral.Database, event: str, before: Callable[[], None] | None = None
) -> Iterator[list[str]]:
    """Raise :class:`_AnswerLost` from botocore hook ``event`` (e.g.
    ``after-call.dynamodb.UpdateItem``) the first time it fires; ``before`` runs first."""
    fired: list[str] = []

    def hook(**_: Any) -> None:
        if not fired:
            fired.append(event)
            if before is not None:
                before()
            raise _AnswerLost(event)

    events = db._backend.client.raw.meta.events  # type: ignore[attr-defined]
    events.register(event, hook)
    try:
        yield fired
    finally:
        events.unregister(event, hook)


def _item(db: corral.Database, endpoint: str, job_id: str) -> dict[str, Any] | None:
    """The job's raw item, read by another client (a consistent read)."""
    table = db._backend.names.jobs  # type: ignore[attr-defined]
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
    found: dict[str, Any] | None = client.get_item(
        TableName=table, Key={"id": {"S": job_id}}, ConsistentRead=True
    ).get("Item")
    return found


async def _dead(db: corral.Database, job_id: str) -> None:
    """Enqueue ``job_id``, claim it and finish it DEAD."""
    assert await db._run(lambda s: s.jobs.enqueue([_new(job_id)])) == []
    [claimed] = (await db._run(lambda s: s.jobs.claim(_request(1)))).claimed
    outcome = Outcome(job_id, claimed.token, State.DEAD, message="boom")
    await db._run(lambda s: s.jobs.finish([outcome]))


async def _prepared(db: corral.Database, operation: str) -> Callable[[Session], Any]:
    """Set job ``j`` up for ``operation``; return the call that does it."""
    await db._run(lambda s: s.jobs.prepare())
    if operation == "requeue":
        await _dead(db, "j")
        return lambda s: s.jobs.requeue("j")
    if operation == "purge":
        await _dead(db, "j")
        return lambda s: s.jobs.purge([State.DEAD], -60.0)
    assert await db._run(lambda s: s.jobs.enqueue([_new("j")])) == []
    if operation == "cancel in progress":
        [_] = (await db._run(lambda s: s.jobs.claim(_request(1)))).claimed
    return lambda s: s.jobs.cancel("j")


_OPERATIONS = {
    "requeue": "UpdateItem",
    "cancel waiting": "UpdateItem",
    "cancel in progress": "UpdateItem",
    "purge": "DeleteItem",
}


@pytest.mark.parametrize("operation", list(_OPERATIONS))
async def test_an_operation_whose_answer_was_lost_is_undone(
    dynamodb_url: str, moto_endpoint: str, operation: str
) -> None:
    # DynamoDB applied the write; its answer never came: the operation fails, and what
    # it wrote is undone (its undo was logged before the request was sent).
    async with corral.connect(dynamodb_url) as db:
        call = await _prepared(db, operation)
        before = _item(db, moto_endpoint, "j")
        assert before is not None
        event = f"after-call.dynamodb.{_OPERATIONS[operation]}"
        with _fail_once(db, event) as fired, pytest.raises(_AnswerLost):
            await db._run(call)
        assert fired
        after = _item(db, moto_endpoint, "j")
        assert after is not None, "the purged job was not put back"
        for name in ("state", "wq", "wsort", "attempts", "finished_at", "cancel_requested"):
            assert after.get(name) == before.get(name), name
        # And the job store goes on: the operation works when its answer comes.
        await db._run(call)
        final = _item(db, moto_endpoint, "j")
        if operation == "purge":
            assert final is None
        else:
            assert final is not None
            assert final["state"] != before["state"] or "cancel_mark" in final


def _overwrite(endpoint: str, table: Callable[[], str], state: str) -> Callable[[], None]:
    """Another host's write to job ``j``: its state and updated_at."""

    def write() -> None:
        client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
        client.update_item(
            TableName=table(),
            Key={"id": {"S": "j"}},
            UpdateExpression="SET #s = :s, updated_at = :u",
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues={":s": {"S": state}, ":u": {"N": "12345"}},
        )

    return write


@pytest.mark.parametrize("operation", list(_OPERATIONS))
async def test_an_operation_that_never_reached_dynamodb_undoes_nothing(
    dynamodb_url: str, moto_endpoint: str, operation: str
) -> None:
    # The request is never sent (raised before the call), but another host wrote the
    # job meanwhile: the operation's undo must leave that write alone.
    async with corral.connect(dynamodb_url) as db:
        call = await _prepared(db, operation)
        state = "failed" if operation in ("requeue", "purge") else "retrying"
        table = db._backend.names  # type: ignore[attr-defined]
        other = _overwrite(moto_endpoint, lambda: str(table.jobs), state)
        event = f"before-call.dynamodb.{_OPERATIONS[operation]}"
        with _fail_once(db, event, before=other) as fired, pytest.raises(_AnswerLost):
            await db._run(call)
        assert fired
        after = _item(db, moto_endpoint, "j")
        assert after is not None
        assert after["state"] == {"S": state}
        assert after["updated_at"] == {"N": "12345"}


async def _holders(db: corral.Database) -> dict[str, set[str]]:
    meta = db._backend.names.meta  # type: ignore[attr-defined]
    client = db._backend.client  # type: ignore[attr-defined]
    page = await client.call("scan", TableName=meta, ConsistentRead=True)
    return {
        item["pk"]["S"]: set(item["hs"]["SS"])
        for item in page.get("Items", ())
        if item["pk"]["S"].startswith("limit#") and "hs" in item
    }


async def _completed_behind_its_slots(db: corral.Database, job_id: str) -> None:
    """Write job ``job_id`` completed, as its worker would, leaving its holders."""
    await db._backend.client.call(  # type: ignore[attr-defined]
        "update_item",
        TableName=db._backend.names.jobs,  # type: ignore[attr-defined]
        Key={"id": {"S": job_id}},
        UpdateExpression="SET #s = :c REMOVE lease_token",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":c": {"S": "completed"}},
    )


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_slot_leaked_on_a_cluster_or_customer_counter_is_released(
    dynamodb_url: str, shards: int
) -> None:
    # A worker finished job x0 and freed its slot on limit#all, then died before it
    # freed the cluster's and the customer's: both are full (capacity 1, per_customer
    # 1) with a holder whose job is done. The next claim (a new process: it sweeps
    # every counter at once) finds the leaked holders and releases them.
    url = f"{dynamodb_url}&shards={shards}"
    capacity = {"a": shards}  # one slot on each shard
    async with corral.connect(url) as db:
        await db._run(lambda s: s.jobs.prepare())
        jobs = [_new(f"x{n}", customer="acme") for n in range(2)]
        assert await db._run(lambda s: s.jobs.enqueue(jobs)) == []
        request = _request(1, capacity=capacity, per_customer=shards)
        [x0] = (await db._run(lambda s: s.jobs.claim(request))).claimed
        client = db._backend.client  # type: ignore[attr-defined]
        names = db._backend.names  # type: ignore[attr-defined]
        await _completed_behind_its_slots(db, "x0")
        held = await _holders(db)
        for key, elements in held.items():
            if key.startswith("limit#all"):
                await client.call(
                    "update_item",
                    TableName=names.meta,
                    Key={"pk": {"S": key}},
                    UpdateExpression="DELETE hs :e",
                    ExpressionAttributeValues={":e": {"SS": sorted(elements)}},
                )
        left = await _holders(db)
        assert not any(k.startswith("limit#all") for k in left)
        assert {json.loads(e)[0] for h in left.values() for e in h} == {"x0"}
        assert x0.id == "x0"
    # Capacity and per-customer limit of one slot a shard: x1 can only be claimed if
    # the leaked holders are released, on the shards they were taken on.
    async with corral.connect(url) as db:
        one = _request(shards, capacity=capacity, per_customer=shards)
        result = await db._run(lambda s: s.jobs.claim(one))
        assert [c.id for c in result.claimed] == ["x1"]
        elements = {e for h in (await _holders(db)).values() for e in h}
        assert {json.loads(e)[0] for e in elements} == {"x1"}
        [x1] = result.claimed
        await db._run(lambda s: s.jobs.finish([Outcome("x1", x1.token, State.COMPLETED)]))
        assert await _holders(db) == {}


async def test_a_slot_leaked_on_its_cluster_counter_is_released_by_the_next_claim(
    dynamodb_url: str,
) -> None:
    # The same leak on the cluster a claim asks for, found without waiting for the
    # periodic sweep: a claim always checks the counters of its own clusters.
    async with corral.connect(dynamodb_url) as db:
        await db._run(lambda s: s.jobs.prepare())
        assert await db._run(lambda s: s.jobs.enqueue([_new("x0"), _new("x1")])) == []
        request = _request(1, capacity={"a": 1})
        [x0] = (await db._run(lambda s: s.jobs.claim(request))).claimed
        client = db._backend.client  # type: ignore[attr-defined]
        names = db._backend.names  # type: ignore[attr-defined]
        await _completed_behind_its_slots(db, "x0")
        element = json.dumps(["x0", x0.token, "a", None])
        await client.call(
            "update_item",
            TableName=names.meta,
            Key={"pk": {"S": "limit#all"}},
            UpdateExpression="DELETE hs :e",
            ExpressionAttributeValues={":e": {"SS": [element]}},
        )
        assert await _holders(db) == {"limit#cluster#a": {element}}
        result = await db._run(lambda s: s.jobs.claim(request))
        assert [c.id for c in result.claimed] == ["x1"]
