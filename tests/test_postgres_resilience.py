"""PostgreSQL stalls and restarts: bounded waits, reconnects, nothing dropped silently.

corral connects to the test server through :class:`Proxy`, a TCP proxy on loopback run
by the test itself, which can *freeze* (stop forwarding bytes both ways, closing
nothing: a stalled server or a network that drops packets) and *cut* (close both
sides of every connection: what a server restart does to its clients).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

import corral
from conftest import POSTGRES_URL, postgres_admin
from corral import jobs
from corral._backends import Connection
from corral._jobs._context import JobContext
from jobs_testing import claimed_contexts, stored_steps

pytestmark = pytest.mark.timeout(60)

#: How long a test lets connect run on a stalled server before it thaws the proxy and
#: fails (a hang guard only: the timeouts under test are far shorter).
GUARD = 30

#: A simple-query message holding just COMMIT.
_COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"
#: The end of a ReadyForQuery message saying the server is idle, outside a transaction.
_IDLE = b"Z\x00\x00\x00\x05I"


class _Link:
    """One proxied connection: the client's socket, the server's, and their state."""

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        #: The last bytes the server sent, and whether nothing was asked since.
        self.tail = b""
        self.idle = False
        self.cut_when_idle = False
        #: Close both sides once the client has sent COMMIT (which the server gets).
        self.cut_after_commit = False
        self.muted = False


class Proxy:
    """A TCP proxy on loopback to the test server that a test can freeze and cut."""

    def __init__(self) -> None:
        self.port = 0
        self._thawed = anyio.Event()
        self._thawed.set()
        self._links: set[_Link] = set()
        self._gone = anyio.Event()
        self._refusing = False
        #: Connections refused while refusing, and an event set at each.
        self.refused = 0
        self.refusal = anyio.Event()
        upstream = urllib.parse.urlsplit(POSTGRES_URL)
        self._upstream = (upstream.hostname or "127.0.0.1", upstream.port or 5432)

    def url(self, base: str, **params: object) -> str:
        """``base`` (a test URL) pointed at this proxy, with extra query parameters."""
        parts = urllib.parse.urlsplit(base)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc_text = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        query = parts.query
        extra = urllib.parse.urlencode(params)
        query = f"{query}&{extra}" if query and extra else query or extra
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc_text, query=query))

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    def freeze(self) -> None:
        """Stop forwarding bytes, both ways, on every connection; close nothing."""
        if self._thawed.is_set():
            self._thawed = anyio.Event()

    def thaw(self) -> None:
        """Forward again what was held, and everything after it."""
        self._thawed.set()

    def refuse(self, refusing: bool = True) -> None:
        """Close each new connection at once (a server that is down), or stop doing so."""
        self._refusing = refusing

    async def cut(self, *, when_idle: bool = False) -> None:
        """Close both sides of every connection, and return once they are closed.

        ``when_idle``: close each one only once its server has answered everything
        asked and is outside a transaction (so that no COMMIT is in flight).
        """
        links = list(self._links)
        for link in links:
            if not when_idle or link.idle:
                link.scope.cancel()
            else:
                link.cut_when_idle = True
        while any(link in self._links for link in links):
            self._gone = anyio.Event()
            await self._gone.wait()

    def cut_after_commit(self) -> None:
        """Cut every connection once its client has sent a COMMIT, before the answer.

        The server has the COMMIT (bytes sent before a close are delivered) and commits;
        the client never learns whether it did.
        """
        for link in self._links:
            link.cut_after_commit = True

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if self._refusing:
                self.refused += 1
                self.refusal.set()
                self.refusal = anyio.Event()
                return
            async with await anyio.connect_tcp(*self._upstream) as server:
                with anyio.CancelScope() as scope:
                    link = _Link(scope)
                    self._links.add(link)
                    try:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._pump, link, client, server, False)
                            tg.start_soon(self._pump, link, server, client, True)
                    finally:
                        self._links.discard(link)
                        self._gone.set()

    async def _pump(
        self,
        link: _Link,
        source: anyio.abc.SocketStream,
        sink: anyio.abc.SocketStream,
        from_server: bool,
    ) -> None:
        try:
            async for chunk in source:
                await self._thawed.wait()
                if from_server:
                    if link.muted:  # the answer to a COMMIT that is cut off
                        break
                    await sink.send(chunk)
                    link.tail = (link.tail + chunk)[-len(_IDLE) :]
                    link.idle = link.tail == _IDLE
                    if link.idle and link.cut_when_idle:
                        break
                else:
                    link.idle = False
                    if link.cut_after_commit and _COMMIT in chunk:
                        # Cut once the server has answered it (so it has committed),
                        # without passing the answer on.
                        link.muted = True
                        await sink.send(chunk)
                        await anyio.sleep_forever()
                    await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        link.scope.cancel()


@asynccontextmanager
async def proxy() -> AsyncIterator[Proxy]:
    async with anyio.create_task_group() as tg:
        p = Proxy()
        await tg.start(p.serve)
        try:
            yield p
        finally:
            p.thaw()
            tg.cancel_scope.cancel()


async def count(url: str, table: str) -> int:
    """Open the database afresh (not through the proxy) and count a table's rows."""
    async with corral.connect(url) as db:
        value = await db._run(lambda conn: conn.fetchval(f'SELECT COUNT(*) FROM "{table}"'))
    assert isinstance(value, int)
    return value


