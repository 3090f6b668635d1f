"""The writer's guarantees: exact counts from many producers, batching, backpressure,
draining on every exit, hooks (operations and sources), fatal errors."""

from __future__ import annotations

import contextlib
import math
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import corral
from corral import _writer
from corral._backends import Connection, Failure, Run

pytestmark = pytest.mark.timeout(60)


async def fetch(db: corral.Database, sql: str, *args: object) -> list[dict[str, object]]:
    async def read(conn: Connection) -> list[dict[str, object]]:
        return await conn.fetch(sql, *args)

    return await db._run(read)


async def count(url: str, table: str) -> int:
    """Open the database afresh and count what was committed."""
    async with corral.connect(url) as db:
        value = await db._run(lambda conn: conn.fetchval(f'SELECT COUNT(*) FROM "{table}"'))
    assert isinstance(value, int)
    return value


def spy_on_commits(db: corral.Database) -> anyio.Event:
    """Return an event set when the store next commits rows (its ``write`` with commit)."""
    committed = anyio.Event()
    backend = db._backend
    write = backend.write

    async def spy(runs: Sequence[Run], *, begin: bool, commit: bool) -> list[Failure]:
        failures = await write(runs, begin=begin, commit=commit)
        if commit:
            committed.set()
        return failures

    backend.write = spy  # type: ignore[method-assign]
    return committed


