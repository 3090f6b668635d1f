"""The processor: claims jobs, runs their handler, records how each attempt ended.

One processor is five kinds of task: the *claimer* (claims batches
of jobs within the limits and queues them to run), the *runners* (each runs queued
jobs one at a time, each in a copy of the context of its own, as a task of its own
would have, and in a cancel scope that is cancelled if its lease is lost; there are
as many runners as jobs waiting in a handler at once, reused from job to job, since
starting a task costs more than a short job), the *reporter* (writes how attempts
ended, many per transaction, fenced by their lease tokens), the *renewer* (extends
the leases of the running jobs every third of ``lease_seconds`` and cancels a job
whose lease was taken over) and, in a task group around theirs, the *deliverer* (hands
notifications to the notifier from a bounded buffer, so that a slow notifier holds
back no job). Nothing outlives
:meth:`Processor.run`: when it is cancelled, the jobs still running are cancelled and
given back (ready at once, the attempt not counted), in a shielded last transaction,
and the notifier is given ``notify_timeout`` for the notifications left.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import secrets
import socket
import types
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._cluster import Cluster
from .._exceptions import ConfigurationError, LeaseLostError
from .._validate import check_text, storable_text
from . import _claims
from ._context import JobContext
from ._model import ErrorCategory, Job, ProcessorConfig, State, classify
from ._notify import EventKind, JobEvent, LoggingNotifier, Notifier
from ._routing import Router

if TYPE_CHECKING:
    from .._backends import Connection
    from .._database import Database

__all__ = ["Processor", "ProcessorStatistics"]

log = logging.getLogger("corral.jobs")

#: A job handler: ``async def handler(ctx: JobContext) -> None``.
Handler = Callable[["JobContext"], Awaitable[object]]
#: Checks a job before it runs: raise to fail it (CONFIGURATION or DATA), never retried.
Validator = Callable[[Job], object]
#: Maps a handler's exception to its category.
Classifier = Callable[[BaseException], ErrorCategory | str]

_MESSAGE_LIMIT = 2000
#: A runner checks for cancellation (and lets other tasks run) after this many jobs in
#: a row that did not wait on anything.
_RUNS_PER_CHECKPOINT = 64


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
            raising fails the attempt (see ``classify``).
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
            :class:`~corral.jobs.ConfigurationError`, as DATA for any other exception.
        notifier: Told about completions, failures, dead letters and reclaimed leases;
            default :class:`LoggingNotifier`.
        name: This worker's name in leases and notifications; default
            ``host:pid:random``.

    Jobs pinned (``affinity``) to a cluster this processor does not have are left for
    a processor that has it.

    """

    def __init__(
        self,
        db: Database,
        handler: Handler,
        *,
        clusters: Iterable[Cluster] | None = None,
        config: ProcessorConfig | None = None,
        classify: Classifier | None = None,
        validate: Validator | None = None,
        notifier: Notifier | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(handler):
            raise TypeError(
                f"handler must be an async function taking a JobContext, got {handler!r}"
            )
        config = ProcessorConfig() if config is None else config
        if not isinstance(config, ProcessorConfig):
            raise TypeError(f"config must be a jobs.ProcessorConfig, got {config!r}")
        if isinstance(clusters, Cluster):
            raise TypeError("clusters must be a list of corral.Cluster; write clusters=[cluster]")
        cluster_list = (
            [Cluster("default", config.max_concurrent)] if clusters is None else list(clusters)
        )
        if not cluster_list:
            raise ValueError("clusters is empty: give at least one corral.Cluster")
        for cluster in cluster_list:
            if not isinstance(cluster, Cluster):
                raise TypeError(f"clusters must hold corral.Cluster objects, got {cluster!r}")
        names = [c.name for c in cluster_list]
        if len(set(names)) != len(names):
            raise ValueError(f"two clusters share a name: {names!r}")
        for what, fn in (("classify", classify), ("validate", validate)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{what} must be a function, got {fn!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if name is not None:
            check_text("Processor name", name)
        from .._database import Database

        if not isinstance(db, Database):
            raise TypeError(
                f"db must be an open corral.Database, got {db!r}: "
                f"async with corral.connect(url) as db: jobs.Processor(db, handler, ...)"
            )
        self._db = db
        self._handler = handler
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
        #: The attempts running here, by lease token (one job may have two: an attempt
        #: whose lease expired and was reclaimed, here or elsewhere, and the new one).
        self._running: dict[int, JobContext] = {}
        self._on_cluster = dict.fromkeys(self._by_name, 0)
        self._outcomes: list[_claims.Outcome] = []
        #: The events of writes committed after their caller was cancelled (sent at exit).
        self._late: list[JobEvent] = []
        #: Claimed jobs no runner has started yet, the wake-up events of the runners
        #: waiting for one, and how many runners are about to look at the queue.
        self._queued: deque[JobContext] = deque()
        self._idle: list[anyio.Event] = []
        self._starting = 0
        # Made by run(), inside an event loop.
        self._claim_wakeup: anyio.Event
        self._report_wakeup: anyio.Event
        self._active = False
        self._tg: anyio.abc.TaskGroup | None = None
        #: Notifications for the notifier's task (see _deliver), whether it was told
        #: of the last, and whether the buffer overflowed since it was last empty.
        self._events: deque[JobEvent] = deque()
        self._events_wakeup: anyio.Event | None = None
        self._events_end = False
        self._overflowing = False
        self._counts = dict.fromkeys(
            (
                "claimed",
                "completed",
                "retried",
                "failed",
                "dead",
                "reclaimed",
                "lease_lost",
                "notifications_dropped",
                "notifications_failed",
            ),
            0,
        )

    def __repr__(self) -> str:
        return f"<corral.jobs.Processor {self.name!r} clusters={[c.name for c in self.clusters]}>"

    def statistics(self) -> ProcessorStatistics:
        """Return a frozen snapshot of this processor's counters."""
        return ProcessorStatistics(running=len(self._running), **self._counts)

    # -- running --------------------------------------------------------------------------

    async def run(self, *, until_idle: bool = False) -> None:
        """Claim and run jobs until cancelled, or with ``until_idle`` until none is left.

        ``until_idle``: return once this processor runs nothing and no job it could
        take is ready, retrying or in progress anywhere (so it waits out backoffs and
        the leases of dead workers). A job it could take: not pinned to a cluster it
        lacks, and requiring only labels one of its clusters has. Cancelling ``run``
        cancels the running handlers and gives their jobs back to the queue, ready at
        once, the attempt not counted. Either way, once its jobs are settled, the
        notifier is given ``config.notify_timeout`` seconds for the notifications still
        waiting before ``run`` returns.
        """
        if self._active:
            raise RuntimeError(f"{self!r} is already running: one run() at a time")
        self._active = True
        self._claim_wakeup = anyio.Event()
        self._report_wakeup = anyio.Event()
        listening = False
        queue = self._db.jobs
        queue._watchers.add(self._wake_claimer)
        self._events_end = self._overflowing = False
        delivery = anyio.CancelScope(shield=True)
        try:
            async with anyio.create_task_group() as notifying:
                # The notifier is called from a task of its own, never from the tasks
                # that claim and report: a slow one holds back no job.
                notifying.start_soon(self._deliver, delivery)
                try:
                    await queue._call(_noop)
                    if self._db.dialect == "postgresql":
                        listen = _claims.Call(self._listen)
                        try:
                            await listen.run(self._db)
                        finally:
                            listening = listen.committing
                    async with anyio.create_task_group() as tg:
                        self._tg = tg
                        tg.start_soon(self._renewer)
                        tg.start_soon(self._reporter)
                        await self._claimer(until_idle)
                        tg.cancel_scope.cancel()
                finally:
                    queue._watchers.discard(self._wake_claimer)
                    self._tg = None
                    self._queued.clear()
                    self._idle.clear()
                    self._starting = 0
                    with anyio.CancelScope(shield=True):
                        await self._settle(listening)
                    # What the notifier has yet to take, it gets notify_timeout for.
                    self._events_end = True
                    self._wake_deliverer()
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
            self._active = False

    async def _listen(self, conn: Connection) -> None:
        await conn.listen(self._db.jobs.channel, self._wake_claimer)  # type: ignore[attr-defined]

    async def _unlisten(self, conn: Connection) -> None:
        await conn.unlisten(self._db.jobs.channel, self._wake_claimer)  # type: ignore[attr-defined]

    def _wake_claimer(self) -> None:
        self._claim_wakeup.set()

    def _request(self, freeing: Iterable[JobContext] = ()) -> _claims.ClaimRequest:
        """Return what a claim may take now, once the attempts ``freeing`` have left."""
        config = self.config
        running = len(self._running)
        on_cluster = dict(self._on_cluster)
        for entry in freeing:
            running -= 1
            on_cluster[entry._claimed.cluster] -= 1
        room = min(config.batch_size, config.max_concurrent - running)
        return _claims.ClaimRequest(
            owner=self.name,
            limit=room,
            max_concurrent=config.max_concurrent,
            per_customer=config.per_customer,
            capacity={c.name: c.capacity for c in self.clusters},
            local_free={c.name: c.capacity - on_cluster[c.name] for c in self.clusters},
            lease_seconds=config.lease_seconds,
            route=self._router,
        )

    async def _claimer(self, until_idle: bool) -> None:
        config = self.config
        names = list(self._by_name)
        labels = [c.labels for c in self.clusters]

        async def outlook(conn: Connection) -> tuple[int, float | None]:
            return await _claims.outlook(conn, names, labels)

        while True:
            request = self._request()
            self._claim_wakeup = anyio.Event()

            async def claim(conn: Connection, request: _claims.ClaimRequest = request) -> Any:
                return await _claims.claim(conn, request)

            call = _claims.Call(claim)
            try:
                claimed, reclaimed, limited = await call.run(self._db)
            except BaseException:
                if call.committing:  # cancelled, claimed all the same: give them back
                    assert call.result is not None
                    claimed, reclaimed, _ = call.result
                    for item in claimed:
                        self._start(item, run=False)
                    self._late.extend(self._reclaim_events(reclaimed))
                raise
            for item in claimed:
                self._start(item)
            for event in self._reclaim_events(reclaimed):
                self._send(event)
            if 0 < request.limit <= len(claimed):
                continue  # took all it asked for: there may be more
            if limited and self._running:
                # Stopped at a limit, with jobs of its own running: not idle, and nothing
                # to claim before a slot frees (which wakes the claimer up).
                waiting, due = 1, None
            else:
                # In a transaction of its own, not under the claim lock: it reads every
                # job waiting.
                waiting, due = await self._db._run(outlook)
            if until_idle and not self._running and waiting == 0:
                return
            timeout = config.poll_interval
            if due is not None and due > 0:
                timeout = min(timeout, due)
            with anyio.move_on_after(timeout):
                await self._claim_wakeup.wait()

    def _reclaim_events(self, reclaimed: list[dict[str, Any]]) -> list[JobEvent]:
        """Count the expired leases a claim just took back; return their events."""
        events = []
        for row in reclaimed:
            self._counts["reclaimed"] += 1
            events.append(
                JobEvent(
                    EventKind.RECLAIMED if row["state"] != State.DEAD else EventKind.DEAD,
                    str(row["id"]),
                    int(row["attempts"]),
                    row["cluster"],
                    ErrorCategory.TRANSIENT,
                    None,
                    row["error_message"],
                    self.name,
                )
            )
        return events

    def _start(self, claimed: _claims.Claimed, *, run: bool = True) -> None:
        """Take a claimed job on: queue it to run, or (not ``run``) to be given back."""
        cluster = self._by_name[claimed.cluster]
        entry = JobContext(self._db, self.name, claimed, cluster)
        self._running[claimed.token] = entry
        self._on_cluster[cluster.name] += 1
        self._counts["claimed"] += 1
        if run:
            self._queued.append(entry)
            self._dispatch()

    def _dispatch(self) -> None:
        """See that a runner will look at the queue: one about to, an idle one, or a new one.

        One at a time: a runner that takes a job while more wait dispatches again, so a
        batch of jobs that wait in their handlers gets a runner each, and a batch of
        jobs that return at once is run by one or two.
        """
        if self._starting:
            return
        self._starting += 1
        if self._idle:
            self._idle.pop().set()
        else:
            tg = self._tg
            assert tg is not None
            tg.start_soon(self._runner, name=f"corral jobs runner of {self.name}")

    async def _runner(self) -> None:
        runs = 0
        while True:
            self._starting -= 1
            while self._queued:
                # One cancel scope for a run of jobs, not one per job (entering a scope
                # costs more than a short job): the renewer cancels it to drop the job
                # running in it, and the jobs after that one get a new scope.
                entry: JobContext | None = None
                with anyio.CancelScope() as scope:
                    while self._queued and not scope.cancel_called:
                        entry = self._queued.popleft()
                        if self._queued:
                            self._dispatch()
                        if entry._lost:
                            self._dropped(entry)
                        else:
                            entry._scope = scope
                            async with entry.cluster._job_unit():  # one of its capacity
                                await self._work(entry)
                            entry._scope = None
                        entry = None
                        runs += 1
                        if runs % _RUNS_PER_CHECKPOINT == 0:
                            await anyio.lowlevel.checkpoint()
                if entry is not None:  # cancelled by the renewer: the lease was taken over
                    entry._scope = None
                    self._dropped(entry)
            wakeup = anyio.Event()
            self._idle.append(wakeup)
            await wakeup.wait()

    async def _work(self, ctx: JobContext) -> None:
        """Run one job; its outcome goes to the reporter (cancellation propagates)."""
        claimed = ctx._claimed
        try:
            refusal = None if self._validate is None else await self._check(ctx)
            if refusal is not None:
                outcome = refusal
            else:
                rest = _in_context(self._handler(ctx), contextvars.copy_context())
                if rest is not None:
                    await rest
                outcome = _claims.Outcome(claimed.id, claimed.token, State.COMPLETED)
        except LeaseLostError:
            self._dropped(ctx)
            return
        except Exception as exc:
            outcome = self._failure(ctx, exc)
        ctx._outcome = _with_progress(outcome, ctx._take_progress())
        self._outcomes.append(ctx._outcome)
        self._report_wakeup.set()

    def _dropped(self, entry: JobContext) -> None:
        """Forget a job whose lease was taken over: record nothing, tell the notifier."""
        claimed = entry._claimed
        self._forget(claimed.token)
        self._counts["lease_lost"] += 1
        message = "another worker took the lease over; this attempt was dropped"
        self._send(
            JobEvent(
                EventKind.LEASE_LOST,
                claimed.id,
                claimed.attempt,
                claimed.cluster,
                None,
                None,
                message,
                self.name,
            )
        )

    async def _check(self, entry: JobContext) -> _claims.Outcome | None:
        if self._validate is None:
            return None
        job = entry._claimed.job
        try:
            result = self._validate(job)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            category = (
                ErrorCategory.CONFIGURATION
                if isinstance(exc, ConfigurationError)
                else ErrorCategory.DATA
            )
            return _claims.Outcome(
                job.id,
                entry._claimed.token,
                State.FAILED,
                category=category,
                step="validate",
                message=_message(exc),
            )
        return None

    def _failure(self, entry: JobContext, exc: Exception) -> _claims.Outcome:
        claimed = entry._claimed
        try:
            category = ErrorCategory(self._classify(exc))
        except Exception as bad:
            log.error("classify(%r) failed (%r); treating the error as TRANSIENT", exc, bad)
            category = ErrorCategory.TRANSIENT
        delay = 0.0
        if not category.retryable:
            state = State.FAILED
        elif claimed.attempt <= claimed.job.max_retries:
            state = State.RETRYING
            delay = self.config.retry.delay(claimed.attempt)
        else:
            state = State.DEAD
        return _claims.Outcome(
            claimed.id,
            claimed.token,
            state,
            delay=delay,
            category=category,
            step=entry._failed_step,
            message=_message(exc),
        )

    def _forget(self, token: int, *, wake: bool = True) -> JobContext | None:
        """Drop the attempt of ``token`` from those running (freeing its slot); return it."""
        entry = self._running.pop(token, None)
        if entry is not None:
            self._on_cluster[entry._claimed.cluster] -= 1
            if wake:
                self._claim_wakeup.set()
        return entry

    async def _reporter(self) -> None:
        while True:
            await self._report_wakeup.wait()
            self._report_wakeup = anyio.Event()
            await self._report(claim=True)

    async def _report(self, *, claim: bool = False) -> None:
        """Write the outcomes waiting; with ``claim``, claim their successors with them.

        Completing and claiming in one transaction halves the transactions of a busy
        worker; the claimer is woken only if room is left after that.
        """
        batch, self._outcomes = self._outcomes, []
        if not batch:
            return
        freeing = [e for o in batch if (e := self._running.get(o.token)) is not None]
        request = self._request(freeing) if claim and self._tg is not None else None
        if request is not None:
            # A report never waits for another worker's claim: its outcomes go first.
            request.wait = request.reclaim = False

        async def write(conn: Connection) -> Any:
            accepted = await _claims.finish(conn, batch)
            if accepted and conn.dialect == "postgresql":
                # Sent at commit; asked for before the claim, whose lock is held until then.
                await conn.execute("SELECT pg_notify(?, '')", self._db.jobs.channel)
            claimed: list[_claims.Claimed] = []
            reclaimed: list[dict[str, Any]] = []
            if request is not None and request.limit > 0:
                claimed, reclaimed, _ = await _claims.claim(conn, request)
            return accepted, claimed, reclaimed

        call = _claims.Call(write)
        try:
            accepted, claimed, reclaimed = await call.run(self._db)
        except BaseException:
            if call.committing:  # cancelled, written all the same: never written twice
                assert call.result is not None
                self._late.extend(self._reported(batch, request, *call.result, run=False))
            else:
                self._outcomes[:0] = batch
            raise
        for event in self._reported(batch, request, accepted, claimed, reclaimed):
            self._send(event)

    def _reported(
        self,
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
        for outcome in batch:
            entry = self._forget(outcome.token, wake=False)  # the claimer is woken below
            attempt, cluster = 0, None
            if entry is not None:
                attempt, cluster = entry._claimed.attempt, entry._claimed.cluster
            if outcome.token in accepted:
                self._counts[_COUNTERS[outcome.state]] += 1
                kind = _KINDS[outcome.state]
                category, step, message = outcome.category, outcome.step, outcome.message
            else:
                self._counts["lease_lost"] += 1
                kind, category, step = EventKind.LEASE_LOST, None, None
                message = "the outcome was refused: another worker took the lease over"
            events.append(
                JobEvent(kind, outcome.id, attempt, cluster, category, step, message, self.name)
            )
        if request is None:
            self._claim_wakeup.set()  # slots freed: the claimer claims
        else:
            for item in claimed:
                self._start(item, run=run)
            if len(self._running) < self.config.max_concurrent:
                self._claim_wakeup.set()  # room left: the claimer claims, or checks for idleness
        events.extend(self._reclaim_events(reclaimed))
        return events

    async def _renewer(self) -> None:
        period = self.config.lease_seconds / 3
        while True:
            await anyio.sleep(period)
            entries = [e for e in self._running.values() if e._outcome is None]
            if not entries:
                continue
            leases = [(e._claimed, e._take_progress()) for e in entries]

            async def renew(conn: Connection, leases: list[Any] = leases) -> set[int]:
                return await _claims.renew(conn, leases, self.config.lease_seconds)

            call = _claims.Call(renew)
            try:
                held = await call.run(self._db)
            except BaseException:
                if not call.committing:  # its progress is to be written with the next
                    for entry, lease in zip(entries, leases, strict=True):
                        entry.progress._give_back(lease[1])
                raise
            for entry in entries:
                lost = entry._claimed.token not in held and entry._outcome is None
                if lost:
                    entry._lost = True
                    if entry._scope is not None:
                        entry._scope.cancel()

    async def _settle(self, listening: bool) -> None:
        """Write what is left (outcomes, give back unfinished jobs), stop listening."""
        late, self._late = self._late, []
        try:
            await self._report()
            left = [e for e in self._running.values() if e._outcome is None]
            if left:
                leases = [(e._claimed, e._take_progress()) for e in left]

                async def give_back(conn: Connection) -> None:
                    await _claims.release(conn, leases)

                await self._db._run(give_back)
            if listening:
                await self._db._run(self._unlisten)
            if late:  # the events of writes cancelled in their commit: sent once committed
                await self._db._run(_noop)
                for event in late:
                    self._send(event)
        except Exception as exc:
            log.warning("%r: could not settle its jobs at exit: %r", self, exc)
        finally:
            self._running.clear()
            self._on_cluster = dict.fromkeys(self._by_name, 0)

    # -- notifications ------------------------------------------------------------------

    def _send(self, event: JobEvent) -> None:
        """Queue ``event`` for the notifier; never waits (if it is behind, drop the oldest)."""
        events = self._events
        if len(events) >= self.config.notify_buffer:
            events.popleft()
            self._counts["notifications_dropped"] += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "%r: the notifier is %d notifications behind (notify_buffer): dropping "
                    "the oldest until it catches up (counted in statistics()."
                    "notifications_dropped)",
                    self,
                    len(events) + 1,
                )
        events.append(event)
        self._wake_deliverer()

    def _wake_deliverer(self) -> None:
        wakeup = self._events_wakeup
        if wakeup is not None:
            self._events_wakeup = None
            wakeup.set()

    async def _deliver(self, scope: anyio.CancelScope) -> None:
        """Hand the queued notifications to the notifier, oldest first, one at a time.

        In ``scope``, shielded: the end of ``run()`` cuts no notification short, but
        the deadline it then sets (``notify_timeout``) does. A notification that
        raises is logged and counted.
        """
        events = self._events
        current: JobEvent | None = None
        with scope:
            while True:
                if not events:
                    self._overflowing = False
                    if self._events_end:
                        break
                    wakeup = self._events_wakeup = anyio.Event()
                    await wakeup.wait()
                    continue
                current = events.popleft()
                try:
                    await self._notifier.notify(current)
                except Exception:
                    self._counts["notifications_failed"] += 1
                    log.exception("%r: the notifier raised on %r; ignored", self, current)
                current = None
        left = len(events) + (current is not None)
        if left:
            events.clear()
            self._counts["notifications_dropped"] += left
            log.warning(
                "%r: %d notifications were not delivered within notify_timeout (%s s) "
                "after run() ended; dropped",
                self,
                left,
                self.config.notify_timeout,
            )


_KINDS = {
    State.COMPLETED: EventKind.COMPLETED,
    State.FAILED: EventKind.FAILED,
    State.RETRYING: EventKind.RETRYING,
    State.DEAD: EventKind.DEAD,
}
_COUNTERS = {
    State.COMPLETED: "completed",
    State.FAILED: "failed",
    State.RETRYING: "retried",
    State.DEAD: "dead",
}


def _default_classify(exc: BaseException) -> ErrorCategory:
    return classify(exc)


def _message(exc: BaseException) -> str:
    text = storable_text(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _with_progress(outcome: _claims.Outcome, progress: int) -> _claims.Outcome:
    if not progress:
        return outcome
    return _claims.Outcome(
        outcome.id,
        outcome.token,
        outcome.state,
        outcome.delay,
        outcome.category,
        outcome.step,
        outcome.message,
        progress,
    )


async def _noop(conn: Connection) -> None:
    return None


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
