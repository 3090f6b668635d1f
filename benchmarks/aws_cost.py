"""What a job costs on DynamoDB: requests and write/read units per job, by claim batch size.

Runs the job port of the DynamoDB store (enqueue, claim, finish: what a processor does,
without its handlers) for N jobs, with claims (and enqueues and finishes) in batches
of 1, 10 and 25, and counts every request through botocore's event
hook (``before-parameter-build``): its operation, and the items it writes (a transaction's actions, a batch's
puts). Write units are derived from those counts (DynamoDB bills per item written, per
KB): 1 per plain write of an item up to 1 KB, 2 per item of a transaction, 1 more per
write that adds an item to, or removes it from, the ``waiting`` index; a counter item
(its holders: about 60 bytes each) costs ceil(size / 1 KB). Read units: half a unit per
4 KB read eventually consistent, one unit consistent (corral reads consistently, but
for the index), counted per request at one item of under 4 KB (an upper bound for the
small items here). The formula is printed with the numbers. ``--shards 1,4`` (the
default) measures the claims with the unsharded layout and with ``shards=4`` (the
waiting index and each limit's counter over 4 partitions: docs/aws.md).

Against moto by default (started here, serialized); ``--endpoint-url`` for another
emulator, or none with ``--aws`` for real AWS (it makes and leaves tables named by
``--prefix``: delete them afterwards).

    python benchmarks/aws_cost.py --jobs 200
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

import anyio

import corral
from corral._ports._jobs import ClaimRequest, Outcome, State

HOLDER_BYTES = 60


def route(row: Mapping[str, Any], free: Mapping[str, int]) -> tuple[str, str] | None:
    return next(((name, "free") for name, n in free.items() if n > 0), None)


def moto() -> str:
    import logging

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ: Any, start_response: Any) -> list[bytes]:
        with lock:
            return [b"".join(app(environ, start_response))]

    class Handler(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"

    server = make_server("127.0.0.1", 0, serialized, threaded=True, request_handler=Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    return f"http://127.0.0.1:{server.server_port}"


class Meter:
    """Counts requests and the write units they cost (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.wcu = 0.0
        self.rcu = 0.0
        self.holders = 0  # jobs in progress: the size of each counter item

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        op = model.name
        self.requests[op] += 1
        if op == "TransactWriteItems":
            for action in params["TransactItems"]:
                base, index = self.units(action)
                self.wcu += 2 * base + index  # the index is written as a plain write
        elif op == "BatchWriteItem":
            self.wcu += sum(len(v) for v in params["RequestItems"].values())
        elif op in ("PutItem", "UpdateItem", "DeleteItem"):
            self.wcu += sum(self.units({"Update": params}))
        elif op == "BatchGetItem":
            self.rcu += sum(len(v["Keys"]) for v in params["RequestItems"].values())
        elif op in ("GetItem", "Query", "Scan"):
            self.rcu += 1 if params.get("ConsistentRead") else 0.5

    def units(self, action: dict[str, Any]) -> tuple[float, float]:
        """Write units of one item write: the item's, and the waiting index's (0 or 1)."""
        body = next(iter(action.values()))
        text = json.dumps(body, default=str)
        key = body.get("Key", {}).get("pk", {}).get("S", "")
        if key.startswith(("limit#all", "limit#cluster#")):  # limit#all, limit#all#0, ...
            return max(1, math.ceil(self.holders * HOLDER_BYTES / 1024)), 0
        index = 1 if ('"wq"' in text or "#wq" in text) else 0
        return 1, index


async def measure(url: str, n: int, batch: int) -> dict[str, Any]:
    meter = Meter()
    async with corral.connect(url) as db:
        await db._run(lambda s: s.jobs.prepare())
        raw = db._backend.client.raw  # type: ignore[attr-defined]
        raw.meta.events.register("before-parameter-build.dynamodb", meter)
        start = time.perf_counter()
        for i in range(0, n, batch):
            rows = [
                (f"j{j:06}", json.dumps({"n": j}), 2, f"c{j % 5}", None, None, "[]", 3, "default")
                for j in range(i, min(n, i + batch))
            ]
            assert await db._run(lambda s, r=rows: s.jobs.enqueue(r)) == []
        enqueue = dict(meter.requests), meter.wcu
        done = 0
        while done < n:
            request = ClaimRequest(
                owner="bench",
                limit=batch,
                max_concurrent=1000,
                per_customer=None,
                capacity={"c": 1000},
                local_free={"c": 1000},
                lease_seconds=300,
                route=route,
            )
            claimed = (await db._run(lambda s, r=request: s.jobs.claim(r))).claimed
            meter.holders = len(claimed)
            outcomes = [Outcome(c.id, c.token, State.COMPLETED) for c in claimed]
            await db._run(lambda s, o=outcomes: s.jobs.finish(o))
            meter.holders = 0
            done += len(claimed)
        seconds = time.perf_counter() - start
    return {
        "batch": batch,
        "requests_per_job": sum(meter.requests.values()) / n,
        "by_operation": {k: round(v / n, 3) for k, v in sorted(meter.requests.items())},
        "wcu_per_job": meter.wcu / n,
        "enqueue_wcu_per_job": enqueue[1] / n,
        "rcu_per_job": meter.rcu / n,
        "seconds": seconds,
    }


async def measure_groups(url: str, n: int, callers: int) -> dict[str, Any]:
    """Enqueue ``n`` jobs as the writer's group commit does: ``callers`` one-job groups a call."""
    meter = Meter()
    async with corral.connect(url) as db:
        await db._run(lambda s: s.jobs.prepare())
        raw = db._backend.client.raw  # type: ignore[attr-defined]
        raw.meta.events.register("before-parameter-build.dynamodb", meter)
        start = time.perf_counter()
        for i in range(0, n, callers):
            groups = [
                [(f"j{j:06}", json.dumps({"n": j}), 2, f"c{j % 5}", None, None, "[]", 3, "default")]
                for j in range(i, min(n, i + callers))
            ]
            refused = await db._run(lambda s, g=groups: s.jobs.enqueue_groups(g))
            assert not any(refused)
        seconds = time.perf_counter() - start
    return {
        "callers": callers,
        "requests_per_job": sum(meter.requests.values()) / n,
        "by_operation": {k: round(v / n, 3) for k, v in sorted(meter.requests.items())},
        "wcu_per_job": meter.wcu / n,
        "seconds": seconds,
    }


FORMULA = """\
Write units per job, with b jobs per claim (and per enqueue and finish), k counter
items touched per batch (the global one, one per cluster, one per customer in the
batch) and items of under 1 KB:
  enqueue   2 (transactional put) + 1 (waiting index) + 1/b (seq counter)  = 3 + 1/b
  claim     2 (transactional update) + 1 (index delete) + 2k/b (counters)  = 3 + 2k/b
  finish    1 (fenced update) + k/b (holders deleted)                        = 1 + k/b
  total     7 + (1 + 3k)/b  ->  k=3: b=1: 17, b=10: 8.0, b=25: 7.4
(A counter item of h holders weighs about 60*h bytes: past 1 KB (h > 17) its writes
cost ceil(60*h/1024) each, which the measured numbers include.)"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--batches", default="1,10,25")
    parser.add_argument("--shards", default="1,4", help="numbers of shards to measure")
    parser.add_argument("--endpoint-url", default=None)
    parser.add_argument("--aws", action="store_true", help="real AWS (no endpoint)")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    endpoint = None if args.aws else (args.endpoint_url or moto())
    print(FORMULA)
    print()
    print(
        f"{'shards':>6} {'batch':>5} {'requests/job':>12} {'WCU/job':>8} {'RCU/job':>8}  "
        f"requests by operation"
    )
    for shards in (int(n) for n in args.shards.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            url = f"dynamodb://{prefix}?region={args.region}&shards={shards}"
            if endpoint:
                url += f"&endpoint_url={endpoint}"
            r = anyio.run(measure, url, args.jobs, batch)
            print(
                f"{shards:>6} {r['batch']:>5} {r['requests_per_job']:>12.2f} "
                f"{r['wcu_per_job']:>8.2f} {r['rcu_per_job']:>8.2f}  {r['by_operation']}"
            )
    print()
    print("Enqueue by group commit: c callers of one job each, one enqueue_groups call")
    print(f"{'c':>5} {'requests/job':>12} {'WCU/job':>8}  seconds  requests by operation")
    for callers in (int(b) for b in args.batches.split(",")):
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        url = f"dynamodb://{prefix}?region={args.region}"
        if endpoint:
            url += f"&endpoint_url={endpoint}"
        g = anyio.run(measure_groups, url, args.jobs, callers)
        print(
            f"{g['callers']:>5} {g['requests_per_job']:>12.2f} {g['wcu_per_job']:>8.2f} "
            f"{g['seconds']:>8.2f}  {g['by_operation']}"
        )


if __name__ == "__main__":
    main()