class Gate:
    """An operation that holds the writer until released: nothing commits meanwhile."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, conn: Connection) -> str:
        self.entered.set()
        await self.release.wait()
        return "released"


# -- exact counts -----------------------------------------------------------------------------


async def test_tasks_threads_and_maps_at_once_lose_nothing(db_url: str) -> None:
    async with corral.connect(db_url, batch_size=97, max_pending=50) as db:
        t = db.table("events", key=("source", "n"))
        await t.put({"source": "setup", "n": 0, "v": 0})

        async def task(i: int) -> None:
            for n in range(200):
                await t.put({"source": f"task{i}", "n": n, "v": n})

        def thread(i: int) -> None:
            for n in range(150):
                t.put_from_thread({"source": f"thread{i}", "n": n, "v": n})

        async def mapped(n: int) -> None:
            await t.put({"source": "map", "n": n, "v": n})

        def mapped_in_thread(n: int) -> None:
            t.put_from_thread({"source": "map-thread", "n": n, "v": n})

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(task, i)
            for i in range(4):
                tg.start_soon(anyio.to_thread.run_sync, thread, i)
            tg.start_soon(corral.map, mapped, range(500))
            tg.start_soon(lambda: corral.map(mapped_in_thread, range(300), limit=8))
        await db.flush()
        expected = 1 + 20 * 200 + 4 * 150 + 500 + 300
        stats = db.statistics()
        assert (stats.accepted, stats.committed, stats.pending, stats.failed) == (
            expected,
            expected,
            0,
            0,
        )
        rows = await fetch(db, 'SELECT COUNT(*) AS n, SUM("v") AS total FROM "events"')
    total = 20 * sum(range(200)) + 4 * sum(range(150)) + sum(range(500)) + sum(range(300))
    assert rows == [{"n": expected, "total": total}]


async def test_batches_hold_at_most_batch_size_rows(db_url: str) -> None:
    async with corral.connect(db_url, batch_size=10, flush_interval=3600) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1})
        await db.flush()
        before = db.statistics().batches
        for k in range(95):  # no checkpoint in between: all queued before the writer runs
            await t.put({"k": k})
        await db.flush()
        assert db.statistics().batches - before == math.ceil(95 / 10)
        assert db.statistics().committed == 96


async def test_new_and_existing_keys_over_many_batches(db_url: str) -> None:
    # On PostgreSQL a batch tries a plain INSERT first and upserts after a conflict, then
    # upserts straight away for a while: every mix must end with the last value per key.
    async with corral.connect(db_url, batch_size=25, flush_interval=3600) as db:
        t = db.table("t", key="k")
        expected: dict[int, int] = {}
        for round_ in range(12):
            keys = range(round_ * 10, round_ * 10 + 25) if round_ % 3 else range(25)
            for k in keys:
                await t.put({"k": k, "v": round_})
                expected[k] = round_
            await db.flush()
        rows = await fetch(db, 'SELECT "k", "v" FROM "t" ORDER BY "k"')
    assert rows == [{"k": k, "v": v} for k, v in sorted(expected.items())]


async def test_a_lone_row_is_committed_within_the_flush_interval(db_url: str) -> None:
    async with corral.connect(db_url, flush_interval=0.05) as db:
        t = db.table("t", key="k")
        await t.put({"k": 0})
        await db.flush()
        committed = spy_on_commits(db)
        await t.put({"k": 1})
        with anyio.fail_after(30):  # no flush: the time limit commits it
            await committed.wait()
        assert db.statistics().committed == 2


async def test_a_batch_worth_its_commit_is_written_without_waiting(db_url: str) -> None:
    # A producer's rows are written while it goes on: a batch of _EAGER_ROWS rows does
    # not wait for the flush interval (an hour here), nor for a flush.
    async with corral.connect(db_url, flush_interval=3600) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1})
        await db.flush()
        committed = spy_on_commits(db)
        for k in range(_writer._EAGER_ROWS):
            await t.put({"k": k})
        with anyio.fail_after(30):
            await committed.wait()
        assert db.statistics().committed == 1 + _writer._EAGER_ROWS


async def test_a_queue_smaller_than_a_batch_is_written_without_waiting(db_url: str) -> None:
    # max_pending below the eager batch: a full queue is a batch worth its commit, or
    # the producer would wait for the flush interval at every max_pending rows.
    async with corral.connect(db_url, max_pending=10, flush_interval=3600) as db:
        t = db.table("t", key="k")
        with anyio.fail_after(30):
            for k in range(100):
                await t.put({"k": k})
            while db.statistics().committed < 90:  # no flush: the writer commits alone
                await anyio.lowlevel.checkpoint()
        await db.flush()
        assert db.statistics().committed == 100


async def test_rows_may_change_their_columns_and_their_order(db_url: str) -> None:
    # A table keeps the checks of the last row's columns; a row of other columns (of
    # the same number, or in another order) is checked against its own.
    async with corral.connect(db_url) as db:
        t = db.table("t", key="k")
        await t.put({"k": 0, "a": 1, "b": "x"})
        rows: list[dict[str, object]] = [
            {"k": 1, "a": 2, "b": "y"},
            {"b": "z", "k": 2, "a": 3},  # the same columns in another order
            {"k": 3, "a": 4},  # fewer
            {"k": 4, "b": "w"},  # as many, other ones
            {"k": 5, "a": 6},
            {"a": 7, "k": 6},
        ]
        for row in rows:
            await t.put(row)
        with pytest.raises(corral.ColumnTypeError):
            await t.put({"k": 7, "b": 8})  # after {"k", "b"} passed with a str
        with pytest.raises(corral.UnknownColumnError):
            await t.put({"k": 7, "c": 8})  # as many columns as the last row
        with pytest.raises(corral.MissingKeyError):
            await t.put({"a": 1, "b": "x"})
        await db.flush()
        got = await fetch(db, 'SELECT "k", "a", "b" FROM "t" ORDER BY "k"')
    assert got == [
        {"k": 0, "a": 1, "b": "x"},
        {"k": 1, "a": 2, "b": "y"},
        {"k": 2, "a": 3, "b": "z"},
        {"k": 3, "a": 4, "b": None},
        {"k": 4, "a": None, "b": "w"},
        {"k": 5, "a": 6, "b": None},
        {"k": 6, "a": 7, "b": None},
    ]


# -- nothing accepted is lost ---------------------------------------------------------------------


async def test_normal_exit_drains_the_queue(db_url: str) -> None:
    async with corral.connect(db_url, flush_interval=3600, batch_size=1000) as db:
        t = db.table("t", key="k")
        for k in range(2500):
            await t.put({"k": k})
        assert db.statistics().committed < 2500
    assert db.statistics().committed == 2500
    assert await count(db_url, "t") == 2500


async def test_an_exception_in_the_body_loses_nothing(db_url: str) -> None:
    stats: list[corral.DatabaseStatistics] = []

    async def body() -> None:
        async with corral.connect(db_url, flush_interval=3600) as db:
            t = db.table("t", key="k")
            for k in range(1000):
                await t.put({"k": k})
            stats.append(db.statistics())
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await body()
    assert stats[0].committed < 1000
    assert await count(db_url, "t") == 1000


async def test_cancelling_the_body_mid_stream_loses_nothing(db_url: str) -> None:
    accepted_at_exit = -1
    with anyio.CancelScope() as scope:
        async with corral.connect(db_url, batch_size=50, max_pending=20) as db:
            t = db.table("t", key=("p", "n"))
            await t.put({"p": -1, "n": 0})

            async def producer(p: int) -> None:
                n = 0
                while True:
                    await t.put({"p": p, "n": n})
                    n += 1
                    if p == 0 and n == 300:
                        scope.cancel()  # mid-stream, the others still putting

            async with anyio.create_task_group() as tg:
                for p in range(10):
                    tg.start_soon(producer, p)
    assert scope.cancelled_caught
    stats = db.statistics()
    accepted_at_exit = stats.accepted
    assert accepted_at_exit > 300
    assert stats.committed == accepted_at_exit
    assert stats.pending == stats.failed == 0
    assert await count(db_url, "t") == accepted_at_exit


async def test_an_outer_deadline_during_a_slow_body_loses_nothing(db_url: str) -> None:
    with anyio.move_on_after(0.2) as scope:
        async with corral.connect(db_url, flush_interval=3600) as db:
            t = db.table("t", key="k")
            for k in range(100):
                await t.put({"k": k})
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    stats = db.statistics()  # (all 100, unless the deadline came first on a slow machine)
    assert stats.committed == stats.accepted
    assert await count(db_url, "t") == stats.accepted


# -- backpressure ----------------------------------------------------------------------------


async def test_a_full_queue_blocks_producers_until_the_writer_takes_rows(db_url: str) -> None:
    async with corral.connect(db_url, max_pending=5) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1})
        await db.flush()
        gate = Gate()
        progress: list[int] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(db._run, gate)
            await gate.entered.wait()  # the writer is held: nothing leaves the queue

            async def producer() -> None:
                for k in range(20):
                    await t.put({"k": k})
                    progress.append(k)

            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            assert progress == [0, 1, 2, 3, 4]  # five accepted; the sixth waits for room
            assert db.statistics().accepted == 1 + 5
            assert db.statistics().pending == 5
            gate.release.set()
        await db.flush()
        assert progress == list(range(20))
        assert db.statistics().committed == 21


async def test_a_thread_blocks_on_a_full_queue_too(db_url: str) -> None:
    async with corral.connect(db_url, max_pending=3) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1})
        gate = Gate()
        done = threading.Event()

        def producer() -> None:
            for k in range(10):
                t.put_from_thread({"k": k})
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(db._run, gate)
            await gate.entered.wait()
            tg.start_soon(anyio.to_thread.run_sync, producer)
            while db.statistics().accepted < 1 + 3:  # the thread fills the queue
                await anyio.wait_all_tasks_blocked()
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()
            assert db.statistics().accepted == 1 + 3
            gate.release.set()
        assert done.is_set()
        await db.flush()
        assert db.statistics().committed == 11


async def test_a_put_cancelled_while_waiting_was_not_accepted(db_url: str) -> None:
    async with corral.connect(db_url, max_pending=1) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1})
        gate = Gate()
        async with anyio.create_task_group() as tg:
            tg.start_soon(db._run, gate)
            await gate.entered.wait()
            await t.put({"k": 0})  # fills the queue
            with anyio.CancelScope() as scope:

                async def cancel() -> None:
                    scope.cancel()

                tg.start_soon(cancel)
                await t.put({"k": 1})  # waits, then is cancelled
            assert scope.cancelled_caught
            waiter_scope = anyio.CancelScope()

            async def waiting_put() -> None:
                with waiter_scope:
                    await t.put({"k": 2})

            tg.start_soon(waiting_put)
            tg.start_soon(t.put, {"k": 3})
            await anyio.wait_all_tasks_blocked()
            waiter_scope.cancel()  # k=2 gives up its place; k=3 still gets in
            await anyio.wait_all_tasks_blocked()
            gate.release.set()
        await db.flush()
        rows = await fetch(db, 'SELECT "k" FROM "t" ORDER BY "k"')
    assert [r["k"] for r in rows] == [-1, 0, 3]
    assert db.statistics().accepted == 3


# -- operations (Database._run) --------------------------------------------------------------------


async def test_an_operation_sees_the_rows_accepted_before_it(db_url: str) -> None:
    async with corral.connect(db_url, flush_interval=3600) as db:
        t = db.table("t", key="k")
        for k in range(10):
            await t.put({"k": k})
        seen = await db._run(lambda conn: conn.fetchval('SELECT COUNT(*) FROM "t"'))
        assert seen == 10
        assert db.statistics().committed == 10  # committed when _run returned


async def test_an_operation_is_committed_when_run_returns(db_url: str) -> None:
    async with corral.connect(db_url) as db, corral.connect(db_url) as other:
        t = db.table("t", key="k")
        await t.put({"k": 1})
        await db.flush()

        async def insert(conn: Connection) -> int:
            await conn.execute('INSERT INTO "t" ("k") VALUES (?)', 2)
            await conn.executemany('INSERT INTO "t" ("k") VALUES (?)', [(3,), (4,)])
            return 42

        assert await db._run(insert) == 42
        assert await fetch(other, 'SELECT "k" FROM "t" ORDER BY "k"') == [
            {"k": 1},
            {"k": 2},
            {"k": 3},
            {"k": 4},
        ]
        assert await fetch(
            other, "SELECT CAST(? AS INTEGER) AS a, CAST(? AS TEXT) AS b", 5, "x"
        ) == [{"a": 5, "b": "x"}]


async def test_a_failing_operation_rolls_back_only_itself(db_url: str) -> None:
    class Boom(Exception):
        pass

    async with corral.connect(db_url, flush_interval=3600) as db:
        t = db.table("t", key="k")
        await t.put({"k": 1})

        async def half_done(conn: Connection) -> None:
            await conn.execute('INSERT INTO "t" ("k") VALUES (?)', 100)
            raise Boom("after an insert")

        async def bad_sql(conn: Connection) -> None:
            await conn.execute('SELECT * FROM "no_such_table"')

        with pytest.raises(Boom, match="after an insert"):
            await db._run(half_done)
        await t.put({"k": 2})
        with pytest.raises(Exception, match="no_such_table"):
            await db._run(bad_sql)
        await t.put({"k": 3})
        await db.flush()  # the operations' errors are theirs alone
        # Alone in its batch (nothing else queued), an operation runs without a savepoint:
        # its failure rolls the batch back, its insert with it.
        with pytest.raises(Boom, match="after an insert"):
            await db._run(half_done)
        rows = await fetch(db, 'SELECT "k" FROM "t" ORDER BY "k"')
    assert [r["k"] for r in rows] == [1, 2, 3]


async def _wait_until_running(url: str, pid: object, text: str) -> None:
    """Return once PostgreSQL server process ``pid`` runs a statement containing ``text``."""
    running = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE pid = ? AND state = 'active' AND strpos(query, ?) > 0"
    )
    async with corral.connect(url) as admin:
        while not await admin._run(lambda conn: conn.fetchval(running, pid, text)):
            pass


async def test_cancelling_the_caller_of_a_running_operation_rolls_it_back(db_url: str) -> None:
    # On PostgreSQL the operation is cancelled inside a query, which the driver must have
    # finished cancelling before the writer rolls back (under trio, on its loop thread).
    async with corral.connect(db_url) as db:
        t = db.table("t", key="k")
        await t.put({"k": 1})
        await db.flush()
        entered = anyio.Event()
        if db.dialect == "postgresql":
            pid = await db._run(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))

        async def slow(conn: Connection) -> None:
            await conn.execute('INSERT INTO "t" ("k") VALUES (?)', 100)
            entered.set()
            if conn.dialect == "postgresql":
                await conn.execute("SELECT pg_sleep(60)")
            await anyio.sleep_forever()

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(db._run, slow)
                await entered.wait()
                if db.dialect == "postgresql":  # cancel it once the server is running it
                    await _wait_until_running(db_url, pid, "pg_sleep")
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        await t.put({"k": 2})
        await db.flush()
        rows = await fetch(db, 'SELECT "k" FROM "t" ORDER BY "k"')
    assert [r["k"] for r in rows] == [1, 2]


async def test_operations_run_in_order_with_rows(db_url: str) -> None:
    async with corral.connect(db_url, flush_interval=3600) as db:
        t = db.table("t", key="k")
        await t.put({"k": 0, "v": "first"})
        await db.flush()
        async with anyio.create_task_group() as tg:
            await t.put({"k": 1, "v": "before"})
            tg.start_soon(
                db._run, lambda conn: conn.execute('UPDATE "t" SET "v" = ? WHERE "k" = 1', "op")
            )
            await anyio.wait_all_tasks_blocked()
            await t.put({"k": 2, "v": "after"})
        await db.flush()
        rows = await fetch(db, 'SELECT "k", "v" FROM "t" ORDER BY "k"')
    assert rows == [{"k": 0, "v": "first"}, {"k": 1, "v": "op"}, {"k": 2, "v": "after"}]


# -- sources (Database._register_source) ---------------------------------------------------------


class Counter:
    """A source in the shape of the progress tracker's: counts added from anywhere."""

    def __init__(self, table: str) -> None:
        self.table = table
        self._lock = threading.Lock()
        self._count = 0
        self.writes = 0
        self.written = anyio.Event()
        self.fail = False

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._count += n

    def pending(self) -> bool:
        return self._count > 0

    async def write(self, conn: Connection) -> None:
        with self._lock:
            n, self._count = self._count, 0
        if self.fail:
            raise RuntimeError("the source is broken")
        await conn.execute(f'UPDATE "{self.table}" SET "n" = "n" + ? WHERE "id" = 1', n)
        self.writes += 1
        self.written.set()


