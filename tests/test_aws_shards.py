"""The DynamoDB store with ``shards=N``: the waiting index and the limits' counters spread
over N partitions and N counter items, on the serialized moto (see ``moto_endpoint``).

The contract suites run on ``shards=3`` too (``dynamodb-sharded`` of ``store_url``);
these tests prove what sharding itself promises: claim order across the shards, exact
limits from shares, a limit smaller than the number of shards, slots leaked on a shard
released, the layout recorded (and a different one refused), ``shards=1`` unchanged.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import anyio
import pytest

import corral
from corral import DatabaseURLError
from corral._ports import Session
from corral._ports._jobs import Claimed, ClaimRequest, Outcome, State

pytestmark = pytest.mark.timeout(90)


def _route(row: Mapping[str, Any], free: Mapping[str, int]) -> tuple[str, str] | None:
    if row["affinity"] is not None:
        return (row["affinity"], "pinned") if free.get(row["affinity"], 0) > 0 else None
    return next(((name, "free") for name, n in free.items() if n > 0), None)


def _request(
    owner: str,
    limit: int,
    *,
    max_concurrent: int = 1000,
    per_customer: int | None = None,
    capacity: Mapping[str, int] | None = None,
    lease_seconds: float = 60,
) -> ClaimRequest:
    caps = dict(capacity or {"a": 1000})
    return ClaimRequest(
        owner=owner,
        limit=limit,
        max_concurrent=max_concurrent,
        per_customer=per_customer,
        capacity=caps,
        local_free=dict(caps),
        lease_seconds=lease_seconds,
        route=_route,
    )


def _new(
    job_id: str, priority: int = 2, customer: str | None = None, affinity: str | None = None
) -> tuple[str, str, int, str | None, str | None, None, str, int, str]:
    return (job_id, "{}", priority, customer, affinity, None, "[]", 3, "default")


async def _items(session: Session, table: str) -> list[dict[str, Any]]:
    """Every raw item of one of the store's tables (consistent scan)."""
    client = session.jobs._client  # type: ignore[attr-defined]
    found: list[dict[str, Any]] = []
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = await client.call("scan", **request)
        found.extend(page.get("Items", ()))
        if "LastEvaluatedKey" not in page:
            return found
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def _meta(session: Session) -> dict[str, dict[str, Any]]:
    """The items of ``PREFIX_meta`` by key."""
    table = session.jobs._meta  # type: ignore[attr-defined]
    return {item["pk"]["S"]: item for item in await _items(session, table)}


async def _holders(session: Session) -> dict[str, set[str]]:
    """The holders of every counter item (``limit#...``) that holds any."""
    return {
        key: set(item["hs"]["SS"])
        for key, item in (await _meta(session)).items()
        if key.startswith("limit#") and "hs" in item
    }


async def test_claim_order_across_shards_is_priority_then_enqueue_order(
    dynamodb_url: str,
) -> None:
    # 40 jobs over 4 shards, enqueued in three calls with mixed priorities: claimed one
    # at a time and 15 at a time, they come in (priority, enqueue order), as unsharded.
    url = f"{dynamodb_url}&shards=4"
    ids = [f"job-{n:02}" for n in range(40)]
    priority = {job_id: (n * 7) % 3 for n, job_id in enumerate(ids)}
    expected = sorted(ids, key=lambda i: (priority[i], ids.index(i)))
    async with corral.connect(url) as db:
        await db._run(lambda s: s.jobs.prepare())
        for part in (ids[:10], ids[10:25], ids[25:]):
            jobs = [_new(i, priority[i]) for i in part]
            assert await db._run(lambda s, j=jobs: s.jobs.enqueue(j)) == []
        jobs_table = db._backend.names.jobs  # type: ignore[attr-defined]
        items = await db._run(lambda s: _items(s, jobs_table))
        spread = Counter(item["wq"]["S"] for item in items)
        assert set(spread) == {"w#0", "w#1", "w#2", "w#3"}  # every shard has jobs
        order: list[str] = []
        for _ in range(10):
            [one] = (await db._run(lambda s: s.jobs.claim(_request("w", 1)))).claimed
            order.append(one.id)
        for _ in range(2):
            result = await db._run(lambda s: s.jobs.claim(_request("w", 15)))
            order.extend(c.id for c in result.claimed)
        assert order == expected
        assert (await db._run(lambda s: s.jobs.claim(_request("w", 5)))).claimed == []


