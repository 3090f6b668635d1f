"""The public queue, ``db.jobs``: enqueue jobs, and read what became of them."""

from __future__ import annotations

import builtins
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .._exceptions import DuplicateJobError, JobNotFoundError, JobStateError
from .._validate import check_choice, check_int, check_number, check_str, type_error
from ._model import (
    Cancellation,
    ErrorCategory,
    Job,
    JobRecord,
    LastError,
    Priority,
    QueueDepth,
    State,
    check_kind,
    dump_payload,
    timestamp,
)
from ._schema import FINISHED, NO_LABELS, stored_job, stored_steps

if TYPE_CHECKING:
    from .._database import Database
    from .._ports import Session
    from .._ports._jobs import NewJob

__all__ = ["JobQueue"]

T = TypeVar("T")

#: The wake-up channel of a queue whose store has not said its own yet.
_CHANNEL = "corral_jobs"


def _record(row: Mapping[str, Any]) -> JobRecord:
    category = row["error_category"]
    error = None
    if category is not None:
        error = LastError(
            ErrorCategory(category),
            row["error_step"],
            row["error_message"] or "",
            int(row["error_attempt"] or 0),
        )
    created = timestamp(row["created_at"])
    updated = timestamp(row["updated_at"])
    run_at = timestamp(row["run_at"])
    assert created is not None
    assert updated is not None
    assert run_at is not None
    job = stored_job(row)
    steps = stored_steps(row["steps"])
    return JobRecord(
        id=job.id,
        kind=job.kind,
        payload=job.payload,
        priority=Priority(job.priority),
        customer=job.customer,
        affinity=job.affinity,
        region=job.region,
        requires=frozenset(job.requires),
        max_retries=job.max_retries,
        state=State(row["state"]),
        cancel_requested=bool(row["cancel_requested"]),
        attempts=int(row["attempts"]),
        cluster=row["cluster"],
        route_reason=row["route_reason"],
        steps_done=tuple(steps),
        step_results=steps,
        progress=int(row["progress"]),
        last_error=error,
        error_traceback=row.get("error_traceback"),
        lease_owner=row["lease_owner"],
        lease_expires_at=timestamp(row["lease_expires"]),
        created_at=created,
        started_at=timestamp(row["started_at"]),
        run_at=run_at,
        updated_at=updated,
        finished_at=timestamp(row["finished_at"]),
    )


def _depth(counts: Mapping[str, int]) -> QueueDepth:
    return QueueDepth(**{state.name.lower(): counts.get(state.value, 0) for state in State})