async def _counter_table(db: corral.Database) -> Counter:
    await db._run(
        lambda conn: conn.execute('CREATE TABLE "counts" ("id" INTEGER PRIMARY KEY, "n" INTEGER)')
    )
    await db._run(lambda conn: conn.execute('INSERT INTO "counts" VALUES (1, 0)'))
    counter = Counter("counts")
    db._register_source(counter)
    return counter


async def _counted(db: corral.Database) -> object:
    return await db._run(lambda conn: conn.fetchval('SELECT "n" FROM "counts" WHERE "id" = 1'))


async def test_a_count_from_a_thread_is_committed_without_other_traffic(db_url: str) -> None:
    async with corral.connect(db_url, flush_interval=0.02) as db:
        counter = await _counter_table(db)
        await anyio.to_thread.run_sync(counter.add, 5)
        with anyio.fail_after(30):  # polled every flush interval: no flush needed
            await counter.written.wait()
        assert await _counted(db) == 5


async def test_flush_includes_sources(db_url: str) -> None:
    async with corral.connect(db_url, flush_interval=3600) as db:
        counter = await _counter_table(db)
        for _ in range(1000):
            counter.add()
        await db.flush()
        assert counter.writes == 1
        assert await _counted(db) == 1000


async def test_sources_are_drained_at_exit(db_url: str) -> None:
    async with corral.connect(db_url, flush_interval=3600) as db:
        counter = await _counter_table(db)
        t = db.table("t", key="k")
        await t.put({"k": 1})
        counter.add(7)
    async with corral.connect(db_url) as db:
        assert await _counted(db) == 7


