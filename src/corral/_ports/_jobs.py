"""The job queue's port: :class:`JobStore`, and the plain data types that cross it."""

from __future__ import annotations

from typing import Protocol

__all__ = ["JobStore"]


class JobStore(Protocol):
    """The storage of one job queue; every method runs inside the caller's batch.

    (To be filled: enqueue, claim, renew, finish, release, step_done, outlook, get,
    depth, list, purge, requeue, wake-ups.)
    """
