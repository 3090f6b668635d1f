"""The reporter: writes how a processor's attempts ended, many per transaction.

The runners append outcomes to the state and wake it; it writes every outcome waiting
in one transaction, fenced by their lease tokens (an outcome whose lease another worker
took over is refused), and claims their successors in the same transaction, which
halves the transactions of a busy worker. Then it frees their slots, starts what it
claimed and queues the notifications.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from . import _claims
from ._claimer import claim_request, reclaim_events
from ._deliverer import send
from ._model import State
from ._notify import EventKind, JobEvent, describe
from ._runner import CANCELLED_MESSAGE, forget, start
from ._state import ProcessorState

if TYPE_CHECKING:
    from .._ports import Session

__all__ = ["describe", "report", "reporter"]

log = logging.getLogger("corral.jobs")

_KINDS = {
    State.COMPLETED: EventKind.COMPLETED,
    State.FAILED: EventKind.FAILED,
    State.RETRYING: EventKind.RETRYING,
    State.DEAD: EventKind.DEAD,
    State.CANCELLED: EventKind.CANCELLED,
}
_COUNTERS = {
    State.COMPLETED: "completed",
    State.FAILED: "failed",
    State.RETRYING: "retried",
    State.DEAD: "dead",
    State.CANCELLED: "cancelled",
}


async def reporter(state: ProcessorState) -> None:
    """Write the outcomes as they come (see :func:`report`), until cancelled."""
    while True:
        await state.report_wakeup.wait()
        state.report_wakeup = anyio.Event()
        await report(state, claim=True)


async def report(state: ProcessorState, *, claim: bool = False) -> None:
    """Write the outcomes waiting; with ``claim``, claim their successors with them.

    Completing and claiming in one transaction halves the transactions of a busy
    worker; the claimer is woken only if room is left after that.
    """
    batch, state.outcomes = state.outcomes, []
    if not batch:
        return
    state.log_starts = log.isEnabledFor(logging.DEBUG)  # once per batch, for its successors
    freeing = [e for o in batch if (e := state.running.get(o.token)) is not None]
    request = claim_request(state, freeing) if claim and state.tg is not None else None
    if request is not None:
        # A report never waits for another worker's claim: its outcomes go first.
        request.wait = request.reclaim = False

    async def write(conn: Session) -> Any:
        accepted = await conn.jobs.finish(batch)
        if accepted:
            # Sent at commit; asked for before the claim, whose lock is held until then.
            await conn.jobs.announce()
        claimed: list[_claims.Claimed] = []
        reclaimed: list[dict[str, Any]] = []
        if request is not None and request.limit > 0:
            claimed, reclaimed, _ = await conn.jobs.claim(request)
        return accepted, claimed, reclaimed

    async def outcomes_only(conn: Session) -> None:
        # Written again after its caller gave up: the outcomes it counted as written,
        # not a claim of successors, which nobody would run.
        if await conn.jobs.finish(batch):
            await conn.jobs.announce()

    call = _claims.Call(write, again=outcomes_only)
    try:
        accepted, claimed, reclaimed = await call.run(state.db)
    except BaseException:
        if call.committing:  # cancelled, written all the same: never written twice
            assert call.result is not None
            state.late.extend(reported(state, batch, request, *call.result, run=False))
        else:
            state.outcomes[:0] = batch
        raise
    for event in reported(state, batch, request, accepted, claimed, reclaimed):
        send(state, event)


def reported(
    state: ProcessorState,
    batch: list[_claims.Outcome],
    request: _claims.ClaimRequest | None,
    accepted: set[int],
    claimed: list[_claims.Claimed],
    reclaimed: list[dict[str, Any]],
    *,
    run: bool = True,
) -> list[JobEvent]:
    """Account for a written report; return the events to send.

    Not ``run``: the report was cancelled in its commit; the successors it claimed
    are given back at exit.
    """
    # The bookkeeping, with no await: slots freed, successors started.
    events: list[JobEvent] = []
    log_ends = state.log_ends and log.isEnabledFor(logging.INFO)  # once per batch
    for outcome in batch:
        entry = forget(state, outcome.token, wake=False)  # the claimer is woken below
        attempt, cluster, job_kind = 0, None, None
        if entry is not None:
            claimed_entry = entry._claimed
            attempt, cluster = claimed_entry.attempt, claimed_entry.cluster
            job_kind = claimed_entry.row["kind"]
        if outcome.token in accepted:
            state.counts[_COUNTERS[outcome.state]] += 1
            kind = _KINDS[outcome.state]
            category, step, message = outcome.category, outcome.step, outcome.message
            if outcome.state is State.CANCELLED:
                message = CANCELLED_MESSAGE
            tb = outcome.traceback
        else:
            state.counts["lease_lost"] += 1
            kind, category, step, tb = EventKind.LEASE_LOST, None, None, None
            message = "the outcome was refused: another worker took the lease over"
        event = JobEvent(
            kind,
            outcome.id,
            attempt,
            cluster,
            category,
            step,
            message,
            state.name,
            tb,
            job_kind,
            outcome.token,
        )
        events.append(event)
        if log_ends:
            log.info("%s", describe(event))
    if request is None:
        state.claim_wakeup.set()  # slots freed: the claimer claims
    else:
        for item in claimed:
            start(state, item, run=run)
        if len(state.running) < state.config.max_concurrent:
            state.claim_wakeup.set()  # room left: the claimer claims, or checks for idleness
    events.extend(reclaim_events(state, reclaimed))
    return events
