"""The job queue's statements on SQLite and PostgreSQL: :class:`SqlJobStore`.

The statements themselves are in :mod:`._claims` (what a processor does),
:mod:`._queue` (what ``db.jobs`` does) and :mod:`._jobs_schema` (the table); this
class picks, once per connection, those of its database.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..._ports._jobs import StepRecord
from .. import tables_exist
from . import _claims, _queue
from ._dialect import DIALECTS
from ._jobs_schema import CHANNEL, JOBS, channel_for, ensure_schema

if TYPE_CHECKING:
    from ..._ports._jobs import (
        Claimed,
        ClaimRequest,
        ClaimResult,
        NewJob,
        Outcome,
        Renewal,
        RequeueAnswer,
        State,
    )
    from .. import Connection

__all__ = ["SqlJobStore"]


class _Listening(Protocol):
    """A connection that can LISTEN (PostgreSQL's)."""

    async def listen(self, channel: str, callback: Callable[[], object]) -> None: ...

    async def unlisten(self, channel: str, callback: Callable[[], object]) -> None: ...


class SqlJobStore:
    """:class:`~corral._ports._jobs.JobStore` on one SQL connection.

    On PostgreSQL, claims are serialized by an advisory lock and batches of jobs change
    in one statement of arrays; wake-ups are ``NOTIFY`` on the queue's channel (one per
    schema), heard by ``LISTEN``. On SQLite, each batch holds the database's write lock,
    batches change one job per statement, and there are no wake-ups across
    connections (the processor polls).
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        d = self._d = DIALECTS[conn.dialect]
        #: The NOTIFY channel: its schema's, once :meth:`prepare` has read it.
        self.channel = CHANNEL
        self._listening = cast(_Listening, conn) if d.shared else None
        if d.shared:
            self._enqueue = _queue.enqueue_unnest
            self._renew = _claims.renew_batch
            self._finish = _claims.finish_batch
            self._release = _claims.release_batch
            self._step_done = _claims.step_done_batch
        else:
            self._enqueue = _queue.enqueue_checked
            self._renew = _claims.renew_each
            self._finish = _claims.finish_each
            self._release = _claims.release_each
            self._step_done = _claims.step_done_each

    async def prepare(self) -> str:
        """Create the table, its indexes and (PostgreSQL) its claim function if missing."""
        await ensure_schema(self._conn, self._d)
        if self._d.shared:
            schema = await self._conn.fetchval("SELECT current_schema()")
            self.channel = channel_for(str(schema))
        return self.channel

    async def enqueue(self, jobs: Sequence[NewJob]) -> builtins.list[str]:
        """Insert ``jobs`` unless one's id is stored; return those ids (then none is)."""
        return (await self.enqueue_groups([jobs]))[0]

    async def enqueue_groups(
        self, groups: Sequence[Sequence[NewJob]]
    ) -> builtins.list[builtins.list[str]]:
        """Insert each group whole or not at all; return, per group, the ids refused.

        On PostgreSQL the statement that inserts also notifies (one round trip).
        """
        return await self._enqueue(self._conn, self._d, groups, self.channel)

    async def get(self, job_id: str) -> Mapping[str, Any] | None:
        """Return the row of job ``job_id``, or None."""
        return await _queue.get(self._conn, job_id)

    async def depth(self, kind: str | None = None) -> dict[str, int]:
        """Count the jobs (of ``kind`` if given) in each state."""
        return await _queue.depth(self._conn, kind)

    async def depth_by_kind(self) -> dict[str, dict[str, int]]:
        """Count the jobs of each kind in each state."""
        return await _queue.depth_by_kind(self._conn)

    async def by_cluster(self, cluster: str) -> dict[str, int]:
        """Count the jobs of ``cluster`` in each state."""
        return await _queue.by_cluster(self._conn, cluster)

    async def list(
        self, state: State | None, limit: int, kind: str | None = None
    ) -> Sequence[Mapping[str, Any]]:
        """Return up to ``limit`` rows (in ``state``, of ``kind``, if given), in claim order."""
        return await _queue.list_jobs(self._conn, state, limit, kind)

    async def purge(self, states: Sequence[State], older_than: float) -> int:
        """Delete the jobs in ``states`` finished ``older_than`` seconds ago."""
        return await _queue.purge(self._conn, self._d, states, older_than)

    async def exists(self) -> bool:
        """Return whether the jobs table exists (PostgreSQL: on the search path)."""
        return await tables_exist(self._conn, JOBS)

    async def requeue(self, job_id: str) -> str | None:
        """Put a dead, failed or cancelled job back to ready; None if done, else why not."""
        return await _queue.requeue(self._conn, self._d, job_id, self.channel)

    async def requeue_many(self, job_ids: Sequence[str]) -> builtins.list[RequeueAnswer]:
        """Requeue each job; return, per id, its row once requeued or why not.

        On PostgreSQL one statement, which notifies too (see :func:`._queue.requeue_many`).
        """
        return await _queue.requeue_many(self._conn, self._d, job_ids, self.channel)

    async def cancel(self, job_id: str) -> str:
        """Cancel a waiting job, or ask its worker to cancel a running one; say which."""
        return await _queue.cancel(self._conn, self._d, job_id)

    async def claim(self, request: ClaimRequest) -> ClaimResult:
        """Reclaim expired leases, then claim jobs within the limits."""
        return await _claims.claim(self._conn, self._d, request)

    async def explain_claim(self, request: ClaimRequest) -> builtins.list[builtins.list[str]]:
        """Return the plans of the queries that read claim ``request``'s candidates.

        Not of the port: a check, for the tests, that a claim walks the waiting index
        whatever the table's statistics (see :func:`._claims.explain_claim`).
        """
        return await _claims.explain_claim(self._conn, self._d, request)

    async def renew(self, leases: Sequence[tuple[Claimed, int]], lease_seconds: float) -> Renewal:
        """Extend the leases; return the tokens still held, and those asked to cancel."""
        return await self._renew(self._conn, self._d, leases, lease_seconds)

    async def finish(self, outcomes: Sequence[Outcome]) -> set[int]:
        """Write how attempts ended; return the tokens accepted."""
        return await self._finish(self._conn, self._d, outcomes)

    async def release(self, leases: Sequence[tuple[Claimed, int]]) -> None:
        """Give claimed jobs back, ready at once, the attempt not counted."""
        await self._release(self._conn, self._d, leases)

    async def step_done(self, claimed: Claimed, steps: str, progress: int) -> bool:
        """Record a claimed job's finished steps; False if its lease was taken over."""
        held = await self._step_done(self._conn, self._d, [StepRecord(claimed, steps, progress)])
        return claimed.token in held

    async def step_done_many(self, records: Sequence[StepRecord]) -> set[int]:
        """Record the finished steps of many claimed jobs; return the tokens still held.

        On PostgreSQL one statement of arrays; on SQLite one statement per job.
        """
        return await self._step_done(self._conn, self._d, records)

    async def outlook(
        self,
        clusters: Sequence[str],
        labels: Sequence[frozenset[str]],
        kinds: frozenset[str] | None = None,
    ) -> tuple[int, float | None]:
        """Count the unfinished jobs these clusters could take; and when the next is due."""
        return await _claims.outlook(self._conn, self._d, clusters, labels, kinds)

    async def stranded(
        self,
        clusters: Sequence[str],
        labels: Sequence[frozenset[str]],
        kinds: frozenset[str] | None = None,
    ) -> dict[tuple[str | None, str], int]:
        """Count the waiting jobs these clusters could never take, by why."""
        return await _queue.stranded(self._conn, clusters, labels, kinds)

    async def announce(self) -> None:
        """``NOTIFY`` the queue's channel (PostgreSQL); nothing on SQLite."""
        if self._listening is not None:
            await self._conn.execute("SELECT pg_notify(?, '')", self.channel)

    async def watch(self, callback: Callable[[], object]) -> bool:
        """``LISTEN`` on the queue's channel (PostgreSQL); False on SQLite."""
        if self._listening is None:
            return False
        await self._listening.listen(self.channel, callback)
        return True

    async def unwatch(self, callback: Callable[[], object]) -> None:
        """``UNLISTEN`` (see :meth:`watch`)."""
        if self._listening is not None:
            await self._listening.unlisten(self.channel, callback)


if TYPE_CHECKING:
    from ..._ports._jobs import JobStore

    _conforms: type[JobStore] = SqlJobStore
