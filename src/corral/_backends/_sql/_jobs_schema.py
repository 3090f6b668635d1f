"""The job queue's table, and what its statements differ in by database.

One table, ``corral_jobs``, created on first use (:func:`ensure_schema`), with its three
partial indexes (the waiting jobs in claim order, and by kind; the leases) and, on
PostgreSQL, the function that takes the claim lock and counts the jobs in progress in
one round trip. Times are epoch seconds from the database's
clock (so hosts with skewed clocks agree on leases). What the statements of SQLite and
PostgreSQL differ in is :class:`~._dialect.Dialect`, picked once per connection.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import Connection
    from ._dialect import Dialect

__all__ = [
    "BUSY",
    "CHANNEL",
    "CLAIM_LOCK",
    "FINISHED",
    "JOBS",
    "NO_LABELS",
    "NO_STEPS",
    "SCHEMA_LOCK",
    "WAITING",
    "channel_for",
    "ensure_schema",
    "of_kinds",
]

JOBS = "corral_jobs"
#: The PostgreSQL channel a job's arrival (or a freed slot) is announced on, followed
#: by the table's schema: queues in two schemas of one database do not wake each other.
CHANNEL = "corral_jobs"
#: The most bytes in a PostgreSQL channel name (NAMEDATALEN - 1; longer ones are refused).
_MAX_CHANNEL = 63
#: pg_advisory_xact_lock keys: one serializes claims, one creating the table.
CLAIM_LOCK = 7262018
SCHEMA_LOCK = 7262019

WAITING = "state IN ('ready', 'retrying')"
#: The finished states, as SQL values.
FINISHED = ", ".join(f"'{state}'" for state in ("completed", "failed", "dead", "cancelled"))
#: How a job requiring no labels stores them.
NO_LABELS = "[]"
#: How a job with no finished steps stores them.
NO_STEPS = "[]"


def of_kinds(kinds: frozenset[str] | None) -> tuple[str, list[str]]:
    """Return the condition ``AND kind IN (...)`` (and its arguments) for ``kinds``.

    Nothing for None (every kind), and a condition no job meets for no kind at all.
    The kinds are sorted, so that one set of kinds makes one statement.
    """
    if kinds is None:
        return "", []
    if not kinds:
        return "AND FALSE ", []
    return f"AND kind IN ({', '.join('?' * len(kinds))}) ", sorted(kinds)


def channel_for(schema: str) -> str:
    """Return the NOTIFY channel of the queue in ``schema``: one per schema, <= 63 bytes.

    ``corral_jobs_<schema>`` when that fits in PostgreSQL's 63 bytes; else as much of it
    as fits (cut on a character boundary) and a hash of the whole schema name, so that
    schemas whose names are long in bytes (multibyte characters), or share a long
    prefix, each have a channel of their own.
    """
    channel = f"{CHANNEL}_{schema}"
    encoded = channel.encode()
    if len(encoded) <= _MAX_CHANNEL:
        return channel
    digest = hashlib.sha256(schema.encode()).hexdigest()[:16]
    head = encoded[: _MAX_CHANNEL - len(digest) - 1].decode(errors="ignore")
    return f"{head}_{digest}"


async def ensure_schema(conn: Connection, dialect: Dialect) -> None:
    """Create the jobs table and its indexes (and the claim function) if missing."""
    postgres = dialect.shared
    if postgres:
        await conn.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        # Ids compared byte by byte (no locale: the primary key is walked twice per job).
        seq = 'seq BIGINT GENERATED ALWAYS AS IDENTITY, id TEXT COLLATE "C" PRIMARY KEY'
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
        f"error_traceback TEXT, lease_token BIGINT, lease_owner TEXT, lease_expires {real}, "
        f"created_at {real} NOT NULL, started_at {real}, run_at {real} NOT NULL, "
        f"updated_at {real} NOT NULL, finished_at {real}, {_LATER_COLUMNS})"
    )
    await _add_columns(conn, postgres)
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {JOBS}_waiting ON {JOBS} (priority, seq) WHERE {WAITING}"
    )
    # For the claims of a processor of some kinds only: in claim order within a kind, so
    # that the waiting jobs of other kinds ahead are not walked (50,000 of them made a
    # drain of 5,000 jobs of one kind 3 to 5 times slower on PostgreSQL without it).
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {JOBS}_waiting_kind ON {JOBS} (kind, priority, seq) "
        f"WHERE {WAITING}"
    )
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {JOBS}_leases ON {JOBS} (lease_expires) "
        f"WHERE state = 'in_progress'"
    )
    if postgres:
        await conn.execute(_BUSY_FUNCTION)


#: Columns added since the table was first made: ``(name, SQL type)``. A table made
#: before has them added by :func:`ensure_schema` (nullable or with a default, so that
#: its rows keep: an old job is of kind ``default``, its cancellation not asked). A new
#: table has them (but the first, which it makes in its own place) at its end.
ADDED_COLUMNS = (
    ("error_traceback", "TEXT"),
    ("kind", "TEXT NOT NULL DEFAULT 'default'"),
    ("cancel_requested", "BOOLEAN NOT NULL DEFAULT FALSE"),
)
_LATER_COLUMNS = ", ".join(f"{name} {sql_type}" for name, sql_type in ADDED_COLUMNS[1:])


async def _add_columns(conn: Connection, postgres: bool) -> None:
    """Add the :data:`ADDED_COLUMNS` a table made before lacks (one read when none).

    The columns are read first, so that a table that has them all is not altered: on
    PostgreSQL even ``ADD COLUMN IF NOT EXISTS`` takes the table's exclusive lock,
    which would wait for (and hold back) every worker's transaction on it. Creating
    the table is serialized (PostgreSQL: the schema lock; SQLite: the write lock of
    the batch), so two connections never add one column twice.
    """
    if postgres:
        sql = (
            f"SELECT attname AS name FROM pg_attribute WHERE attrelid = '{JOBS}'::regclass "
            f"AND attnum > 0 AND NOT attisdropped"
        )
    else:
        sql = f"SELECT name FROM pragma_table_info('{JOBS}')"
    present = {row["name"] for row in await conn.fetch(sql)}
    for name, sql_type in ADDED_COLUMNS:
        if name not in present:
            await conn.execute(f"ALTER TABLE {JOBS} ADD COLUMN {name} {sql_type}")


#: ``corral_jobs_busy(wait, by_customer)``: take the claim lock (waiting for it, or
#: else returning the one row ``(NULL, NULL, -1)`` if another claim holds it), then count
#: the jobs in progress by cluster (and customer). One round trip: the count is a
#: statement of its own in a VOLATILE function, so its snapshot is taken once the lock
#: is held, and it sees every claim committed before. Counted by hashing, never sorting:
#: the statistics say no job is in progress (taken when all were ready), and the
#: planner, believing it, would sort every job in progress by cluster.
BUSY = f"{JOBS}_busy"
_BUSY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {BUSY}(wait boolean, by_customer boolean)
RETURNS TABLE (cluster text, customer text, n bigint)
LANGUAGE plpgsql VOLATILE SET enable_sort = off AS $fn$
#variable_conflict use_column
BEGIN
    IF wait THEN
        PERFORM pg_advisory_xact_lock({CLAIM_LOCK}, '{JOBS}'::regclass::oid::int);
    ELSIF NOT pg_try_advisory_xact_lock({CLAIM_LOCK}, '{JOBS}'::regclass::oid::int) THEN
        RETURN QUERY SELECT NULL::text, NULL::text, -1::bigint;
        RETURN;
    END IF;
    RETURN QUERY SELECT j.cluster, CASE WHEN by_customer THEN j.customer END, COUNT(*)
        FROM {JOBS} AS j WHERE j.state = 'in_progress' GROUP BY 1, 2;
END
$fn$"""
