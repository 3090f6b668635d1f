"""DynamoDB outages: the writer waits for the endpoint, undoes and writes again, bounded.

corral reaches the moto server through :class:`Proxy`, a TCP proxy on loopback run by
the test itself, which can *cut* (close every open connection: HTTP keep-alive keeps
them open between requests), *refuse* (accept each new connection and close it at once:
an endpoint that is down or unreachable) and *drop answers* (pass requests on, so that
the server applies them, and close the connection instead of passing the answer back:
a network that fails between a request and its answer).

botocore's own retries are set to one attempt (``AWS_MAX_ATTEMPTS``, which botocore
reads from the environment), so that a refused request fails at once: an outage longer
than botocore's retries, without the seconds of their backoff.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import boto3
import pytest

import corral
from corral import jobs
from corral._ports._progress import Status

pytestmark = pytest.mark.timeout(60)

#: A hang guard (seconds): every wait under test ends far sooner.
GUARD = 30
#: Connections refused before an outage ends: more than botocore's attempts of one request
#: (3 by default, 4 before corral honoured AWS_MAX_ATTEMPTS), so that the outage outlasts them
#: whatever botocore is told.
REFUSALS = 6


@pytest.fixture(autouse=True)
def _one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


class Proxy:
    """A TCP proxy on loopback to the moto server, which a test can cut, refuse and mute."""

    def __init__(self, endpoint: str) -> None:
        upstream = urllib.parse.urlsplit(endpoint)
        self._endpoint = endpoint
        self._upstream = (upstream.hostname or "127.0.0.1", upstream.port or 80)
        self.port = 0
        self._links: set[anyio.CancelScope] = set()
        self._gone = anyio.Event()
        self._refusing = False
        self._drop = 0
        #: Connections refused, and answers dropped; :attr:`_seen` is set at each.
        self.refused = 0
        self.dropped = 0
        self._seen = anyio.Event()

    def url(self, base: str, **params: object) -> str:
        """The ``dynamodb://`` URL ``base`` pointed at this proxy, with extra parameters."""
        url = base.replace(self._endpoint, f"http://127.0.0.1:{self.port}")
        assert url != base, base
        extra = urllib.parse.urlencode(params)
        return f"{url}&{extra}" if extra else url

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    def refuse(self, refusing: bool = True) -> None:
        """Close each new connection at once (an endpoint that is down), or stop doing so."""
        self._refusing = refusing

    def drop_answers(self, n: int = sys.maxsize) -> None:
        """Pass requests on but close the connection instead of the next ``n`` answers.

        ``drop_answers(0)`` answers again.
        """
        self._drop = n

    async def cut(self) -> None:
        """Close every open connection, and return once they are closed."""
        links = list(self._links)
        for scope in links:
            scope.cancel()
        while any(scope in self._links for scope in links):
            self._gone = anyio.Event()
            await self._gone.wait()

    async def outage(self) -> None:
        """Refuse new connections and close the open ones: the endpoint is down."""
        self.refuse()
        await self.cut()

    async def refusals(self, n: int) -> None:
        """Wait until ``n`` connections have been refused in all."""
        while self.refused < n:
            await self._wait()

    async def drops(self, n: int) -> None:
        """Wait until ``n`` answers have been dropped in all."""
        while self.dropped < n:
            await self._wait()

    async def _wait(self) -> None:
        await self._seen.wait()

    def _saw(self) -> None:
        self._seen.set()
        self._seen = anyio.Event()

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if self._refusing:
                self.refused += 1
                self._saw()
                return
            async with await anyio.connect_tcp(*self._upstream) as server:
                with anyio.CancelScope() as scope:
                    self._links.add(scope)
                    try:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._pump, scope, client, server, False)
                            tg.start_soon(self._pump, scope, server, client, True)
                    finally:
                        self._links.discard(scope)
                        self._gone.set()

    async def _pump(
        self,
        scope: anyio.CancelScope,
        source: anyio.abc.SocketStream,
        sink: anyio.abc.SocketStream,
        from_server: bool,
    ) -> None:
        try:
            async for chunk in source:
                if from_server and self._drop > 0:
                    self._drop -= 1
                    self.dropped += 1
                    self._saw()
                    break
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()


@asynccontextmanager
async def proxy(endpoint: str) -> AsyncIterator[Proxy]:
    async with anyio.create_task_group() as tg:
        p = Proxy(endpoint)
        await tg.start(p.serve)
        try:
            yield p
        finally:
            tg.cancel_scope.cancel()


async def back_after(p: Proxy, refusals: int) -> None:
    """End the outage once ``refusals`` connections have been refused."""
    await p.refusals(refusals)
    p.refuse(False)


def _prefix(url: str) -> str:
    return url.partition("://")[2].partition("?")[0]