class JobQueue:
    """The jobs stored in one database: ``db.jobs``.

    Enqueue jobs here, and read what became of them from any process or host. The
    :class:`~corral.jobs.Processor` claims and runs them.

    Args:
        db: The database whose jobs these are (made by corral: use ``db.jobs``).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ready = False
        #: The NOTIFY channel of this queue (PostgreSQL), known once the table is.
        self.channel: str = _CHANNEL
        #: Wake-up callbacks of this database's running processors, called when a job
        #: is enqueued or requeued here (other processes learn it from the store's
        #: wake-ups, or poll).
        self._watchers: set[Callable[[], None]] = set()
        #: The renewers' wake-ups of this database's running processors, called when a
        #: running job's cancellation is asked here: its renewal, which reports it, runs
        #: at once (other processes learn it at their next renewal).
        self._renewers: set[Callable[[], None]] = set()

    def _wake(self) -> None:
        for wake in list(self._watchers):
            wake()

    def __repr__(self) -> str:
        return f"<corral.jobs.JobQueue of {self._db!r}>"

    def _op(self, fn: Callable[[Session], Awaitable[T]]) -> Callable[[Session], Awaitable[T]]:
        """Return the writer operation that runs ``fn``, preparing the store first if need be.

        Whoever runs it sets :attr:`_ready` once it has committed (see :meth:`_call`).
        """

        async def op(conn: Session) -> T:
            if not self._ready:
                self.channel = await conn.jobs.prepare()
            return await fn(conn)

        return op

    async def _call(self, fn: Callable[[Session], Awaitable[T]]) -> T:
        """Run ``fn(session)`` in the writer, preparing the store first if need be."""
        result = await self._db._run(self._op(fn))
        self._ready = True
        return result

    async def enqueue(self, job: Job) -> None:
        """Store ``job``, ready to run; returns once it is committed.

        Args:
            job: The job to store.

        Raises:
            DuplicateJobError: If a job with its id exists
                (:class:`~corral.jobs.DuplicateJobError`).
        """
        await self.enqueue_many([job])

    async def enqueue_many(self, jobs: Iterable[Job]) -> int:
        """Store every job of ``jobs`` in one transaction; return how many.

        All or nothing: if one id exists already (or repeats), none is stored and
        :class:`~corral.jobs.DuplicateJobError` names it.

        Args:
            jobs: The jobs to store (:class:`~corral.jobs.Job` each).

        Returns:
            How many jobs were stored.

        Raises:
            DuplicateJobError: If one id exists already, or repeats in ``jobs``; then
                none is stored.
            TypeError: If an item of ``jobs`` is not a :class:`~corral.jobs.Job`.
        """
        batch = list(jobs)
        for job in batch:
            if not isinstance(job, Job):
                raise type_error(
                    "job", "a corral.jobs.Job", job, "wrap it: jobs.Job(id=..., payload=...)"
                )
        if len(batch) > 1:
            seen: set[str] = set()
            for job in batch:
                if job.id in seen:
                    raise DuplicateJobError(f"job id {job.id!r} appears twice in one enqueue")
                seen.add(job.id)
        elif not batch:
            return 0
        rows: list[NewJob] = [
            (
                job.id,
                dump_payload(job.payload, job.id),
                Priority(job.priority).rank,
                job.customer,
                job.affinity,
                job.region,
                json.dumps(sorted(job.requires)) if job.requires else NO_LABELS,
                job.max_retries,
                job.kind,
            )
            for job in batch
        ]
        # One job of a queue that is ready is one statement (atomic alone: it may
        # commit on its own); more, or the first, need the batch's transaction.
        one = len(rows) == 1 and self._ready
        await self._db._run_grouped(self._insert, rows, one_statement=one)
        self._ready = True
        self._wake()
        return len(batch)

    async def _insert(
        self, conn: Session, calls: builtins.list[builtins.list[NewJob]]
    ) -> builtins.list[DuplicateJobError | None]:
        """Store the jobs of concurrent enqueues (one list a call), each call's whole or none.

        One operation of the writer for every enqueue queued while it was busy (group
        commit): one statement, one wake-up and one commit for them all. A call with an
        id stored already gets its DuplicateJobError; the others' jobs are stored.
        """
        if not self._ready:
            self.channel = await conn.jobs.prepare()
        refused = await conn.jobs.enqueue_groups(calls)
        return [
            _duplicates(existing, len(rows)) if existing else None
            for existing, rows in zip(refused, calls, strict=True)
        ]

    async def get(self, job_id: str) -> JobRecord:
        """Return a snapshot of job ``job_id``; :class:`~corral.jobs.JobNotFoundError` if none.

        Args:
            job_id: The id of the job.

        Returns:
            The job as it is stored now (:class:`~corral.jobs.JobRecord`).

        Raises:
            JobNotFoundError: If there is no job with that id.
        """
        check_str("job_id", job_id)

        async def read(conn: Session) -> Mapping[str, Any] | None:
            return await conn.jobs.get(job_id)

        row = await self._call(read)
        if row is None:
            raise JobNotFoundError(f"no job with id {job_id!r} in {self._db!r}")
        return _record(row)

    async def depth(self, *, kind: str | None = None) -> QueueDepth:
        """Count the jobs (of ``kind``, if given) in each state.

        Args:
            kind: Count only the jobs of this kind; all jobs if ``None``.

        Returns:
            The count of each state (:class:`~corral.jobs.QueueDepth`).
        """
        if kind is not None:
            check_kind(kind, "kind")

        async def read(conn: Session) -> dict[str, int]:
            return await conn.jobs.depth(kind)

        return _depth(await self._call(read))

    async def depth_by_kind(self) -> dict[str, QueueDepth]:
        """Count the jobs of each kind in each state: ``{kind: QueueDepth}``, by kind's name.

        Only the kinds that have jobs are there.

        Returns:
            ``{kind: QueueDepth}``, sorted by kind's name.
        """

        async def read(conn: Session) -> dict[str, dict[str, int]]:
            return await conn.jobs.depth_by_kind()

        counts = await self._call(read)
        return {kind: _depth(counts[kind]) for kind in sorted(counts)}

    async def by_cluster(self, cluster: str) -> QueueDepth:
        """Count the jobs of one cluster in each state.

        A job belongs to the cluster its latest attempt ran on; a job that has not run
        yet belongs to the cluster it is pinned to (its ``affinity``), if any.

        Args:
            cluster: The name of the cluster.

        Returns:
            The count of each state (:class:`~corral.jobs.QueueDepth`).
        """
        check_str("cluster", cluster)

        async def read(conn: Session) -> dict[str, int]:
            return await conn.jobs.by_cluster(cluster)

        return _depth(await self._call(read))

    async def list(
        self, state: State | str | None = None, *, limit: int = 100, kind: str | None = None
    ) -> builtins.list[JobRecord]:
        """Return up to ``limit`` jobs (in ``state``, of ``kind``, if given), in claim order.

        Claim order: higher priority first, then oldest first.

        Args:
            state: Only the jobs in this state (a :class:`~corral.jobs.State` or its
                value); all states if ``None``.
            limit: The most jobs to return (at least 1).
            kind: Only the jobs of this kind; all kinds if ``None``.

        Returns:
            Snapshots of the jobs (:class:`~corral.jobs.JobRecord`), in claim order.
        """
        check_int("limit", limit, minimum=1)
        wanted = None if state is None else _state(state)
        if kind is not None:
            check_kind(kind, "kind")

        async def read(conn: Session) -> Sequence[Mapping[str, Any]]:
            return await conn.jobs.list(wanted, limit, kind)

        return [_record(row) for row in await self._call(read)]

    async def dead(self, *, limit: int = 100) -> builtins.list[JobRecord]:
        """Return the dead letter queue: jobs whose retries are exhausted.

        Args:
            limit: The most jobs to return (at least 1).

        Returns:
            Snapshots of the dead jobs (:class:`~corral.jobs.JobRecord`), in claim order.
        """
        return await self.list(State.DEAD, limit=limit)

    async def purge(
        self, *, older_than: float, states: Iterable[State | str] = (State.COMPLETED,)
    ) -> int:
        """Delete finished jobs that finished more than ``older_than`` seconds ago.

        Keeps the table from growing without bound.

        Args:
            older_than: Delete only jobs that finished more than this many seconds ago.
            states: Which finished states to delete, ``completed`` by default
                (``failed``, ``dead`` and ``cancelled`` may be named too; a job not
                finished is never deleted).

        Returns:
            How many jobs were deleted.

        Raises:
            ValueError: If ``states`` names a state that is not finished.
        """
        check_number("older_than", older_than, minimum=0, unit="seconds")
        if isinstance(states, str):
            states = (states,)
        wanted = sorted({_state(state) for state in states})
        unfinished = [state for state in wanted if state not in FINISHED]
        if unfinished:
            raise ValueError(
                f"purge deletes finished jobs only ({', '.join(FINISHED)}), not "
                f"{', '.join(unfinished)}"
            )
        if not wanted:
            return 0

        async def delete(conn: Session) -> int:
            return await conn.jobs.purge(wanted, float(older_than))

        return await self._call(delete)

    async def requeue(self, job_id: str) -> JobRecord:
        """Put a dead, failed or cancelled job back to ready, with its attempts reset to 0.

        Its finished steps are kept (it resumes where it failed, or was cancelled) and so
        is its last error, for the record. Requeues from many tasks at once share one
        transaction (group commit); each still gets its own answer or error.

        Args:
            job_id: The id of the job.

        Returns:
            A snapshot of the job as requeued, read in the transaction that requeued it
            (:class:`~corral.jobs.JobRecord`).

        Raises:
            JobNotFoundError: If there is no such job.
            JobStateError: If it is not dead, failed or cancelled.
        """
        check_str("job_id", job_id)
        # One job's requeue is one conditional statement: atomic alone, it may commit on
        # its own once the queue is ready.
        row = await self._db._run_grouped(self._requeue, job_id, one_statement=self._ready)
        self._ready = True
        self._wake()
        return _record(row)

    async def _requeue(
        self, conn: Session, job_ids: builtins.list[str]
    ) -> builtins.list[Mapping[str, Any] | JobNotFoundError | JobStateError]:
        """Requeue the jobs of concurrent requeues (one id a call); answer each call.

        One operation of the writer for every requeue queued while it was busy (group
        commit): one statement (PostgreSQL), one wake-up and one commit for them all.
        A call whose job is missing, or not requeueable, gets its own error; the others'
        jobs are requeued, and each gets its job's row as requeued.
        """
        if not self._ready:
            self.channel = await conn.jobs.prepare()
        answers = await conn.jobs.requeue_many(job_ids)
        return [
            _refusal(job_id, answer, self._db) if isinstance(answer, str) else answer
            for job_id, answer in zip(job_ids, answers, strict=True)
        ]

    async def cancel(self, job_id: str) -> Cancellation:
        """Cancel job ``job_id``: at once if it waits, at its worker's next renewal if it runs.

        A cancelled job stays in the table until purged, and runs again if requeued.

        Args:
            job_id: The id of the job.

        Returns:
            :attr:`Cancellation.CANCELLED <corral.jobs.Cancellation.CANCELLED>` for a
            job that was waiting (ready, or retrying): it is ``cancelled`` now, and no
            worker will claim it. :attr:`Cancellation.REQUESTED
            <corral.jobs.Cancellation.REQUESTED>` for a job in progress: its worker
            cancels the handler at its next lease renewal (every third of
            ``lease_seconds``; at once for a processor running on this ``Database``),
            and the job ends ``cancelled``, not retried, its finished steps and progress
            kept (asking again changes nothing). A job cancelled already is left as it
            is, and ``CANCELLED`` returned again.

        Raises:
            JobNotFoundError: If there is no such job.
            JobStateError: If it is finished otherwise (completed, failed or dead), as
                :meth:`requeue` does.
        """
        check_str("job_id", job_id)

        async def update(conn: Session) -> str:
            return await conn.jobs.cancel(job_id)

        done = await self._call(update)
        if done == "missing":
            raise JobNotFoundError(f"no job with id {job_id!r} in {self._db!r}")
        if done == Cancellation.REQUESTED:
            for wake in list(self._renewers):
                wake()
            return Cancellation.REQUESTED
        if done == Cancellation.CANCELLED:  # now, or before (the store's answers agree)
            return Cancellation.CANCELLED
        raise JobStateError(
            f"job {job_id!r} is {done} already: only a waiting or running job can be cancelled"
        )


def _state(value: object) -> State:
    return State(check_choice("state", value, [s.value for s in State]))


def _refusal(job_id: str, why: str, db: Database) -> JobNotFoundError | JobStateError:
    """Return the error of a requeue of ``job_id`` refused ``why`` (missing, or its state)."""
    if why == "missing":
        return JobNotFoundError(f"no job with id {job_id!r} in {db!r}")
    return JobStateError(
        f"job {job_id!r} is {why}: only a dead, failed or cancelled job can be requeued"
    )


def _duplicates(existing: list[str], of: int) -> DuplicateJobError:
    """Return the error for an enqueue of ``of`` ids, of which ``existing`` are stored."""
    return DuplicateJobError(
        f"job id {existing[0]!r} is already stored ({len(existing)} of the {of} ids are), "
        f"so no job of this call was stored; ids are unique: pick new ids (a stored job "
        f"that is dead, failed or cancelled can be run again with db.jobs.requeue(id))"
    )
