"""What a writer operation is given: the store's ports, inside the current batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._jobs import JobStore
    from ._progress import ProgressStore

__all__ = ["Session"]


class Session(Protocol):
    """The store, as seen by one writer operation (``Database._run``).

    Every call runs on the writer's one connection (or client), inside the batch the
    operation belongs to: it sees every row accepted before it, and what it does is
    committed with that batch, or not at all.
    """

    @property
    def jobs(self) -> JobStore:
        """The job queue's storage (see :class:`~corral._ports._jobs.JobStore`)."""
        ...

    @property
    def progress(self) -> ProgressStore:
        """Runs and subtasks (see :class:`~corral._ports._progress.ProgressStore`)."""
        ...
