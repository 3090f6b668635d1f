"""Thread vs process offload: corral.map against the floor and the usual peers.

CPU-bound: N calls of a ~100 us pure-Python function. The floor is os.cpu_count() bare
processes (forkserver, the same start method the pools use) each computing its share with no
per-call IPC, timed including their start. Ratios are seconds / floor seconds (lower is better).

I/O-bound: N blocking time.sleep(0.005) calls at a concurrency limit of 64. The reference is the
ideal N * 5 ms / limit, computed, not measured.

    python benchmarks/offload.py            # full run (about a minute on 2 cores)
    python benchmarks/offload.py --cpu-repeat 3   # steadier: median of 3 per CPU row
    python benchmarks/offload.py --quick    # shrunk N, well under 20 s
    python benchmarks/offload.py --backend trio
    python benchmarks/offload.py --dask     # also the Dask rows (needs corral[dask])
    python benchmarks/offload.py --only-dask

Dask rows: the same CPU workload on a LocalCluster of CPUS worker processes (one thread
each, profiler off), started once outside the timing: corral.map offload=DaskPool (adaptive chunks),
client.map with one task per item (timed on a subset of --dask-per-item items and
scaled to N, since it costs a millisecond or more per task), client.map over
hand-made batches (4 per worker thread), and the same local floor.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import multiprocessing
import multiprocessing.forkserver
import os
import statistics
import time
from functools import partial

import _common
import anyio
import anyio.to_process
import anyio.to_thread

import corral

SLEEP = 0.005  # seconds per I/O call
TARGET = 100e-6  # seconds per CPU call
CPUS = os.cpu_count() or 1
START_METHOD = "forkserver"


# Workloads: module level so that worker processes can import them.


def burn(n):
    """Pure-Python CPU work: sum of range(n), the slow way."""
    total = 0
    for i in range(n):
        total += i
    return total


def blocking_sleep(x):
    """A blocking I/O stand-in."""
    time.sleep(SLEEP)
    return x


def _floor_worker(share):
    for n in share:
        burn(n)


def calibrate():
    """Return n such that burn(n) takes about TARGET seconds here."""
    probe = 50_000
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # let the CPU clock up before measuring
        burn(probe)
    best, _ = _common.timed(partial(burn, probe), repeat=15)
    return max(1, round(probe * TARGET / best))


def cpu_items(count, n):
    # Slightly different arguments so that result order is checked, not just length.
    return [n + (i % 7) for i in range(count)]


# CPU-bound rows


def run_floor(items):
    ctx = multiprocessing.get_context(START_METHOD)
    shares = [items[i::CPUS] for i in range(CPUS)]
    procs = [ctx.Process(target=_floor_worker, args=(share,)) for share in shares]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"floor worker exited with {p.exitcode}")


def run_ppe(items, chunksize):
    ctx = multiprocessing.get_context(START_METHOD)
    with cf.ProcessPoolExecutor(max_workers=CPUS, mp_context=ctx) as pool:
        return list(pool.map(burn, items, chunksize=chunksize))


def run_tpe(fn, items, max_workers=None):
    with cf.ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(fn, items))


async def anyio_per_item(items, fn, runner, limit):
    """The plain anyio way: one task per item, a CapacityLimiter bounding the workers."""
    limiter = anyio.CapacityLimiter(limit)
    results = [None] * len(items)

    async def one(i, x):
        results[i] = await runner(fn, x, limiter=limiter)

    async with anyio.create_task_group() as tg:
        for i, x in enumerate(items):
            tg.start_soon(one, i, x)
    return results


async def gather_to_thread(items, fn, limit, executor=None):
    """The plain asyncio way: gather over everything, a Semaphore around to_thread."""
    sem = asyncio.Semaphore(limit)
    loop = asyncio.get_running_loop()

    async def one(x):
        async with sem:
            if executor is None:
                return await asyncio.to_thread(fn, x)
            return await loop.run_in_executor(executor, fn, x)

    return await asyncio.gather(*(one(x) for x in items))


async def measure(rows, name, afn, items, expected, repeat, note=""):
    out = {}

    async def call():
        out["result"] = await afn()

    _, median = await _common.atimed(call, repeat)
    if expected is not None and out["result"] != expected:
        raise AssertionError(f"{name}: wrong results")
    rows.append(_common.row(name, median, items, note=note))
    print(f"  {name:<48} {median:8.3f} s", flush=True)


def sync(fn, *args, **kwargs):
    """Run a blocking call in a worker thread so the event loop is not what is being timed."""

    async def go():
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))

    return go


async def cpu_bound(args, backend):
    n = calibrate()
    items = cpu_items(args.cpu_items, n)
    by_arg = {x: burn(x) for x in set(items)}
    expected = [by_arg[x] for x in items]
    count = len(items)
    tuned = max(1, count // (4 * CPUS))
    print(
        f"\nCPU-bound: {count:,} calls of burn({n}) (~{TARGET * 1e6:.0f} us each), {CPUS} CPUs, "
        f"median of {args.cpu_repeat} (cold rows: once)"
    )

    async def serial():
        return [burn(x) for x in items]

    # (name, call, check results?, repeatable?, note). A cold row can only be cold once.
    specs = [
        ("serial (plain loop)", serial, True, True, ""),
        (
            "floor: bare processes, no per-call IPC",
            sync(run_floor, items),
            False,
            True,
            f"{CPUS} {START_METHOD} processes, start included",
        ),
        (
            "corral.map offload=thread",
            partial(corral.map, burn, items, offload="thread"),
            True,
            True,
            "",
        ),
        (
            "corral.map offload=process (cold)",
            partial(corral.map, burn, items, offload="process"),
            True,
            False,
            "pool started inside the timing",
        ),
        (
            "corral.map offload=process (warm)",
            partial(corral.map, burn, items, offload="process"),
            True,
            True,
            "pool already running",
        ),
        (
            "corral.map offload=process chunksize=1 (warm)",
            partial(corral.map, burn, items, offload="process", chunksize=1),
            True,
            True,
            "one IPC round trip per item",
        ),
        (
            "anyio.to_process.run_sync per item",
            partial(anyio_per_item, items, burn, anyio.to_process.run_sync, CPUS),
            True,
            False,
            f"task per item, CapacityLimiter({CPUS}), workers started inside",
        ),
        (
            "ProcessPoolExecutor.map chunksize=1",
            sync(run_ppe, items, 1),
            True,
            True,
            "pool start included",
        ),
        (
            f"ProcessPoolExecutor.map chunksize={tuned}",
            sync(run_ppe, items, tuned),
            True,
            True,
            "N // (4*cpus), pool start included",
        ),
        (
            "ThreadPoolExecutor.map",
            sync(run_tpe, burn, items),
            True,
            True,
            "default max_workers",
        ),
    ]
    # Round robin rather than k runs in a row, so that a slow spell on a shared machine
    # lands on several rows instead of all the repeats of one.
    times = {name: [] for name, *_ in specs}
    for round_ in range(args.cpu_repeat):
        for name, afn, check, repeatable, _note in specs:
            if round_ and not repeatable:
                continue
            start = time.perf_counter()
            result = await afn()
            times[name].append(time.perf_counter() - start)
            if check and result != expected:
                raise AssertionError(f"{name}: wrong results")
            print(f"  {name:<48} {times[name][-1]:8.3f} s", flush=True)
    rows = [
        _common.row(name, statistics.median(times[name]), count, note=note)
        for name, _, _, _, note in specs
    ]
    return {"n": n, "items": count, "reference": specs[1][0], "rows": rows}


def _burn_batch(batch):
    return [burn(x) for x in batch]


async def dask_bound(args, backend):
    """The Dask rows: DaskPool map vs client.map per item and per batch, vs the local floor."""
    import dask
    import distributed

    from corral.dask import DaskPool

    n = calibrate()
    items = cpu_items(args.cpu_items, n)
    by_arg = {x: burn(x) for x in set(items)}
    expected = [by_arg[x] for x in items]
    count = len(items)
    subset = min(count, args.dask_per_item)
    print(
        f"\nDask: {count:,} calls of burn({n}) on a LocalCluster of {CPUS} worker processes "
        f"(one thread each), profiler {'on' if args.dask_profiler else 'off'}, "
        f"median of {args.cpu_repeat}"
    )
    # Dask's statistical profiler samples every worker thread's stack every 10 ms: for
    # pure-Python work on 2 cores it cost ~40% here. Off unless --dask-profiler (every Dask
    # row runs on this one cluster either way).
    with dask.config.set({"distributed.worker.profile.enabled": args.dask_profiler}):
        cluster = await anyio.to_thread.run_sync(
            partial(
                distributed.LocalCluster,
                n_workers=CPUS,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
        )
    client = await anyio.to_thread.run_sync(distributed.Client, cluster)
    try:
        async with DaskPool(client) as pool:

            def per_item(part):
                futures = client.map(burn, part, pure=False)
                return client.gather(futures)

            def batched(parts):
                futures = client.map(_burn_batch, parts, pure=False)
                return [r for batch in client.gather(futures) for r in batch]

            batches = [items[i :: 4 * CPUS] for i in range(4 * CPUS)]
            batch_expected = [r for b in batches for r in (by_arg[x] for x in b)]
            scale = count / subset
            specs = [
                ("floor: bare processes, no per-call IPC", sync(run_floor, items), None, 1, ""),
                (
                    "corral.map offload=DaskPool",
                    partial(corral.map, burn, items, offload=pool),
                    expected,
                    1,
                    "adaptive chunks, limit = worker threads",
                ),
                (
                    "client.map one task per item",
                    sync(per_item, items[:subset]),
                    expected[:subset],
                    scale,
                    f"timed on {subset:,} items, scaled x{scale:g}" if scale != 1 else "",
                ),
                (
                    f"client.map over {4 * CPUS} hand-made batches",
                    sync(batched, batches),
                    batch_expected,
                    1,
                    "4 batches per worker thread",
                ),
            ]
            times = {name: [] for name, *_ in specs}
            for _ in range(args.cpu_repeat):
                for name, afn, check, factor, _note in specs:
                    start = time.perf_counter()
                    result = await afn()
                    times[name].append((time.perf_counter() - start) * factor)
                    if check is not None and result != check:
                        raise AssertionError(f"{name}: wrong results")
                    print(f"  {name:<48} {times[name][-1]:8.3f} s", flush=True)
    finally:
        await anyio.to_thread.run_sync(client.close)
        await anyio.to_thread.run_sync(cluster.close)
    rows = [
        _common.row(name, statistics.median(times[name]), count, note=note)
        for name, _, _, _, note in specs
    ]
    floor = statistics.median(times[specs[0][0]])
    ours = statistics.median(times[specs[1][0]])
    one_by_one = statistics.median(times[specs[2][0]])
    print(
        f"  targets: DaskPool / floor = {ours / floor:.2f} (<= 1.3), "
        f"per-item client.map / DaskPool = {one_by_one / ours:.1f} (>= 10)"
    )
    return {"n": n, "items": count, "reference": specs[0][0], "rows": rows}


async def io_bound(args, backend):
    count, limit, repeat = args.io_items, args.limit, args.repeat
    items = list(range(count))
    print(
        f"\nI/O-bound: {count:,} calls of time.sleep({SLEEP}) at limit {limit}, median of {repeat}"
    )
    ideal = count * SLEEP / limit
    rows = [
        _common.row("ideal: N * 5 ms / limit", ideal, count, measured=False),
        _common.row("serial (plain loop)", count * SLEEP, count, measured=False, note="N * 5 ms"),
    ]
    await measure(
        rows,
        f"corral.map limit={limit}",
        partial(corral.map, blocking_sleep, items, limit=limit),
        count,
        items,
        repeat,
        note="plain function: threads by default",
    )
    await measure(
        rows,
        f"anyio.to_thread.run_sync per item, limit={limit}",
        partial(anyio_per_item, items, blocking_sleep, anyio.to_thread.run_sync, limit),
        count,
        items,
        repeat,
        note=f"task per item, CapacityLimiter({limit})",
    )
    if backend == "asyncio":
        default_workers = min(32, CPUS + 4)
        await measure(
            rows,
            f"asyncio.gather+Semaphore({limit})+to_thread",
            partial(gather_to_thread, items, blocking_sleep, limit),
            count,
            items,
            repeat,
            note=f"default executor: {default_workers} threads cap it",
        )
        with cf.ThreadPoolExecutor(max_workers=limit) as executor:
            await measure(
                rows,
                f"asyncio.gather+Semaphore({limit})+executor({limit})",
                partial(gather_to_thread, items, blocking_sleep, limit, executor),
                count,
                items,
                repeat,
                note=f"run_in_executor on a {limit}-thread pool",
            )
    await measure(
        rows,
        f"ThreadPoolExecutor({limit}).map",
        sync(run_tpe, blocking_sleep, items, limit),
        count,
        items,
        repeat,
        note="pool start included",
    )
    return {"items": count, "limit": limit, "reference": "ideal: N * 5 ms / limit", "rows": rows}


def chart(cpu, io, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, axes = plt.subplots(2, 1, figsize=(10, 9))
    for ax, part, title in (
        (axes[0], cpu, "CPU-bound: seconds / floor (bare processes)"),
        (axes[1], io, "I/O-bound: seconds / ideal (N * 5 ms / limit)"),
    ):
        rows = [r for r in part["rows"] if r["ratio"] is not None]
        names = [r["name"] for r in rows][::-1]
        ratios = [r["ratio"] for r in rows][::-1]
        colors = [
            "tab:green"
            if "corral" in name
            else "tab:gray"
            if not r["measured"] or name == part["reference"]
            else "tab:blue"
            for name, r in zip(names, rows[::-1], strict=True)
        ]
        bars = ax.barh(names, ratios, color=colors)
        ax.bar_label(bars, labels=[f"{r:.2f}x" for r in ratios], padding=3, fontsize=8)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%gx"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%gx"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_title(title + "  (lower is better)")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def main(args):
    backend = "trio" if args.backend == "trio" else "asyncio"
    dask = await dask_bound(args, backend) if args.dask or args.only_dask else None
    if args.only_dask:
        _common.print_table(
            f"Dask, {dask['items']:,} x burn({dask['n']}), backend {backend}",
            dask["rows"],
            dask["reference"],
        )
        return
    cpu = await cpu_bound(args, backend)
    io = await io_bound(args, backend)
    _common.print_table(
        f"CPU-bound, {cpu['items']:,} x burn({cpu['n']}), backend {backend}",
        cpu["rows"],
        cpu["reference"],
    )
    _common.print_table(
        f"I/O-bound, {io['items']:,} x sleep(5 ms), limit {io['limit']}, backend {backend}",
        io["rows"],
        io["reference"],
    )
    if dask is not None:
        _common.print_table(
            f"Dask, {dask['items']:,} x burn({dask['n']}), backend {backend}",
            dask["rows"],
            dask["reference"],
        )
    name = _common.result_name(
        "offload" if backend == "asyncio" else f"offload-{backend}", args.quick
    )
    results = {"backend": backend, "quick": args.quick, "cpu": cpu, "io": io}
    if dask is not None:
        results["dask"] = dask
    _common.write_results(name, results)
    png = _common.RESULTS / f"{name}.png"
    chart(cpu, io, png)
    print(f"wrote {png}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-items", type=int, default=40_000)
    parser.add_argument("--io-items", type=int, default=2_000)
    parser.add_argument("--limit", type=int, default=64, help="I/O concurrency limit")
    parser.add_argument("--repeat", type=int, default=3, help="repeats per I/O row (median)")
    parser.add_argument(
        "--cpu-repeat", type=int, default=1, help="repeats per CPU row (median; 3 is steadier)"
    )
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--dask", action="store_true", help="also the Dask rows")
    parser.add_argument("--only-dask", action="store_true", help="the Dask rows only")
    parser.add_argument(
        "--dask-profiler", action="store_true", help="leave Dask's worker profiler on"
    )
    parser.add_argument(
        "--dask-per-item",
        type=int,
        default=2_000,
        help="items timed for client.map one task per item (scaled to N)",
    )
    parser.add_argument("--quick", action="store_true", help="small N: the whole run in < 20 s")
    args = parser.parse_args()
    if args.quick:
        args.cpu_items, args.io_items, args.repeat, args.cpu_repeat = 2_000, 256, 1, 1
        args.dask_per_item = 500
    return args


if __name__ == "__main__":
    args = parse_args()
    # The forkserver is started once per program; start it before any timing so that no row
    # pays for it and all process rows share it.
    multiprocessing.forkserver.ensure_running()
    _common.warn_if_busy()
    anyio.run(main, args, backend=args.backend)
