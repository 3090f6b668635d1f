"""What the roles of a running processor share: its settings, attempts, queues and wake-ups.

:meth:`Processor.run <corral.jobs.Processor.run>` makes one :class:`ProcessorState` for
the run and hands it to each role (the claimer, the runners, the reporter, the renewer
and the deliverer), which are functions over it in modules of their own. They all run
on one event loop and change it only between awaits, so it needs no lock: what a role
does between two awaits is seen whole by the others.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .._cluster import Cluster
from ._context import JobContext
from ._model import ErrorCategory, Job, ProcessorConfig
from ._notify import JobEvent, Notifier
from ._routing import Router

if TYPE_CHECKING:
    from .._database import Database
    from ._claims import Outcome

__all__ = ["Classifier", "Handler", "ProcessorState", "Validator"]

#: A job handler: ``async def handler(ctx: JobContext) -> None``.
Handler = Callable[["JobContext"], Awaitable[object]]
#: Checks a job before it runs: raise to fail it (CONFIGURATION or DATA), never retried.
Validator = Callable[[Job], object]
#: Maps a handler's exception to its category.
Classifier = Callable[[BaseException], ErrorCategory | str]


@dataclass(eq=False, repr=False, slots=True, kw_only=True)
class ProcessorState:
    """One run of a processor: what it was given, and what it holds as it runs.

    Compared and hashed by identity (its :meth:`wake_claimer` is a listener's key).
    """

    db: Database
    """The database holding the queue."""
    handler: Handler | None
    """The handler of every kind of job, if the processor was given one handler."""
    handlers: dict[str, Handler]
    """Else the handler of each kind it serves, by kind."""
    kinds: frozenset[str] | None
    """The kinds of job it claims: those of ``handlers``; None for every kind."""
    name: str
    """The worker's name, as recorded in the leases it holds."""
    label: str
    """How log messages name the processor (its ``repr``)."""
    config: ProcessorConfig
    """The limits and timings."""
    clusters: tuple[Cluster, ...]
    """The clusters jobs run on."""
    by_name: dict[str, Cluster]
    """The same, by name."""
    router: Router
    """Places claimed jobs on the clusters (handed to each claim)."""
    classify: Classifier
    """Maps a handler's exception to its category."""
    validate: Validator | None
    """Checks a job before its handler runs, if given."""
    notifier: Notifier
    """Told about what happened to jobs, by the deliverer."""
    counts: dict[str, int]
    """The processor's counters (kept over its runs): see ``ProcessorStatistics``."""
    on_cluster: dict[str, int]
    """The attempts running here, by cluster name."""
    log_ends: bool = True
    """Whether the reporter logs how each attempt ended (not where the notifier is the
    :class:`~corral.jobs.LoggingNotifier` of ``corral.jobs``, whose lines those are)."""
    log_starts: bool = False
    """Whether the runners log each job's start: ``corral.jobs`` at DEBUG, read once per
    claim (a flag per job costs less than asking the logger)."""
    cancelling: set[int] = field(default_factory=set)
    """The lease tokens of the attempts running here whose cancellation was asked."""
    running: dict[int, JobContext] = field(default_factory=dict)
    """The attempts running here, by lease token (one job may have two: an attempt
    whose lease expired and was reclaimed, here or elsewhere, and the new one)."""
    outcomes: list[Outcome] = field(default_factory=list)
    """How attempts ended, waiting for the reporter."""
    late: list[JobEvent] = field(default_factory=list)
    """The events of writes committed after their caller was cancelled (sent at exit)."""
    queued: deque[JobContext] = field(default_factory=deque)
    """Claimed jobs no runner has started yet."""
    idle: list[anyio.Event] = field(default_factory=list)
    """The wake-up events of the runners waiting for a job."""
    starting: int = 0
    """How many runners are about to look at ``queued``."""
    claim_wakeup: anyio.Event = field(default_factory=anyio.Event)
    """Set to have the claimer claim (or check for idleness) before its poll interval."""
    report_wakeup: anyio.Event = field(default_factory=anyio.Event)
    """Set to have the reporter write the outcomes waiting."""
    renew_wakeup: anyio.Event = field(default_factory=anyio.Event)
    """Set to have the renewer renew now (a cancellation was asked on this database)."""
    tg: anyio.abc.TaskGroup | None = None
    """The task group of the claimer, renewer, reporter and runners, while it is open."""
    events: deque[JobEvent] = field(default_factory=deque)
    """Notifications for the deliverer, oldest first."""
    events_wakeup: anyio.Event | None = None
    """The deliverer's wake-up, while it waits for a notification."""
    events_end: bool = False
    """Whether the deliverer was told of the last notification."""
    overflowing: bool = False
    """Whether ``events`` overflowed since it was last empty (warned about once)."""

    def wake_claimer(self) -> None:
        """Have the claimer look for work now (new jobs, or slots freed)."""
        self.claim_wakeup.set()

    def wake_renewer(self) -> None:
        """Have the renewer renew now, and so learn of the cancellations asked."""
        self.renew_wakeup.set()