async def test_a_failing_source_is_a_write_error_and_spares_the_rows(db_url: str) -> None:
    async with corral.connect(db_url, flush_interval=3600) as db:
        counter = await _counter_table(db)
        t = db.table("t", key="k")
        await t.put({"k": 1})
        counter.add(3)
        counter.fail = True
        with pytest.raises(corral.WriteError, match="the source is broken") as caught:
            await db.flush()
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert caught.value.table is None
        assert await fetch(db, 'SELECT "k" FROM "t"') == [{"k": 1}]


# -- fatal errors ------------------------------------------------------------------------------


async def test_a_failed_commit_stops_the_writer_and_is_raised(db_url: str) -> None:
    databases: list[corral.Database] = []

    async def broken(runs: Sequence[Run], *, begin: bool, commit: bool) -> list[Failure]:
        raise OSError("disk on fire")

    async def body() -> None:
        async with corral.connect(db_url, flush_interval=3600) as db:
            databases.append(db)
            t = db.table("t", key="k")
            await t.put({"k": 0})
            await db.flush()
            db._backend.write = broken  # type: ignore[method-assign]
            for k in range(1, 11):
                await t.put({"k": k})
            try:
                await db.flush()
            finally:
                with pytest.raises(corral.DatabaseClosedError) as closed:
                    await t.put({"k": 99})
                assert closed.value.__cause__ is db._writer.fatal
            pytest.fail("the body went on after the writer stopped")

    with pytest.raises(corral.WriteError, match="writer stopped: OSError: disk on fire") as caught:
        await body()
    assert isinstance(caught.value.__cause__, OSError)
    stats = databases[0].statistics()
    assert (stats.accepted, stats.committed, stats.failed, stats.pending) == (11, 1, 10, 0)
    assert await count(db_url, "t") == 1


