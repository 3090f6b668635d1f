"""What the job processor stores and reports: jobs, their states, records and settings."""

from __future__ import annotations

import enum
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from .._exceptions import JobError, JobKindError, PayloadError
from .._ports._jobs import ErrorCategory as ErrorCategory
from .._ports._jobs import State as State
from .._validate import (
    check_choice,
    check_int,
    check_number,
    check_str,
    check_text,
    check_type,
    type_error,
)

__all__ = [
    "DEFAULT_KIND",
    "MAX_KIND_LENGTH",
    "Cancellation",
    "ErrorCategory",
    "Job",
    "JobRecord",
    "LastError",
    "Priority",
    "ProcessorConfig",
    "QueueDepth",
    "RetryPolicy",
    "State",
    "check_kind",
    "classify",
]

#: The kind of a job enqueued without one.
DEFAULT_KIND = "default"
#: The most characters in a job kind's name.
MAX_KIND_LENGTH = 64


def check_kind(value: object, what: str = "Job kind") -> str:
    """Return ``value`` if it is a valid job kind, else raise :class:`~corral.jobs.JobKindError`.

    A kind is a short name: a non-empty str of at most :data:`MAX_KIND_LENGTH` printable
    characters, with no space at either end.

    Args:
        value: The kind to check.
        what: What the value is, as the error names it.

    Returns:
        ``value``, a valid kind.

    Raises:
        JobKindError: If ``value`` is not a valid kind.
    """
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_KIND_LENGTH
        or not value.isprintable()
        or value.strip() != value
    ):
        raise JobKindError(
            f"{what} must be a short name: a non-empty str of at most {MAX_KIND_LENGTH} "
            f"printable characters, with no space at either end, such as 'render'; got "
            f"{value!r:.100}"
        )
    return check_text(what, value)


class Cancellation(enum.StrEnum):
    """What ``db.jobs.cancel(job_id)`` did."""

    CANCELLED = "cancelled"
    """The job was waiting (ready, or retrying): it is cancelled now, and never claimed
    (or it was cancelled already)."""
    REQUESTED = "requested"
    """The job is running: its worker cancels the handler at its next lease renewal (at
    once, for a processor on the same ``Database``) and finishes it cancelled."""


