"""What the processor tests share: a fast retry policy, a recording notifier, a config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import corral
from corral import jobs
from corral._jobs._context import JobContext
from corral._ports import Session
from corral._ports._jobs import ClaimRequest

#: Retries that wait milliseconds, not seconds, and no jitter.
FAST = jobs.RetryPolicy(base=0.01, cap=0.05, jitter=0)


class Recorder:
    """A notifier that keeps every event."""

    def __init__(self) -> None:
        self.events: list[jobs.JobEvent] = []

    async def notify(self, event: jobs.JobEvent) -> None:
        self.events.append(event)

    def kinds(self, job_id: str) -> list[str]:
        """The kinds of the events of job ``job_id``, in order."""
        return [e.kind.value for e in self.events if e.job_id == job_id]


def config(**kwargs: Any) -> jobs.ProcessorConfig:
    """A ProcessorConfig for tests: fast retries and polls, a lease longer than any test."""
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("lease_seconds", 30)
    return jobs.ProcessorConfig(**kwargs)


@asynccontextmanager
async def database(url: str) -> AsyncIterator[corral.Database]:
    """``corral.connect(url)``, as the processor tests open it."""
    async with corral.connect(url) as db:
        yield db


async def claimed_contexts(db: corral.Database, n: int) -> list[JobContext]:
    """Enqueue and claim ``n`` jobs (s0, s1, ...); return a handler's context for each."""
    await db.jobs.enqueue_many([jobs.Job(id=f"s{i}") for i in range(n)])
    request = ClaimRequest(
        owner="w",
        limit=n,
        max_concurrent=n,
        per_customer=None,
        capacity={"c": n},
        local_free={"c": n},
        lease_seconds=600,
        route=lambda row, free: ("c", "free"),
    )

    async def claim(session: Session) -> Any:
        return await session.jobs.claim(request)

    claimed = (await db._run(claim)).claimed
    assert len(claimed) == n
    cluster = corral.Cluster("c", n)
    return [JobContext(db, "w", c, cluster) for c in sorted(claimed, key=lambda c: c.id)]


async def stored_steps(db: corral.Database, job_id: str) -> tuple[str, int]:
    """Return the raw JSON text of a job's stored steps, and its stored progress."""

    async def read(session: Session) -> Any:
        return await session.jobs.get(job_id)

    row = await db._run(read)
    return row["steps"], int(row["progress"])


async def set_columns(db: corral.Database, job_id: str, **columns: object) -> None:
    """Overwrite stored columns of job ``job_id`` behind the processor's back, on any store.

    What another worker (a reclaim: ``lease_token``, ``lease_owner``), a stalled clock
    (``lease_expires=0``) or an older version of corral (``steps``) would have left.
    """

    async def write(session: Any) -> None:
        if session.dialect == "dynamodb":
            names = {f"#c{i}": column for i, column in enumerate(columns)}
            values = {f":c{i}": _attribute(value) for i, value in enumerate(columns.values())}
            await session.jobs._client.call(
                "update_item",
                TableName=session.jobs._table,
                Key={"id": {"S": job_id}},
                UpdateExpression="SET " + ", ".join(f"#c{i} = :c{i}" for i in range(len(names))),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        else:
            sets = ", ".join(f"{column} = ?" for column in columns)
            await session.execute(
                f"UPDATE corral_jobs SET {sets} WHERE id = ?", *columns.values(), job_id
            )

    await db._run(write)


async def stored_column(db: corral.Database, job_id: str, column: str) -> object:
    """The value of column ``column`` of job ``job_id`` as stored, on any store."""

    async def read(session: Any) -> object:
        if session.dialect == "dynamodb":
            return (await session.jobs.get(job_id))[column]
        return await session.fetchval(f"SELECT {column} FROM corral_jobs WHERE id = ?", job_id)

    return await db._run(read)


def _attribute(value: object) -> dict[str, str]:
    """A DynamoDB attribute value of a str or a number."""
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"N": repr(value)}
    raise TypeError(f"no DynamoDB attribute value for {value!r} here: add it")
