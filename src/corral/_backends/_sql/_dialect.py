"""What the statements of SQLite and PostgreSQL differ in: one :class:`Dialect` each.

Every SQL store of this package (jobs, progress, the table helpers) picks its dialect
once, from the connection's name, and reads the differences from it, instead of
asking which database it is at each statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["DIALECTS", "Dialect", "dialect_of"]


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the statements of one SQL database differ in."""

    #: ``"sqlite"`` or ``"postgresql"``.
    name: str
    #: The clock, read once per statement, in epoch seconds. On PostgreSQL a subquery
    #: (an InitPlan), so that ``lease_expires < now`` is an index condition
    #: (``clock_timestamp()`` alone is volatile: it would be read again for every row,
    #: and only ever filter), and one statement stamps all its rows with the same time.
    now: str
    #: Appended to a query of candidates: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (a
    #: row another worker is writing or reclaiming is left for the next claim: a claim
    #: never waits for a row lock); nothing on SQLite, where a batch holds the
    #: database's write lock.
    skip_locked: str
    #: Whether many connections write at once, each in its own transaction, so that
    #: claims are serialized by an advisory lock (taken with the count of jobs in
    #: progress by the ``corral_jobs_busy`` function), the first page of candidates is
    #: read before it, batch updates join arrays (``unnest``), and creating tables takes
    #: an advisory lock: PostgreSQL. Else the batch's write lock serializes everything,
    #: and batch updates are one statement per row.
    shared: bool
    #: Whether the driver binds and returns ``datetime`` (asyncpg); else times are
    #: stored as ISO-8601 text (sqlite3's own datetime adapter is deprecated).
    datetimes: bool
    #: A query of one parameter, a table's name, that returns a true value when the
    #: table exists (PostgreSQL: on the search path).
    table_exists: str


DIALECTS = {
    "postgresql": Dialect(
        "postgresql",
        now="(SELECT extract(epoch from clock_timestamp())::float8)",
        skip_locked=" FOR UPDATE SKIP LOCKED",
        shared=True,
        datetimes=True,
        table_exists="SELECT to_regclass(quote_ident(?)) IS NOT NULL",
    ),
    "sqlite": Dialect(
        "sqlite",
        now="((julianday('now') - 2440587.5) * 86400.0)",
        skip_locked="",
        shared=False,
        datetimes=False,
        table_exists="SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
    ),
}


def dialect_of(conn: Connection) -> Dialect:
    """Return the dialect of ``conn`` (its ``dialect`` name)."""
    return DIALECTS[conn.dialect]
