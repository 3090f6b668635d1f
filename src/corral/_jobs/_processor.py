"""The processor: claims jobs, runs their handler, records how each attempt ended.

One processor is five kinds of task, each a role in a module of its own, working on one
``ProcessorState`` (``_state``) made for the run: the *claimer* (``_claimer``: claims
batches of jobs within the limits and queues them to run), the *runners* (``_runner``:
each runs queued jobs one at a time, each in a copy of the context of its own, as a
task of its own would have, and in a cancel scope that is cancelled if its lease is
lost; there are as many runners as jobs waiting in a handler at once, reused from job
to job, since starting a task costs more than a short job), the *reporter*
(``_reporter``: writes how attempts ended, many per transaction, fenced by their lease
tokens), the *renewer* (``_renewer``: extends the leases of the running jobs every
third of ``lease_seconds`` and cancels a job whose lease was taken over) and, in a task
group around theirs, the *deliverer* (``_deliverer``: hands notifications to the
notifier from a bounded buffer, so that a slow notifier holds back no job). This module
holds the public :class:`Processor` and its run's lifecycle. Nothing outlives
:meth:`Processor.run`: when it is cancelled, the jobs still running are cancelled and
given back (ready at once, the attempt not counted), in a shielded last transaction,
and the notifier is given ``notify_timeout`` for the notifications left.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .._cluster import Cluster
from .._database import Database
from .._validate import check_callable, check_str, check_type, type_error
from . import _claims
from ._claimer import claimer, listen, unlisten
from ._deliverer import deliver, send, wake_deliverer
from ._model import ErrorCategory, ProcessorConfig, check_kind, classify
from ._notify import LoggingNotifier, Notifier
from ._queue import JobQueue
from ._renewer import renewer
from ._reporter import report, reporter
from ._routing import Router
from ._state import Classifier, Handler, ProcessorState, Validator

if TYPE_CHECKING:
    from .._ports import Session

__all__ = ["Processor", "ProcessorStatistics"]

log = logging.getLogger("corral.jobs")


@dataclass(frozen=True, slots=True)
class ProcessorStatistics:
    """A snapshot of one processor's counters since it was made."""

    running: int
    """Jobs running in this processor now."""
    claimed: int
    """Attempts this processor claimed."""
    completed: int
    """Attempts that completed their job."""
    retried: int
    """Attempts that failed and were scheduled for a retry."""
    failed: int
    """Attempts that failed their job for good (not retried)."""
    dead: int
    """Attempts after which the job went to the dead letter queue."""
    cancelled: int
    """Attempts that ended their job cancelled (``db.jobs.cancel``)."""
    reclaimed: int
    """Jobs with an expired lease that this processor put back in the queue."""
    lease_lost: int
    """Attempts dropped because another worker took their lease over."""
    notifications_dropped: int
    """Notifications never given to the notifier: dropped, oldest first, when it was
    ``notify_buffer`` behind, or left when ``run()`` ended and ``notify_timeout`` passed."""
    notifications_failed: int
    """Notifications whose ``notify`` raised (each logged on ``corral.jobs``)."""


