"""The DynamoDB store beyond the contract suite: exact limits under concurrent claims,
its errors (URL, credentials, the missing extra, keys, values), on the serialized moto.

The contract suites (tests/test_contract_*.py) run on DynamoDB through the
``store_url`` fixture; these tests prove what is DynamoDB's own.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any

import anyio
import pytest

import corral
from corral import ConnectError, DatabaseURLError, MissingDriverError, SchemaError, jobs
from corral._ports import Session
from corral._ports._jobs import Claimed, ClaimRequest, Outcome, State

pytestmark = pytest.mark.timeout(60)

MAX_CONCURRENT = 5
CAPACITY = {"a": 3, "b": 3}
PER_CUSTOMER = 2


def _route(row: Mapping[str, Any], free: Mapping[str, int]) -> tuple[str, str] | None:
    if row["affinity"] is not None:
        return (row["affinity"], "pinned") if free.get(row["affinity"], 0) > 0 else None
    return next(((name, "free") for name, n in free.items() if n > 0), None)


def _request(owner: str) -> ClaimRequest:
    return ClaimRequest(
        owner=owner,
        limit=2,
        max_concurrent=MAX_CONCURRENT,
        per_customer=PER_CUSTOMER,
        capacity=dict(CAPACITY),
        local_free=dict(CAPACITY),
        lease_seconds=60,
        route=_route,
    )


# asyncio only: on trio the store runs this same code on its asyncio loop thread, which
# the three-process test (one worker on trio) and the trio tests here exercise already.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_concurrent_claimers_keep_every_limit_and_complete_each_job_once(
    dynamodb_url: str,
) -> None:
    # Six connections (as six hosts: each its own writer and client) claim, hold and
    # finish 16 jobs at once, while a seventh samples the jobs in progress. The first
    # jobs claimed are held until the claims have filled max_concurrent.
    n, workers = 16, 6
    async with corral.connect(dynamodb_url) as db:
        await db._run(lambda s: s.jobs.prepare())
        rows = [
            (
                f"j{i:02}",
                json.dumps({"i": i}),
                i % 3,
                f"k{i % 4}",
                "b" if i % 5 == 0 else None,
                None,
                "[]",
                3,
                "default",
            )
            for i in range(n)
        ]
        assert await db._run(lambda s: s.jobs.enqueue(rows)) == []
    running: Counter[str] = Counter()
    highest: Counter[str] = Counter()
    completed: list[str] = []
    sampled: list[Counter[str]] = []
    done, full = anyio.Event(), anyio.Event()

    def count(claimed: Claimed, step: int) -> None:
        for key in ("total", f"cluster:{claimed.cluster}", f"customer:{claimed.row['customer']}"):
            running[key] += step
            highest[key] = max(highest[key], running[key])
        if running["total"] == MAX_CONCURRENT:
            full.set()

    async def worker(name: str) -> None:
        async with corral.connect(dynamodb_url) as db:
            idle = 0
            while len(completed) < n and idle < 200:
                result = await db._run(lambda s: s.jobs.claim(_request(name)))
                for claimed in result.claimed:
                    count(claimed, +1)
                if not result.claimed:
                    idle += 1
                    await anyio.sleep(0.01)  # a poll, as a processor's
                    continue
                await full.wait()  # hold them until the claims have filled the limit
                for claimed in result.claimed:
                    count(claimed, -1)  # before the store frees the slot
                outcomes = [Outcome(c.id, c.token, State.COMPLETED) for c in result.claimed]
                accepted = await db._run(lambda s, o=outcomes: s.jobs.finish(o))
                assert accepted == {c.token for c in result.claimed}
                completed.extend(c.id for c in result.claimed)

    async def sampler() -> None:
        async def in_progress(session: Session) -> list[Mapping[str, Any]]:
            return list(await session.jobs.list(State.IN_PROGRESS, 1000))

        async with corral.connect(dynamodb_url) as db:
            while not done.is_set():
                seen: Counter[str] = Counter()
                for row in await db._run(in_progress):
                    seen["total"] += 1
                    seen[f"cluster:{row['cluster']}"] += 1
                    seen[f"customer:{row['customer']}"] += 1
                sampled.append(seen)
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler)
        async with anyio.create_task_group() as crew:
            for w in range(workers):
                crew.start_soon(worker, f"w{w}")
        done.set()
    assert sorted(completed) == [f"j{i:02}" for i in range(n)]  # each once
    for counts in [highest, *sampled]:
        assert counts["total"] <= MAX_CONCURRENT
        for cluster, capacity in CAPACITY.items():
            assert counts[f"cluster:{cluster}"] <= capacity
        assert max((v for k, v in counts.items() if k.startswith("customer:")), default=0) <= (
            PER_CUSTOMER
        )
    assert highest["total"] == MAX_CONCURRENT  # reached: a violation would have shown
    assert len(sampled) > 1
    async with corral.connect(dynamodb_url) as db:
        assert await db._run(lambda s: s.jobs.depth()) == {"completed": n}
        # Every slot was given back: the counters hold no one.
        counters = await db._run(lambda s: s.jobs._counters(["limit#all", "limit#cluster#a"]))
        assert counters == {"limit#all": set(), "limit#cluster#a": set()}


async def test_rows_progress_and_jobs_on_one_store(dynamodb_url: str) -> None:
    async with corral.connect(dynamodb_url) as db:
        prices = db.table("prices", key=("ticker", "day"))
        await prices.put({"ticker": "ACME", "day": "2026-12-03", "close": 1.5, "volume": 10})
        await prices.put({"ticker": "ACME", "day": "2026-12-04", "close": 2.5, "volume": 20})
        await prices.put({"ticker": "ACME", "day": "2026-12-03", "volume": 11})
        await db.flush()
        rows = await db._run(lambda s: s.scan_table("prices"))
        assert sorted((r["day"], r["close"], r["volume"]) for r in rows) == [
            ("2026-12-03", 1.5, 11),
            ("2026-12-04", 2.5, 20),
        ]
        run = await db.progress.start_run("STATIC", "Process Counties")
        assert isinstance(run.id, int)


async def test_a_table_keyed_on_more_than_two_columns_is_refused_at_table(
    dynamodb_url: str,
) -> None:
    async with corral.connect(dynamodb_url) as db:
        with pytest.raises(SchemaError, match="at most 2"):
            db.table("t", key=("a", "b", "c"))


async def test_values_dynamodb_cannot_hold_are_refused_before_they_are_written(
    dynamodb_url: str,
) -> None:
    async with corral.connect(dynamodb_url) as db:
        with pytest.raises(SchemaError, match="cannot store a complex"):
            await db.table("z", key="k").put({"k": 1, "v": 1j})
        table = db.table("t", key="k")
        await table.put({"k": 1, "x": 1.0})
        with pytest.raises(SchemaError, match="finite"):
            await table.put({"k": 2, "x": math.nan})
        await table.put({"k": 3, "x": 2.0})
        await db.flush()
        big = db.table("big", key="k")
        await big.put({"k": 1, "n": 1})
        await big.put({"k": 2, "n": 2**70})  # only seen when encoded: that row fails alone
        with pytest.raises(corral.WriteError, match="64 bits"):
            await db.flush()
        rows = await db._run(lambda s: s.scan_table("big"))
        assert [r["k"] for r in rows] == [1]


def test_bad_urls_are_refused_naming_the_fix() -> None:
    async def main() -> None:
        with pytest.raises(DatabaseURLError, match="table prefix"):
            async with corral.connect("dynamodb://"):
                pass
        with pytest.raises(DatabaseURLError, match="unknown parameter 'regoin'"):
            async with corral.connect("dynamodb://corral?regoin=us-east-1"):
                pass

    anyio.run(main)


def test_missing_credentials_fail_at_connect_saying_what_to_set(
    moto_endpoint: str, tmp_path: Any
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k not in ("HOME", "USERPROFILE")
    }
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true")
    code = (
        "import anyio, corral\n"
        "async def main():\n"
        f"    async with corral.connect('dynamodb://c?region=us-east-1&endpoint_url={moto_endpoint}'):\n"
        "        pass\n"
        "try:\n"
        "    anyio.run(main)\n"
        "except corral.ConnectError as exc:\n"
        "    print('ConnectError', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert "ConnectError no AWS credentials found: set AWS_ACCESS_KEY_ID" in out.stdout, out
    assert issubclass(ConnectError, corral.CorralError)


def test_corral_imports_without_aioboto3_and_connect_says_what_to_install() -> None:
    # aioboto3 unimportable (a None entry in sys.modules): corral and corral.jobs import,
    # and a dynamodb:// URL fails at connect naming the extra.
    code = (
        "import sys\n"
        "sys.modules['aioboto3'] = None\n"
        "import anyio, corral, corral.jobs\n"
        "async def main():\n"
        "    async with corral.connect('dynamodb://corral?region=us-east-1'):\n"
        "        pass\n"
        "try:\n"
        "    anyio.run(main)\n"
        "except corral.MissingDriverError as exc:\n"
        "    print('MissingDriverError', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'corral[aws]'" in out.stdout
    assert issubclass(MissingDriverError, ImportError)


def _new(job_id: str) -> tuple[str, str, int, None, None, None, str, int, str]:
    return (job_id, json.dumps({"id": job_id}), 2, None, None, None, "[]", 3, "default")


async def test_enqueue_groups_stores_each_group_whole_or_none_and_takes_back_a_long_one(
    dynamodb_url: str,
) -> None:
    # 250 jobs: three transactions; the second is refused ("a"), the third holds "d":
    # the first one's 100 jobs are deleted again, and both ids are named.
    long = [_new(f"g{n:03}") for n in range(250)]
    long[120], long[230] = _new("a"), _new("d")
    groups = [
        [_new("b"), _new("a"), _new("c")],  # "a" is stored: refused
        [_new("d")],
        [_new("d"), _new("e")],  # "d" was stored by the group before
        long,
        [_new("f")],
        [_new("b")],  # free again: the first group was refused
    ]
    async with corral.connect(dynamodb_url) as db:
        await db._run(lambda s: s.jobs.prepare())
        assert await db._run(lambda s: s.jobs.enqueue([_new("a")])) == []
        refused = await db._run(lambda s: s.jobs.enqueue_groups(groups))
        assert refused == [["a"], [], ["d"], ["a", "d"], [], []]
        # enqueue returns the ids refused and stores none of its jobs, raising nothing.
        assert await db._run(lambda s: s.jobs.enqueue([_new("h"), _new("f")])) == ["f"]
        rows = await db._run(lambda s: s.jobs.list(None, 1000))
        assert sorted(r["id"] for r in rows) == ["a", "b", "d", "f"]
        # Claim order is the order of enqueueing, across the groups of one call.
        assert [r["id"] for r in rows] == ["a", "d", "f", "b"]


async def test_a_reclaimed_job_keeps_its_kind_and_its_cancellation_asked(
    dynamodb_url: str,
) -> None:
    # The domain reads ``kind`` in the reclaimed rows, and ``cancel_requested`` in a
    # claimed row: a job asked to cancel whose worker died is finished at its next claim.
    (job_id, payload, priority, customer, affinity, region, requires, retries, _) = _new("a")
    new = (job_id, payload, priority, customer, affinity, region, requires, retries, "report")
    async with corral.connect(dynamodb_url) as db:
        await db._run(lambda s: s.jobs.prepare())
        assert await db._run(lambda s: s.jobs.enqueue([new])) == []
        expired = _request("w1")
        expired.lease_seconds = -1.0
        [first] = (await db._run(lambda s: s.jobs.claim(expired))).claimed
        assert first.row["cancel_requested"] is False
        assert await db._run(lambda s: s.jobs.cancel("a")) == "requested"
        result = await db._run(lambda s: s.jobs.claim(_request("w2")))
        assert [(r["id"], r["kind"], State(r["state"])) for r in result.reclaimed] == [
            ("a", "report", State.READY)
        ]
        [again] = result.claimed
        assert (again.id, again.attempt, again.row["cancel_requested"]) == ("a", 2, True)


# -- botocore's errors, translated at the store's boundary -----------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_endpoint_is_a_connect_error_naming_it(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-printed-secret")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ConnectError) as caught:
        async with corral.connect(f"dynamodb://c?region=us-east-1&endpoint_url={endpoint}"):
            pass
    message = str(caught.value)
    assert "DynamoDB did not answer DescribeTable on table 'c_meta'" in message
    assert endpoint in message
    assert "check the network, the region and endpoint_url" in message
    assert "never-printed-secret" not in message
    assert isinstance(caught.value.__cause__, corral.ConnectionLostError)
    assert caught.value.__cause__.__cause__ is not None  # botocore's own error


def _boto(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(service, region_name="us-east-1", endpoint_url=endpoint)


async def test_a_table_deleted_under_the_store_is_a_query_error_saying_so(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    from botocore.exceptions import ClientError

    prefix = dynamodb_url.partition("://")[2].partition("?")[0]
    async with corral.connect(dynamodb_url) as db:
        await db.jobs.enqueue(jobs.Job("a"))
        await anyio.to_thread.run_sync(
            lambda: _boto("dynamodb", moto_endpoint).delete_table(TableName=f"{prefix}_jobs")
        )
        with pytest.raises(corral.QueryError) as caught:
            await db.jobs.get("a")
        message = str(caught.value)
        assert f"GetItem on table '{prefix}_jobs'" in message
        assert "the table does not exist" in message
        assert "connect again to have them made" in message
        assert isinstance(caught.value.__cause__, ClientError)
        # The database goes on: a user table still takes rows.
        await db.table("rows", key="k").put({"k": 1})
        await db.flush()
    async with corral.connect(dynamodb_url) as db:  # made again on first use
        await db.jobs.enqueue(jobs.Job("b"))
        assert [r.id for r in await db.jobs.list()] == ["b"]


async def test_a_user_table_deleted_under_the_store_stops_the_writer_saying_so(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    prefix = dynamodb_url.partition("://")[2].partition("?")[0]

    async def body() -> None:
        async with corral.connect(dynamodb_url) as db:
            rows = db.table("rows", key="k")
            await rows.put({"k": 1, "v": "one"})
            await db.flush()
            await anyio.to_thread.run_sync(
                lambda: _boto("dynamodb", moto_endpoint).delete_table(TableName=f"{prefix}_t_rows")
            )
            await rows.put({"k": 2, "v": "two"})
            await db.flush()

    with pytest.raises(corral.WriteError) as caught:
        await body()
    assert isinstance(caught.value.__cause__, corral.QueryError)
    assert f"BatchWriteItem on table '{prefix}_t_rows'" in str(caught.value)
    assert "the table does not exist" in str(caught.value)


#: A moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0: every request
#: is authenticated against moto's IAM, where no access key exists): it prints its port,
#: then serves until its stdin closes.
_CHECKING_MOTO = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


def test_credentials_aws_refuses_are_a_connect_error_saying_what_to_set() -> None:
    # moto checks credentials only so, and answers DynamoDB's request with IAM's XML
    # error (403, InvalidClientTokenId) where AWS answers UnrecognizedClientException.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-c", _CHECKING_MOTO],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"dynamodb://c?region=us-east-1&endpoint_url=http://127.0.0.1:{port}"

        async def main() -> None:
            with pytest.raises(ConnectError) as caught:
                async with corral.connect(url):
                    pass
            message = str(caught.value)
            assert "AWS refused the credentials of DescribeTable on table 'c_meta'" in message
            assert "set valid AWS credentials (AWS_ACCESS_KEY_ID" in message
            assert "never-printed-secret" not in message
            assert "AKIANOTAREALKEY" not in message

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY")
            patch.setenv("AWS_SECRET_ACCESS_KEY", "never-printed-secret")
            anyio.run(main)
    finally:
        assert server.stdin is not None
        assert server.stdout is not None
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()
