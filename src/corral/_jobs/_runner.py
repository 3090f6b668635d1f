"""The runners: run a processor's claimed jobs, each in a context of its own.

A claimed job is taken on with :func:`start` and queued; a runner (a task of the
processor's) runs queued jobs one at a time, each in a copy of the context of its own,
as a task of its own would have, and in a cancel scope that the renewer cancels if its
lease is lost (the attempt is dropped) or its cancellation was asked (the job ends
``cancelled``). There are as many runners as jobs waiting in a handler at once, reused
from job to job, since starting a task costs more than a short job. How each attempt
ended (see ``_outcomes``) goes to the reporter as an ``Outcome``.
"""

from __future__ import annotations

import contextvars
import logging
import types
from collections.abc import Awaitable, Generator
from typing import Any

import anyio
import anyio.lowlevel

from .._exceptions import ConfigurationError, LeaseLostError
from . import _claims
from ._context import JobContext
from ._deliverer import send
from ._model import State
from ._notify import EventKind, JobEvent
from ._outcomes import check, failure, with_progress
from ._state import ProcessorState

__all__ = ["CANCELLED_MESSAGE", "dispatch", "forget", "runner", "start"]

log = logging.getLogger("corral.jobs")

#: A runner checks for cancellation (and lets other tasks run) after this many jobs in
#: a row that did not wait on anything.
_RUNS_PER_CHECKPOINT = 64

#: What the notification of a job cancelled by ``db.jobs.cancel`` says.
CANCELLED_MESSAGE = "cancelled on request (db.jobs.cancel, or corral jobs cancel)"


def start(state: ProcessorState, claimed: _claims.Claimed, *, run: bool = True) -> None:
    """Take a claimed job on: queue it to run, or (not ``run``) to be given back."""
    cluster = state.by_name[claimed.cluster]
    entry = JobContext(state.db, state.name, claimed, cluster)
    state.running[claimed.token] = entry
    if claimed.row.get("cancel_requested"):
        # Asked to cancel while an earlier attempt ran, which went back to waiting
        # before its renewal said so (a retryable failure, an expired lease, a stop):
        # cancelled without running its handler.
        state.cancelling.add(claimed.token)
    state.on_cluster[cluster.name] += 1
    state.counts["claimed"] += 1
    if run:
        state.queued.append(entry)
        dispatch(state)


def dispatch(state: ProcessorState) -> None:
    """See that a runner will look at the queue: one about to, an idle one, or a new one.

    One at a time: a runner that takes a job while more wait dispatches again, so a
    batch of jobs that wait in their handlers gets a runner each, and a batch of
    jobs that return at once is run by one or two.
    """
    if state.starting:
        return
    state.starting += 1
    if state.idle:
        state.idle.pop().set()
    else:
        tg = state.tg
        assert tg is not None
        tg.start_soon(runner, state, name=f"corral jobs runner of {state.name}")


async def runner(state: ProcessorState) -> None:
    """Run queued jobs, one at a time; wait (idle) when none is queued."""
    queued = state.queued
    runs = 0
    while True:
        state.starting -= 1
        while queued:
            # One cancel scope for a run of jobs, not one per job (entering a scope
            # costs more than a short job): the renewer cancels it to drop the job
            # running in it, and the jobs after that one get a new scope.
            entry: JobContext | None = None
            with anyio.CancelScope() as scope:
                while queued and not scope.cancel_called:
                    entry = queued.popleft()
                    if queued:
                        dispatch(state)
                    if entry._lost:
                        dropped(state, entry)
                    elif entry._claimed.token in state.cancelling:
                        cancelled(state, entry)
                    else:
                        entry._scope = scope
                        async with entry.cluster._job_unit():  # one of its capacity
                            await work(state, entry)
                        entry._scope = None
                    entry = None
                    runs += 1
                    if runs % _RUNS_PER_CHECKPOINT == 0:
                        await anyio.lowlevel.checkpoint()
            if entry is not None:  # cancelled by the renewer
                entry._scope = None
                if entry._lost:  # the lease was taken over
                    dropped(state, entry)
                elif entry._outcome is None:  # its cancellation was asked
                    cancelled(state, entry)
        wakeup = anyio.Event()
        state.idle.append(wakeup)
        await wakeup.wait()