class Priority(enum.StrEnum):
    """How soon a job runs: higher priorities first, then the oldest job first."""

    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for urgent to 3 for low: the order jobs are claimed in."""
        return _RANKS[self]


_RANKS = {Priority.URGENT: 0, Priority.HIGH: 1, Priority.NORMAL: 2, Priority.LOW: 3}
PRIORITY_BY_RANK = {rank: priority for priority, rank in _RANKS.items()}


#: Python's programming errors: a retry runs the same code on the same input, and fails
#: again. ``NotImplementedError`` and ``RecursionError`` are ``RuntimeError``\ s, which
#: are otherwise TRANSIENT, so they are named here.
_PERMANENT = (
    TypeError,
    AttributeError,
    NameError,
    LookupError,
    AssertionError,
    NotImplementedError,
    RecursionError,
    ArithmeticError,
    SyntaxError,
)


def classify(exc: BaseException) -> ErrorCategory:
    """Classify a handler's exception: the processor's default ``classify``.

    By what a retry can fix, checked in this order:

    - a :class:`~corral.jobs.JobError` (``TransientError``, ``DataError`` ...): its own
      category;
    - ``MemoryError``: RESOURCE;
    - ``OSError`` (``ConnectionError``, ``TimeoutError``, a refused or reset socket, a
      busy file ...): TRANSIENT;
    - Python's programming errors, ``TypeError``, ``AttributeError``, ``NameError``,
      ``LookupError`` (``KeyError``, ``IndexError``), ``AssertionError``,
      ``NotImplementedError``, ``RecursionError``, ``ArithmeticError``
      (``ZeroDivisionError``) and ``SyntaxError``: PERMANENT, failed at once (a retry
      would fail the same way);
    - ``ValueError`` (``UnicodeDecodeError``, ``json.JSONDecodeError`` ...): DATA, the
      input is bad;
    - ``ImportError`` (``ModuleNotFoundError``): CONFIGURATION;
    - any other exception: TRANSIENT, so it is retried up to ``max_retries`` times and
      then kept in the dead letter queue, never lost.

    An exception group (from a task group in the handler) takes the category of its
    first exception that is not retryable, else of its first exception. Pass
    ``classify=`` to the processor to decide otherwise (calling this one for the rest).

    Args:
        exc: The exception the handler raised.

    Returns:
        Its category, by the rules above.
    """
    if isinstance(exc, BaseExceptionGroup):
        # Raised by a task group in the handler: a failure a retry cannot fix wins.
        categories = [classify(inner) for inner in exc.exceptions]
        final = [c for c in categories if not c.retryable]
        return (final or categories)[0]
    if isinstance(exc, JobError):
        return ErrorCategory(exc.category)
    if isinstance(exc, MemoryError):
        return ErrorCategory.RESOURCE
    if isinstance(exc, OSError):
        return ErrorCategory.TRANSIENT
    if isinstance(exc, _PERMANENT):
        return ErrorCategory.PERMANENT
    if isinstance(exc, ValueError):
        return ErrorCategory.DATA
    if isinstance(exc, ImportError):
        return ErrorCategory.CONFIGURATION
    return ErrorCategory.TRANSIENT


def _check_name(what: str, value: object, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    return check_str(f"Job {what}", value, max_length=200)


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of work to enqueue: an id, a JSON payload, and how to schedule it.

    Args:
        id: Unique in the database; enqueueing an id that exists raises
            :class:`~corral.jobs.DuplicateJobError` (so an id is an idempotency key).
        payload: Anything ``json.dumps`` takes (dicts, lists, str, numbers, bools, None),
            nested at most :attr:`MAX_PAYLOAD_DEPTH` levels deep; its strings may hold
            any character (stored as JSON escapes). Else :class:`~corral.jobs.PayloadError`.
        priority: ``"urgent"``, ``"high"``, ``"normal"`` (the default) or ``"low"``.
        customer: Whose job it is; ``ProcessorConfig.per_customer`` bounds how many of
            one customer's jobs run at once.
        affinity: The name of the cluster the job must run on; ``None`` lets the
            scheduler choose.
        region: Where the job's data lives: the scheduler prefers a cluster in it.
        requires: Labels the chosen cluster must have (such as ``{"gpu"}``).
        max_retries: How many times a retryable failure is tried again (so at most
            ``max_retries + 1`` attempts) before the job goes to the dead letter queue.
        kind: Which handler runs it (``Processor(db, {"render": render, ...})``): a
            short name, ``"default"`` unless given; else :class:`~corral.jobs.JobKindError`.

    The id, customer, affinity, region and labels are names: a str that holds a NUL or
    a lone surrogate (which a database cannot store as text) raises
    :class:`~corral.UnstorableTextError`.

    """

    #: The deepest a payload may nest (lists and dicts in one another), so that every
    #: worker can decode it whatever its own call stack.
    MAX_PAYLOAD_DEPTH: ClassVar[int] = 500

    id: str
    payload: Any = None
    priority: Priority | str = Priority.NORMAL
    customer: str | None = None
    affinity: str | None = None
    region: str | None = None
    requires: frozenset[str] | Iterable[str] = frozenset()
    max_retries: int = 3
    kind: str = DEFAULT_KIND

    def __post_init__(self) -> None:
        _check_name("id", self.id, optional=False)
        check_kind(self.kind)
        priority = Priority(
            check_choice("Job priority", self.priority, [p.value for p in Priority])
        )
        object.__setattr__(self, "priority", priority)
        _check_name("customer", self.customer)
        _check_name("affinity", self.affinity)
        _check_name("region", self.region)
        if isinstance(self.requires, str):
            raise type_error(
                "Job requires",
                "a collection of labels",
                self.requires,
                f"write requires={{{self.requires!r}}}",
            )
        check_type("Job requires", self.requires, Iterable, "a collection of labels")
        labels = frozenset(self.requires)
        for label in labels:
            check_str("Job requires label", label)
        object.__setattr__(self, "requires", labels)
        check_int("Job max_retries", self.max_retries, minimum=0)
        dump_payload(self.payload, self.id)


