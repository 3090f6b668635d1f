"""The job queue's table: its name, its clock, its indexes, shared SQL helpers.

One table, ``corral_jobs``, created on first use. Times are epoch seconds taken from
the database's clock (so hosts with skewed clocks agree on leases). Every statement
runs through the database's writer (``Database._run``): one transaction per batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ._model import PRIORITY_BY_RANK, Job, load_json

if TYPE_CHECKING:
    from .._backends import Connection

__all__ = [
    "CHANNEL",
    "CLAIM_LOCK",
    "FINISHED",
    "JOBS",
    "NO_LABELS",
    "WAITING",
    "ensure_schema",
    "fetch",
    "now_sql",
    "stored_job",
    "planned",
]

JOBS = "corral_jobs"
#: The PostgreSQL channel a job's arrival (or a freed slot) is announced on, followed
#: by the table's schema: queues in two schemas of one database do not wake each other.
CHANNEL = "corral_jobs"
#: pg_advisory_xact_lock keys: one serializes claims, one creating the table.
CLAIM_LOCK = 7262018
SCHEMA_LOCK = 7262019

_NOW = {
    "postgresql": "(extract(epoch from clock_timestamp())::float8)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
WAITING = "state IN ('ready', 'retrying')"
FINISHED = ("completed", "failed", "dead")
#: How a job requiring no labels stores them.
NO_LABELS = "[]"


def now_sql(conn: Connection) -> str:
    """Return the SQL expression for the database's clock, in epoch seconds."""
    return _NOW[conn.dialect]


async def fetch(conn: Connection, sql: str, *args: object) -> list[dict[str, Any]]:
    """Run a query; return its rows as dicts whose values are typed ``Any``."""
    return await conn.fetch(sql, *args)


#: The planner settings of ``planned``: the first always, all three ``by_key``.
_PLANS = {
    "plan_cache_mode": "force_custom_plan",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
}


@asynccontextmanager
async def planned(conn: Connection, *, by_key: bool = False) -> AsyncIterator[None]:
    """Plan the body's statements for their actual arguments (PostgreSQL).

    The claim, outcome and lease statements join a few hundred ids (``unnest`` of
    arrays) to the jobs table. asyncpg prepares statements, and after five runs the
    server may switch to a generic plan that scans every job in progress once per id:
    inside the body, plans are made for the actual arguments. With ``by_key``, joins are
    also nested loops (so the ids reach their rows through the primary key, rather than
    by hashing the whole table: every job ever kept); only for a statement whose jobs
    are found by ``id`` alone. The settings are restored after (and rolled back with the
    statement's savepoint if it fails).
    """
    if conn.dialect != "postgresql":
        yield
        return
    names = list(_PLANS) if by_key else ["plan_cache_mode"]
    saved = (
        await fetch(conn, "SELECT " + ", ".join(f"current_setting('{n}') AS {n}" for n in names))
    )[0]
    await conn.execute(
        "SELECT " + ", ".join(f"set_config('{n}', '{_PLANS[n]}', true)" for n in names)
    )
    yield
    await conn.execute(
        "SELECT " + ", ".join(f"set_config('{n}', ?, true)" for n in names),
        *(saved[n] for n in names),
    )


def stored_job(row: Mapping[str, Any]) -> Job:
    """Rebuild the job a row stores, without checking it again (it was, when enqueued)."""
    job = object.__new__(Job)
    requires = row["requires"]
    for name, value in (
        ("id", row["id"]),
        ("payload", load_json(row["payload"])),
        ("priority", PRIORITY_BY_RANK[int(row["priority"])]),
        ("customer", row["customer"]),
        ("affinity", row["affinity"]),
        ("region", row["region"]),
        ("requires", frozenset() if requires == NO_LABELS else frozenset(load_json(requires))),
        ("max_retries", int(row["max_retries"])),
    ):
        object.__setattr__(job, name, value)
    return job


async def ensure_schema(conn: Connection) -> None:
    """Create the jobs table and its indexes if they are missing."""
    if conn.dialect == "postgresql":
        await conn.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        seq = "seq BIGINT GENERATED ALWAYS AS IDENTITY, id TEXT PRIMARY KEY"
        real = "DOUBLE PRECISION"
    else:
        seq = "seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE"
        real = "REAL"
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {JOBS} ({seq}, payload TEXT NOT NULL, "
        f"priority INTEGER NOT NULL, customer TEXT, affinity TEXT, region TEXT, "
        f"requires TEXT NOT NULL, max_retries INTEGER NOT NULL, state TEXT NOT NULL, "
        f"attempts INTEGER NOT NULL DEFAULT 0, cluster TEXT, route_reason TEXT, "
        f"steps TEXT NOT NULL DEFAULT '[]', progress BIGINT NOT NULL DEFAULT 0, "
        f"error_category TEXT, error_step TEXT, error_message TEXT, error_attempt INTEGER, "
        f"lease_token BIGINT, lease_owner TEXT, lease_expires {real}, "
        f"created_at {real} NOT NULL, started_at {real}, run_at {real} NOT NULL, "
        f"updated_at {real} NOT NULL, finished_at {real})"
    )
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {JOBS}_waiting ON {JOBS} (priority, seq) WHERE {WAITING}"
    )
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {JOBS}_leases ON {JOBS} (lease_expires) "
        f"WHERE state = 'in_progress'"
    )