async def test_a_lost_postgresql_connection_is_raised(postgres_url: str) -> None:
    # Not reconnecting (tests/test_postgres_resilience.py has the reconnections).
    url = f"{postgres_url}&reconnect_timeout=0"

    async def body() -> None:
        async with corral.connect(url, flush_interval=3600) as db:
            t = db.table("t", key="k")
            await t.put({"k": 0})
            await db.flush()
            pid = await db._run(lambda conn: conn.fetchval("SELECT pg_backend_pid()"))
            async with corral.connect(postgres_url) as admin:
                terminate = "SELECT pg_terminate_backend(CAST(? AS INTEGER))"
                await admin._run(lambda conn: conn.execute(terminate, pid))
            await t.put({"k": 1})
            await db.flush()
            await anyio.sleep_forever()  # cancelled when the writer stops

    with pytest.raises(corral.WriteError, match="writer stopped") as caught:
        await body()
    assert caught.value.__cause__ is not None
    assert await count(postgres_url, "t") == 1


# -- the hooks' connection -------------------------------------------------------------------


async def test_the_hook_connection(db_url: str) -> None:
    async with corral.connect(db_url) as db:

        async def use(conn: Connection) -> tuple[str, Any, Any, Any]:
            await conn.execute('CREATE TABLE "h" ("a" INTEGER PRIMARY KEY, "b" TEXT)')
            await conn.executemany('INSERT INTO "h" VALUES (?, ?)', iter([(1, "x"), (2, "?")]))
            rows = await conn.fetch('SELECT * FROM "h" WHERE "b" <> \'?\' ORDER BY "a"')
            one = await conn.fetchval('SELECT "b" FROM "h" WHERE "a" = ?', 2)
            none = await conn.fetchval('SELECT "b" FROM "h" WHERE "a" = ?', 3)
            return conn.dialect, rows, one, none

        dialect, rows, one, none = await db._run(use)
        assert dialect == db.dialect
        assert rows == [{"a": 1, "b": "x"}]
        assert one == "?"
        assert none is None
        assert db.flush_interval == 0.05
        assert db.url == db_url


async def test_run_accepts_any_awaitable_returning_function(db_url: str) -> None:
    async with corral.connect(db_url) as db:

        def make(value: int) -> Callable[[Connection], Awaitable[int]]:
            async def fn(conn: Connection) -> int:
                got = await conn.fetchval("SELECT CAST(? AS INTEGER)", value)
                assert isinstance(got, int)
                return got

            return fn

        results = []
        async with anyio.create_task_group() as tg:
            for i in range(20):

                async def one(i: int = i) -> None:
                    results.append(await db._run(make(i)))

                tg.start_soon(one)
        assert sorted(results) == list(range(20))


async def test_waiting_on_the_writer_from_inside_it_is_refused(db_url: str) -> None:
    async with corral.connect(db_url, max_pending=1) as db:
        t = db.table("t", key="k")
        await t.put({"k": 0})
        await db.flush()

        async def flushes(conn: Connection) -> None:
            await db.flush()

        async def runs(conn: Connection) -> None:
            await db._run(flushes)

        async def puts(conn: Connection) -> None:
            await t.put({"k": 1})  # finds room: accepted, no wait
            await t.put({"k": 2})  # the queue is full: would wait for the writer

        for fn, what in [(flushes, "flush"), (runs, "_run"), (puts, "put")]:
            with pytest.raises(RuntimeError, match=f"{what}.*from inside the writer"):
                await db._run(fn)
        await db.flush()
        assert await fetch(db, 'SELECT "k" FROM "t" ORDER BY "k"') == [{"k": 0}, {"k": 1}]