@asynccontextmanager
async def guarded(p: Proxy) -> AsyncIterator[None]:
    """Fail (after thawing the proxy, so that everything can end) if the body hangs."""
    done = anyio.Event()
    hung = False

    async def guard() -> None:
        nonlocal hung
        with anyio.move_on_after(GUARD):
            await done.wait()
            return
        hung = True
        p.thaw()

    async with anyio.create_task_group() as tg:
        tg.start_soon(guard)
        try:
            yield
        finally:
            done.set()
    assert not hung, "connect did not return while the server was stalled"


# -- item 12: a stalled server ------------------------------------------------------------------


async def test_a_stalled_server_cannot_keep_connect_from_returning(postgres_url: str) -> None:
    async with proxy() as p, guarded(p):
        url = p.url(postgres_url, command_timeout=0.5, reconnect_timeout=0)

        async def body() -> None:
            async with corral.connect(url) as db:
                table = db.table("t", key="k")
                await table.put({"k": -1, "v": 0})
                await db.flush()
                p.freeze()
                for k in range(3):
                    await table.put({"k": k, "v": 1})

        with pytest.raises(corral.WriteError) as caught:
            await body()
        # The drain gave up: it says so, and what it could not commit.
        message = str(caught.value)
        assert "3 rows and 0 operations of its current batch and queue were not committed" in (
            message
        )
        assert "no answer within command_timeout=0.5 s" in message, message
        assert isinstance(caught.value.__cause__, corral.ConnectionLostError)
    assert await count(postgres_url, "t") == 1


async def test_cancelling_connect_on_a_stalled_server_returns(postgres_url: str) -> None:
    job_error: list[BaseException] = []

    async def enqueue(db: corral.Database) -> None:
        try:
            await db.jobs.enqueue(jobs.Job("late"))
        except corral.CorralError as exc:
            job_error.append(exc)

    async with proxy() as p, guarded(p), anyio.create_task_group() as outer:
        # Reconnecting through the stalled proxy times out too, and is given up.
        url = p.url(postgres_url, command_timeout=0.5, connect_timeout=0.5, reconnect_timeout=1)

        async def body() -> None:
            with anyio.CancelScope() as scope:
                async with corral.connect(url) as db:
                    table = db.table("t", key="k")
                    await table.put({"k": -1, "v": 0})
                    await db.jobs.enqueue(jobs.Job("early"))
                    p.freeze()
                    for k in range(2):
                        await table.put({"k": k, "v": 1})
                    outer.start_soon(enqueue, db)  # an operation its caller waits for
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()  # as Ctrl-C or SIGTERM would
                    await anyio.sleep_forever()

        with pytest.raises(corral.WriteError) as caught:
            await body()
        message = str(caught.value)
        assert "2 rows and 1 operation of its current batch" in message, message
        assert "gave up reconnecting" in message, message
    assert len(job_error) == 1, job_error
    assert isinstance(job_error[0], corral.CorralError), job_error
    assert await count(postgres_url, "t") == 1