async def test_released_and_retried_jobs_go_back_to_their_shard_in_their_place(
    dynamodb_url: str,
) -> None:
    url = f"{dynamodb_url}&shards=3"
    async with corral.connect(url) as db:
        await db._run(lambda s: s.jobs.prepare())
        jobs = [_new(f"r{n}", priority=1) for n in range(9)]
        assert await db._run(lambda s: s.jobs.enqueue(jobs)) == []
        first = (await db._run(lambda s: s.jobs.claim(_request("w", 3)))).claimed
        assert [c.id for c in first] == ["r0", "r1", "r2"]
        # r0 released, r1 retried at once, r2 finished: r0 and r1 are first again.
        await db._run(lambda s: s.jobs.release([(first[0], 0)]))
        retry = Outcome(first[1].id, first[1].token, State.RETRYING)
        done = Outcome(first[2].id, first[2].token, State.COMPLETED)
        assert await db._run(lambda s: s.jobs.finish([retry, done])) == {
            first[1].token,
            first[2].token,
        }
        again = (await db._run(lambda s: s.jobs.claim(_request("w", 4)))).claimed
        assert [c.id for c in again] == ["r0", "r1", "r3", "r4"]
        assert await db._run(lambda s: s.jobs.cancel("r5")) == "cancelled"
        assert await db._run(lambda s: s.jobs.requeue("r5")) is None
        rest = (await db._run(lambda s: s.jobs.claim(_request("w", 10)))).claimed
        assert [c.id for c in rest] == ["r5", "r6", "r7", "r8"]
        assert await db._run(lambda s: s.jobs.stranded(["a"], [frozenset()])) == {}


# asyncio only, as the unsharded race in test_aws.py (the store's code is the same on trio).
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_concurrent_claimers_never_pass_a_limit_split_in_shares(
    dynamodb_url: str,
) -> None:
    # Eight connections (as eight hosts) race to claim 24 jobs under limits split over 3
    # shards: max_concurrent 7 (shares 3, 2, 2), clusters of 4 (2, 1, 1), 2 a customer
    # (1, 1, 0). The first jobs claimed are held until the claims have filled
    # max_concurrent: the shares together admit the whole limit, never more. Every
    # shard's counter is sampled too: none ever holds more than its share.
    url = f"{dynamodb_url}&shards=3"
    n, workers, most, capacity, per_customer = 24, 8, 7, {"a": 4, "b": 4}, 2
    async with corral.connect(url) as db:
        await db._run(lambda s: s.jobs.prepare())
        rows = [_new(f"j{i:02}", i % 3, f"k{i % 6}", "b" if i % 5 == 0 else None) for i in range(n)]
        assert await db._run(lambda s: s.jobs.enqueue(rows)) == []
    running: Counter[str] = Counter()
    highest: Counter[str] = Counter()
    completed: list[str] = []
    shard_highest: Counter[str] = Counter()
    done, full = anyio.Event(), anyio.Event()

    def count(claimed: Claimed, step: int) -> None:
        for key in ("total", f"cluster:{claimed.cluster}", f"customer:{claimed.row['customer']}"):
            running[key] += step
            highest[key] = max(highest[key], running[key])
        if running["total"] == most:
            full.set()

    def claim_request(name: str) -> ClaimRequest:
        return _request(name, 2, max_concurrent=most, per_customer=per_customer, capacity=capacity)

    async def worker(name: str) -> None:
        async with corral.connect(url) as db:
            idle = 0
            while len(completed) < n and idle < 300:
                result = await db._run(lambda s: s.jobs.claim(claim_request(name)))
                for claimed in result.claimed:
                    count(claimed, +1)
                if not result.claimed:
                    idle += 1
                    await anyio.sleep(0.01)  # a poll, as a processor's
                    continue
                await full.wait()
                for claimed in result.claimed:
                    count(claimed, -1)
                outcomes = [Outcome(c.id, c.token, State.COMPLETED) for c in result.claimed]
                accepted = await db._run(lambda s, o=outcomes: s.jobs.finish(o))
                assert accepted == {c.token for c in result.claimed}
                completed.extend(c.id for c in result.claimed)

    async def sampler() -> None:
        async with corral.connect(url) as db:
            while not done.is_set():
                for key, held in (await db._run(_holders)).items():
                    shard_highest[key] = max(shard_highest[key], len(held))
                await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler)
        async with anyio.create_task_group() as crew:
            for w in range(workers):
                crew.start_soon(worker, f"w{w}")
        done.set()
    assert sorted(completed) == [f"j{i:02}" for i in range(n)]  # each once
    assert highest["total"] == most  # the shares together admit the whole limit
    for cluster, cap in capacity.items():
        assert highest[f"cluster:{cluster}"] <= cap
    assert max(v for k, v in highest.items() if k.startswith("customer:")) <= per_customer
    shares = {"all": [3, 2, 2], "cluster": [2, 1, 1], "customer": [1, 1, 0]}
    assert shard_highest  # sampled while jobs were held
    for key, seen in shard_highest.items():
        kind, shard = key.split("#")[1], int(key.rsplit("#", 1)[1])
        assert seen <= shares[kind][shard], key
    async with corral.connect(url) as db:
        assert await db._run(lambda s: s.jobs.depth()) == {"completed": n}
        assert await db._run(_holders) == {}  # every slot of every shard given back


