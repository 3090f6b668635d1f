"""How an attempt ended, as the ``Outcome`` the reporter writes.

Completed (its handler returned), refused by the validator (failed at once, not
retried: CONFIGURATION or DATA), or failed by its handler, classified by the
processor's ``classify`` and then retried after the retry policy's backoff, failed
for good (a category that is not retried) or sent to the dead letter queue (its
retries exhausted).
"""

from __future__ import annotations

import inspect
import logging
import traceback as _traceback

from .._exceptions import ConfigurationError, ResourceError, TransientError
from .._validate import storable_text
from . import _claims
from ._context import JobContext
from ._model import ErrorCategory, State
from ._state import ProcessorState

__all__ = ["check", "failure", "message", "traceback_text", "with_progress"]

log = logging.getLogger("corral.jobs")

#: The longest error message recorded (longer ones are cut, ending with "...").
_MESSAGE_LIMIT = 2000
#: The frames of a traceback recorded: the innermost ones (of each chained exception).
TRACEBACK_FRAMES = 20
#: The most bytes (UTF-8) of a traceback recorded; a longer one keeps its first and
#: last halves, with a line saying how much was cut between them.
TRACEBACK_BYTES = 16 * 1024


async def check(state: ProcessorState, entry: JobContext) -> _claims.Outcome | None:
    """Validate a job before its handler runs: return its failure if it is refused."""
    if state.validate is None:
        return None
    job = entry.job
    try:
        result = state.validate(job)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        if isinstance(exc, TransientError | ResourceError):  # S3 busy: retried, as a handler's
            return failure(state, entry, exc)
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
            message=message(exc),
            traceback=traceback_text(exc),
        )
    return None


def failure(state: ProcessorState, entry: JobContext, exc: Exception) -> _claims.Outcome:
    """Return the outcome of an attempt whose handler raised ``exc``: retry, fail or dead."""
    claimed = entry._claimed
    try:
        category = ErrorCategory(state.classify(exc))
    except Exception as bad:
        log.error("classify(%r) failed (%r); treating the error as TRANSIENT", exc, bad)
        category = ErrorCategory.TRANSIENT
    delay = 0.0
    if not category.retryable:
        outcome_state = State.FAILED
    elif claimed.attempt <= entry.job.max_retries:
        outcome_state = State.RETRYING
        delay = state.config.retry.delay(claimed.attempt)
    else:
        outcome_state = State.DEAD
    return _claims.Outcome(
        claimed.id,
        claimed.token,
        outcome_state,
        delay=delay,
        category=category,
        step=entry._failed_step,
        message=message(exc),
        traceback=traceback_text(exc),
    )


def message(exc: BaseException) -> str:
    """Return how an outcome records ``exc``: its type and text, storable, within limits."""
    text = storable_text(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def traceback_text(exc: BaseException) -> str:
    """Return how an outcome records ``exc``'s traceback: bounded, storable.

    Formatted as Python prints it, chained exceptions included, with the last
    :data:`TRACEBACK_FRAMES` frames of each; at most :data:`TRACEBACK_BYTES` bytes.
    """
    text = storable_text("".join(_traceback.format_exception(exc, limit=-TRACEBACK_FRAMES)))
    encoded = text.encode()
    if len(encoded) <= TRACEBACK_BYTES:
        return text
    half = (TRACEBACK_BYTES - 64) // 2  # 64 bytes left for the line that says so
    cut = len(encoded) - 2 * half
    head = encoded[:half].decode(errors="ignore")
    tail = encoded[-half:].decode(errors="ignore")
    return f"{head}\n[... {cut:,} bytes cut ...]\n{tail}"


def with_progress(outcome: _claims.Outcome, progress: int) -> _claims.Outcome:
    """Return ``outcome`` carrying the ``progress`` counted since the last write."""
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
        outcome.traceback,
    )