def _scan(endpoint: str, table: str) -> list[dict[str, Any]]:
    """Every item of ``table``, read straight from moto with boto3 (not through corral)."""
    client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint)
    items: list[dict[str, Any]] = []
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**request)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# -- the writer waits out an outage -----------------------------------------------------------


async def test_rows_put_during_an_outage_are_all_written_once_it_is_over(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    async with proxy(moto_endpoint) as p, corral.connect(p.url(dynamodb_url)) as db:
        table = db.table("t", key="k")
        for k in range(10):
            await table.put({"k": k, "v": "before"})
        await db.flush()
        await p.outage()
        for k in range(10, 30):  # one BatchWriteItem: its attempts, then probes, refused
            await table.put({"k": k, "v": "during"})
        async with anyio.create_task_group() as tg:
            tg.start_soon(back_after, p, REFUSALS)
            with anyio.fail_after(GUARD):
                await db.flush()
        stats = db.statistics()
        assert (stats.committed, stats.failed) == (30, 0)
        # The database is still open: it takes and writes more.
        await table.put({"k": 30, "v": "after"})
        await db.flush()
    assert p.refused >= REFUSALS
    items = await anyio.to_thread.run_sync(_scan, moto_endpoint, f"{_prefix(dynamodb_url)}_t_t")
    assert sorted(int(item["k"]["N"]) for item in items) == list(range(31))


async def test_an_enqueue_during_an_outage_completes_once_it_is_over(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    async with proxy(moto_endpoint) as p, corral.connect(p.url(dynamodb_url)) as db:
        await db.jobs.enqueue(jobs.Job("before"))
        await p.outage()
        async with anyio.create_task_group() as tg:
            tg.start_soon(back_after, p, REFUSALS)
            with anyio.fail_after(GUARD):
                await db.jobs.enqueue_many([jobs.Job("a"), jobs.Job("b")])
        assert sorted(job.id for job in await db.jobs.list()) == ["a", "b", "before"]
    items = await anyio.to_thread.run_sync(_scan, moto_endpoint, f"{_prefix(dynamodb_url)}_jobs")
    assert sorted(item["id"]["S"] for item in items) == ["a", "b", "before"]
    # Stored once: each with its own number, none written by an attempt undone.
    assert len({item["seq"]["N"] for item in items}) == 3


async def test_a_processor_completes_every_job_across_an_outage(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    reached = anyio.Event()
    resumed = anyio.Event()
    ran: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        if ctx.job.id == "j10":
            reached.set()
            await resumed.wait()
        ran.append(ctx.job.id)

    async with proxy(moto_endpoint) as p, corral.connect(p.url(dynamodb_url)) as db:
        await db.jobs.enqueue_many(jobs.Job(f"j{i:02}") for i in range(20))
        processor = jobs.Processor(
            db, handler, config=jobs.ProcessorConfig(max_concurrent=1, poll_interval=0.05)
        )

        async def outage() -> None:
            await reached.wait()
            await p.outage()
            resumed.set()  # j10's outcome is written during the outage
            await back_after(p, REFUSALS)

        async with anyio.create_task_group() as tg:
            tg.start_soon(outage)
            with anyio.fail_after(GUARD):
                await processor.run(until_idle=True)
        assert sorted(ran) == [f"j{i:02}" for i in range(20)]  # each once
        assert processor.statistics().completed == 20
        depth = await db.jobs.depth()
        assert (depth.completed, depth.ready, depth.in_progress, depth.dead) == (20, 0, 0, 0)
    assert p.refused >= REFUSALS


# -- progress: undone exactly, whether or not a request applied --------------------------------


async def test_counts_refused_during_an_outage_are_added_once(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    # The ADD never reaches DynamoDB: its undo must not subtract it.
    async with proxy(moto_endpoint) as p, corral.connect(p.url(dynamodb_url)) as db:
        run = await db.progress.start_run("load", "nightly")
        subtask = await run.start_subtask(1, "files")
        await p.outage()
        subtask.increment(5)
        async with anyio.create_task_group() as tg:
            tg.start_soon(back_after, p, REFUSALS)
            with anyio.fail_after(GUARD):
                await db.flush()
        [found] = await db.progress.get(run.id)
        assert found.items_complete == 5


async def test_counts_whose_answer_was_lost_are_added_once(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    # The ADD is applied, its answer lost: the batch is undone (the ADD subtracted) and
    # written again, so it counts once.
    async with proxy(moto_endpoint) as p, corral.connect(p.url(dynamodb_url)) as db:
        run = await db.progress.start_run("load", "nightly")
        subtask = await run.start_subtask(1, "files")
        p.drop_answers()
        subtask.increment(5)

        async def answer_again() -> None:
            await p.drops(2)  # the ADD's answer, then a probe's
            p.drop_answers(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_again)
            with anyio.fail_after(GUARD):
                await db.flush()
        [found] = await db.progress.get(run.id)
        assert found.items_complete == 5
        subtask.increment(2)
        await db.flush()
        [found] = await db.progress.get(run.id)
        assert found.items_complete == 7


async def test_counts_sent_twice_by_botocore_are_added_once(
    dynamodb_url: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ADD is applied, its answer lost, and botocore sends it again: the second
    # delivery finds the mark of the first, and adds nothing.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    async with proxy(moto_endpoint) as p, corral.connect(p.url(dynamodb_url)) as db:
        run = await db.progress.start_run("load", "nightly")
        subtask = await run.start_subtask(1, "files")
        p.drop_answers(1)
        subtask.increment(5)
        with anyio.fail_after(GUARD):
            await db.flush()
        assert p.dropped == 1
        [found] = await db.progress.get(run.id)
        assert found.items_complete == 5


async def test_an_update_whose_answer_was_lost_is_a_commit_unknown_error_and_true(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    # Applied, its answer (the item as it was) lost: it cannot be undone, and the caller
    # is told that it may have been applied; it was.
    async with proxy(moto_endpoint) as p, corral.connect(p.url(dynamodb_url)) as db:
        run = await db.progress.start_run("load", "nightly")
        p.drop_answers()

        async def answer_again() -> None:
            await p.drops(2)
            p.drop_answers(0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_again)
            with anyio.fail_after(GUARD), pytest.raises(corral.CommitUnknownError) as caught:
                await run.complete()
        assert "may or may not have committed" in str(caught.value)
        assert (await db.progress.run_progress(run.id)).status is Status.COMPLETED
        await db.progress.start_run("load", "again")  # the database goes on


async def test_an_update_refused_during_an_outage_is_written_once_it_is_over(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    async with proxy(moto_endpoint) as p, corral.connect(p.url(dynamodb_url)) as db:
        run = await db.progress.start_run("load", "nightly")
        subtask = await run.start_subtask(1, "files", items_total=10)
        await p.outage()
        async with anyio.create_task_group() as tg:
            tg.start_soon(back_after, p, REFUSALS)
            with anyio.fail_after(GUARD):
                await subtask.update(message="half", items_total=20)
                await run.complete()
        [found] = await db.progress.get(run.id)
        assert (found.message, found.items_total) == ("half", 20)
        assert (await db.progress.run_progress(run.id)).status is Status.COMPLETED


# -- reconnect_timeout -----------------------------------------------------------------------


async def test_reconnect_timeout_0_makes_the_first_lost_connection_fatal(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    errors: list[BaseException] = []

    async def body(p: Proxy) -> None:
        async with corral.connect(p.url(dynamodb_url, reconnect_timeout=0)) as db:
            await db.jobs.enqueue(jobs.Job("a"))
            await p.outage()
            try:
                await db.jobs.get("a")
            except Exception as exc:
                errors.append(exc)
                raise

    async with proxy(moto_endpoint) as p:
        with anyio.fail_after(GUARD), pytest.raises(corral.WriteError) as caught:
            await body(p)
    # The writer stops, saying why: the caller of the request and connect both raise it.
    assert [type(e) for e in errors] == [corral.WriteError]
    message = str(caught.value)
    assert message.startswith("the database writer stopped: ConnectionLostError: DynamoDB ")
    assert "did not answer GetItem on table" in message
    assert "check the network, the region and endpoint_url" in message
    assert "reconnect_timeout=0: not waiting for DynamoDB to answer again" in message
    assert isinstance(caught.value.__cause__, corral.ConnectionLostError)


async def test_the_wait_for_an_endpoint_that_never_comes_back_is_bounded(
    dynamodb_url: str, moto_endpoint: str
) -> None:
    async def body(p: Proxy) -> None:
        async with corral.connect(p.url(dynamodb_url, reconnect_timeout=1)) as db:
            table = db.table("t", key="k")
            await table.put({"k": 0})
            await db.flush()
            await p.outage()  # for good
            await table.put({"k": 1})
            await db.flush()

    async with proxy(moto_endpoint) as p:
        with anyio.fail_after(GUARD), pytest.raises(corral.WriteError) as caught:
            await body(p)
    cause = caught.value.__cause__
    assert isinstance(cause, corral.ConnectionLostError)
    assert "gave up waiting for DynamoDB to answer again after" in str(cause)
    assert "(reconnect_timeout=1)" in str(cause)
    assert p.refused >= 2


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", ""])
def test_a_bad_reconnect_timeout_is_refused_at_connect(value: str) -> None:
    async def main() -> None:
        async with corral.connect(f"dynamodb://c?region=us-east-1&reconnect_timeout={value}"):
            pass

    with pytest.raises(
        corral.DatabaseURLError,
        match=f"reconnect_timeout='{value}'.*not a finite number of seconds >= 0",
    ):
        anyio.run(main)
