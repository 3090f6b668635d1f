"""The progress port: :class:`ProgressStore`, and the plain data types that cross it."""

from __future__ import annotations

from typing import Protocol

__all__ = ["ProgressStore"]


class ProgressStore(Protocol):
    """The storage of runs and subtasks; every method runs inside the caller's batch.

    (To be filled: start a run, start a subtask, add increments, set status, read.)
    """