async def test_a_put_from_inside_the_writer_on_a_table_being_resolved_is_refused(
    db_url: str,
) -> None:
    async with corral.connect(db_url) as db:
        t = db.table("t", key="k")
        entered = anyio.Event()
        go = anyio.Event()

        async def puts(conn: Connection) -> None:
            entered.set()
            await go.wait()
            await t.put({"k": 1})  # another task resolves t: its resolution waits behind us

        async def run_puts() -> None:
            with pytest.raises(RuntimeError, match=r"put.*from inside the writer"):
                await db._run(puts)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_puts)
            await entered.wait()
            tg.start_soon(t.put, {"k": 0})
            await anyio.wait_all_tasks_blocked()
            go.set()
        await db.flush()
        assert await fetch(db, 'SELECT "k" FROM "t" ORDER BY "k"') == [{"k": 0}]


async def test_a_body_cancelled_before_the_writer_ran_loses_nothing(db_url: str) -> None:
    with anyio.CancelScope() as scope:
        async with corral.connect(db_url) as db:
            scope.cancel()
            t = db.table("t", key="k")
            await t.put({"k": 1})  # cancelled: the table is not resolved yet
    assert scope.cancelled_caught
    assert db.statistics().accepted == 0
    with anyio.CancelScope() as scope:
        async with corral.connect(db_url) as db:
            t = db.table("t", key="k")
            await t.put({"k": 1})
            scope.cancel()
            await t.put({"k": 2})  # accepted without waiting: no checkpoint
            await anyio.sleep(1)
    assert db.statistics().committed == 2
    assert await count(db_url, "t") == 2


# -- runs of one table on both sides of an operation, in one batch -------------------------------


async def test_runs_of_a_table_around_an_operation_write_only_their_own_rows(db_url: str) -> None:
    # One batch holds: a run of (k, b), an operation, a run of (k, a). On PostgreSQL both
    # runs go through the table's staging table: the second must not upsert the first's
    # rows again (with its own columns: `a` NULL for key 1).
    async with corral.connect(db_url, flush_interval=3600) as db:
        t = db.table("t", key="k")
        await t.put({"k": 1, "a": 1, "b": 1})
        await t.put({"k": 2, "a": 2, "b": 2})
        await db.flush()
        gate = Gate()
        async with anyio.create_task_group() as tg:
            tg.start_soon(db._run, gate)  # holds the writer: the rest queues into one batch
            await gate.entered.wait()
            await t.put({"k": 1, "b": 10})
            tg.start_soon(db._run, lambda conn: conn.fetchval("SELECT 1"))
            await anyio.wait_all_tasks_blocked()
            await t.put({"k": 2, "a": 20})
            gate.release.set()
        await db.flush()
        rows = await fetch(db, 'SELECT "k", "a", "b" FROM "t" ORDER BY "k"')
    assert rows == [{"k": 1, "a": 1, "b": 10}, {"k": 2, "a": 20, "b": 2}]


async def test_the_last_put_of_each_key_wins_with_operations_interleaved(db_url: str) -> None:
    # Ten producers upsert partial rows (random columns) on keys of their own and, now and
    # then, run an operation (as a job handler reports progress): the batches hold runs of
    # the table on both sides of operations. Each key ends as its puts, applied in order,
    # leave it.
    import random

    rng = random.Random(20261203)
    producers, puts, keys = 10, 150, 50
    plans = [
        [
            (rng.randrange(keys), rng.sample(["a", "b", "c"], rng.randint(1, 3)), rng.random())
            for _ in range(puts)
        ]
        for _ in range(producers)
    ]
    expected: dict[int, dict[str, object]] = {}
    operations = 0
    async with corral.connect(db_url, flush_interval=0.001) as db:
        t = db.table("t", key="k")
        await t.put({"k": -1, "a": 0, "b": 0, "c": 0})
        await db.flush()

        async def produce(p: int) -> None:
            nonlocal operations
            for n, (key, columns, dice) in enumerate(plans[p]):
                k = p * keys + key
                row: dict[str, object] = {"k": k} | {c: p * 100_000 + n for c in columns}
                expected.setdefault(k, {"k": k, "a": None, "b": None, "c": None}).update(row)
                await t.put(row)
                if dice < 0.2:
                    await db._run(lambda conn: conn.fetchval("SELECT 1"))
                    operations += 1

        async with anyio.create_task_group() as tg:
            for p in range(producers):
                tg.start_soon(produce, p)
        await db.flush()
        rows = await fetch(db, 'SELECT "k", "a", "b", "c" FROM "t" WHERE "k" >= 0')
    assert operations > 200
    assert {row["k"]: row for row in rows} == expected


# -- a cancel request the server ignores -------------------------------------------------------


class _HoldingProxy:
    """A TCP proxy to the test server that can hold back the next thing a client sends.

    A cancel request that reaches the server before it has read the statement is
    ignored (the backend is idle): holding the statement here until the server has
    answered the cancel request (by closing its connection) makes that happen every time.
    """

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self.hold = False
        self.held = anyio.Event()
        self.release = anyio.Event()
        self.cancels_answered = 0
        self.cancel_answered = anyio.Event()
        self._first = True

    async def handle(self, client: anyio.abc.SocketStream) -> None:
        main, self._first = self._first, False
        server = await anyio.connect_tcp(*self._upstream)
        async with client, server, anyio.create_task_group() as tg:
            tg.start_soon(self._pump, client, server, main)
            await self._pump(server, client, False)
            tg.cancel_scope.cancel()
        if not main:  # a cancel request, answered
            self.cancels_answered += 1
            self.cancel_answered.set()

    async def _pump(
        self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, holds: bool
    ) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                data = await source.receive()
                if holds and self.hold:
                    self.hold = False
                    self.held.set()
                    await self.release.wait()
                await sink.send(data)


