"""Durable jobs per second on PostgreSQL: corral's Processor against pgqueuer, and pickup latency.

Throughput: N no-op jobs are enqueued in bulk (one statement each way: corral's
``db.jobs.enqueue_many``, pgqueuer's ``Queries.enqueue`` with lists), then W worker
processes, started and connected beforehand, are released at once and drain the queue:
each claims jobs, runs a handler that does nothing and records the job as done (corral:
``Processor.run(until_idle=True)``; pgqueuer: ``QueueManager.run(mode=drain)``). The
time runs from the release until every worker has returned, i.e. until every job is
committed as done; the jobs are then counted in the database (all must be done). corral
runs at its default claim size (``ProcessorConfig.batch_size``, 100) and at 500 and 1,000;
pgqueuer at 50, 100, 500 and 1,000 (it drains fastest at the largest here; add 10, its
default, with ``--pgq-batch-sizes 10,50,100,500,1000``: on a queue of 100,000 it drains
about 1,000 jobs/s, so one round takes minutes); the ratio is corral's best against
pgqueuer's best. The queue holds 100,000 jobs by default, so that a drain lasts seconds
and measures the rate the tools keep up rather than their start and their tail (with
20,000, corral's drain lasts about half a second, and its ratio to pgqueuer is lower: see the
README).
Besides the time, each row shows the CPU the worker processes spent per job, and the CPU
the rest of the machine spent meanwhile (PostgreSQL, and anything else running).

Pickup latency: W idle workers wait on an empty queue; the driver enqueues jobs one at a
time (one transaction each), ``--gap`` seconds apart, and the delay from each job's
enqueue to its claim is read from the database's own timestamps (corral: ``started_at -
created_at``; pgqueuer: its log's ``picked`` minus ``queued``).

Every measurement runs in a fresh schema of its own (``?search_path=``), dropped after.
Rounds are interleaved (every row once per round, in rotated order); each row is the
median of its rounds. Both run on the same event loop (asyncio, or uvloop with --uvloop)
and with the same number of worker processes; corral's notifier does nothing.

    python benchmarks/jobs.py                   # 100,000 jobs, 4 workers, median of 3
    python benchmarks/jobs.py --jobs 20000      # a smaller queue: start and tail weigh more
    python benchmarks/jobs.py --quick           # 2,000 jobs, 1 round: a smoke test
    python benchmarks/jobs.py --only corral     # corral alone, to iterate fast
    python benchmarks/jobs.py --batch-sizes 100,500   # corral at two claim sizes
    python benchmarks/jobs.py --analyze         # ANALYZE the full queue before draining
    python benchmarks/jobs.py --only corral --phases      # where corral's worker time goes
    python benchmarks/jobs.py --only corral --profile /tmp/prof   # cProfile of worker 0

PostgreSQL is CORRAL_TEST_POSTGRES_URL or postgresql://postgres@127.0.0.1:5432/test.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import multiprocessing
import os
import queue as queue_module
import statistics
import sys
import time
import uuid
from collections import defaultdict
from functools import partial

import _common
import anyio
import anyio.to_thread
import asyncpg

import corral
from corral import jobs

START_METHOD = "spawn"
#: How a queue may be filled before a drain (--fill), as the rows name it.
FILLS = {
    "bulk": "bulk enqueue",
    "one": "enqueued one at a time",
    "one+analyze": "enqueued one at a time, then ANALYZE",
}
PGQ_ENTRYPOINT = "noop"


# -- helpers ------------------------------------------------------------------------------------


def schema_url(base, schema):
    return f"{base}{'&' if '?' in base else '?'}search_path={schema}"


async def admin(base, *statements):
    conn = await asyncpg.connect(base, timeout=10)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_schema(base):
    """A new schema for one measurement; yields its URL; dropped afterwards."""
    schema = f"corral_bench_jobs_{uuid.uuid4().hex[:8]}"
    anyio.run(admin, base, f'CREATE SCHEMA "{schema}"')
    try:
        yield schema_url(base, schema)
    finally:
        anyio.run(admin, base, f'DROP SCHEMA "{schema}" CASCADE')


async def fetch(url, sql, *args):
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def busy_cpu_seconds():
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O)."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(values, q):
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def run_loop(afn, *args, uvloop=False):
    return anyio.run(afn, *args, backend="asyncio", backend_options={"use_uvloop": uvloop})


# -- corral -------------------------------------------------------------------------------------


class QuietNotifier:
    """A notifier that does nothing, so that logging does not dominate."""

    async def notify(self, event):
        pass


async def noop_handler(ctx):
    pass


def corral_processor(db, settings):
    capacity = settings["max_concurrent"]
    return jobs.Processor(
        db,
        noop_handler,
        clusters=[corral.Cluster("a", capacity=capacity)],
        config=jobs.ProcessorConfig(
            max_concurrent=capacity,
            lease_seconds=60,
            poll_interval=settings["poll_interval"],
            batch_size=settings["batch_size"],
        ),
        notifier=QuietNotifier(),
    )


async def corral_install(url):
    async with corral.connect(url) as db:
        await db.jobs.depth()  # creates the table


async def corral_enqueue(url, count):
    batch = [jobs.Job(id=f"j{i:07d}", payload={"n": i}) for i in range(count)]
    async with corral.connect(url) as db:
        start = time.perf_counter()
        await db.jobs.enqueue_many(batch)
        return time.perf_counter() - start


async def corral_enqueue_each(url, count, tasks):
    """Enqueue ``count`` jobs one ``enqueue`` call each, from ``tasks`` tasks; return seconds."""
    batch = [jobs.Job(id=f"j{i:07d}", payload={"n": i}) for i in range(count)]
    async with corral.connect(url) as db:
        await db.jobs.depth()  # creates the table, outside the timing

        async def producer(part):
            for job in part:
                await db.jobs.enqueue(job)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for t in range(tasks):
                tg.start_soon(producer, batch[t::tasks])
        return time.perf_counter() - start


async def corral_enqueue_spaced(url, count, gap):
    async with corral.connect(url) as db:
        await db.jobs.depth()
        start = time.perf_counter()
        for i in range(count):
            await sleep_until(start + i * gap)
            await db.jobs.enqueue(jobs.Job(id=f"p{i:07d}", payload={"n": i}))


async def corral_done(url):
    rows = await fetch(url, "SELECT state, COUNT(*) AS n FROM corral_jobs GROUP BY state")
    return {row["state"]: row["n"] for row in rows}


async def corral_last_finish(url):
    return (await fetch(url, "SELECT MAX(finished_at) AS t FROM corral_jobs"))[0]["t"]


async def corral_latencies(url):
    rows = await fetch(
        url,
        "SELECT started_at - created_at AS d FROM corral_jobs WHERE started_at IS NOT NULL",
    )
    return [float(row["d"]) for row in rows]


#: Statements of the processor's transactions, told apart by a piece of their SQL.
_STATEMENTS = (
    ("corral_jobs_busy(", "lock, count in progress"),
    ("lease_expires < ", "reclaim expired"),
    ("ORDER BY priority, seq LIMIT", "select candidates"),
    ("SET state = 'in_progress'", "mark claimed"),
    ("COUNT(*) AS n, MIN(", "outlook count"),
    ("SET state = v.s", "write outcomes"),
)


class _TimedConnection:
    """Passes every call to ``conn``, timing each statement under a short label."""

    def __init__(self, conn, timer, op):
        self._conn = conn
        self._timer = timer
        self._op = op

    def __getattr__(self, name):
        value = getattr(self._conn, name)
        if name not in ("execute", "executemany", "fetch", "fetch_rows", "fetchval"):
            return value

        async def timed(sql, *args, **kwargs):
            label = next((lab for key, lab in _STATEMENTS if key in sql), sql[:30])
            start = time.perf_counter()
            result = None
            try:
                result = await value(sql, *args, **kwargs)
                return result
            finally:
                end = time.perf_counter()
                self._timer.add(f"  {self._op}: {label}", end - start)
                if "corral_jobs_busy(" in sql and not (result and result[0]["n"] < 0):
                    self._timer.locked_at = end  # the claim lock is held from here

        return timed


class PhaseTimer:
    """Times the processor's claim and report transactions, by wrapping (not editing) corral.

    ``round trip``: from queueing the operation on the writer to its commit, as the
    processor awaits it; ``in store``: the statements of the SQL job store's claim,
    finish and outlook alone (``corral._backends._sql._claims``).
    """

    def __init__(self):
        #: When the claim under way took the claim lock (None: it holds none).
        self.locked_at = None
        self.counts = defaultdict(int)
        self.seconds = defaultdict(float)
        self.items = defaultdict(int)

    def add(self, key, seconds, items=0):
        self.counts[key] += 1
        self.seconds[key] += seconds
        self.items[key] += items

    def install(self):
        from corral import _database
        from corral._backends._sql import _claims

        timer = self

        def wrap_store(name, size, function=None):
            function = function or name
            original = getattr(_claims, function)

            async def timed(conn, *args, **kwargs):
                start = time.perf_counter()
                result = await original(_TimedConnection(conn, timer, name), *args, **kwargs)
                end = time.perf_counter()
                timer.add(f"in store: {name}", end - start, size(result))
                if timer.locked_at is not None:
                    # The lock is held on until the commit, which follows.
                    timer.add("in store: claim lock held", end - timer.locked_at, size(result))
                    timer.locked_at = None
                return result

            setattr(_claims, function, timed)

        wrap_store("claim", lambda result: len(result[0]))
        wrap_store("finish", len, "finish_batch")
        wrap_store("finish", len, "finish_each")
        wrap_store("outlook", lambda result: 0)
        original_run = _database.Database._run

        async def timed_run(self, fn):
            start = time.perf_counter()
            try:
                return await original_run(self, fn)
            finally:
                name = fn.__qualname__.split(".<locals>")[0].rsplit(".", 1)[-1]
                name = {"claimer": "claim"}.get(name, name)
                timer.add(f"round trip: {name}", time.perf_counter() - start)

        _database.Database._run = timed_run
        return self

    def report(self):
        return {
            key: (self.counts[key], self.seconds[key], self.items[key])
            for key in sorted(self.counts)
        }


async def corral_worker(url, settings, mode, ready, go, stop):
    timer = PhaseTimer().install() if settings.get("phases") else None
    async with corral.connect(url) as db:
        await db.jobs.depth()  # connected, table known
        processor = corral_processor(db, settings)
        ready()
        await anyio.to_thread.run_sync(go.wait)
        start, cpu = time.perf_counter(), time.process_time()
        if mode == "drain":
            await processor.run(until_idle=True)
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(processor.run)
                await anyio.to_thread.run_sync(stop.wait)
                tg.cancel_scope.cancel()
        busy, cpu = time.perf_counter() - start, time.process_time() - cpu
        stats = processor.statistics()
    return {
        "completed": stats.completed,
        "claimed": stats.claimed,
        "seconds": busy,
        "cpu": cpu,
        "phases": timer.report() if timer else None,
    }


# -- pgqueuer -----------------------------------------------------------------------------------


def pgq_queries(conn):
    from pgqueuer import AsyncpgDriver, Queries

    return Queries(AsyncpgDriver(conn))


async def pgq_install(url):
    conn = await asyncpg.connect(url)
    try:
        await pgq_queries(conn).install()
    finally:
        await conn.close()


async def pgq_enqueue(url, count):
    conn = await asyncpg.connect(url)
    try:
        queries = pgq_queries(conn)
        payloads = [f'{{"n":{i}}}'.encode() for i in range(count)]
        start = time.perf_counter()
        await queries.enqueue([PGQ_ENTRYPOINT] * count, payloads, [0] * count)
        return time.perf_counter() - start
    finally:
        await conn.close()


#: pgqueuer's enqueue from many tasks shares a pool of this many connections.
PGQ_POOL = 20


async def pgq_enqueue_each(url, count, tasks):
    """Enqueue ``count`` jobs one ``Queries.enqueue`` each, from ``tasks`` tasks; seconds.

    One connection for one task; else a pool of PGQ_POOL, each task taking a connection
    for each enqueue (pgqueuer commits every call on its own: it cannot batch calls).
    """
    payloads = [f'{{"n":{i}}}'.encode() for i in range(count)]
    if tasks == 1:
        conn = await asyncpg.connect(url)
        try:
            queries = pgq_queries(conn)
            start = time.perf_counter()
            for payload in payloads:
                await queries.enqueue(PGQ_ENTRYPOINT, payload, 0)
            return time.perf_counter() - start
        finally:
            await conn.close()
    pool = await asyncpg.create_pool(url, min_size=PGQ_POOL, max_size=PGQ_POOL)
    try:

        async def producer(part):
            for payload in part:
                async with pool.acquire() as conn:
                    await pgq_queries(conn).enqueue(PGQ_ENTRYPOINT, payload, 0)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for t in range(tasks):
                tg.start_soon(producer, payloads[t::tasks])
        return time.perf_counter() - start
    finally:
        await pool.close()


async def pgq_enqueue_spaced(url, count, gap):
    conn = await asyncpg.connect(url)
    try:
        queries = pgq_queries(conn)
        start = time.perf_counter()
        for i in range(count):
            await sleep_until(start + i * gap)
            await queries.enqueue(PGQ_ENTRYPOINT, f'{{"n":{i}}}'.encode(), 0)
    finally:
        await conn.close()


async def pgq_done(url):
    rows = await fetch(
        url,
        "SELECT status::text AS state, COUNT(*) AS n FROM pgqueuer_log GROUP BY status "
        "UNION ALL SELECT 'still queued', COUNT(*) FROM pgqueuer",
    )
    return {row["state"]: row["n"] for row in rows}


async def pgq_last_finish(url):
    rows = await fetch(
        url,
        "SELECT extract(epoch from MAX(created))::float8 AS t FROM pgqueuer_log "
        "WHERE status = 'successful'",
    )
    return rows[0]["t"]


async def pgq_latencies(url):
    rows = await fetch(
        url,
        "SELECT extract(epoch from p.created - q.created)::float8 AS d "
        "FROM pgqueuer_log q JOIN pgqueuer_log p ON p.job_id = q.job_id AND p.status = 'picked' "
        "WHERE q.status = 'queued'",
    )
    return [float(row["d"]) for row in rows]


async def pgq_worker(url, settings, mode, ready, go, stop):
    from pgqueuer import QueueManager
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(url)
    qm = QueueManager(pgq_queries(conn))
    completed = 0

    @qm.entrypoint(PGQ_ENTRYPOINT)
    async def noop(job):
        nonlocal completed
        completed += 1

    ready()
    await anyio.to_thread.run_sync(go.wait)
    start, cpu = time.perf_counter(), time.process_time()
    run = partial(qm.run, batch_size=settings["pgq_batch_size"])
    try:
        if mode == "drain":
            await run(mode=QueueExecutionMode.drain)
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await anyio.to_thread.run_sync(stop.wait)
                qm.shutdown.set()
    finally:
        busy, cpu = time.perf_counter() - start, time.process_time() - cpu
        if not conn.is_closed():
            await conn.close()
    return {
        "completed": completed,
        "claimed": completed,
        "seconds": busy,
        "cpu": cpu,
        "phases": None,
    }


# -- worker processes ---------------------------------------------------------------------------

TOOLS = {
    "corral": {
        "install": corral_install,
        "enqueue": corral_enqueue,
        "enqueue_spaced": corral_enqueue_spaced,
        "enqueue_each": corral_enqueue_each,
        "done": corral_done,
        "last_finish": corral_last_finish,
        "latencies": corral_latencies,
        "worker": corral_worker,
        "done_state": "completed",
        "table": "corral_jobs",
    },
    "pgqueuer": {
        "install": pgq_install,
        "enqueue": pgq_enqueue,
        "enqueue_spaced": pgq_enqueue_spaced,
        "enqueue_each": pgq_enqueue_each,
        "done": pgq_done,
        "last_finish": pgq_last_finish,
        "latencies": pgq_latencies,
        "worker": pgq_worker,
        "done_state": "successful",
        "table": "pgqueuer",
    },
}


async def sleep_until(deadline):
    delay = deadline - time.perf_counter()
    if delay > 0:
        await anyio.sleep(delay)


def worker_main(tool, index, url, settings, mode, messages, go, stop, profile_dir):
    """One worker process: connect, say ready, wait for go, work, report."""

    def ready():
        messages.put(("ready", index, None))

    worker = TOOLS[tool]["worker"]
    profiler = cProfile.Profile() if profile_dir and index == 0 else None
    try:
        if profiler is not None:
            profiler.enable()
        result = run_loop(worker, url, settings, mode, ready, go, stop, uvloop=settings["uvloop"])
        if profiler is not None:
            profiler.disable()
            path = os.path.join(profile_dir, f"{tool}-{mode}-{os.getpid()}.prof")
            profiler.dump_stats(path)
            result["profile"] = path
        messages.put(("done", index, result))
    except BaseException as exc:
        messages.put(("error", index, f"{type(exc).__name__}: {exc}"))
        raise


class Workers:
    """W worker processes, started (and connected) before the timing starts."""

    def __init__(self, tool, url, settings, mode, count, profile_dir=None):
        ctx = multiprocessing.get_context(START_METHOD)
        self.messages = ctx.Queue()
        self.go = ctx.Event()
        self.stop = ctx.Event()
        self.count = count
        self.procs = [
            ctx.Process(
                target=worker_main,
                args=(
                    tool,
                    i,
                    url,
                    settings,
                    mode,
                    self.messages,
                    self.go,
                    self.stop,
                    profile_dir,
                ),
                daemon=True,
            )
            for i in range(count)
        ]

    def _expect(self, kind, timeout):
        results = {}
        deadline = time.monotonic() + timeout
        while len(results) < self.count:
            try:
                what, index, payload = self.messages.get(
                    timeout=max(0.1, deadline - time.monotonic())
                )
            except queue_module.Empty:
                raise TimeoutError(f"workers did not report {kind!r} within {timeout} s") from None
            if what == "error":
                raise RuntimeError(f"worker {index} failed: {payload}")
            assert what == kind, (what, kind)
            results[index] = payload
        return [results[i] for i in range(self.count)]

    def __enter__(self):
        for p in self.procs:
            p.start()
        self._expect("ready", 120)
        return self

    def release(self):
        self.go.set()

    def wait_done(self, timeout=600):
        return self._expect("done", timeout)

    def __exit__(self, *exc):
        self.stop.set()
        self.go.set()
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()


# -- measurements -------------------------------------------------------------------------------


#: A queue filled one job per call is filled from this many tasks at once.
FILL_TASKS = 100


def measure_drain(args, tool, settings):
    """Enqueue args.jobs jobs, then time W workers draining them. Returns a result dict."""
    spec = TOOLS[tool]
    with fresh_schema(args.postgres) as url:
        run_loop(spec["install"], url)
        fill = settings.get("fill", "bulk")
        if fill == "bulk":
            enqueue_seconds = run_loop(spec["enqueue"], url, args.jobs)
        else:  # one enqueue call per job, from FILL_TASKS tasks: what the tutorial shows
            enqueue_seconds = run_loop(spec["enqueue_each"], url, args.jobs, FILL_TASKS)
        if args.analyze or fill.endswith("+analyze"):
            # fresh planner statistics of the full queue, outside the timing
            run_loop(admin, url, f"ANALYZE {spec['table']}")
        with Workers(tool, url, settings, "drain", args.workers, args.profile) as workers:
            wall_start = time.time()
            busy_start = busy_cpu_seconds()
            start = time.perf_counter()
            workers.release()
            results = workers.wait_done()
            seconds = time.perf_counter() - start
            machine_cpu = busy_cpu_seconds() - busy_start
        counts = run_loop(spec["done"], url)
        done = counts.get(spec["done_state"], 0)
        if done != args.jobs:
            raise AssertionError(f"{tool}: {done:,} of {args.jobs:,} jobs done: {counts}")
        last = run_loop(spec["last_finish"], url)
    per_worker = [r["completed"] for r in results]
    return {
        "seconds": seconds,
        "enqueue": enqueue_seconds,
        "last_commit": None if last is None else last - wall_start,
        "per_worker": per_worker,
        "worker_cpu": sum(r["cpu"] for r in results),
        "machine_cpu": machine_cpu,
        "phases": [r["phases"] for r in results],
        "profiles": [r["profile"] for r in results if r.get("profile")],
    }


def measure_pickup(args, tool, settings):
    """Idle workers; jobs enqueued one at a time; return the enqueue-to-claim delays (s)."""
    spec = TOOLS[tool]
    with fresh_schema(args.postgres) as url:
        run_loop(spec["install"], url)
        with Workers(tool, url, settings, "serve", args.workers) as workers:
            workers.release()
            time.sleep(1.0)  # let every worker start listening and go idle
            run_loop(spec["enqueue_spaced"], url, args.pickups, args.gap)
            deadline = time.monotonic() + 60
            while run_loop(spec["done"], url).get(spec["done_state"], 0) < args.pickups:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{tool}: pickup jobs not all done after 60 s")
                time.sleep(0.1)
            workers.stop.set()
            workers.wait_done(60)
        latencies = run_loop(spec["latencies"], url)
    if len(latencies) != args.pickups:
        raise AssertionError(f"{tool}: {len(latencies)} pickups recorded of {args.pickups}")
    return latencies


def measure_enqueue_each(args, tool, tasks, store):
    """Time ``args.enqueue_jobs`` enqueues of one job each from ``tasks`` tasks; seconds."""
    if store == "sqlite":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/jobs.db"
            return run_loop(corral_enqueue_each, url, args.enqueue_jobs, tasks)
    spec = TOOLS[tool]
    with fresh_schema(args.postgres) as url:
        run_loop(spec["install"], url)
        return run_loop(spec["enqueue_each"], url, args.enqueue_jobs, tasks)


def run_enqueue_rates(args, tools):
    """Interleaved rounds of every enqueue variant; returns rows (median seconds)."""
    variants = []
    for tasks in (1, 100):
        if "corral" in tools:
            variants.append((f"corral enqueue, PostgreSQL, {tasks} task(s)", "corral", tasks, "pg"))
        if "pgqueuer" in tools:
            pool = "one connection" if tasks == 1 else f"pool of {PGQ_POOL}"
            variants.append((f"pgqueuer enqueue, {tasks} task(s), {pool}", "pgqueuer", tasks, "pg"))
        if "corral" in tools:
            variants.append((f"corral enqueue, SQLite, {tasks} task(s)", "corral", tasks, "sqlite"))
    raw = {name: [] for name, *_ in variants}
    for round_number in range(args.repeat):
        shift = round_number % len(variants)
        for name, tool, tasks, store in variants[shift:] + variants[:shift]:
            seconds = measure_enqueue_each(args, tool, tasks, store)
            raw[name].append(seconds)
            print(
                f"  round {round_number + 1}: {name:<44} {seconds:7.3f} s "
                f"({args.enqueue_jobs / seconds:8,.0f} jobs/s)",
                flush=True,
            )
    rows = []
    for name, *_ in variants:
        row = _common.row(name, statistics.median(raw[name]), args.enqueue_jobs)
        row["best"] = args.enqueue_jobs / min(raw[name])
        rows.append(row)
    return rows


def print_phases(label, phases):
    """Sum the PhaseTimer reports of every worker and print per-operation means."""
    total = defaultdict(lambda: [0, 0.0, 0])
    for report in phases:
        for key, (count, seconds, items) in (report or {}).items():
            entry = total[key]
            entry[0] += count
            entry[1] += seconds
            entry[2] += items
    if not total:
        return
    print(f"\n  phases of {label} (summed over workers):")
    print(f"    {'operation':<28} {'calls':>8} {'total s':>9} {'mean ms':>9} {'jobs/call':>10}")
    for key in sorted(total):
        count, seconds, items = total[key]
        per = f"{items / count:10.1f}" if items else f"{'':>10}"
        print(f"    {key:<28} {count:8d} {seconds:9.3f} {1e3 * seconds / count:9.3f} {per}")


def run_throughput(args, variants):
    """Interleaved rounds over every variant; returns rows (median seconds) and raw data."""
    raw = {name: [] for name, _, _ in variants}
    for round_number in range(args.repeat):
        shift = round_number % len(variants)
        order = variants[shift:] + variants[:shift]
        for name, tool, settings in order:
            result = measure_drain(args, tool, settings)
            raw[name].append(result)
            print(
                f"  round {round_number + 1}: {name:<44} {result['seconds']:7.3f} s "
                f"({args.jobs / result['seconds']:8,.0f} jobs/s; per worker "
                f"{result['per_worker']})",
                flush=True,
            )
            if args.phases and tool == "corral":
                print_phases(name, result["phases"])
            for path in result["profiles"]:
                print(f"    profile of worker 0: {path}")
    rows = []
    for name, _, _ in variants:
        results = raw[name]
        seconds = statistics.median(r["seconds"] for r in results)
        row = _common.row(name, seconds, args.jobs)
        row["enqueue"] = statistics.median(r["enqueue"] for r in results)
        lasts = [r["last_commit"] for r in results if r["last_commit"] is not None]
        row["last_commit"] = statistics.median(lasts) if lasts else None
        row["rounds"] = [r["seconds"] for r in results]
        worker_cpu = statistics.median(r["worker_cpu"] for r in results)
        other_cpu = statistics.median(r["machine_cpu"] - r["worker_cpu"] for r in results)
        row["worker_us"] = 1e6 * worker_cpu / args.jobs
        row["other_us"] = 1e6 * other_cpu / args.jobs
        rows.append(row)
    return rows


def run_pickups(args, tools, settings_for):
    samples = {tool: [] for tool in tools}
    for round_number in range(args.repeat):
        shift = round_number % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            latencies = measure_pickup(args, tool, settings_for[tool])
            samples[tool].append(latencies)
            print(
                f"  round {round_number + 1}: {tool:<10} pickup p50 "
                f"{1e3 * percentile(latencies, 50):7.2f} ms, p99 "
                f"{1e3 * percentile(latencies, 99):7.2f} ms, max {1e3 * max(latencies):7.2f} ms",
                flush=True,
            )
    out = {}
    for tool, rounds in samples.items():
        pooled = [x for latencies in rounds for x in latencies]
        out[tool] = {
            "p50_ms": 1e3 * percentile(pooled, 50),
            "p99_ms": 1e3 * percentile(pooled, 99),
            "max_ms": 1e3 * max(pooled),
            "p99_ms_per_round": [1e3 * percentile(latencies, 99) for latencies in rounds],
            "samples": len(pooled),
        }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs per throughput round")
    parser.add_argument("--workers", type=int, default=4, help="worker processes, each tool")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--batch-sizes",
        default="100,500,1000",
        help="corral: jobs per claim (ProcessorConfig.batch_size), a comma-separated list",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        help="corral: jobs in progress at once over all workers, also the cluster's capacity "
        "(default: the larger of 1,000 and 2 x workers x batch size)",
    )
    parser.add_argument("--poll-interval", type=float, default=1.0, help="corral: idle poll (s)")
    parser.add_argument(
        "--pgq-batch-sizes",
        default="50,100,500,1000",
        help="pgqueuer dequeue batch sizes to run (10 is its default)",
    )
    parser.add_argument("--pickups", type=int, default=200, help="jobs timed one at a time")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between those jobs")
    parser.add_argument("--only", choices=["corral", "pgqueuer"], help="run one tool only")
    parser.add_argument("--no-pickup", action="store_true", help="skip the latency part")
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput part")
    parser.add_argument("--no-enqueue", action="store_true", help="skip the enqueue-rate part")
    parser.add_argument(
        "--enqueue-jobs", type=int, default=5_000, help="jobs per enqueue-rate round"
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="ANALYZE the queue table after the bulk enqueue (both tools; not timed)",
    )
    parser.add_argument(
        "--fill",
        default="bulk",
        help="how the queue is filled before a drain, a comma-separated list of: bulk (one "
        "enqueue_many), one (one enqueue call per job, from 100 tasks), one+analyze (one, "
        "then ANALYZE; corral only)",
    )
    parser.add_argument("--uvloop", action="store_true", help="run every worker on uvloop")
    parser.add_argument(
        "--phases", action="store_true", help="corral: time claim and report transactions"
    )
    parser.add_argument("--profile", metavar="DIR", help="cProfile worker 0 into DIR")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CORRAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 1 round, 50 pickups")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.repeat, args.pickups = 2_000, 1, 50
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    try:
        anyio.run(admin, args.postgres, "SELECT 1")
    except Exception as exc:
        sys.exit(f"PostgreSQL at {args.postgres} is not reachable: {exc}")
    tools = ["corral", "pgqueuer"] if args.only is None else [args.only]
    if "pgqueuer" in tools:
        try:
            import pgqueuer
        except ImportError:
            sys.exit("pgqueuer is not installed: pip install pgqueuer (or corral[bench])")
        pgq_version = pgqueuer.__version__
    else:
        pgq_version = None
    common = {"poll_interval": args.poll_interval, "uvloop": args.uvloop, "phases": args.phases}
    variants = []
    for fill in args.fill.split(","):
        how = FILLS[fill]
        if "corral" in tools:
            for b in (int(b) for b in args.batch_sizes.split(",")):
                limit = args.max_concurrent or max(1_000, 2 * args.workers * b)
                settings = {**common, "batch_size": b, "max_concurrent": limit, "fill": fill}
                name = f"corral Processor, batch {b}, max_concurrent {limit}, {how}"
                variants.append((name, "corral", settings))
        if "pgqueuer" in tools and not fill.endswith("+analyze"):
            for b in (int(b) for b in args.pgq_batch_sizes.split(",")):
                label = " (its default)" if b == 10 else ""
                name = f"pgqueuer {pgq_version}, batch {b}{label}, {how}"
                settings = {**common, "pgq_batch_size": b, "fill": fill}
                variants.append((name, "pgqueuer", settings))
    load = _common.warn_if_busy()
    loop = "uvloop" if args.uvloop else "asyncio"
    print(
        f"PostgreSQL {args.postgres}; {args.workers} worker processes per tool, on {loop}; "
        f"1-minute load {load:.2f}"
    )
    results = {"quick": args.quick, "workers": args.workers, "jobs": args.jobs, "loop": loop}

    if not args.no_enqueue:
        print(
            f"\nEnqueue rate: {args.enqueue_jobs:,} jobs, one enqueue call each, from 1 and "
            f"from 100 concurrent tasks; {args.repeat} interleaved rounds",
            flush=True,
        )
        rows = run_enqueue_rates(args, tools)
        reference = rows[0]["name"]
        _common.print_table(
            f"Enqueue {args.enqueue_jobs:,} jobs one call each (median of {args.repeat})",
            rows,
            reference,
            extra=[("best jobs/s", "best", "{:,.0f}")],
        )
        rate = {r["name"]: r["items"] / r["seconds"] for r in rows}
        for tasks in (1, 100):
            mine = next(
                (
                    v
                    for k, v in rate.items()
                    if k.startswith("corral enqueue, P") and k.endswith(f" {tasks} task(s)")
                ),
                None,
            )
            theirs = next(
                (
                    v
                    for k, v in rate.items()
                    if k.startswith("pgqueuer") and f" {tasks} task(s)" in k
                ),
                None,
            )
            if mine and theirs:
                target = 1 if tasks == 1 else 10
                ratio = mine / theirs
                print(
                    f"corral / pgqueuer enqueue rate, {tasks} task(s): {ratio:.2f}x "
                    f"(target >= {target}x: {'met' if ratio >= target else 'NOT met'})"
                )
                results[f"enqueue_ratio_{tasks}_tasks"] = ratio
        results["enqueue"] = rows

    if not args.no_throughput:
        print(
            f"\nThroughput: {args.jobs:,} no-op jobs enqueued, then drained by "
            f"{args.workers} processes; {args.repeat} interleaved rounds",
            flush=True,
        )
        rows = run_throughput(args, variants)
        pgq_rows = [r for r in rows if r["name"].startswith("pgqueuer")]
        corral_rows = [r for r in rows if r["name"].startswith("corral")]
        reference = min(pgq_rows or rows, key=lambda r: r["seconds"])["name"]
        ref_seconds = next(r for r in rows if r["name"] == reference)["seconds"]
        for r in rows:
            r["speed"] = ref_seconds / r["seconds"]
        _common.print_table(
            f"Drain {args.jobs:,} jobs with {args.workers} worker processes (median of "
            f"{args.repeat})",
            rows,
            reference,
            extra=[
                ("jobs/s vs ref", "speed", "{:.2f}x"),
                ("enqueue s", "enqueue", "{:.3f}"),
                ("last commit s", "last_commit", "{:.3f}"),
                ("worker CPU us/job", "worker_us", "{:.0f}"),
                ("other CPU us/job", "other_us", "{:.0f}"),
            ],
        )
        if corral_rows and pgq_rows:
            best = min(corral_rows, key=lambda r: r["seconds"])
            ratio = ref_seconds / best["seconds"]
            print(
                f"\ncorral best ({best['name']}) / pgqueuer best ({reference}): {ratio:.2f}x "
                f"jobs/s (target >= 2x: {'met' if ratio >= 2 else 'NOT met'})"
            )
            results["ratio_vs_pgqueuer_best"] = ratio
        by_fill = {}
        for fill, how in FILLS.items():
            mine = [r for r in corral_rows if r["name"].endswith(f", {how}")]
            theirs = [r for r in pgq_rows if r["name"].endswith(f", {how}")]
            if mine:
                by_fill[fill] = (min(r["seconds"] for r in mine), theirs)
        for fill, (seconds, theirs) in by_fill.items():
            if theirs:
                ratio = min(r["seconds"] for r in theirs) / seconds
                print(
                    f"{FILLS[fill]}: corral best / pgqueuer best {ratio:.2f}x jobs/s "
                    f"(target >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'})"
                )
                results[f"ratio_vs_pgqueuer_best_{fill}"] = ratio
        if "one" in by_fill and "one+analyze" in by_fill:
            ratio = by_fill["one+analyze"][0] / by_fill["one"][0]
            print(
                f"corral best, enqueued one at a time / the same after ANALYZE: {ratio:.2f}x "
                f"jobs/s (target >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'})"
            )
            results["ratio_one_vs_analyzed"] = ratio
        results["throughput"] = {"reference": reference, "rows": rows}

    if not args.no_pickup:
        print(
            f"\nPickup latency: {args.workers} idle workers; {args.pickups} jobs enqueued one "
            f"at a time, {1e3 * args.gap:.0f} ms apart; {args.repeat} rounds",
            flush=True,
        )
        first = {tool: next((s for _, t, s in variants if t == tool), None) for tool in tools}
        pickup = run_pickups(args, tools, first)
        print(f"\n{'enqueue to claim':<18} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  samples")
        for tool, p in pickup.items():
            print(
                f"{tool:<18} {p['p50_ms']:8.2f} {p['p99_ms']:8.2f} {p['max_ms']:8.2f}  "
                f"{p['samples']} (p99 per round: "
                f"{', '.join(f'{x:.1f}' for x in p['p99_ms_per_round'])})"
            )
        if "corral" in pickup:
            p99 = pickup["corral"]["p99_ms"]
            print(
                f"corral p99 pickup {p99:.1f} ms (target < 50 ms: {'met' if p99 < 50 else 'NOT met'})"
            )
        results["pickup"] = pickup

    name = "jobs" if args.only is None else f"jobs-{args.only}"
    _common.write_results(_common.result_name(name, args.quick), results)


if __name__ == "__main__":
    main()