async def test_a_limit_smaller_than_the_shards_is_exact(dynamodb_url: str) -> None:
    # max_concurrent 2 over 4 shards (shares 1, 1, 0, 0), per_customer 1: two hosts
    # asking for 10 get 2 in all, of two customers; a slot freed is taken again.
    url = f"{dynamodb_url}&shards=4"
    async with corral.connect(url) as a, corral.connect(url) as b:
        await a._run(lambda s: s.jobs.prepare())
        jobs = [_new(f"s{n}", customer=f"c{n % 3}") for n in range(9)]
        assert await a._run(lambda s: s.jobs.enqueue(jobs)) == []

        def request(owner: str) -> ClaimRequest:
            return _request(owner, 10, max_concurrent=2, per_customer=1)

        first = (await a._run(lambda s: s.jobs.claim(request("a")))).claimed
        second = (await b._run(lambda s: s.jobs.claim(request("b")))).claimed
        held = [*first, *second]
        assert [c.id for c in held] == ["s0", "s1"]
        assert (await b._run(lambda s: s.jobs.claim(request("b")))).claimed == []
        holders = await a._run(_holders)
        # Shares of 2 over 4: 1, 1, 0, 0; of 1: 1, 0, 0, 0.
        assert {k: len(h) for k, h in holders.items() if "#all#" in k} == {
            "limit#all#0": 1,
            "limit#all#1": 1,
        }
        assert {k: len(h) for k, h in holders.items() if "#customer#" in k} == {
            "limit#customer#c0#0": 1,
            "limit#customer#c1#0": 1,
        }
        outcome = Outcome(held[0].id, held[0].token, State.COMPLETED)
        assert await a._run(lambda s: s.jobs.finish([outcome])) == {held[0].token}
        [third] = (await b._run(lambda s: s.jobs.claim(request("b")))).claimed
        assert third.id == "s2"
        assert sum(len(h) for k, h in (await a._run(_holders)).items() if "#all#" in k) == 2


async def test_slots_leaked_or_expired_on_a_shard_are_taken_back(dynamodb_url: str) -> None:
    # A job whose worker died after its lease expired is reclaimed, and a holder whose
    # job is gone (a worker that died between the job's write and the counters') is
    # deleted: from the shards each was admitted on.
    url = f"{dynamodb_url}&shards=3"
    async with corral.connect(url) as db:
        await db._run(lambda s: s.jobs.prepare())
        jobs = [_new(f"x{n}", customer="acme") for n in range(6)]
        assert await db._run(lambda s: s.jobs.enqueue(jobs)) == []
        expired = _request("dead", 2, max_concurrent=4, per_customer=3, lease_seconds=-1)
        lost = (await db._run(lambda s: s.jobs.claim(expired))).claimed
        assert [c.id for c in lost] == ["x0", "x1"]
        jobs_table = db._backend.names.jobs  # type: ignore[attr-defined]
        client = db._backend.client  # type: ignore[attr-defined]
        # x1's worker "finished" it without freeing its slots: the item says completed.
        await client.call(
            "update_item",
            TableName=jobs_table,
            Key={"id": {"S": "x1"}},
            UpdateExpression="SET #s = :c REMOVE lease_token",
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues={":c": {"S": "completed"}},
        )
        before = await db._run(_holders)
        assert sum(len(h) for h in before.values()) == 6  # 2 jobs x 3 counters
        request = _request("live", 4, max_concurrent=4, per_customer=3)
        result = await db._run(lambda s: s.jobs.claim(request))
        assert [r["id"] for r in result.reclaimed] == ["x0"]
        # x0 is ready again, first in claim order: claimed at once; then x2, x3.
        assert [c.id for c in result.claimed] == ["x0", "x2", "x3"]
        after = await db._run(_holders)
        elements = {e for held in after.values() for e in held}
        assert {json.loads(e)[0] for e in elements} == {"x0", "x2", "x3"}
        assert all(json.loads(e)[1] != lost[0].token for e in elements)
        assert sum(len(h) for h in after.values()) == 9  # 3 jobs x 3 counters, no leak
        outcomes = [Outcome(c.id, c.token, State.COMPLETED) for c in result.claimed]
        await db._run(lambda s: s.jobs.finish(outcomes))
        assert await db._run(_holders) == {}


