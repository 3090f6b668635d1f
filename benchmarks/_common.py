"""Small helpers shared by the benchmark scripts: timing, a text table, JSON results.

Absolute times on a shared machine move by 2x from run to run, so every table reports each
row as a ratio against a reference row measured in the same run.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeat=1):
    """Call ``fn()`` ``repeat`` times; return (best, median) wall seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


async def atimed(afn, repeat=1):
    """Await ``afn()`` ``repeat`` times; return (best, median) wall seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await afn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def row(name, seconds, items, *, measured=True, note=""):
    """One table row. ``measured=False`` marks a computed (not timed) row."""
    return {"name": name, "seconds": seconds, "items": items, "measured": measured, "note": note}


def add_ratios(rows, reference):
    """Set ``ratio`` (seconds / reference seconds; lower is faster) on every row."""
    ref = next(r for r in rows if r["name"] == reference)["seconds"]
    for r in rows:
        r["ratio"] = r["seconds"] / ref if r["seconds"] is not None else None
    return rows


def print_table(title, rows, reference, extra=()):
    """Print rows as an aligned table: name, seconds, ratio vs ``reference``, items/s.

    ``extra`` is a sequence of (header, key, format) for additional columns.
    """
    add_ratios(rows, reference)
    headers = ["name", "seconds", "ratio", "items/s", *(h for h, _, _ in extra), ""]
    lines = []
    for r in rows:
        secs = r["seconds"]
        cells = [
            r["name"],
            "-" if secs is None else f"{secs:.3f}",
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
            "-" if not secs else f"{r['items'] / secs:,.0f}",
            *("-" if r.get(key) is None else fmt.format(r[key]) for _, key, fmt in extra),
            ("(computed) " if not r["measured"] else "") + r["note"],
        ]
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *lines, strict=True)]
    print(f"\n{title}\nratio = seconds / seconds of {reference!r} (lower is faster)")

    def fmt_line(cells):
        first = cells[0].ljust(widths[0])
        middle = [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1], strict=True)]
        return "  ".join([first, *middle, cells[-1]]).rstrip()

    print(fmt_line(headers))
    print("  ".join("-" * w for w in widths[:-1]))
    for cells in lines:
        print(fmt_line(cells))


def warn_if_busy():
    """Print a warning when the machine is already busy: ratios then mean less."""
    import os

    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"warning: 1-minute load average is {load:.2f} before starting; other work on "
            f"this machine will skew the numbers"
        )
    return load


def environment():
    """A few facts about where the numbers came from."""
    import os

    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
    }


def result_name(name, quick):
    """``name``, or ``name-quick`` so that smoke runs never overwrite real results."""
    return f"{name}-quick" if quick else name


def write_results(name, payload):
    """Write ``payload`` (plus environment facts) to benchmarks/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "environment": environment(), **payload}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path
