"""The claimer: claims batches of jobs within the limits, and queues them to run.

It claims as many jobs as the processor has room for (``batch_size``, its free slots
and clusters), hands them to the runners, and then waits: for a slot to free, for new
work (an enqueue here, or a notice from the database), or for its poll interval or the
next due retry. With ``until_idle`` it returns once nothing is left that this
processor could take. A reporter's write also claims (see ``_reporter``), with
:func:`claim_request`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from . import _claims
from ._context import JobContext
from ._deliverer import send
from ._model import ErrorCategory, State
from ._notify import EventKind, JobEvent
from ._runner import start
from ._state import ProcessorState

if TYPE_CHECKING:
    from .._ports import Session

__all__ = ["claim_request", "claimer", "listen", "reclaim_events", "stranded", "unlisten"]

log = logging.getLogger("corral.jobs")


def claim_request(
    state: ProcessorState, freeing: Iterable[JobContext] = ()
) -> _claims.ClaimRequest:
    """Return what a claim may take now, once the attempts ``freeing`` have left."""
    config = state.config
    running = len(state.running)
    on_cluster = dict(state.on_cluster)
    for entry in freeing:
        running -= 1
        on_cluster[entry._claimed.cluster] -= 1
    room = min(config.batch_size, config.max_concurrent - running)
    return _claims.ClaimRequest(
        owner=state.name,
        limit=room,
        max_concurrent=config.max_concurrent,
        per_customer=config.per_customer,
        capacity={c.name: c.capacity for c in state.clusters},
        local_free={c.name: c.capacity - on_cluster[c.name] for c in state.clusters},
        lease_seconds=config.lease_seconds,
        route=state.router,
        kinds=state.kinds,
    )


async def _nothing(conn: Session) -> None:
    """What a claim does when written again after its caller gave up on it: nothing."""


async def claimer(state: ProcessorState, until_idle: bool) -> None:
    """Claim and start jobs until cancelled, or with ``until_idle`` until none is left."""
    config = state.config
    names = list(state.by_name)
    labels = [c.labels for c in state.clusters]
    kinds = state.kinds

    async def outlook(conn: Session) -> tuple[int, float | None]:
        return await conn.jobs.outlook(names, labels, kinds)

    async def stranded_op(conn: Session) -> dict[tuple[str | None, str], int]:
        return await conn.jobs.stranded(names, labels, kinds)

    while True:
        request = claim_request(state)
        state.claim_wakeup = anyio.Event()

        async def claim(conn: Session, request: _claims.ClaimRequest = request) -> Any:
            return await conn.jobs.claim(request)

        # Its caller gone, a claim written again would take jobs nobody runs: what the
        # caller counted on (the jobs it gave back) needs nothing, so nothing is done.
        call = _claims.Call(claim, again=_nothing)
        try:
            claimed, reclaimed, limited = await call.run(state.db)
        except BaseException:
            if call.committing:  # cancelled, claimed all the same: give them back
                assert call.result is not None
                claimed, reclaimed, _ = call.result
                for item in claimed:
                    start(state, item, run=False)
                state.late.extend(reclaim_events(state, reclaimed))
            raise
        state.log_starts = log.isEnabledFor(logging.DEBUG)  # once per claim, not per job
        for item in claimed:
            start(state, item)
        for event in reclaim_events(state, reclaimed):
            send(state, event)
        if 0 < request.limit <= len(claimed):
            continue  # took all it asked for: there may be more
        if limited and state.running:
            # Stopped at a limit, with jobs of its own running: not idle, and nothing
            # to claim before a slot frees (which wakes the claimer up).
            waiting, due = 1, None
        else:
            # In a transaction of its own, not under the claim lock: it reads every
            # job waiting.
            waiting, due = await state.db._run(outlook)
        if until_idle and not state.running and waiting == 0:
            left = await state.db._run(stranded_op)
            if left:
                log.warning("%s", stranded(state.label, left, labels))
            return
        timeout = config.poll_interval
        if due is not None and due > 0:
            timeout = min(timeout, due)
        with anyio.move_on_after(timeout):
            await state.claim_wakeup.wait()


def stranded(
    label: str,
    left: Mapping[tuple[str | None, str], int],
    labels: Sequence[frozenset[str]],
) -> str:
    """Say which waiting jobs a processor with clusters of ``labels`` leaves, and why.

    ``left``: as :meth:`JobStore.stranded <corral._ports._jobs.JobStore.stranded>`
    returns it, not empty.
    """
    having = frozenset().union(*labels)
    pinned: dict[str, int] = {}
    missing: set[str] = set()
    unlabelled = 0
    for (affinity, requires), n in left.items():
        if affinity is not None:
            pinned[affinity] = pinned.get(affinity, 0) + n
            continue
        unlabelled += n
        needed = frozenset(json.loads(requires))
        # The labels none of the clusters has; or, if each is somewhere, the set of
        # them, which no one cluster has together.
        missing.update(needed - having or {"+".join(sorted(needed))})
    parts = []
    if unlabelled:
        verb = "requires" if unlabelled == 1 else "require"
        parts.append(
            f"{_jobs(unlabelled)} {verb} labels no cluster has: {', '.join(sorted(missing))}"
        )
    if pinned:
        n = sum(pinned.values())
        where = "is pinned to a cluster" if n == 1 else "are pinned to clusters"
        parts.append(f"{_jobs(n)} {where} it lacks: {', '.join(sorted(pinned))}")
    total = unlabelled + sum(pinned.values())
    why = "; ".join(parts)
    return f"{label} is idle, leaving {_jobs(total)} that no cluster of it can take: {why}"


def _jobs(n: int) -> str:
    return "1 job" if n == 1 else f"{n} jobs"


def reclaim_events(state: ProcessorState, reclaimed: list[dict[str, Any]]) -> list[JobEvent]:
    """Count the expired leases a claim just took back; return their events."""
    events = []
    for row in reclaimed:
        state.counts["reclaimed"] += 1
        events.append(
            JobEvent(
                EventKind.RECLAIMED if row["state"] != State.DEAD else EventKind.DEAD,
                str(row["id"]),
                int(row["attempts"]),
                row["cluster"],
                ErrorCategory.TRANSIENT,
                None,
                row["error_message"],
                state.name,
                job_kind=row.get("kind"),
            )
        )
    return events


async def listen(state: ProcessorState, conn: Session) -> bool:
    """Have the claimer woken by the notices of new work from other connections.

    False where the store sends none: the claimer then polls (``poll_interval``).
    """
    return await conn.jobs.watch(state.wake_claimer)


async def unlisten(state: ProcessorState, conn: Session) -> None:
    """Stop what :func:`listen` started."""
    await conn.jobs.unwatch(state.wake_claimer)