async def _check_unsharded(url: str) -> None:
    async with corral.connect(url) as db:
        await db._run(lambda s: s.jobs.prepare())
        assert await db._run(lambda s: s.jobs.enqueue([_new("a", customer="c")])) == []
        jobs_table = db._backend.names.jobs  # type: ignore[attr-defined]
        [item] = await db._run(lambda s: _items(s, jobs_table))
        assert item["wq"] == {"S": "w"}
        request = _request("w", 1, max_concurrent=5, per_customer=2)
        [claimed] = (await db._run(lambda s: s.jobs.claim(request))).claimed
        [item] = await db._run(lambda s: _items(s, jobs_table))
        assert "ls" not in item
        assert "wq" not in item
        element = json.dumps(["a", claimed.token, "a", "c"])
        assert await db._run(_holders) == {
            "limit#all": {element},
            "limit#cluster#a": {element},
            "limit#customer#c": {element},
        }
        assert (await db._run(_meta))["layout"]["shards"] == {"N": "1"}
        outcome = Outcome("a", claimed.token, State.COMPLETED)
        await db._run(lambda s: s.jobs.finish([outcome]))
        assert await db._run(_holders) == {}


async def test_shards_1_keeps_the_unsharded_layout(dynamodb_url: str) -> None:
    await _check_unsharded(dynamodb_url)  # the default
    await _check_unsharded(f"{dynamodb_url.replace('?', 'x?')}&shards=1")


async def test_a_different_number_of_shards_is_refused_naming_the_one_stored(
    dynamodb_url: str,
) -> None:
    async with corral.connect(f"{dynamodb_url}&shards=3") as db:
        assert (await db.jobs.depth()).ready == 0
    for other in ("", "&shards=2"):
        async with corral.connect(f"{dynamodb_url}{other}") as db:
            with pytest.raises(DatabaseURLError, match=r"made with shards=3.*give shards=3"):
                await db.jobs.depth()
    async with corral.connect(f"{dynamodb_url}&shards=3") as db:
        assert (await db.jobs.depth()).ready == 0


async def test_tables_from_before_the_layout_was_recorded_are_unsharded(
    dynamodb_url: str,
) -> None:
    # Tables of an earlier corral: jobs enqueued (seq#job) and no layout item.
    async with corral.connect(dynamodb_url) as db:
        await db._run(lambda s: s.jobs.prepare())
        assert await db._run(lambda s: s.jobs.enqueue([_new("old")])) == []
        client = db._backend.client  # type: ignore[attr-defined]
        meta = db._backend.names.meta  # type: ignore[attr-defined]
        await client.call("delete_item", TableName=meta, Key={"pk": {"S": "layout"}})
    async with corral.connect(f"{dynamodb_url}&shards=4") as db:
        with pytest.raises(DatabaseURLError, match="made with shards=1"):
            await db.jobs.depth()
    async with corral.connect(dynamodb_url) as db:
        assert (await db.jobs.depth()).ready == 1
        assert (await db._run(_meta))["layout"]["shards"] == {"N": "1"}


@pytest.mark.parametrize("value", ["0", "-1", "abc", "101", "2.5", ""])
def test_a_bad_number_of_shards_is_refused_at_connect(value: str) -> None:
    async def main() -> None:
        with pytest.raises(DatabaseURLError, match=r"give a whole number from 1 to 100"):
            async with corral.connect(f"dynamodb://corral?region=us-east-1&shards={value}"):
                pass

    anyio.run(main)