@dataclass(frozen=True, slots=True)
class LastError:
    """The most recent failure of a job."""

    category: ErrorCategory
    """How the failure was classified."""
    step: str | None
    """The step (``ctx.step(name)``) that was running when it failed, if any."""
    message: str
    """The exception's type and message."""
    attempt: int
    """The attempt (1 for the first) that failed."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A snapshot of one stored job (from ``db.jobs.get``, ``list`` or ``dead``)."""

    id: str
    """The job's id."""
    kind: str
    """Which handler runs it (``"default"`` unless given)."""
    payload: Any
    """The job's payload, decoded from JSON."""
    priority: Priority
    """Its priority."""
    customer: str | None
    """Whose job it is."""
    affinity: str | None
    """The cluster it is pinned to, if any."""
    region: str | None
    """Where its data lives, if given."""
    requires: frozenset[str]
    """Labels the cluster it runs on must have."""
    max_retries: int
    """Retries allowed after the first attempt."""
    state: State
    """Where it is in its life."""
    cancel_requested: bool
    """Whether its cancellation was asked while it ran (``db.jobs.cancel``): its worker
    stops it at its next lease renewal. Cleared by ``requeue``."""
    attempts: int
    """Attempts started so far (reset by ``requeue``)."""
    cluster: str | None
    """The cluster of its latest attempt."""
    route_reason: str | None
    """Why the scheduler chose that cluster."""
    steps_done: tuple[str, ...]
    """Steps that finished, in the order they did; a retry does not run them again."""
    step_results: dict[str, Any]
    """The results of those steps, by name: what ``ctx.run_step`` returned, as JSON
    decodes it; None for a step of ``ctx.step`` (it has no result)."""
    progress: int
    """The sum of the job's ``ctx.progress.increment()`` calls."""
    last_error: LastError | None
    """Its latest failure, if any (kept after a later success)."""
    error_traceback: str | None
    """The traceback of that failure, as Python prints it: its last 20 frames (of each
    chained exception), at most 16 KiB (a longer one keeps its start and its end, and
    says how much was cut). None where there is none (no failure, an expired lease)."""
    lease_owner: str | None
    """The worker holding its lease while it is in progress."""
    lease_expires_at: datetime | None
    """When that lease runs out unless renewed."""
    created_at: datetime
    """When it was enqueued."""
    started_at: datetime | None
    """When its first attempt started."""
    run_at: datetime
    """When it may next be claimed (the end of its backoff while retrying)."""
    updated_at: datetime
    """When it last changed."""
    finished_at: datetime | None
    """When it completed, failed, went dead or was cancelled."""


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How many jobs are in each state (of the whole queue, or one cluster)."""

    ready: int = 0
    """Waiting for a worker."""
    in_progress: int = 0
    """Running now (leased)."""
    retrying: int = 0
    """Waiting out a backoff."""
    failed: int = 0
    """Failed without retry."""
    dead: int = 0
    """In the dead letter queue."""
    completed: int = 0
    """Done."""
    cancelled: int = 0
    """Cancelled (``db.jobs.cancel``)."""

    @property
    def total(self) -> int:
        """All jobs counted."""
        return (
            self.ready
            + self.in_progress
            + self.retrying
            + self.failed
            + self.dead
            + self.completed
            + self.cancelled
        )

    @property
    def pending(self) -> int:
        """Jobs not finished yet: ready, in progress or retrying."""
        return self.ready + self.in_progress + self.retrying


def _check_seconds(what: str, value: object, *, zero: bool = False) -> float:
    if zero:
        return check_number(what, value, minimum=0, unit="seconds")
    return check_number(what, value, above=0, unit="seconds")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for retryable failures: ``base * 2**(attempt - 1)``, capped.

    With the defaults, the first retry waits about 2 s, the next 4 s, then 8 s ... never
    more than an hour. ``jitter`` spreads each wait at random over
    ``[delay * (1 - jitter), delay]`` so that jobs failing together do not return
    together.
    """

    base: float = 2.0
    """Seconds before the first retry."""
    cap: float = 3600.0
    """The longest wait, in seconds."""
    jitter: float = 0.5
    """The fraction of each wait that is random (0 for none, at most 1)."""

    def __post_init__(self) -> None:
        _check_seconds("RetryPolicy base", self.base, zero=True)
        _check_seconds("RetryPolicy cap", self.cap, zero=True)
        if self.cap < self.base:
            raise ValueError(f"RetryPolicy cap ({self.cap}) is less than base ({self.base})")
        check_number("RetryPolicy jitter", self.jitter, minimum=0, maximum=1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

        Args:
            attempt: The number of the attempt that failed (1 for the first).
            rng: Where the jitter's randomness comes from; the :mod:`random` module's
                own generator if ``None`` (pass a seeded ``random.Random`` to repeat
                the waits).

        Returns:
            The wait in seconds, at most ``cap``.
        """
        exponent = min(max(attempt - 1, 0), 64)
        delay = min(self.cap, self.base * 2.0**exponent)
        if self.jitter:
            delay -= delay * self.jitter * (rng or random).random()
        return delay


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    """Limits and timings of a :class:`~corral.jobs.Processor`.

    The limits are counted over every processor sharing the database (any number of
    processes and hosts on PostgreSQL), from the jobs in progress, and are never
    exceeded. Every processor of one queue should use the same values.
    """

    max_concurrent: int = 10
    """Jobs in progress at once, in all."""
    per_customer: int | None = None
    """Jobs of one customer in progress at once; ``None`` for no limit."""
    lease_seconds: float = 60.0
    """How long a claim holds without renewal; the worker renews it every third of it.
    A job whose worker died is reclaimed by another worker after this long."""
    poll_interval: float = 1.0
    """Seconds an idle worker waits before looking for work again, at most (PostgreSQL
    also wakes it at once by LISTEN/NOTIFY when a job is enqueued or finishes)."""
    batch_size: int = 100
    """Jobs claimed in one transaction, at most."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Backoff between retries."""
    notify_buffer: int = 1000
    """Notifications waiting for the notifier, at most; when it falls further behind,
    the oldest waiting is dropped (counted, and logged)."""
    notify_timeout: float = 5.0
    """Seconds ``run()`` gives the notifier, once its jobs are settled, for the
    notifications still waiting; those left are dropped (counted, and logged)."""

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "batch_size", "notify_buffer"):
            check_int(f"ProcessorConfig {name}", getattr(self, name), minimum=1)
        check_int("ProcessorConfig per_customer", self.per_customer, minimum=1, optional=True)
        _check_seconds("ProcessorConfig lease_seconds", self.lease_seconds)
        _check_seconds("ProcessorConfig poll_interval", self.poll_interval)
        _check_seconds("ProcessorConfig notify_timeout", self.notify_timeout, zero=True)
        check_type("ProcessorConfig retry", self.retry, RetryPolicy, "a jobs.RetryPolicy")


