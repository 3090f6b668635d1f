"""Peak memory of streaming N lazily made 1 KiB items through a bounded map.

Every measurement runs in a fresh subprocess (this script re-invoked with --child MODE N), so
one mode's peak RSS cannot pollute another's. The child reports
resource.getrusage(RUSAGE_SELF).ru_maxrss (KiB on Linux). Each mode runs at two sizes; the
growth between them is what the mode keeps per item. Bounded streaming should grow by nothing
(corral's target: within 5 MiB); anything that materializes its input grows by about 1 KiB a
item.

    python benchmarks/stream_memory.py                 # N = 100,000 and 400,000
    python benchmarks/stream_memory.py --quick         # N = 20,000 and 80,000
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import json
import resource
import subprocess
import sys
import time

import _common
import anyio

import corral

try:
    import aiometer
except ImportError:  # optional peer
    aiometer = None

LIMIT = 100
ITEM = 1024
TARGET_MIB = 5.0


def gen(n):
    """N distinct 1 KiB bytes objects, made one at a time."""
    for i in range(n):
        yield bytes([i & 255]) * ITEM


async def touch(b):
    return len(b)


# One function per mode; each returns the number of bytes seen, as a check.


async def baseline(n):
    """The floor: everything imported, the generator consumed one item at a time."""
    total = 0
    for b in gen(n):
        total += await touch(b)
    return total


async def corral_imap(n):
    total = 0
    async with corral.imap(touch, gen(n), limit=LIMIT) as results:
        async for _i, v in results:
            total += v
    return total


async def gather_all(n):
    """asyncio.gather over every item: all coroutines (and their items) exist at once."""
    sem = asyncio.Semaphore(LIMIT)

    async def one(b):
        async with sem:
            return await touch(b)

    return sum(await asyncio.gather(*(one(b) for b in gen(n))))


async def aiometer_amap(n):
    """aiometer.amap takes a Sequence (it sizes its result stream with len), so a list."""
    total = 0
    async with aiometer.amap(touch, list(gen(n)), max_at_once=LIMIT) as results:
        async for v in results:
            total += v
    return total


def threadpool_map(n):
    """ThreadPoolExecutor.map submits every item before yielding the first result."""
    with cf.ThreadPoolExecutor(max_workers=LIMIT) as pool:
        return sum(pool.map(len, gen(n)))


MODES = {
    "baseline": ("floor: iterate the generator, no concurrency", baseline),
    "corral": (f"corral.imap limit={LIMIT}", corral_imap),
    "gather": (f"asyncio.gather + Semaphore({LIMIT})", gather_all),
    "threadpool": (f"ThreadPoolExecutor({LIMIT}).map(len)", threadpool_map),
    "aiometer": (f"aiometer.amap max_at_once={LIMIT} (needs a list)", aiometer_amap),
}


def child(mode, n):
    fn = MODES[mode][1]
    start = time.perf_counter()
    total = anyio.run(fn, n) if mode != "threadpool" else fn(n)
    seconds = time.perf_counter() - start
    if total != n * ITEM:
        raise AssertionError(f"{mode}: saw {total} bytes, expected {n * ITEM}")
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "n": n, "maxrss_kib": maxrss_kib, "seconds": seconds}))


def measure(mode, n):
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(n)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} {n} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n1", type=int, default=100_000)
    parser.add_argument("--n2", type=int, default=400_000)
    parser.add_argument("--quick", action="store_true", help="N = 20,000 and 80,000")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if args.quick:
        args.n1, args.n2 = 20_000, 80_000
    modes = [m for m in MODES if m != "aiometer" or aiometer is not None]
    print(f"peak RSS of {ITEM}-byte items at N = {args.n1:,} and {args.n2:,}, limit {LIMIT}")
    rows = []
    for mode in modes:
        a, b = measure(mode, args.n1), measure(mode, args.n2)
        rows.append(
            {
                "mode": mode,
                "name": MODES[mode][0],
                "rss_n1_mib": a["maxrss_kib"] / 1024,
                "rss_n2_mib": b["maxrss_kib"] / 1024,
                "growth_mib": (b["maxrss_kib"] - a["maxrss_kib"]) / 1024,
                "seconds_n2": b["seconds"],
            }
        )
        print(f"  {MODES[mode][0]:<46} done", flush=True)

    base = rows[0]["growth_mib"]
    headers = [
        "mode",
        f"RSS MiB @{args.n1:,}",
        f"RSS MiB @{args.n2:,}",
        "growth MiB",
        "growth - floor",
        f"s @{args.n2:,}",
    ]
    table = [
        [
            r["name"],
            f"{r['rss_n1_mib']:.1f}",
            f"{r['rss_n2_mib']:.1f}",
            f"{r['growth_mib']:.1f}",
            f"{r['growth_mib'] - base:.1f}",
            f"{r['seconds_n2']:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(headers, *table, strict=True)]
    print()
    for cells in [headers, ["-" * w for w in widths], *table]:
        print(
            "  ".join(
                [cells[0].ljust(widths[0])]
                + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            )
        )
    corral_row = next(r for r in rows if r["mode"] == "corral")
    growth = corral_row["growth_mib"] - base
    verdict = "within" if growth <= TARGET_MIB else "OVER"
    print(
        f"\ncorral.imap growth over the floor: {growth:.1f} MiB ({verdict} the {TARGET_MIB:.0f} MiB target)"
    )
    _common.write_results(
        _common.result_name("stream_memory", args.quick),
        {
            "item_bytes": ITEM,
            "limit": LIMIT,
            "n1": args.n1,
            "n2": args.n2,
            "target_growth_mib": TARGET_MIB,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
