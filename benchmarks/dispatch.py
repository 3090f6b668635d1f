"""Dispatch overhead: N trivial coroutines at a concurrency limit, against bare tasks.

The floor is `limit` bare tasks in one anyio task group, each awaiting
anyio.lowlevel.checkpoint() N / limit times: the same number of event-loop yields as the
mapped work with none of the bookkeeping. Each row is the median of --repeat rounds; each
round runs every row once, so a drift of the machine's speed hits all rows alike.

    python benchmarks/dispatch.py                  # 100,000 coroutines at limit 100, asyncio
    python benchmarks/dispatch.py --backend both   # asyncio, then trio
    python benchmarks/dispatch.py --quick          # 10,000 coroutines
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from functools import partial

import _common
import anyio
import anyio.lowlevel

import corral

try:
    import aiometer
except ImportError:  # optional peer
    aiometer = None


async def trivial(x):
    await anyio.lowlevel.checkpoint()
    return x


async def floor(items, limit):
    async def worker(count):
        for _ in range(count):
            await anyio.lowlevel.checkpoint()

    share, rest = divmod(items, limit)
    async with anyio.create_task_group() as tg:
        for i in range(limit):
            tg.start_soon(worker, share + (i < rest))
    return None


async def corral_map(items, limit):
    return await corral.map(trivial, range(items), limit=limit)


async def anyio_task_per_item(items, limit):
    """The plain anyio way: a task per item, a CapacityLimiter around the call."""
    limiter = anyio.CapacityLimiter(limit)
    results = [None] * items

    async def one(x):
        async with limiter:
            results[x] = await trivial(x)

    async with anyio.create_task_group() as tg:
        for x in range(items):
            tg.start_soon(one, x)
    return results


async def gather_semaphore(items, limit):
    """The plain asyncio way: gather over all coroutines, each inside a Semaphore."""
    sem = asyncio.Semaphore(limit)

    async def one(x):
        async with sem:
            return await trivial(x)

    return await asyncio.gather(*(one(x) for x in range(items)))


async def aiometer_run_all(items, limit):
    return await aiometer.run_all([partial(trivial, x) for x in range(items)], max_at_once=limit)


async def aiometer_amap(items, limit):
    out = []
    async with aiometer.amap(trivial, range(items), max_at_once=limit) as results:
        async for value in results:
            out.append(value)
    return sorted(out)  # amap yields in completion order


async def run_backend(args, backend):
    items, limit = args.items, args.limit
    expected = list(range(items))
    rows_spec = [
        ("floor: bare tasks, checkpoint loop", floor, None),
        (f"corral.map limit={limit}", corral_map, expected),
        (f"anyio task per item + CapacityLimiter({limit})", anyio_task_per_item, expected),
    ]
    if backend == "asyncio":
        rows_spec.append((f"asyncio.gather + Semaphore({limit})", gather_semaphore, expected))
    if aiometer is not None:
        rows_spec.append((f"aiometer.run_all max_at_once={limit}", aiometer_run_all, expected))
        rows_spec.append((f"aiometer.amap max_at_once={limit}", aiometer_amap, expected))

    print(
        f"\n{backend}: {items:,} trivial coroutines at limit {limit}, "
        f"median of {args.repeat} interleaved rounds"
    )
    # Every row once per round: a slow drift of the shared machine hits all rows alike.
    seconds = {name: [] for name, _, _ in rows_spec}
    for _ in range(args.repeat):
        for name, fn, want in rows_spec:
            out = {}

            async def call(fn=fn, out=out):
                out["result"] = await fn(items, limit)

            best, _ = await _common.atimed(call, 1)
            if want is not None and out["result"] != want:
                raise AssertionError(f"{name}: wrong results")
            seconds[name].append(best)
    rows = []
    for name, _, _ in rows_spec:
        median = statistics.median(seconds[name])
        rows.append(_common.row(name, median, items))
        print(f"  {name:<44} {median:8.3f} s", flush=True)

    reference = rows[0]["name"]
    for r in rows:
        r["throughput"] = rows[0]["seconds"] / r["seconds"]
    _common.print_table(
        f"Dispatch, {items:,} trivial coroutines, limit {limit}, backend {backend}",
        rows,
        reference,
        extra=[("throughput vs floor", "throughput", "{:.2f}")],
    )
    return {"items": items, "limit": limit, "reference": reference, "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="repeats per row (median)")
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="asyncio")
    parser.add_argument("--quick", action="store_true", help="10,000 items, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeat = 10_000, 1
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    _common.warn_if_busy()
    results = {b: anyio.run(run_backend, args, b, backend=b) for b in backends}
    _common.write_results(
        _common.result_name("dispatch", args.quick), {"quick": args.quick, "backends": results}
    )


if __name__ == "__main__":
    main()