# -- item 13: a restart ----------------------------------------------------------------------


async def test_the_writer_reconnects_after_every_connection_is_cut(postgres_url: str) -> None:
    async with proxy() as p, corral.connect(p.url(postgres_url)) as db:
        table = db.table("t", key="k")
        for k in range(100):
            await table.put({"k": k, "v": "before"})
        await db.flush()
        await p.cut(when_idle=True)  # as a restart does, between two batches
        for k in range(100, 200):
            await table.put({"k": k, "v": "after"})
        await db.flush()
        # The server down for a while: new connections refused, then accepted again.
        p.refuse()
        await p.cut()
        refused = p.refusal
        for k in range(200, 300):
            await table.put({"k": k, "v": "during"})
        await refused.wait()  # the writer has tried, and failed, to reconnect
        p.refuse(False)
        await db.flush()
        assert db.statistics().committed == 300
        assert db.statistics().failed == 0
    assert p.refused >= 1
    assert await count(postgres_url, "t") == 300


async def test_the_writer_reconnects_after_pg_terminate_backend(postgres_url: str) -> None:
    name = f"corral_{uuid.uuid4().hex[:12]}"
    url = f"{postgres_url}&application_name={name}"
    async with corral.connect(url) as db:
        table = db.table("t", key="k")
        for k in range(50):
            await table.put({"k": k})
        await db.flush()
        await anyio.to_thread.run_sync(
            postgres_admin,
            f"SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            f"WHERE application_name = '{name}'",
        )
        for k in range(50, 100):
            await table.put({"k": k})
        await db.flush()
        await db.jobs.enqueue(jobs.Job("after"))  # operations go on too
        assert (await db.jobs.get("after")).state is jobs.State.READY
    assert await count(postgres_url, "t") == 100


async def test_listen_is_registered_again_on_the_new_connection(postgres_url: str) -> None:
    heard = anyio.Event()
    channel = f"corral_test_{uuid.uuid4().hex[:12]}"

    async def listen(conn: Connection) -> None:
        await conn.listen(channel, heard.set)  # type: ignore[attr-defined]

    async with proxy() as p, corral.connect(p.url(postgres_url)) as db:
        await db._run(listen)
        await p.cut(when_idle=True)
        await db.table("t", key="k").put({"k": 1})
        await db.flush()  # through a new connection
        await anyio.to_thread.run_sync(postgres_admin, f"NOTIFY {channel}")
        with anyio.fail_after(GUARD):  # a hang guard: the notification comes at once
            await heard.wait()


async def test_an_operation_whose_commit_was_cut_off_is_reported_as_unknown(
    postgres_url: str,
) -> None:
    async with proxy() as p, corral.connect(p.url(postgres_url)) as db:
        await db.jobs.enqueue(jobs.Job("first"))
        p.cut_after_commit()
        with pytest.raises(corral.CommitUnknownError) as caught:
            # Two jobs: a transaction with a COMMIT (one job alone is one statement
            # that commits on its own, with no COMMIT to cut off).
            await db.jobs.enqueue_many([jobs.Job("second"), jobs.Job("second-b")])
        assert "may or may not have committed" in str(caught.value)
        # The writer reconnected and goes on; the job was in fact committed (the
        # server had the COMMIT), which the caller can read back.
        assert (await db.jobs.get("second")).state is jobs.State.READY
        await db.jobs.enqueue(jobs.Job("third"))
        table = db.table("t", key="k")
        await table.put({"k": 1})
        await db.flush()
    assert await count(postgres_url, "t") == 1


