"""What the processor's writes share: :class:`Call`, and the claimed job decoded.

The statements themselves are the store's (:class:`~corral._ports._jobs.JobStore`,
reached as ``conn.jobs`` in a writer operation); the data types that cross it are
re-exported here for the processor's modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from .._ports._jobs import Claimed as Claimed
from .._ports._jobs import ClaimRequest as ClaimRequest
from .._ports._jobs import Outcome as Outcome
from .._ports._jobs import StepRecord as StepRecord
from ._model import Job
from ._schema import stored_job, stored_steps

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .._database import Database
    from .._ports import Session

__all__ = [
    "Call",
    "ClaimRequest",
    "Claimed",
    "Outcome",
    "StepRecord",
    "claimed_job",
    "claimed_steps",
]

T = TypeVar("T")


class Call(Generic[T]):
    """One call of ``fn(connection)`` in the writer that knows what it did if cancelled.

    ``Database._run`` commits the work of a function that returned, even if its caller
    is cancelled before the commit, and the caller then gets the cancellation, not the
    result: a claim's jobs, or a report's outcomes, would be committed with nobody
    knowing. So the function keeps its result here as its last step, unless its caller
    has given up by then (in which case the writer rolls it back: it checks at the same
    point, with no ``await`` in between). After :meth:`run` raised, :attr:`committing`
    says which it was.

    A batch lost before its commit is written again on a new connection, this call's
    work with it even once its caller has gone (the writer keeps the promise of a
    function that returned): then ``again`` runs in place of the function, doing what
    the caller counted on as committed and no more (``None``: the function again).
    """

    __slots__ = ("_again", "_fn", "_given_up", "committing", "result")

    def __init__(
        self,
        fn: Callable[[Session], Awaitable[T]],
        *,
        again: Callable[[Session], Awaitable[object]] | None = None,
    ) -> None:
        self._fn = fn
        self._again = again
        self._given_up = False
        #: The function returned before its caller gave up: its work is committed with
        #: its batch (unless the writer itself stops), and :attr:`result` is its result.
        self.committing = False
        self.result: T | None = None

    async def run(self, db: Database) -> T:
        """Run the function in ``db``'s writer; return its result once committed."""
        try:
            return cast("T", await db._run(self._call))
        except BaseException as exc:
            self._given_up = True
            if isinstance(exc, Exception):  # it raised, or the writer stopped: rolled back
                self.committing = False
            raise

    async def _call(self, conn: Session) -> T | None:
        if self._given_up:  # written again, its caller gone (committing)
            if self._again is None:
                return await self._fn(conn)
            await self._again(conn)
            return None
        result = await self._fn(conn)
        if not self._given_up:
            self.result = result
            self.committing = True
        return result


def claimed_job(claimed: Claimed) -> Job:
    """Return the job ``claimed`` holds, decoded from its row when first asked for.

    After the claim has committed, so that decoding payloads is no work done under the
    claim lock; kept on the claim, so that it is decoded once.
    """
    job: Job | None = claimed._job
    if job is None:
        job = claimed._job = stored_job(claimed.row)
    return job


def claimed_steps(claimed: Claimed) -> dict[str, Any]:
    """Return the steps the earlier attempts of a claimed job finished, with results."""
    return stored_steps(claimed.row["steps"])
