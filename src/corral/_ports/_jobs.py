"""The job queue's port: :class:`JobStore`, and the plain data types that cross it.

A store keeps one job per id. What the jobs domain (``corral._jobs``) hands a store and
reads back are *job rows*: mappings of column name to value, as stored. Their columns:

- ``seq`` (int: the order of enqueueing), ``id`` (str), ``kind`` (str: which handler
  runs it, ``"default"`` unless given), ``payload`` (the payload's JSON text),
  ``priority`` (its rank: 0 urgent to 3 low), ``customer``, ``affinity``, ``region``
  (str or None), ``requires`` (the JSON list of the labels it needs, sorted: ``"[]"``
  for none), ``max_retries`` (int);
- ``state`` (a :class:`State` value), ``attempts`` (int), ``cluster``, ``route_reason``
  (str or None), ``steps`` (the JSON text of its finished steps, encoded by the domain:
  ``"[]"`` for none), ``progress`` (int), ``error_category``, ``error_step``,
  ``error_message``, ``error_attempt``, ``error_traceback`` (the last error's traceback, or
  None), ``cancel_requested`` (bool: a cancellation asked while it was in progress, which
  its worker acts on at its next renewal), ``lease_owner`` (or None), ``lease_expires``,
  ``created_at``, ``started_at``, ``run_at``, ``updated_at``, ``finished_at`` (epoch
  seconds, or None).

The domain encodes and decodes the JSON columns; the store keeps them as they are.
Times are the store's own clock (one clock for every host, so that skewed hosts agree
on leases), in epoch seconds.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeAlias

__all__ = [
    "ClaimRequest",
    "ClaimResult",
    "Claimed",
    "ErrorCategory",
    "JobStore",
    "NewJob",
    "Outcome",
    "Renewal",
    "RequeueAnswer",
    "State",
    "StepRecord",
    "enqueue_rounds",
    "merge_step_records",
    "requeue_answers",
]


class State(enum.StrEnum):
    """Where a job is in its life, stored as its value."""

    READY = "ready"
    """Waiting for a worker."""
    IN_PROGRESS = "in_progress"
    """Claimed by a worker, which holds its lease."""
    RETRYING = "retrying"
    """Failed with a retryable error; waiting out its backoff before it is ready again."""
    COMPLETED = "completed"
    """Done: the handler returned."""
    FAILED = "failed"
    """Failed with an error that is not retried (configuration, data, permanent)."""
    DEAD = "dead"
    """Retries exhausted: in the dead letter queue until requeued."""
    CANCELLED = "cancelled"
    """Cancelled by :meth:`JobStore.cancel` (waiting, or at its worker's next renewal);
    a finished state, requeueable, never retried."""


class ErrorCategory(enum.StrEnum):
    """Why a job failed; TRANSIENT and RESOURCE are retried, the others are not."""

    TRANSIENT = "TRANSIENT"
    RESOURCE = "RESOURCE"
    CONFIGURATION = "CONFIGURATION"
    DATA = "DATA"
    PERMANENT = "PERMANENT"

    @property
    def retryable(self) -> bool:
        """Whether a job failing with this category is tried again."""
        return self in (ErrorCategory.TRANSIENT, ErrorCategory.RESOURCE)


#: A job to enqueue, encoded as stored (see the module's docstring for the columns):
#: ``(id, payload, priority, customer, affinity, region, requires, max_retries, kind)``.
#: A plain tuple: one is made for every job enqueued, and a tuple is the cheapest to make.
NewJob: TypeAlias = tuple[str, str, int, str | None, str | None, str | None, str, int, str]


def enqueue_rounds(groups: Sequence[Sequence[NewJob]]) -> builtins.list[builtins.list[int]]:
    """Split the groups of :meth:`JobStore.enqueue_groups` into rounds of distinct ids.

    Returns the groups' indexes, round by round; usually one round. A group that shares
    an id with an earlier one goes into a round after that one's, so that running the
    rounds in order leaves what running the groups in order would: a refused group frees
    its ids for the groups after it.
    """
    total = sum(len(group) for group in groups)
    if len({job[0] for group in groups for job in group}) == total:
        return [builtins.list(range(len(groups)))]
    rounds: builtins.list[tuple[set[str], builtins.list[int]]] = []
    for n, group in enumerate(groups):
        ids = {job[0] for job in group}
        after = max((r for r, (taken, _) in enumerate(rounds) if taken & ids), default=-1)
        if after + 1 == len(rounds):
            rounds.append((set(), []))
        taken, members = rounds[after + 1]
        taken |= ids
        members.append(n)
    return [members for _, members in rounds]


#: A requeue's answer for one id (:meth:`JobStore.requeue_many`): the job's row once
#: requeued, or why it was not (``"missing"``, or its state's value).
RequeueAnswer: TypeAlias = Mapping[str, Any] | str


def requeue_answers(
    job_ids: Sequence[str], answers: Mapping[str, RequeueAnswer]
) -> builtins.list[RequeueAnswer]:
    """Return the answers of :meth:`JobStore.requeue_many`, one per id of ``job_ids``.

    ``answers`` holds the answer of each distinct id, requeued once. An id named again
    later in ``job_ids`` gets what requeueing it again would: ``"ready"`` after it was
    requeued, the same refusal after it was refused.
    """
    out: builtins.list[RequeueAnswer] = []
    seen: set[str] = set()
    for job_id in job_ids:
        answer = answers[job_id]
        if job_id in seen and not isinstance(answer, str):
            answer = State.READY.value
        seen.add(job_id)
        out.append(answer)
    return out


class Claimed:
    """A job claimed by a worker: its stored row, its attempt and its lease.

    The row is the job's as it was claimed (``seq``, ``id``, ``kind``, ``payload``, ``priority``,
    ``customer``, ``affinity``, ``region``, ``requires``, ``max_retries``, ``attempts``,
    ``steps``, before this attempt): the domain decodes it, after the claim has
    committed, so that decoding payloads is no work done under the claim lock.
    """

    __slots__ = ("_job", "attempt", "cluster", "id", "route_reason", "row", "token")

    def __init__(
        self, row: Mapping[str, Any], attempt: int, cluster: str, route_reason: str, token: int
    ) -> None:
        #: The job's stored row.
        self.row: Mapping[str, Any] = row
        #: The job's id.
        self.id: str = row["id"]
        #: This attempt's number (1 for the first).
        self.attempt: int = attempt
        #: The cluster it was routed to, and why.
        self.cluster: str = cluster
        self.route_reason: str = route_reason
        #: The lease token: every write of this attempt names it.
        self.token: int = token
        #: The domain's decoded job, once it has made it (the store never reads it).
        self._job: Any = None


class Outcome(NamedTuple):
    """How an attempt ended, to be written fenced by the claim's lease token.

    A named tuple: one is made for every job, and a tuple is the cheapest to make.
    """

    id: str
    token: int
    state: State
    delay: float = 0.0
    category: ErrorCategory | None = None
    step: str | None = None
    message: str | None = None
    progress: int = 0
    #: The failure's formatted traceback (bounded by the domain), stored with its
    #: last error; None where there is none.
    traceback: str | None = None


@dataclass(slots=True)
class ClaimRequest:
    """What one claim may take: how many jobs, within which limits, routed how."""

    owner: str
    limit: int
    max_concurrent: int
    per_customer: int | None
    #: Capacity of each of this worker's clusters, counted over every worker.
    capacity: dict[str, int]
    #: Jobs this worker may still start on each cluster (its own free slots).
    local_free: dict[str, int]
    lease_seconds: float
    #: Places a job, given its stored row, on a cluster with a free slot: (name, reason).
    route: Callable[[Mapping[str, Any], Mapping[str, int]], tuple[str, str] | None]
    #: Wait for another worker's claim to commit (else claim nothing if one is running).
    wait: bool = True
    #: Take back the expired leases first (the claimer's claims do, at least once per
    #: ``poll_interval``; a report's claim leaves it to them).
    reclaim: bool = True
    #: The kinds of job this worker has handlers for; None for every kind. A job of
    #: another kind is never claimed (and counts against no limit of this claim).
    kinds: frozenset[str] | None = None

    def place(
        self,
        row: Mapping[str, Any],
        free: dict[str, int],
        by_customer: dict[str, int],
        token: Callable[[], int],
    ) -> Claimed | None:
        """Place the waiting job of ``row`` if ``per_customer`` and a free cluster allow it.

        Every store's claim decides each candidate this way, in claim order. ``free``:
        the slots left on each cluster; ``by_customer``: the jobs in progress of each
        customer (counted over every worker); both are updated for a job placed. Returns
        the job claimed under a fresh lease token from ``token()``, or None.
        """
        customer = row["customer"]
        if (
            customer is not None
            and self.per_customer is not None
            and by_customer.get(customer, 0) >= self.per_customer
        ):
            return None
        routed = self.route(row, free)
        if routed is None:
            return None
        cluster, reason = routed
        free[cluster] -= 1
        if customer is not None:
            by_customer[customer] = by_customer.get(customer, 0) + 1
        return Claimed(row, row["attempts"] + 1, cluster, reason, token())


class StepRecord(NamedTuple):
    """The finished steps of one claimed job, to store (:meth:`JobStore.step_done_many`)."""

    #: The claimed job: its id and lease token (the write is fenced by the token).
    claimed: Claimed
    #: The JSON text of its finished steps, stored as it is.
    steps: str
    #: Progress to add to the job's.
    progress: int


def merge_step_records(records: Sequence[StepRecord]) -> builtins.list[StepRecord]:
    """Merge the records of one lease (one token) into one, in order of first appearance.

    What storing them one after another leaves: the last ``steps`` of each lease, and
    the sum of its ``progress``.
    """
    merged: dict[int, StepRecord] = {}
    for record in records:
        token = record.claimed.token
        before = merged.get(token)
        if before is None:
            merged[token] = record
        else:
            merged[token] = StepRecord(
                record.claimed, record.steps, before.progress + record.progress
            )
    return builtins.list(merged.values())


class Renewal(NamedTuple):
    """What a renewal found: the leases still held, and those asked to cancel."""

    #: The tokens of the leases held (now extended).
    held: set[int]
    #: The tokens, among ``held``, of jobs whose cancellation was asked
    #: (:meth:`JobStore.cancel`): their worker cancels the handler and finishes them
    #: :attr:`State.CANCELLED`.
    cancel: set[int]


class ClaimResult(NamedTuple):
    """What a claim did: the jobs it claimed, the leases it took back, why it stopped."""

    #: The jobs claimed, in claim order (priority, then age).
    claimed: list[Claimed]
    #: The expired leases taken back: one row each, with the job's ``id``, its new
    #: ``state`` (``ready`` or ``dead``), ``error_message``, ``attempts`` and ``cluster``.
    #: (Their last error is the expired lease, with no traceback.)
    reclaimed: list[dict[str, Any]]
    #: Whether the claim stopped at a limit (the room it found, all taken) rather than
    #: for want of jobs it could take.
    limited: bool


class JobStore(Protocol):
    """The storage of one job queue; every method runs inside the caller's batch.

    Each method is called by one writer operation (``Database._run``), on the writer's
    connection (or client): what it changes is committed with that operation's batch,
    or not at all, and an operation that raises rolls back everything it changed.

    What every store guarantees:

    - **Claims are atomic and the limits exact**, across every process and host that
      uses the store: no job is claimed by two workers at once, and the jobs in progress
      never exceed ``max_concurrent``, a cluster's capacity or ``per_customer``, counted
      over every worker (claims are serialized, or their counts checked atomically).
    - **Every change to a claimed job is fenced by its lease token**: renewing, finishing,
      releasing it or recording a step changes it only while it is in progress under that
      token; a worker whose lease expired and was taken back changes nothing.
    - **Ids are unique**: :meth:`enqueue` never stores a second job with an id already
      stored (even when two connections enqueue it at once).
    - Jobs are claimed in order of priority (urgent first), then of enqueueing.
    """

    async def prepare(self) -> str:
        """Create the queue's storage if it is missing; return its wake-up channel.

        Called once, by the first operation of a queue, before any other method. The
        channel names this queue's wake-ups (:meth:`announce`, :meth:`watch`): queues
        that share a store but not their jobs (two PostgreSQL schemas) have their own.
        """
        ...

    async def enqueue(self, jobs: Sequence[NewJob]) -> builtins.list[str]:
        """Store ``jobs``, ready now; return the ids of those already stored.

        If the list returned is not empty, none of ``jobs`` is stored. Otherwise every
        job is stored, and the other workers are told of new work.
        """
        ...

    async def enqueue_groups(
        self, groups: Sequence[Sequence[NewJob]]
    ) -> builtins.list[builtins.list[str]]:
        """Store each group of jobs whole or not at all; return, per group, the ids refused.

        The enqueues of many callers at once (group commit). A group is refused when one
        of its ids is stored already, or stored by an earlier group of the call: then
        none of its jobs is stored, and its list names those ids; the other groups are
        stored all the same (one group's duplicate never refuses another's jobs). The
        result is what enqueueing the groups one after another would leave. The other
        workers are told of new work once, if any group was stored.
        """
        ...

    async def get(self, job_id: str) -> Mapping[str, Any] | None:
        """Return the row of job ``job_id`` (every column), or None if there is none."""
        ...

    async def depth(self, kind: str | None = None) -> dict[str, int]:
        """Count the jobs (of ``kind`` if given) in each state (states with none left out)."""
        ...

    async def depth_by_kind(self) -> dict[str, dict[str, int]]:
        """Count the jobs of each kind in each state: ``{kind: {state: count}}``."""
        ...

    async def by_cluster(self, cluster: str) -> dict[str, int]:
        """Count, by state, the jobs whose latest attempt ran on ``cluster``.

        A job that has not run yet counts for the cluster it is pinned to (its
        ``affinity``), if any.
        """
        ...

    async def list(
        self, state: State | None, limit: int, kind: str | None = None
    ) -> Sequence[Mapping[str, Any]]:
        """Return up to ``limit`` job rows (in ``state``, of ``kind``, if given), in claim order."""
        ...

    async def purge(self, states: Sequence[State], older_than: float) -> int:
        """Delete the jobs in ``states`` finished ``older_than`` seconds ago or more.

        ``states`` are finished ones (completed, failed, dead, cancelled). Returns how many.
        """
        ...

    async def exists(self) -> bool:
        """Return whether the queue's storage exists, creating nothing.

        For the commands that only read: where it does not, there is nothing to show,
        and where it does, they read it as it is (with no :meth:`prepare`).
        """
        ...

    async def requeue(self, job_id: str) -> str | None:
        """Put job ``job_id`` back to ready, its attempts 0, if it is dead, failed or cancelled.

        Its steps and last error are kept. Returns None if it was requeued (and the
        other workers are told of new work); else why not: ``"missing"`` if there is no
        such job, or its state's value.
        """
        ...

    async def requeue_many(self, job_ids: Sequence[str]) -> builtins.list[RequeueAnswer]:
        """Requeue each job of ``job_ids`` as :meth:`requeue` does; return one answer per id.

        The requeues of many callers at once (group commit). Each id's answer is the
        job's row (every column, as :meth:`get` returns it) once requeued, or why it
        was not: ``"missing"``, or its state's value; an id refused changes nothing, and
        never keeps another id from being requeued. The answers are what requeueing the
        ids one after another would give (an id named twice: requeued, then refused as
        ``"ready"``; see :func:`requeue_answers`). The other workers are told of new
        work once, if any job was requeued. Each job's change is one conditional write,
        so that a call of one id is atomic by itself (a store may run it outside a
        transaction).
        """
        ...

    async def cancel(self, job_id: str) -> str:
        """Cancel job ``job_id``; return what was done.

        - ``"cancelled"``: it was waiting (ready, or retrying): it is now cancelled
          (``finished_at`` stamped), and no worker will claim it;
        - ``"requested"``: it is in progress: its ``cancel_requested`` is set, and the
          next :meth:`renew` of its lease reports it in :attr:`Renewal.cancel` (asking
          again changes nothing);
        - ``"missing"``: there is no such job;
        - else the value of its finished state (completed, failed, dead, cancelled):
          nothing is changed.

        A requeued job's ``cancel_requested`` is cleared.
        """
        ...

    async def claim(self, request: ClaimRequest) -> ClaimResult:
        """Take back the expired leases, then claim up to ``request.limit`` jobs.

        A job is claimed if it waits (ready, or retrying and due), is of one of
        ``request.kinds`` (if given), is pinned to no cluster but ``request``'s, its
        customer is under ``per_customer`` and ``request.route`` places it on a cluster with
        a free slot; within the room left under ``max_concurrent`` and each cluster's
        capacity, counted over every worker. Each claimed job is in progress under a fresh
        lease token, owned by ``request.owner`` for ``lease_seconds``, its attempts counted.
        With ``request.wait`` false, a claim that would wait for another worker's claims
        returns at once, claiming nothing, not ``limited``.
        """
        ...

    async def renew(self, leases: Sequence[tuple[Claimed, int]], lease_seconds: float) -> Renewal:
        """Extend the leases ``(claimed job, progress to add)``; return those held.

        Each lease held runs ``lease_seconds`` from now, and its progress is added;
        the others (taken over) change nothing. The renewal also reports the held jobs
        whose cancellation was asked (:meth:`cancel`).
        """
        ...

    async def finish(self, outcomes: Sequence[Outcome]) -> set[int]:
        """Write how attempts ended, each fenced by its token; return the tokens accepted.

        A job leaves progress for the outcome's state, due again after its ``delay``;
        its last error (with its ``traceback``, or None) is replaced where the outcome
        has a category; its progress is added to; a finished state (completed, failed,
        dead, cancelled) stamps ``finished_at``.
        """
        ...

    async def release(self, leases: Sequence[tuple[Claimed, int]]) -> None:
        """Give claimed jobs back, ready at once, the attempt not counted (a clean stop).

        Each one's progress is added; fenced by their tokens.
        """
        ...

    async def step_done(self, claimed: Claimed, steps: str, progress: int) -> bool:
        """Store the finished steps of a claimed job; False if its lease was taken over.

        ``steps``: their JSON text, stored as it is; ``progress`` is added. A job whose lease
        was taken over changes nothing.
        """
        ...

    async def step_done_many(self, records: Sequence[StepRecord]) -> set[int]:
        """Store the finished steps of many claimed jobs; return the tokens of the leases held.

        The step records of many tasks at once (group commit): each record as
        :meth:`step_done` would store it, fenced by its own lease token (a record whose
        lease was taken over changes nothing, and never keeps another from being
        stored); the tokens missing from the set returned are those taken over. What
        storing the records one after another leaves: records of one lease store its
        last ``steps`` and add all their ``progress`` (see :func:`merge_step_records`).
        A call of one record is one conditional write, atomic by itself (a store may
        run it outside a transaction).
        """
        ...

    async def outlook(
        self,
        clusters: Sequence[str],
        labels: Sequence[frozenset[str]],
        kinds: frozenset[str] | None = None,
    ) -> tuple[int, float | None]:
        """Count the unfinished jobs a worker with these clusters could take.

        A job counts if it is of one of ``kinds`` (if given), is not pinned to another
        cluster and one of the clusters has every label it requires (``labels``: each
        cluster's). Returns that count and the
        seconds until the next such waiting job is due (None if none waits).
        """
        ...

    async def stranded(
        self,
        clusters: Sequence[str],
        labels: Sequence[frozenset[str]],
        kinds: frozenset[str] | None = None,
    ) -> builtins.dict[tuple[str | None, str], int]:
        """Count the waiting jobs a worker with these clusters could never take, by why.

        A waiting job (ready, or retrying) of one of ``kinds`` (if given) counts if it is
        pinned to a cluster not in ``clusters``, or pinned to none and requires labels no
        one of the clusters has (``labels``: each cluster's). Returns how many, by
        ``(affinity, requires)`` as stored (``affinity`` None for those pinned to none).
        Read once, when an idle worker stops, to say what it leaves.
        """
        ...

    async def announce(self) -> None:
        """Tell the other connections' :meth:`watch` callbacks of free slots or jobs.

        Sent once the batch commits; nothing where the store has no wake-ups.
        """
        ...

    async def watch(self, callback: Callable[[], object]) -> bool:
        """Call ``callback()`` whenever another connection announces new work.

        Returns False where the store has no wake-ups across connections: the caller
        then polls (the processor does anyway, every ``poll_interval``). Once true, the
        callback is called from the caller's event loop until :meth:`unwatch`.
        """
        ...

    async def unwatch(self, callback: Callable[[], object]) -> None:
        """Stop calling ``callback`` (see :meth:`watch`)."""
        ...