async def work(state: ProcessorState, ctx: JobContext) -> None:
    """Run one job; its outcome goes to the reporter (cancellation propagates)."""
    claimed = ctx._claimed
    if state.log_starts:
        log.debug("job %s started (attempt %d on %s)", claimed.id, claimed.attempt, claimed.cluster)
    try:
        refusal = None if state.validate is None else await check(state, ctx)
        if refusal is not None:
            outcome = refusal
        else:
            handler = state.handler
            if handler is None:
                handler = state.handlers.get(claimed.row["kind"])
                if handler is None:  # the store claimed a kind it was not asked for
                    raise ConfigurationError(
                        f"this processor has no handler for kind {claimed.row['kind']!r}"
                    )
            rest = _in_context(handler(ctx), contextvars.copy_context())
            if rest is not None:
                await rest
            outcome = _claims.Outcome(claimed.id, claimed.token, State.COMPLETED)
    except LeaseLostError:
        dropped(state, ctx)
        return
    except Exception as exc:
        outcome = failure(state, ctx, exc)
    ctx._outcome = with_progress(outcome, ctx._take_progress())
    state.outcomes.append(ctx._outcome)
    state.report_wakeup.set()


def cancelled(state: ProcessorState, entry: JobContext) -> None:
    """Finish a job whose cancellation was asked: ``cancelled``, its progress kept."""
    claimed = entry._claimed
    outcome = _claims.Outcome(claimed.id, claimed.token, State.CANCELLED)
    entry._outcome = with_progress(outcome, entry._take_progress())
    state.outcomes.append(entry._outcome)
    state.report_wakeup.set()


def dropped(state: ProcessorState, entry: JobContext) -> None:
    """Forget a job whose lease was taken over: record nothing, tell the notifier."""
    claimed = entry._claimed
    forget(state, claimed.token)
    state.counts["lease_lost"] += 1
    message = "another worker took the lease over; this attempt was dropped"
    send(
        state,
        JobEvent(
            EventKind.LEASE_LOST,
            claimed.id,
            claimed.attempt,
            claimed.cluster,
            None,
            None,
            message,
            state.name,
            job_kind=claimed.row["kind"],
            fence=claimed.token,
        ),
    )


def forget(state: ProcessorState, token: int, *, wake: bool = True) -> JobContext | None:
    """Drop the attempt of ``token`` from those running (freeing its slot); return it."""
    entry = state.running.pop(token, None)
    state.cancelling.discard(token)
    if entry is not None:
        state.on_cluster[entry._claimed.cluster] -= 1
        if wake:
            state.claim_wakeup.set()
    return entry


def _in_context(
    awaitable: Awaitable[object], context: contextvars.Context
) -> Awaitable[object] | None:
    """Start ``awaitable`` in ``context``; return what is left to await of it, or None.

    A runner runs many jobs, one after another; this gives each handler a context of
    its own, as a task of its own would have: a context variable it sets is not seen
    by the next job. Its first step runs at once (most handlers of short jobs finish
    there, and then there is nothing to await); its first error is raised from here.
    """
    steps: Any = awaitable.__await__()
    try:
        request = context.run(steps.send, None)
    except StopIteration:
        return None
    return _resume_in(steps, context, request)


@types.coroutine
def _resume_in(
    steps: Any, context: contextvars.Context, request: object
) -> Generator[Any, Any, object]:
    """Go on with the steps of an awaitable, each run in ``context``.

    The event loop's requests (what the awaitable yields) and answers (what it is sent
    or thrown) pass through unchanged.
    """
    run = context.run
    while True:
        value: Any = None
        error: BaseException | None = None
        try:
            value = yield request
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as exc:
            error = exc
        try:
            request = run(steps.send, value) if error is None else run(steps.throw, error)
        except StopIteration as stop:
            return stop.value
