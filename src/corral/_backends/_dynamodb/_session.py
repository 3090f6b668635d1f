"""The session of a DynamoDB store: its ports, and the undo log that stands for a rollback.

DynamoDB has no interactive transaction to hold a batch. What a batch writes through
the ports is written at once (a read later in the batch sees it, as on SQL), and each
write records how to undo itself: the item as it was before (``ReturnValues=ALL_OLD``),
put back; or, for an exact count, the same count subtracted. An operation or a source
that fails is undone from the log (a savepoint, rolled back); a batch that fails is
undone whole. Rows of user tables are staged in memory and written once the batch's
operations and sources are done, so that a failed batch writes none.

Every undo is logged before its write is sent, and is right whether or not the write
applied: a write's answer may be lost (the endpoint stopped answering: see
:mod:`._outage`), or botocore may have sent it twice. An undo is safe to repeat too:
one that fails stays in the log, and the rollback tries it again once the endpoint
answers. Only an undo that cannot be right (an update applied whose answer, the item
as it was, was lost) fails for good: the batch is then reported as possibly applied
(``commit_sent=True``: :class:`~corral.CommitUnknownError` for its operations).

What this cannot give that SQL gives: isolation. Another host may read a write that is
undone a moment later, and an undo that puts an item back may overwrite what another
host wrote to that item meanwhile (counts excepted: they are subtracted, never put
back). The job queue's guarantees (exact limits, fencing) do not rest on the undo log:
each claim, finish and reclaim is a conditional write or transaction of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._tables import Staged, scan_table

if TYPE_CHECKING:
    from . import DynamoStore
    from ._jobs import DynamoJobStore
    from ._progress import DynamoProgressStore

__all__ = ["DynamoSession"]

#: An undo: a coroutine function that puts something back as it was.
Undo = Callable[[], Awaitable[object]]


class DynamoSession:
    """What operations and sources of a DynamoDB store are given (a ``Session``)."""

    dialect = "dynamodb"

    def __init__(self, store: DynamoStore) -> None:
        self._store = store
        #: How to undo what the current batch wrote, in order (undone in reverse).
        self.undo_log: list[Undo] = []
        #: The user-table rows of the current batch, written at its end.
        self.staged = Staged()
        self._jobs: DynamoJobStore | None = None
        self._progress: DynamoProgressStore | None = None

    @property
    def jobs(self) -> DynamoJobStore:
        """The job queue, on this store's client."""
        if self._jobs is None:
            from ._jobs import DynamoJobStore

            self._jobs = DynamoJobStore(self._store.client, self._store.names, self.undo_log)
        return self._jobs

    @property
    def progress(self) -> DynamoProgressStore:
        """Runs and subtasks, on this store's client."""
        if self._progress is None:
            from ._progress import DynamoProgressStore

            self._progress = DynamoProgressStore(
                self._store.client, self._store.names, self.undo_log
            )
        return self._progress

    def mark(self) -> int:
        """Return a savepoint: how many undos are logged."""
        return len(self.undo_log)

    async def rollback_to(self, mark: int) -> None:
        """Undo what was written since ``mark``, newest first.

        An undo that raises stays in the log, so that a later rollback (once the
        endpoint answers again) tries it again: every undo is safe to repeat.
        """
        log = self.undo_log
        while len(log) > mark:
            await log[-1]()
            log.pop()

    async def scan_table(self, table: str) -> list[dict[str, Any]]:
        """Return every row of user table ``table``, with this batch's staged rows.

        corral never reads a user's table back; this is for tests and tools, which
        read a table as the SQL stores' ``SELECT *`` does.
        """
        schema = await self._store.resolve_existing(table)
        return await scan_table(self._store.client, self._store.names.prefix, schema, self.staged)