def timestamp(value: float | None) -> datetime | None:
    """Turn stored epoch seconds into an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


def dump_payload(payload: object, job_id: str) -> str:
    """Encode the payload of job ``job_id`` as stored; PayloadError if it cannot be."""
    limit = Job.MAX_PAYLOAD_DEPTH
    try:
        text = dump_within(payload, limit)
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"Job {job_id!r}: payload must be JSON-serializable (dicts, lists, str, "
            f"numbers, bools, None): {exc}; convert it, or store a reference (a path, a "
            f"key) in the payload instead"
        ) from exc
    if text is None:
        raise PayloadError(
            f"Job {job_id!r}: payload nests deeper than {limit} levels (lists and dicts "
            f"in one another), which not every worker could decode; flatten it, or store "
            f"a reference (a path, a key) in the payload instead"
        )
    return text


#: A JSON string or a bracket: what matters to a payload's depth.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def dump_within(value: object, limit: int) -> str | None:
    """Encode ``value`` as compact JSON; None if it nests deeper than ``limit`` levels.

    Raises TypeError or ValueError for a value JSON cannot hold. Payloads and step
    results are bounded alike, so that every worker can decode what another stored.
    """
    try:
        text = _dumps(value)
    except RecursionError:
        return None
    return None if _nests_deeper(text, limit) else text


def _nests_deeper(text: str, limit: int) -> bool:
    """Return whether the JSON ``text`` nests deeper than ``limit`` levels."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case: too few brackets, wherever they are
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def load_json(text: object, default: object = None) -> Any:
    """Decode a stored JSON column.

    corral writes these columns with :func:`json.dumps` (no whitespace around the value),
    so the decoder's own scanner reads them without :func:`json.loads`'s two passes for
    whitespace; anything else it leaves over goes to :func:`json.loads`, which reads it
    or raises as it always would.
    """
    if text is None:
        return default
    text = str(text)
    try:
        value, end = _raw_decode(text)
    except ValueError:
        end = -1
    return value if end == len(text) else json.loads(text)


_raw_decode = json.JSONDecoder().raw_decode