class Processor:
    """Run stored jobs with ``handler``, on ``clusters``, within ``config``'s limits.

    Args:
        db: The database holding the queue (``db.jobs``).
        handler: ``async def handler(ctx: JobContext)``; returning completes the job,
            raising fails the attempt (see ``classify``). One handler runs every job,
            whatever its kind. Or a mapping of job kind to handler, such as
            ``{"render": render, "index": index}``: the processor then claims only the
            jobs of those kinds, each run by its kind's handler, and leaves the other
            kinds to other processors (``run(until_idle=True)`` waits for none of them).
        clusters: Where jobs run: each :class:`corral.Cluster`'s ``capacity`` bounds
            the jobs in progress on it (over every processor), and a running job holds
            one of its units, which the maps of its handler on that cluster share; its
            ``region``, ``cost`` and ``labels`` guide the scheduler. Default: one
            cluster named ``"default"`` with ``config.max_concurrent`` slots.
        config: Limits and timings (:class:`ProcessorConfig`).
        classify: Maps a handler's exception to an :class:`ErrorCategory` (or its name);
            default :func:`corral.jobs.classify`.
        validate: Called with each job before its handler (sync or async); if it
            raises, the job fails at once, not retried: as CONFIGURATION for a
            :class:`~corral.jobs.ConfigurationError`, as DATA for any other exception
            (a :class:`~corral.jobs.TransientError` or :class:`~corral.jobs.ResourceError`
            is retried instead, as a handler's: an input store that is busy).
        notifier: Told about completions, failures, dead letters and reclaimed leases;
            default :class:`LoggingNotifier`.
        name: This worker's name in leases and notifications; default
            ``host:pid:random``.

    Raises:
        TypeError: If ``db`` is not an open :class:`corral.Database`, ``handler`` is
            not a function (or a mapping of job kind to functions), or another argument
            has the wrong type (``clusters`` a single cluster instead of a list).
        ValueError: If ``handler`` is an empty mapping, ``clusters`` is empty, or two
            clusters share a name.

    Jobs pinned (``affinity``) to a cluster this processor does not have are left for
    a processor that has it.

    It logs on ``corral.jobs`` each job's start (DEBUG) and end (INFO, with the
    category and message of a failure; with the default notifier, whose lines those
    are, failures at WARNING), asking the logger once per batch, not per job. Clusters
    some of which have a ``cost`` and some not are warned of when it is made: one
    without ranks after those with one, as the most expensive.

    """

    def __init__(
        self,
        db: Database,
        handler: Handler | Mapping[str, Handler],
        *,
        clusters: Iterable[Cluster] | None = None,
        config: ProcessorConfig | None = None,
        classify: Classifier | None = None,
        validate: Validator | None = None,
        notifier: Notifier | None = None,
        name: str | None = None,
    ) -> None:
        handlers: dict[str, Handler] = {}
        single: Handler | None = None
        if isinstance(handler, Mapping):
            if not handler:
                raise ValueError(
                    "handler is an empty mapping: map at least one job kind to its handler, "
                    "such as {'render': render}"
                )
            for kind, each in handler.items():
                check_kind(kind, "a key of the handler mapping (a job kind)")
                if not callable(each):
                    raise TypeError(
                        f"the handler of kind {kind!r} must be an async function taking a "
                        f"JobContext, got {each!r}"
                    )
                handlers[kind] = each
        elif not callable(handler):
            raise TypeError(
                f"handler must be an async function taking a JobContext, or a mapping of "
                f"job kind to such functions, got {handler!r}"
            )
        else:
            single = handler
        config = ProcessorConfig() if config is None else config
        check_type("config", config, ProcessorConfig, "a jobs.ProcessorConfig or None")
        if isinstance(clusters, Cluster):
            raise type_error(
                "clusters", "a list of corral.Cluster", clusters, "write clusters=[cluster]"
            )
        if clusters is not None:
            check_type("clusters", clusters, Iterable, "a list of corral.Cluster or None")
        cluster_list = (
            [Cluster("default", config.max_concurrent)] if clusters is None else list(clusters)
        )
        if not cluster_list:
            raise ValueError("clusters is empty: give at least one corral.Cluster")
        for cluster in cluster_list:
            check_type("clusters[i]", cluster, Cluster, "a corral.Cluster")
        names = [c.name for c in cluster_list]
        if len(set(names)) != len(names):
            raise ValueError(f"two clusters share a name: {names!r}")
        unpriced = [c.name for c in cluster_list if c.cost is None]
        if 0 < len(unpriced) < len(cluster_list):
            priced = [c.name for c in cluster_list if c.cost is not None]
            log.warning(
                "%s %s no cost: the scheduler ranks %s after %s, as the most expensive; "
                "give every cluster a cost, or none",
                "cluster" if len(unpriced) == 1 else "clusters",
                f"{unpriced[0]} has" if len(unpriced) == 1 else f"{', '.join(unpriced)} have",
                "it" if len(unpriced) == 1 else "them",
                ", ".join(priced),
            )
        for what, fn in (("classify", classify), ("validate", validate)):
            if fn is not None:
                check_callable(what, fn, "a function or None")
        check_str("Processor name", name, optional=True)
        check_type(
            "db",
            db,
            Database,
            "an open corral.Database",
            fix="async with corral.connect(url) as db: jobs.Processor(db, handler, ...)",
        )
        self._db = db
        self._handler = single
        self._handlers = handlers
        #: The kinds of job it claims, sorted; None for every kind (one handler).
        self.kinds: tuple[str, ...] | None = tuple(sorted(handlers)) if handlers else None
        #: The clusters jobs run on.
        self.clusters: tuple[Cluster, ...] = tuple(cluster_list)
        self._by_name = {c.name: c for c in cluster_list}
        self._router = Router(cluster_list)
        #: The limits and timings.
        self.config = config
        self._classify: Classifier = classify or _default_classify
        self._validate = validate
        self._notifier: Notifier = notifier if notifier is not None else LoggingNotifier()
        #: This worker's name, as recorded in the leases it holds.
        self.name: str = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._counts = dict.fromkeys(
            (
                "claimed",
                "completed",
                "retried",
                "failed",
                "dead",
                "cancelled",
                "reclaimed",
                "lease_lost",
                "notifications_dropped",
                "notifications_failed",
            ),
            0,
        )
        #: What the roles share while run() runs (None in between).
        self._state: ProcessorState | None = None

    def __repr__(self) -> str:
        kinds = "" if self.kinds is None else f" kinds={list(self.kinds)}"
        return (
            f"<corral.jobs.Processor {self.name!r} clusters={[c.name for c in self.clusters]}"
            f"{kinds}>"
        )

    def statistics(self) -> ProcessorStatistics:
        """Return a frozen snapshot of this processor's counters.

        Returns:
            Its counters now (:class:`ProcessorStatistics`).
        """
        state = self._state
        running = 0 if state is None else len(state.running)
        return ProcessorStatistics(running=running, **self._counts)

    # -- running --------------------------------------------------------------------------

    async def run(
        self,
        *,
        until_idle: bool = False,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Claim and run jobs until cancelled, or with ``until_idle`` until none is left.

        Cancelling ``run`` cancels the running handlers and gives their jobs back to the
        queue, ready at once, the attempt not counted. Either way, once its jobs are
        settled, the notifier is given ``config.notify_timeout`` seconds for the
        notifications still waiting before ``run`` returns. An idle ``until_idle`` run
        that leaves waiting jobs none of its clusters can take (labels none has, pinned
        to one it lacks) says so once, at WARNING on ``corral.jobs``.

        Args:
            until_idle: Return once this processor runs nothing and no job it could
                take is ready, retrying or in progress anywhere (so it waits out
                backoffs and the leases of dead workers). A job it could take: of a kind
                it has a handler for, not pinned to a cluster it lacks, and requiring
                only labels one of its clusters has.
            task_status: Started with ``await task_group.start(processor.run)``, that
                returns once the store is ready and watched for new work (a job enqueued
                then wakes this processor), before the first claim.

        Raises:
            RuntimeError: If this processor is already running (one ``run()`` at a
                time).
        """
        if self._state is not None:
            raise RuntimeError(f"{self!r} is already running: one run() at a time")
        state = self._state = ProcessorState(
            db=self._db,
            handler=self._handler,
            handlers=self._handlers,
            kinds=None if self.kinds is None else frozenset(self.kinds),
            name=self.name,
            label=repr(self),
            config=self.config,
            clusters=self.clusters,
            by_name=self._by_name,
            router=self._router,
            classify=self._classify,
            validate=self._validate,
            notifier=self._notifier,
            counts=self._counts,
            on_cluster=dict.fromkeys(self._by_name, 0),
            log_ends=not (
                isinstance(self._notifier, LoggingNotifier) and self._notifier.logger is log
            ),
        )
        listening = False
        queue = self._db._view(JobQueue)  # db.jobs
        queue._watchers.add(state.wake_claimer)
        queue._renewers.add(state.wake_renewer)
        delivery = anyio.CancelScope(shield=True)
        try:
            async with anyio.create_task_group() as notifying:
                # The notifier is called from a task of its own, never from the tasks
                # that claim and report: a slow one holds back no job.
                notifying.start_soon(deliver, state, delivery)
                try:
                    # The store prepared (if need be) and watched in one operation.
                    listen_call = _claims.Call(queue._op(partial(listen, state)))
                    try:
                        await listen_call.run(self._db)
                        queue._ready = True
                    finally:
                        listening = listen_call.committing and bool(listen_call.result)
                    task_status.started()  # ready and watched: tg.start() returns
                    async with anyio.create_task_group() as tg:
                        state.tg = tg
                        tg.start_soon(renewer, state)
                        tg.start_soon(reporter, state)
                        await claimer(state, until_idle)
                        tg.cancel_scope.cancel()
                finally:
                    queue._watchers.discard(state.wake_claimer)
                    queue._renewers.discard(state.wake_renewer)
                    state.tg = None
                    state.queued.clear()
                    state.idle.clear()
                    state.starting = 0
                    with anyio.CancelScope(shield=True):
                        await _settle(state, listening)
                    # What the notifier has yet to take, it gets notify_timeout for.
                    state.events_end = True
                    wake_deliverer(state)
                    delivery.deadline = anyio.current_time() + self.config.notify_timeout
        except BaseExceptionGroup as group:
            # One of its own tasks failed (say, the database broke): raise that error
            # itself, as the caller of run() knows of no task group.
            error: BaseException = group
            while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]
            if error is group:
                raise
            raise error from error.__cause__
        finally:
            self._state = None


async def _settle(state: ProcessorState, listening: bool) -> None:
    """Write what is left (outcomes, give back unfinished jobs), stop listening."""
    late, state.late = state.late, []
    try:
        await report(state)
        left = [e for e in state.running.values() if e._outcome is None]
        if left:
            leases = [(e._claimed, e._take_progress()) for e in left]

            async def give_back(conn: Session) -> None:
                await conn.jobs.release(leases)

            await state.db._run(give_back)
        if listening:
            await state.db._run(partial(unlisten, state))
        if late:  # the events of writes cancelled in their commit: sent once committed
            await state.db._run(_noop)
            for event in late:
                send(state, event)
    except Exception as exc:
        log.warning("%s: could not settle its jobs at exit: %r", state.label, exc)
    finally:
        state.running.clear()


def _default_classify(exc: BaseException) -> ErrorCategory:
    return classify(exc)


async def _noop(conn: Session) -> None:
    return None