async def test_a_processor_completes_every_job_across_a_cut(postgres_url: str) -> None:
    reached = anyio.Event()
    resumed = anyio.Event()
    ran: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "j10":
            reached.set()
            await resumed.wait()
        ran.append(ctx.job.id)

    async with proxy() as p, corral.connect(p.url(postgres_url)) as db:
        await db.jobs.enqueue_many(jobs.Job(f"j{i:02}") for i in range(20))
        processor = jobs.Processor(
            db, handler, config=jobs.ProcessorConfig(max_concurrent=1, poll_interval=0.05)
        )

        async def cut() -> None:
            await reached.wait()
            await p.cut(when_idle=True)
            resumed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cut)
            with anyio.fail_after(GUARD):
                await processor.run(until_idle=True)
        assert sorted(ran) == [f"j{i:02}" for i in range(20)]
        assert processor.statistics().completed == 20
        depth = await db.jobs.depth()
        assert (depth.ready, depth.in_progress, depth.dead) == (0, 0, 0)


_WORKER_HANDLERS = """
import os

import asyncpg


async def handle(ctx):
    app = (ctx.job.payload or {}).get("terminate")
    if app:  # end the worker's own database connection, as a server restart would
        conn = await asyncpg.connect(os.environ["CORRAL_TEST_ADMIN_URL"])
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE application_name = $1",
                app,
            )
        finally:
            await conn.close()
"""


