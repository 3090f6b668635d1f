"""What a handler is given: :class:`JobContext`, its steps and its progress counter."""

from __future__ import annotations

import json
import threading
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from .._cluster import Cluster
from .._exceptions import LeaseLostError
from .._validate import check_text
from . import _claims
from ._model import Job

if TYPE_CHECKING:
    from .._database import Database
    from .._ports import Session

__all__ = ["JobContext", "JobProgress", "Step"]

#: Held while a context makes its progress counter (rare: once per job that counts).
_MAKING = threading.Lock()


class JobProgress:
    """The job's own progress counter: ``ctx.progress.increment()``.

    Thread-safe and never blocking; the counts are added to the job's ``progress``
    column through the writer, with the next lease renewal, finished step or outcome.
    """

    __slots__ = ("_lock", "_pending", "_total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = 0
        self._total = 0

    def increment(self, n: int = 1, /) -> None:
        """Add ``n`` (an int >= 0, default 1) to the job's progress."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise TypeError(f"increment() takes an int >= 0, got {n!r}")
        with self._lock:
            self._pending += n
            self._total += n

    @property
    def value(self) -> int:
        """What this attempt has counted so far."""
        return self._total

    def _take(self) -> int:
        with self._lock:
            pending, self._pending = self._pending, 0
        return pending

    def _give_back(self, n: int) -> None:
        with self._lock:
            self._pending += n


class Step:
    """One named step of a job, used as ``async with ctx.step(name):``.

    When the block ends normally the step is recorded as finished (committed before
    the block returns), so a later attempt of the job does not run it again: there,
    :attr:`done` is true and the block's body is cancelled at its first checkpoint
    (its first ``await`` that yields), which ``async with`` then absorbs. A body with
    no checkpoint runs in full, so keep a finished step's side effects behind an
    ``await``, or test ``step.done``. When the block raises, the step is recorded as
    the one that failed.
    """

    __slots__ = ("_ctx", "_scope", "done", "name")

    def __init__(self, ctx: JobContext, name: str) -> None:
        self._ctx = ctx
        self.name = name
        #: Whether the step finished in an earlier attempt (its body is skipped).
        self.done = name in ctx._steps
        self._scope: anyio.CancelScope | None = None

    async def __aenter__(self) -> Step:
        entered = self._ctx._entered
        if entered is None:
            entered = self._ctx._entered = set()
        if self.name in entered:
            raise ValueError(
                f"step {self.name!r} was already used in this attempt of job "
                f"{self._ctx._claimed.id!r}: step names must be unique within a job (a finished "
                f"step is skipped on retry by its name); give each step its own name"
            )
        entered.add(self.name)
        if self.done:
            scope = self._scope = anyio.CancelScope()
            scope.__enter__()
            scope.cancel()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._scope is not None:
            return bool(self._scope.__exit__(exc_type, exc, tb))
        if exc is None:
            await self._ctx._finish_step(self.name)
        elif self._ctx._failed_step is None:
            self._ctx._failed_step = self.name
        return False


class JobContext:
    """What a handler is given: the job, its attempt, its cluster, steps and progress.

    What a handler might not need (the decoded job, the progress counter, the steps)
    is made when first asked for: a processor makes one context per job, and keeps it
    until the job's outcome is written.
    """

    def __init__(
        self, db: Database, worker: str, claimed: _claims.Claimed, cluster: Cluster
    ) -> None:
        #: This attempt's number: 1 for the first.
        self.attempt: int = claimed.attempt
        #: The cluster it runs on.
        self.cluster: Cluster = cluster
        #: Why the scheduler chose that cluster.
        self.route_reason: str = claimed.route_reason
        #: The processor's worker name (host:pid:random).
        self.worker: str = worker
        self._db = db
        self._claimed = claimed
        self._progress: JobProgress | None = None
        self._steps_list: list[str] | None = None
        self._entered: set[str] | None = None
        self._failed_step: str | None = None
        # The processor's, while the job is its: the runner's cancel scope while it
        # runs the job (cancelled if the lease is taken over), whether the lease was
        # lost before it ran, and how it ended.
        self._scope: anyio.CancelScope | None = None
        self._lost = False
        self._outcome: _claims.Outcome | None = None

    @property
    def job(self) -> Job:
        """The job being run (its payload decoded when first asked for)."""
        return _claims.claimed_job(self._claimed)

    @property
    def progress(self) -> JobProgress:
        """The job's own progress counter."""
        progress = self._progress
        if progress is None:
            with _MAKING:  # threads may ask at once: they must share one counter
                progress = self._progress
                if progress is None:
                    progress = self._progress = JobProgress()
        return progress

    def _take_progress(self) -> int:
        """Return the progress counted since last asked (0 if none)."""
        return 0 if self._progress is None else self._progress._take()

    @property
    def _steps(self) -> list[str]:
        steps = self._steps_list
        if steps is None:
            steps = self._steps_list = _claims.claimed_steps(self._claimed)
        return steps

    def __repr__(self) -> str:
        job_id, cluster = self._claimed.id, self.cluster.name
        return f"<JobContext {job_id!r} attempt={self.attempt} cluster={cluster!r}>"

    @property
    def steps_done(self) -> tuple[str, ...]:
        """The steps finished so far, in earlier attempts and this one."""
        return tuple(self._steps)

    def step(self, name: str) -> Step:
        """Return the step ``name`` of this job, for ``async with``; see :class:`Step`."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a step name must be a non-empty str, got {name!r}")
        check_text("step name", name)
        return Step(self, name)

    async def _finish_step(self, name: str) -> None:
        if name not in self._steps:
            self._steps.append(name)
        claimed = self._claimed
        progress = self._take_progress()
        steps = json.dumps(self._steps)

        async def record(conn: Session) -> bool:
            return await conn.jobs.step_done(claimed, steps, progress)

        call = _claims.Call(record)
        try:
            held = await call.run(self._db)
        except BaseException:
            if not call.committing:  # else its progress is committed with the step
                self.progress._give_back(progress)
            raise
        if not held:
            raise LeaseLostError(
                f"job {claimed.id!r}: this worker's lease was taken over by another "
                f"worker (it was not renewed in time); this attempt stops here"
            )
