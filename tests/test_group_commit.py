"""Group commit: concurrent enqueues, requeues and step records share one commit.

``db.jobs.enqueue`` calls that reach the writer together are one operation
(``Database._run_grouped``): one multi-row insert, one wake-up and one commit, while
each caller still gets its own answer (its ``DuplicateJobError``, and only its own jobs
refused). A lone enqueue of one job is one statement that commits on its own. The same
for ``db.jobs.requeue`` (each caller its own ``JobNotFoundError`` or ``JobStateError``)
and for the step records of handlers (``ctx.run_step``, ``ctx.step``: a lost lease
only for its own caller; a caller cancelled at any point loses no step that was
committed, and no progress count).
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked

import corral
from corral import jobs
from corral._jobs._context import JobContext
from corral._ports import Session
from corral._ports._jobs import Claimed
from jobs_testing import claimed_contexts, stored_steps

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def writer_held(db: corral.Database, tg: anyio.abc.TaskGroup) -> Any:
    """Hold the writer in an operation until the block exits: what is queued meanwhile
    reaches the writer together, as it does while the writer commits a batch."""
    started = anyio.Event()
    release = anyio.Event()

    async def hold(_: Session) -> None:
        started.set()
        await release.wait()

    tg.start_soon(db._run, hold)
    await started.wait()
    try:
        yield
    finally:
        release.set()


async def outcome(fn: Callable[[], Awaitable[object]]) -> BaseException | None:
    try:
        await fn()
    except Exception as exc:
        return exc
    return None


async def stored_ids(db: corral.Database) -> set[str]:
    return {record.id for record in await db.jobs.list(limit=1_000)}


async def test_concurrent_enqueues_are_one_batch_and_each_caller_gets_its_own_answer(
    db_url: str,
) -> None:
    calls: list[list[str]] = [
        ["a0", "a1"],
        ["b0", "old1"],  # refused: old1 is stored
        ["s", "c0"],  # stored
        ["s"],  # refused: s is stored by the call before it, in the same group
        ["f", "old2"],  # refused, which leaves f free ...
        ["f"],  # ... for this one: stored
        *([f"k{n}", f"k{n}x"] for n in range(24)),
    ]
    refused = {1: "old1", 3: "s", 4: "old2"}
    async with corral.connect(db_url) as db:
        await db.jobs.enqueue_many([jobs.Job(id="old1"), jobs.Job(id="old2")])
        answers: dict[int, BaseException | None] = {}

        async def call(n: int, ids: list[str]) -> None:
            batch = [jobs.Job(id=job_id, payload={"n": n}) for job_id in ids]
            answers[n] = await outcome(lambda: db.jobs.enqueue_many(batch))

        async with anyio.create_task_group() as tg, writer_held(db, tg):
            for n, ids in enumerate(calls):  # queued in this order
                tg.start_soon(call, n, ids)
                await wait_all_tasks_blocked()
            before = db.statistics().batches
        # The held operation's batch, then one batch for every enqueue.
        assert db.statistics().batches - before == 2
        for n in range(len(calls)):
            if n in refused:
                error = answers[n]
                assert isinstance(error, jobs.DuplicateJobError), (n, error)
                assert repr(refused[n]) in str(error)
            else:
                assert answers[n] is None, (n, answers[n])
        expected = {"old1", "old2"} | {
            job_id for n, ids in enumerate(calls) if n not in refused for job_id in ids
        }
        assert await stored_ids(db) == expected
        assert (await db.jobs.get("f")).payload == {"n": 5}
        assert (await db.jobs.get("s")).payload == {"n": 2}


async def test_a_caller_cancelled_before_its_group_runs_is_left_out(db_url: str) -> None:
    async with corral.connect(db_url) as db:
        await db.jobs.depth()
        answers: dict[str, BaseException | None] = {}
        scope = anyio.CancelScope()

        async def cancelled() -> None:
            with scope:
                await db.jobs.enqueue(jobs.Job(id="gone"))
                answers["gone"] = None  # not reached: cancelled

        async def kept(job_id: str) -> None:
            answers[job_id] = await outcome(lambda: db.jobs.enqueue(jobs.Job(id=job_id)))

        async with anyio.create_task_group() as tg, writer_held(db, tg):
            tg.start_soon(kept, "before")
            tg.start_soon(cancelled)
            tg.start_soon(kept, "after")
            await wait_all_tasks_blocked()
            scope.cancel()
            await wait_all_tasks_blocked()
        assert scope.cancelled_caught
        assert "gone" not in answers
        assert answers == {"before": None, "after": None}
        assert await stored_ids(db) == {"before", "after"}


async def test_a_group_whose_store_call_fails_fails_every_caller_and_stores_nothing(
    db_url: str,
) -> None:
    async with corral.connect(db_url) as db:

        async def boom(_: Session, args: list[Any]) -> list[Any]:
            raise ValueError(f"refused {len(args)}")

        answers: list[BaseException | None] = []

        async def call(n: int) -> None:
            answers.append(await outcome(lambda: db._run_grouped(boom, n)))

        async with anyio.create_task_group() as tg, writer_held(db, tg):
            for n in range(5):
                tg.start_soon(call, n)
            await wait_all_tasks_blocked()
        assert [str(error) for error in answers] == ["refused 5"] * 5


async def test_grouped_answers_go_to_their_own_callers(db_url: str) -> None:
    async with corral.connect(db_url) as db:
        seen: list[list[Any]] = []

        async def double(_: Session, args: list[Any]) -> list[Any]:
            seen.append(list(args))
            return [KeyError(arg) if arg % 3 == 0 else 2 * arg for arg in args]

        answers: dict[int, object] = {}

        async def call(n: int) -> None:
            try:
                answers[n] = await db._run_grouped(double, n)
            except KeyError as exc:
                answers[n] = exc

        async with anyio.create_task_group() as tg, writer_held(db, tg):
            for n in range(1, 11):
                tg.start_soon(call, n)
            await wait_all_tasks_blocked()
        assert len(seen) == 1
        assert sorted(seen[0]) == list(range(1, 11))
        for n in range(1, 11):
            if n % 3 == 0:
                assert isinstance(answers[n], KeyError)
            else:
                assert answers[n] == 2 * n


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_group_of_enqueues_wakes_listeners_once(postgres_url: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    async with corral.connect(postgres_url) as db:
        await db.jobs.depth()
        listener = await asyncpg.connect(postgres_url.split("?")[0])
        heard: list[str] = []
        end = anyio.Event()

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            heard.append(payload)
            if payload == "end":
                end.set()

        await listener.add_listener(db.jobs.channel, on_notify)
        try:
            async with anyio.create_task_group() as tg, writer_held(db, tg):
                for n in range(20):
                    tg.start_soon(db.jobs.enqueue, jobs.Job(id=f"j{n}"))
                await wait_all_tasks_blocked()
            # Delivered in commit order: everything the group sent comes before "end".
            await listener.execute(f"NOTIFY \"{db.jobs.channel}\", 'end'")
            await end.wait()
        finally:
            await listener.close()
        assert heard == ["", "end"]


async def test_a_lone_enqueue_on_postgresql_is_one_statement_outside_a_transaction(
    postgres_url: str,
) -> None:
    async with corral.connect(postgres_url) as db:
        await db.jobs.depth()
        store: Any = db._writer._store
        begun = 0
        begin = store.begin

        async def counted() -> None:
            nonlocal begun
            begun += 1
            await begin()

        store.begin = counted
        await db.jobs.enqueue(jobs.Job(id="one"))
        assert begun == 0
        with pytest.raises(jobs.DuplicateJobError, match="'one' is already stored"):
            await db.jobs.enqueue(jobs.Job(id="one", payload={"other": True}))
        assert begun == 0
        await db.jobs.enqueue_many([jobs.Job(id="two"), jobs.Job(id="three")])
        assert begun == 1  # two jobs: a transaction, so that both or neither are stored
        assert (await db.jobs.get("one")).payload is None
    async with corral.connect(postgres_url) as other:  # committed, seen from elsewhere
        assert await stored_ids(other) == {"one", "two", "three"}


# -- requeue -----------------------------------------------------------------------------------


async def test_concurrent_requeues_are_one_batch_and_each_caller_gets_its_own_answer(
    db_url: str,
) -> None:
    async with corral.connect(db_url) as db:
        dead = [f"d{n}" for n in range(30)]
        await db.jobs.enqueue_many([jobs.Job(id=job_id) for job_id in [*dead, "waiting"]])
        for job_id in dead:
            assert await db.jobs.cancel(job_id) is jobs.Cancellation.CANCELLED
        asked = [*dead, "missing", "waiting", "d0"]  # d0 again: ready by then
        answers: dict[int, object] = {}

        async def call(n: int, job_id: str) -> None:
            try:
                answers[n] = await db.jobs.requeue(job_id)
            except Exception as exc:
                answers[n] = exc

        async with anyio.create_task_group() as tg, writer_held(db, tg):
            for n, job_id in enumerate(asked):  # queued in this order
                tg.start_soon(call, n, job_id)
                await wait_all_tasks_blocked()
            before = db.statistics().batches
        # The held operation's batch, then one batch for every requeue.
        assert db.statistics().batches - before == 2
        for n, job_id in enumerate(dead):
            record = answers[n]
            assert isinstance(record, jobs.JobRecord), (job_id, record)
            assert (record.id, record.state, record.attempts) == (job_id, jobs.State.READY, 0)
        missing, waiting, again = (answers[len(dead) + k] for k in range(3))
        assert isinstance(missing, jobs.JobNotFoundError)
        assert "'missing'" in str(missing)
        assert isinstance(waiting, jobs.JobStateError)
        assert "'waiting' is ready" in str(waiting)
        assert isinstance(again, jobs.JobStateError)
        assert "'d0' is ready" in str(again)
        assert (await db.jobs.depth()).ready == len(dead) + 1


async def test_a_lone_requeue_on_postgresql_is_one_statement_outside_a_transaction(
    postgres_url: str,
) -> None:
    async with corral.connect(postgres_url) as db:
        await db.jobs.enqueue(jobs.Job(id="a"))
        await db.jobs.cancel("a")
        store: Any = db._writer._store
        begun = 0
        begin = store.begin

        async def counted() -> None:
            nonlocal begun
            begun += 1
            await begin()

        store.begin = counted
        record = await db.jobs.requeue("a")
        assert (record.state, begun) == (jobs.State.READY, 0)
        with pytest.raises(jobs.JobStateError, match="'a' is ready"):
            await db.jobs.requeue("a")
        assert begun == 0
    async with corral.connect(postgres_url) as other:  # committed, seen from elsewhere
        assert (await other.jobs.get("a")).state is jobs.State.READY


# -- step records ------------------------------------------------------------------------------


def step_names(text: str) -> list[str]:
    """The names in a stored steps text, in order, repeats kept (none is expected)."""
    if text == "[]":
        return []
    return [name for name, _ in json.loads(text, object_pairs_hook=list)]


async def test_concurrent_step_records_are_one_batch_and_a_lost_lease_fails_only_its_own(
    db_url: str,
) -> None:
    async with corral.connect(db_url) as db:
        contexts = await claimed_contexts(db, 10)
        first = contexts[0]._claimed
        forged = JobContext(
            db,
            "w",
            Claimed(first.row, first.attempt, first.cluster, first.route_reason, first.token + 1),
            contexts[0].cluster,
        )
        answers: dict[tuple[str, str], object] = {}

        async def step(ctx: JobContext, name: str) -> None:
            key = (ctx._claimed.id if ctx is not forged else "forged", name)

            async def work() -> str:
                return f"{key[0]}.{name}"

            try:
                answers[key] = await ctx.run_step(name, work)
            except Exception as exc:
                answers[key] = exc

        async with anyio.create_task_group() as tg, writer_held(db, tg):
            for n, ctx in enumerate(contexts):
                ctx.progress.increment(n)
                tg.start_soon(step, ctx, "a")
                tg.start_soon(step, ctx, "b")
            forged.progress.increment(100)
            tg.start_soon(step, forged, "a")
            await wait_all_tasks_blocked()
            before = db.statistics().batches
        # The held operation's batch, then one batch for every step record.
        assert db.statistics().batches - before == 2
        assert isinstance(answers.pop(("forged", "a")), jobs.LeaseLostError)
        assert answers == {(f"s{n}", s): f"s{n}.{s}" for n in range(10) for s in "ab"}
        for n, ctx in enumerate(contexts):
            text, progress = await stored_steps(db, f"s{n}")
            assert json.loads(text) == {"a": f"s{n}.a", "b": f"s{n}.b"}
            assert progress == n  # s0's: none of the forged lease's 100
            assert ctx._take_progress() == 0


async def test_step_records_cancelled_at_random_points_lose_and_repeat_nothing(
    db_url: str,
) -> None:
    rng = random.Random(14)
    rounds = 300
    async with corral.connect(db_url) as db:
        contexts = await claimed_contexts(db, 6)
        returned: dict[str, set[str]] = {ctx._claimed.id: set() for ctx in contexts}
        # Callers cancelled in the step record: their step written all the same (its
        # group had begun), or not (left out of it). Both happen, many times.
        cancelled = {True: 0, False: 0}

        async def record(ctx: JobContext, name: str, n: int, scope: anyio.CancelScope) -> None:
            with scope:
                ctx.progress.increment(n)

                async def work() -> int:
                    return n

                await ctx.run_step(name, work)
                returned[ctx._claimed.id].add(name)

        async def check() -> None:
            for ctx in contexts:
                text, progress = await stored_steps(db, ctx._claimed.id)
                names = step_names(text)
                assert len(names) == len(set(names)), names  # no step stored twice
                assert returned[ctx._claimed.id] <= set(names)  # none committed lost
                assert set(names) <= set(ctx._steps)
                pending = ctx.progress._take()
                ctx.progress._give_back(pending)
                assert progress + pending == ctx.progress.value  # no count lost or repeated

        for r in range(rounds):
            async with anyio.create_task_group() as tg:
                release = anyio.Event()
                if rng.random() < 0.5:  # the calls queue up behind a busy writer
                    held = anyio.Event()

                    async def hold(
                        _: Session, held: anyio.Event = held, release: anyio.Event = release
                    ) -> None:
                        held.set()
                        await release.wait()

                    tg.start_soon(db._run, hold)
                    await held.wait()
                scopes: list[anyio.CancelScope] = []
                names: list[tuple[JobContext, str]] = []
                for ctx in rng.sample(contexts, rng.randint(1, len(contexts))):
                    scope = anyio.CancelScope()
                    scopes.append(scope)
                    names.append((ctx, f"r{r}"))
                    tg.start_soon(record, ctx, f"r{r}", rng.randint(0, 3), scope)
                actions: list[Callable[[], object]] = [release.set]
                actions += [s.cancel for s in scopes if rng.random() < 0.5]
                rng.shuffle(actions)
                for action in actions:
                    for _ in range(rng.randrange(12)):
                        await anyio.lowlevel.checkpoint()
                    action()
            await db.flush()  # what a group begun for a cancelled caller wrote is in
            for scope, (ctx, name) in zip(scopes, names, strict=True):
                if scope.cancelled_caught and name in ctx._steps:
                    text, _ = await stored_steps(db, ctx._claimed.id)
                    cancelled[name in step_names(text)] += 1
            if r % 50 == 49:
                await check()
        assert min(cancelled.values()) > 0, cancelled
        # One more record each, not cancelled: every step and every count is stored.
        for ctx in contexts:
            await ctx._finish_step("last")
        await check()
        for ctx in contexts:
            text, progress = await stored_steps(db, ctx._claimed.id)
            assert set(step_names(text)) == set(ctx._steps)
            assert progress == ctx.progress.value