async def test_a_cancel_request_the_server_ignored_is_sent_again(postgres_url: str) -> None:
    parts = urllib.parse.urlsplit(postgres_url)
    proxy = _HoldingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    user = f"{parts.username}@" if parts.username else ""
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))
    async with listener, anyio.create_task_group() as serving:
        serving.start_soon(listener.serve, proxy.handle)
        async with corral.connect(url) as db:
            t = db.table("t", key="k")
            await t.put({"k": 1})
            await db.flush()

            async def slow(conn: Connection) -> None:
                await conn.execute('INSERT INTO "t" ("k") VALUES (?)', 100)
                proxy.hold = True  # the proxy holds the next statement back
                await conn.execute("SELECT pg_sleep(60)")

            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(db._run, slow)
                    await proxy.held.wait()
                    scope.cancel()  # the driver sends a cancel request ...
            await proxy.cancel_answered.wait()  # ... which the idle server ignored
            proxy.release.set()  # and now the statement runs
            await t.put({"k": 2})
            await db.flush()  # returns once the statement was cancelled again
            rows = await fetch(db, 'SELECT "k" FROM "t" ORDER BY "k"')
        serving.cancel_scope.cancel()
    assert [r["k"] for r in rows] == [1, 2]
    assert proxy.cancels_answered >= 2


# -- refused rows: a bounded number of errors is kept ----------------------------------------


async def _checked(db: corral.Database) -> corral.Table:
    """A table whose CHECK constraint refuses every row with a negative v."""
    await db._run(
        lambda conn: conn.execute(
            'CREATE TABLE "c" ("k" INTEGER PRIMARY KEY, "v" INTEGER CHECK ("v" >= 0))'
        )
    )
    return db.table("c", key="k")


async def test_many_refused_rows_keep_a_bounded_number_of_errors(db_url: str) -> None:
    # 100,000 CHECK violations used to keep 100,000 WriteErrors (88 MiB): only the first
    # _MAX_ERRORS are kept to be raised, the rest are counted, exactly.
    kept = _writer._MAX_ERRORS
    bad = 10 * kept
    async with corral.connect(db_url, flush_interval=3600) as db:
        t = await _checked(db)
        for k in range(bad):  # queued before the writer commits any of them
            await t.put({"k": k, "v": -1})
        for k in range(bad, bad + 50):
            await t.put({"k": k, "v": 1})
        raised: list[corral.WriteError] = []
        while True:
            try:
                await db.flush()
            except corral.WriteError as exc:
                raised.append(exc)
            else:
                break
        assert len(raised) == kept
        assert [error.row for error in raised[:2]] == [{"k": 0, "v": -1}, {"k": 1, "v": -1}]
        # A kept error does not keep its batch alive through its cause's frames.
        assert raised[0].__cause__ is not None
        tb = raised[0].__cause__.__traceback__
        assert tb is not None
        while tb is not None:
            assert not tb.tb_frame.f_locals, tb.tb_frame
            tb = tb.tb_next
        notes = [note for error in raised for note in getattr(error, "__notes__", [])]
        assert notes == [
            f"corral: also, {bad - kept} more writes failed whose errors were not kept (at "
            f"most {kept} wait to be raised); statistics().failed counts every failed row"
        ]
        stats = db.statistics()
        assert (stats.failed, stats.errors_dropped, stats.committed) == (bad, bad - kept, 50)
        assert len(await fetch(db, 'SELECT "k" FROM "c"')) == 50


async def test_refused_rows_at_exit_make_a_bounded_number_of_notes(db_url: str) -> None:
    kept = _writer._MAX_ERRORS
    bad = 5 * kept
    databases: list[corral.Database] = []

    async def left_to_the_exit() -> None:
        async with corral.connect(db_url, flush_interval=3600) as db:
            databases.append(db)
            t = await _checked(db)
            for k in range(bad):
                await t.put({"k": k, "v": -1})

    async def the_body_raises() -> None:
        async with corral.connect(db_url, flush_interval=3600) as db:
            t = db.table("c", key="k")
            for k in range(bad, 2 * bad):
                await t.put({"k": k, "v": -1})
            await db._run(lambda conn: conn.fetchval("SELECT 1"))  # commits them
            raise ValueError("the body's own")

    with pytest.raises(corral.WriteError) as caught:
        await left_to_the_exit()
    notes = caught.value.__notes__
    assert len(notes) == kept  # the other kept errors, and one for those not kept
    assert notes[-1] == (
        f"corral: also, {bad - kept} more writes failed whose errors were not kept (at most "
        f"{kept} wait to be raised); statistics().failed counts every failed row"
    )
    assert databases[0].statistics().failed == bad
    assert databases[0].statistics().errors_dropped == bad - kept

    with pytest.raises(ValueError, match="the body's own") as body:
        await the_body_raises()
    assert len(body.value.__notes__) == kept + 1  # every kept error, and the count
    assert "400 more writes failed" in body.value.__notes__[-1]


