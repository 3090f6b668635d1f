"""Notifications: what the processor tells a :class:`Notifier` about jobs."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Protocol

from ._model import ErrorCategory

__all__ = ["JobEvent", "LoggingNotifier", "Notifier"]


class EventKind(enum.StrEnum):
    """What happened to a job."""

    COMPLETED = "completed"
    """The handler returned; the job is completed."""
    FAILED = "failed"
    """It failed with an error that is not retried."""
    RETRYING = "retrying"
    """It failed with a retryable error and will run again after its backoff."""
    DEAD = "dead"
    """Its retries are exhausted: it is in the dead letter queue."""
    RECLAIMED = "reclaimed"
    """Its worker's lease expired (the worker died or hung); this worker reclaimed it."""
    LEASE_LOST = "lease_lost"
    """This worker lost its lease to another; its attempt was dropped, not recorded."""
    CANCELLED = "cancelled"
    """Its cancellation was asked (``db.jobs.cancel``): its handler was cancelled (or
    never started), and the job is cancelled, not retried."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One notification about one job."""

    kind: EventKind
    """What happened."""
    job_id: str
    """The job's id."""
    attempt: int
    """The attempt concerned (1 for the first)."""
    cluster: str | None
    """The cluster the attempt ran on."""
    category: ErrorCategory | None = None
    """For a failure: how it was classified."""
    step: str | None = None
    """For a failure: the step that was running."""
    message: str | None = None
    """For a failure or a reclaim: what went wrong."""
    worker: str | None = None
    """The worker (processor) that sends the notification."""
    traceback: str | None = None
    """For a failure: its traceback, bounded as ``JobRecord.error_traceback``."""
    job_kind: str | None = None
    """The job's kind (``Job.kind``); None where the store did not say (a reclaim)."""
    fence: int | None = None
    """The attempt's lease token (its fencing token), which a retry of the same attempt
    would share: consumers drop duplicates on ``(job_id, fence, kind)``. None for a
    reclaim (the expired lease is taken back by another worker's claim)."""


class Notifier(Protocol):
    """Told about completions, failures, dead letters, cancellations and reclaimed leases.

    Called by the processor after the change is committed, from a task of its own that
    takes the events from a bounded buffer (``ProcessorConfig.notify_buffer``), one at a
    time, oldest first: a slow notifier holds back no job, but past that many events
    behind the oldest are dropped (counted in ``ProcessorStatistics``, and logged). An
    exception raised here is logged and counted, and otherwise ignored: a notification
    never changes what happens to a job.
    """

    async def notify(self, event: JobEvent) -> None:
        """Handle one event.

        Args:
            event: What happened to which job.
        """


class LoggingNotifier:
    """A :class:`Notifier` that logs each event on the ``corral.jobs`` logger.

    Completions, retries and cancellations at INFO, failures and lease changes at
    WARNING, dead letters at ERROR. A failure's traceback follows its line, in the
    same log record.

    Args:
        logger: The logger to log on; ``corral.jobs`` if ``None``.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger: logging.Logger = logger or logging.getLogger("corral.jobs")

    async def notify(self, event: JobEvent) -> None:
        """Log ``event``.

        Args:
            event: What happened to which job.
        """
        level = {
            EventKind.COMPLETED: logging.INFO,
            EventKind.RETRYING: logging.INFO,
            EventKind.CANCELLED: logging.INFO,
            EventKind.DEAD: logging.ERROR,
        }.get(event.kind, logging.WARNING)
        text = describe(event)
        if event.traceback:
            text += f"\n{event.traceback.rstrip()}"
        self.logger.log(level, text)


def describe(event: JobEvent) -> str:
    """Say what ``event`` tells, on one line: the job, how it ended, its attempt, where.

    The job's kind is named unless it is ``default`` (or unknown).

    Args:
        event: The notification to describe.

    Returns:
        One line of text, such as ``job 42 completed (attempt 1 on default)``.
    """
    where = f" on {event.cluster}" if event.cluster else ""
    kind = event.job_kind
    of_kind = f" of kind {kind}" if kind is not None and kind != "default" else ""
    text = f"job {event.job_id}{of_kind} {event.kind.value} (attempt {event.attempt}{where})"
    if event.category is not None:
        text += f": {event.category.value}"
    if event.step is not None:
        text += f" in step {event.step!r}"
    if event.message:
        text += f": {event.message}"
    return text