def test_corral_worker_goes_on_when_its_connection_is_terminated(
    postgres_url: str, tmp_path: Path
) -> None:
    app = f"corral_{uuid.uuid4().hex[:12]}"
    url = f"{postgres_url}&application_name={app}"
    (tmp_path / "resilient_jobs.py").write_text(_WORKER_HANDLERS)

    async def enqueue() -> None:
        async with corral.connect(postgres_url) as db:
            await db.jobs.enqueue_many(
                jobs.Job(f"j{i:02}", {"terminate": app} if i == 10 else {}) for i in range(20)
            )

    anyio.run(enqueue)
    env = {**os.environ, "CORRAL_TEST_ADMIN_URL": POSTGRES_URL}
    env.pop("CORRAL_DB", None)
    worker = subprocess.run(
        [
            *(sys.executable, "-m", "corral", "worker", "--db", url),
            *("--handler", "resilient_jobs:handle", "--max-concurrent", "1", "--until-idle"),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr
    assert "reconnected to PostgreSQL" in worker.stderr, worker.stderr

    async def depth() -> jobs.QueueDepth:
        async with corral.connect(postgres_url) as db:
            return await db.jobs.depth()

    found = anyio.run(depth)
    assert (found.completed, found.ready, found.in_progress, found.dead) == (20, 0, 0, 0)


async def test_rows_alone_in_a_batch_whose_commit_was_cut_off_are_written_again(
    postgres_url: str,
) -> None:
    async with proxy() as p, corral.connect(p.url(postgres_url)) as db:
        table = db.table("t", key="k")
        await table.put({"k": 0, "v": 0})
        await db.flush()
        p.cut_after_commit()
        for k in range(10):
            await table.put({"k": k, "v": 1})
        await db.flush()  # upserted again: the same rows, the same result
        stats = db.statistics()
        assert (stats.committed, stats.failed) == (11, 0)
    assert await count(postgres_url, "t") == 10


async def test_progress_written_in_a_batch_whose_commit_was_cut_off_is_reported(
    postgres_url: str,
) -> None:
    async def body(p: Proxy) -> None:
        async with corral.connect(p.url(postgres_url)) as db:
            run = await db.progress.start_run("load", "nightly")
            subtask = await run.start_subtask(1, "files")
            p.cut_after_commit()
            subtask.increment(5)
            await db.flush()

    async with proxy() as p:
        with pytest.raises(corral.WriteError, match="may or may not have been committed"):
            await body(p)


@pytest.mark.parametrize(
    ("param", "value"),
    [("command_timeout", "soon"), ("connect_timeout", "0"), ("reconnect_timeout", "-1")],
)
async def test_a_bad_timeout_in_the_url_is_refused(
    postgres_url: str, param: str, value: str
) -> None:
    with pytest.raises(corral.DatabaseURLError, match=f"{param}='{value}'.*number of seconds"):
        async with corral.connect(f"{postgres_url}&{param}={value}"):
            pass


async def test_a_batch_cut_off_before_its_commit_is_written_again_whole(postgres_url: str) -> None:
    inside = anyio.Event()
    go_on = anyio.Event()
    calls = 0

    async def operation(conn: Connection) -> int:
        nonlocal calls
        calls += 1
        await conn.execute('INSERT INTO "t" ("k", "v") VALUES (?, ?)', 1000, calls)
        if calls == 1:  # the first time, the connection is cut while it runs
            inside.set()
            await go_on.wait()
        value = await conn.fetchval('SELECT COUNT(*) FROM "t"')
        assert isinstance(value, int)
        return value

    async with proxy() as p, corral.connect(p.url(postgres_url)) as db:
        table = db.table("t", key="k")
        await table.put({"k": 0, "v": 0})
        await db.flush()
        result: list[int] = []

        async def run() -> None:
            result.append(await db._run(operation))

        async with anyio.create_task_group() as tg:
            for k in range(1, 6):
                await table.put({"k": k, "v": 0})  # in the operation's batch, before it
            tg.start_soon(run)
            await inside.wait()
            await p.cut()
            go_on.set()
        for k in range(6, 11):
            await table.put({"k": k, "v": 0})
        await db.flush()
        assert calls == 2  # run again, on the new connection
        assert result == [7]  # 6 rows and its own: the first attempt was rolled back
        assert db.statistics().committed == 11
    assert await count(postgres_url, "t") == 12


async def test_step_records_of_a_batch_cut_off_before_its_commit_are_written_once(
    postgres_url: str,
) -> None:
    """A group run again after a lost connection runs the same calls: a caller cancelled
    once its group had begun still has its step written, and its progress counted once."""
    held = anyio.Event()
    release = anyio.Event()
    inside = anyio.Event()
    go_on = anyio.Event()
    calls = 0

    async def hold(_: Connection) -> None:
        held.set()
        await release.wait()

    async def after(conn: Connection) -> None:  # in the batch of the step records
        nonlocal calls
        calls += 1
        if calls == 1:  # the first time, the connection is cut while it runs
            inside.set()
            await go_on.wait()
        await conn.fetchval("SELECT 1")

    async with proxy() as p, corral.connect(p.url(postgres_url)) as db:
        contexts = await claimed_contexts(db, 3)
        scopes = [anyio.CancelScope() for _ in contexts]

        async def record(ctx: JobContext, scope: anyio.CancelScope) -> None:
            with scope:
                await ctx._finish_step("one")

        async with anyio.create_task_group() as tg:
            tg.start_soon(db._run, hold)
            await held.wait()
            for ctx, scope in zip(contexts, scopes, strict=True):
                ctx.progress.increment(5)
                tg.start_soon(record, ctx, scope)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(db._run, after)
            await anyio.wait_all_tasks_blocked()
            release.set()
            await inside.wait()  # the step records' group has run, in this batch
            scopes[0].cancel()  # given up on, after its group began
            await p.cut()
            go_on.set()
        await db.flush()
        assert calls == 2  # the batch was written again, on the new connection
        assert scopes[0].cancelled_caught
        for ctx in contexts:
            text, progress = await stored_steps(db, ctx._claimed.id)
            assert (text, progress) == ('{"one":null}', 5)
            assert ctx._take_progress() == 0


async def test_an_operation_given_up_after_it_returned_is_written_again_after_a_cut(
    postgres_url: str,
) -> None:
    """Database._run commits the work of a function that returned, even if its caller is
    cancelled before the commit: so too when the batch is lost before its commit and
    written again on a new connection, although nobody waits for it any more."""
    returned = anyio.Event()
    inside = anyio.Event()
    go_on = anyio.Event()
    calls = {"promised": 0, "after": 0}

    async def promised(conn: Connection) -> None:
        calls["promised"] += 1
        await conn.execute('INSERT INTO "t" ("k", "v") VALUES (?, ?)', 500, calls["promised"])
        returned.set()

    async def after(conn: Connection) -> None:  # in the same batch, after it
        calls["after"] += 1
        if calls["after"] == 1:  # the first time, the connection is cut while it runs
            inside.set()
            await go_on.wait()
        await conn.fetchval("SELECT 1")

    async with proxy() as p, corral.connect(p.url(postgres_url)) as db:
        table = db.table("t", key="k")
        await table.put({"k": 0, "v": 0})
        await db.flush()
        scope = anyio.CancelScope()

        async def caller() -> None:
            with scope:
                await db._run(promised)

        async with anyio.create_task_group() as tg:
            gate = anyio.Event()

            async def hold(_: Connection) -> None:
                await gate.wait()

            tg.start_soon(db._run, hold)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(db._run, after)
            await anyio.wait_all_tasks_blocked()
            gate.set()
            await returned.wait()
            await inside.wait()  # promised returned, in this batch, before its commit
            scope.cancel()  # its caller gives up: its work is committed all the same
            await p.cut()
            go_on.set()
        assert scope.cancelled_caught
        await db.flush()
        assert calls == {"promised": 2, "after": 2}  # both written again
        rows = await db._run(lambda conn: conn.fetch('SELECT "v" FROM "t" WHERE "k" = 500'))
        assert rows == [{"v": 2}]


@pytest.mark.parametrize("again", [False, True])
async def test_a_call_given_up_on_runs_again_only_what_its_caller_counted_on(
    postgres_url: str, again: bool
) -> None:
    """The processor's writes (claims, reports, renewals) know, once cancelled, whether
    their work is committing; written again after a cut with their caller gone, they
    run ``again`` (a report: its outcomes, not the claim of successors nobody would run)."""
    from corral._jobs import _claims

    inside = anyio.Event()
    go_on = anyio.Event()
    ran: list[str] = []
    cuts = 0

    async def fn(conn: Connection) -> str:
        ran.append("fn")
        await conn.execute('INSERT INTO "t" ("k", "v") VALUES (?, ?)', 600 + len(ran), 1)
        return "done"

    async def redo(conn: Connection) -> None:
        ran.append("again")
        await conn.execute('INSERT INTO "t" ("k", "v") VALUES (?, ?)', 700, 1)

    async def after(conn: Connection) -> None:
        nonlocal cuts
        cuts += 1
        if cuts == 1:
            inside.set()
            await go_on.wait()
        await conn.fetchval("SELECT 1")

    async with proxy() as p, corral.connect(p.url(postgres_url)) as db:
        table = db.table("t", key="k")
        await table.put({"k": 0, "v": 0})
        await db.flush()
        call = _claims.Call(fn, again=redo if again else None)
        scope = anyio.CancelScope()

        async def caller() -> None:
            with scope:
                await call.run(db)

        async with anyio.create_task_group() as tg:
            gate = anyio.Event()

            async def hold(_: Connection) -> None:
                await gate.wait()

            tg.start_soon(db._run, hold)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(db._run, after)
            await anyio.wait_all_tasks_blocked()
            gate.set()
            await inside.wait()
            scope.cancel()
            await p.cut()
            go_on.set()
        await db.flush()
        assert call.committing
        assert call.result == "done"
        keys = await db._run(lambda conn: conn.fetch('SELECT "k" FROM "t" WHERE "k" >= 600'))
    assert ran == (["fn", "again"] if again else ["fn", "fn"])
    assert sorted(row["k"] for row in keys) == ([700] if again else [602])