# -- a store without SQL: the writer needs nothing but the Store port ------------------------


class _MemorySession:
    """What operations and sources get from the memory store: its tables, as dicts."""

    def __init__(self, store: _MemoryStore) -> None:
        self.store = store

    @property
    def jobs(self) -> Any:
        raise NotImplementedError

    @property
    def progress(self) -> Any:
        raise NotImplementedError


class _MemoryStore:
    """A store without transactions: it keeps tables in dicts and applies batches whole.

    A value "bad" in a row is refused (the row alone), and ``lose`` makes the next batch
    lose its connection, before or after its commit.
    """

    dialect = "memory"
    reconnects = True

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[object, ...], dict[str, object]]] = {}
        self.session = _MemorySession(self)
        self.applied = 0
        self.reconnected = 0
        self.lose: str | None = None  # "before" or "after" the commit

    async def resolve(self, name: str, key: tuple[str, ...], row: Any) -> Any:
        from corral._ports import Column, TableSchema

        self.tables.setdefault(name, {})
        return TableSchema(name, key, {c: Column(c, "any") for c in row})

    async def apply(self, batch: Any) -> None:
        from corral._ports import Run

        self.applied += 1
        staged = {name: dict(rows) for name, rows in self.tables.items()}
        for segment in batch.segments:
            if isinstance(segment, list):
                for run in segment:
                    assert isinstance(run, Run)
                    table = staged[run.table.name]
                    for index, values in enumerate(run.rows):
                        if "bad" in values:
                            batch.failures.append((run, index, ValueError("bad value")))
                            continue
                        row = dict(zip(run.columns, values, strict=True))
                        key = tuple(row[k] for k in run.table.key)
                        table[key] = {**table.get(key, {}), **row}
            elif not segment.abandoned:  # it reads and writes the batch so far
                snapshot = {name: dict(rows) for name, rows in staged.items()}
                before, self.tables = self.tables, staged
                try:
                    kept = await segment.run(self.session)
                finally:
                    self.tables = before
                if not kept:  # its writes are undone, the batch's kept
                    staged = snapshot
        for source in batch.sources:
            try:
                await source.write(self.session)
            except Exception as exc:
                batch.source_errors.append((source, exc))
            else:
                batch.written.append(source)
        lose, self.lose = self.lose, None
        if lose == "before":
            raise corral.ConnectionLostError("lost before the commit", commit_sent=False)
        self.tables = staged
        if lose == "after":
            raise corral.ConnectionLostError("lost after the commit", commit_sent=True)

    async def reconnect(self) -> None:
        self.reconnected += 1

    async def close(self) -> None:
        pass


@pytest.fixture
def memory_store(monkeypatch: pytest.MonkeyPatch) -> _MemoryStore:
    """A backend registered for memory:// URLs, as a new backend package would be."""
    import sys
    import types

    import corral._backends

    store = _MemoryStore()

    async def open_store(url: str) -> _MemoryStore:
        return store

    module = types.ModuleType("corral._backends._memory")
    module.open_store = open_store
    monkeypatch.setitem(sys.modules, "corral._backends._memory", module)
    monkeypatch.setitem(corral._backends.BACKENDS, "memory", "_memory")
    return store


async def test_a_store_without_sql_through_the_registry(memory_store: _MemoryStore) -> None:
    async def read(conn: Any) -> dict[tuple[object, ...], dict[str, object]]:
        return dict(conn.store.tables["t"])

    async with corral.connect("memory://here", flush_interval=3600) as db:
        assert db.dialect == "memory"
        t = db.table("t", key="k")
        await t.put({"k": 1, "v": "a"})
        await t.put({"k": 2, "v": "bad"})
        await t.put({"k": 1, "v": "b"})  # the last put of a key wins
        with pytest.raises(corral.WriteError, match="bad value") as caught:
            await db.flush()
        assert caught.value.row == {"k": 2, "v": "bad"}
        assert await db._run(read) == {(1,): {"k": 1, "v": "b"}}
        stats = db.statistics()
    assert (stats.accepted, stats.committed, stats.failed, stats.pending) == (3, 2, 1, 0)


async def test_a_lost_store_is_reconnected_and_the_batch_written_again(
    memory_store: _MemoryStore,
) -> None:
    async with corral.connect("memory://here", flush_interval=3600) as db:
        t = db.table("t", key="k")
        await t.put({"k": 0})
        await db.flush()
        memory_store.lose = "before"
        await t.put({"k": 1})
        await db.flush()  # rolled back, reconnected, written again
        assert memory_store.reconnected == 1
        assert set(memory_store.tables["t"]) == {(0,), (1,)}
        memory_store.lose = "after"

        async def op(conn: Any) -> str:
            return "done"

        with pytest.raises(corral.CommitUnknownError):  # it may have committed
            await db._run(op)
        assert memory_store.reconnected == 2
    assert db.statistics().committed == 2
