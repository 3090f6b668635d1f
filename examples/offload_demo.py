"""Thread vs process offload with corral: a small side-by-side table.

CPU-bound work (pure Python, holds the GIL): serial, corral threads, corral processes.
I/O-bound work (a blocking sleep, releases the GIL): serial (computed: items x sleep)
and corral threads.

    python examples/offload_demo.py           # about 10 s on 2 cores
    python examples/offload_demo.py --quick   # under 3 s

Wall times on a shared machine move from run to run; the speedups are the point.
"""

from __future__ import annotations

import argparse
import time

import anyio

import corral


def burn(n: int) -> int:
    """Pure-Python CPU work: about a millisecond for n = 20_000."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def blocking_sleep(seconds: float) -> float:
    """A blocking call that waits (like a socket read) with the GIL released."""
    time.sleep(seconds)
    return seconds


def timed(label: str, rows: list[tuple[str, str, float]], workload: str, started: float) -> None:
    rows.append((workload, label, time.perf_counter() - started))


async def main(quick: bool) -> None:
    cpu_items = [20_000] * (400 if quick else 2_000)
    io_items = [0.01] * (200 if quick else 500)
    io_limit = 40
    rows: list[tuple[str, str, float]] = []

    # Start the process pool's workers once, ahead of the timed runs: a program pays
    # this start-up once, and every later call reuses the same workers.
    started = time.perf_counter()
    await corral.map(burn, [1] * corral.cpu_count(), offload="process", chunksize=1)
    pool_start = time.perf_counter() - started

    started = time.perf_counter()
    expected = [burn(n) for n in cpu_items]
    timed("serial", rows, "cpu", started)

    started = time.perf_counter()
    in_threads = await corral.map(burn, cpu_items)  # a plain function: threads by default
    timed("corral threads", rows, "cpu", started)

    started = time.perf_counter()
    in_processes = await corral.map(burn, cpu_items, offload="process")
    timed("corral processes", rows, "cpu", started)
    assert in_threads == in_processes == expected

    rows.append(("io", "serial (computed)", sum(io_items)))
    started = time.perf_counter()
    await corral.map(blocking_sleep, io_items, limit=io_limit)
    timed(f"corral threads, limit={io_limit}", rows, "io", started)

    print(
        f"{len(cpu_items)} CPU-bound calls of ~1 ms, {len(io_items)} blocking sleeps of "
        f"10 ms; {corral.cpu_count()} CPUs; process pool start-up {pool_start:.2f} s "
        f"(once per program, not in the table)"
    )
    print()
    print(f"{'workload':8}  {'way':28}  {'wall s':>7}  {'speedup':>7}")
    serial = {workload: seconds for workload, label, seconds in rows if "serial" in label}
    for workload, label, seconds in rows:
        speedup = serial[workload] / seconds
        print(f"{workload:8}  {label:28}  {seconds:7.3f}  {speedup:6.1f}x")
    print()
    print(
        "CPU-bound Python holds the GIL: threads run it one at a time, processes in "
        "parallel.\nBlocking I/O releases it: threads overlap the waits."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 3 s")
    args = parser.parse_args()
    anyio.run(main, args.quick)
