"""The stored form of a job: how a job row encodes it, and how it is rebuilt.

A store (:class:`~corral._ports._jobs.JobStore`) keeps the columns of a job as the
domain encodes them: the payload and the labels as JSON text, the priority as its
rank. These helpers decode what a store hands back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._model import PRIORITY_BY_RANK, Job, State, load_json

__all__ = [
    "FINISHED",
    "NO_LABELS",
    "NO_STEPS",
    "stored_job",
    "stored_labels",
    "stored_steps",
]

#: The states a job ends in (until requeued).
FINISHED = (State.COMPLETED.value, State.FAILED.value, State.DEAD.value, State.CANCELLED.value)
#: How a job requiring no labels stores them.
NO_LABELS = "[]"
#: How a job with no finished steps stores them (the column's default). A job with
#: finished steps stores a JSON object, ``{name: result}`` in the order they finished
#: (``null`` for a step of ``ctx.step``, which has no result).
NO_STEPS = "[]"


def stored_job(row: Mapping[str, Any]) -> Job:
    """Rebuild the job a row stores, without checking it again (it was, when enqueued)."""
    job = object.__new__(Job)
    setattr_ = object.__setattr__
    setattr_(job, "id", row["id"])
    setattr_(job, "payload", load_json(row["payload"]))
    setattr_(job, "priority", PRIORITY_BY_RANK[int(row["priority"])])
    setattr_(job, "customer", row["customer"])
    setattr_(job, "affinity", row["affinity"])
    setattr_(job, "region", row["region"])
    setattr_(job, "requires", stored_labels(row["requires"]))
    setattr_(job, "max_retries", int(row["max_retries"]))
    setattr_(job, "kind", row["kind"])
    return job


def stored_labels(requires: object) -> frozenset[str]:
    """Decode a stored ``requires`` column: the labels a job needs."""
    return _NO_LABELS_SET if requires == NO_LABELS else frozenset(load_json(requires))


def stored_steps(steps: object) -> dict[str, Any]:
    """Decode a stored ``steps`` column: the steps a job's attempts finished, with results.

    Returns ``{name: result}`` in the order they finished. The list of names that
    corral stored before steps had results (``["fetch", "parse"]``) reads as steps
    with no result (``None``).
    """
    if steps == NO_STEPS:
        return {}
    value = load_json(steps, {})
    return value if isinstance(value, dict) else dict.fromkeys(value)


_NO_LABELS_SET: frozenset[str] = frozenset()
