"""What a handler is given: :class:`JobContext`, its steps and its progress counter."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import anyio
import anyio.lowlevel

from .._cluster import Cluster
from .._exceptions import LeaseLostError, StepResultError
from .._map import is_async_callable
from .._thread import to_thread
from .._validate import check_int, check_str
from . import _claims
from ._model import Job, _dumps, dump_within, load_json

if TYPE_CHECKING:
    from .._database import Database
    from .._ports import Session

__all__ = ["JobContext", "JobProgress", "Step"]

P = ParamSpec("P")
T = TypeVar("T")

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
        """Add ``n`` (an int >= 0, default 1) to the job's progress.

        Args:
            n: How much to add (an int >= 0).
        """
        check_int("increment n", n, minimum=0)
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
    (its first ``await`` that yields), which ``async with`` then absorbs. When the
    block raises, the step is recorded as the one that failed.

    .. warning:: A finished step's code *before its first checkpoint runs again*, and a
       body with no checkpoint (synchronous code only) runs again in full: ``async
       with`` cannot skip a block. Prefer :meth:`JobContext.run_step`, which never
       calls a finished step's function; else keep the side effects behind an
       ``await``, or test ``step.done``.

    Args:
        ctx: The context of the job it is a step of (made by :meth:`JobContext.step`).
        name: The step's name, unique within the job.
    """

    __slots__ = ("_ctx", "_scope", "done", "name")

    def __init__(self, ctx: JobContext, name: str) -> None:
        self._ctx = ctx
        self.name: str = name
        #: Whether the step finished in an earlier attempt (its body is skipped).
        self.done: bool = name in ctx._steps
        self._scope: anyio.CancelScope | None = None

    async def __aenter__(self) -> Step:
        self._ctx._enter_step(self.name)
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

    Args:
        db: The database the job is stored in.
        worker: The processor's worker name (host:pid:random).
        claimed: The claimed attempt (made by the processor).
        cluster: The cluster it runs on.
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
        self._steps_map: dict[str, Any] | None = None
        # The JSON of each step's result, once encoded (the stored column is rebuilt
        # from these at each finished step).
        self._step_json: dict[str, str] = {}
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
    def _steps(self) -> dict[str, Any]:
        """The finished steps, ``{name: result}``: of earlier attempts and this one."""
        steps = self._steps_map
        if steps is None:
            steps = self._steps_map = _claims.claimed_steps(self._claimed)
        return steps

    def __repr__(self) -> str:
        job_id, cluster = self._claimed.id, self.cluster.name
        return f"<JobContext {job_id!r} attempt={self.attempt} cluster={cluster!r}>"

    @property
    def steps_done(self) -> tuple[str, ...]:
        """The steps finished so far, in earlier attempts and this one."""
        return tuple(self._steps)

    def step(self, name: str) -> Step:
        """Return the step ``name`` of this job, for ``async with``; see :class:`Step`.

        A finished step's body is skipped only from its first checkpoint on: the code
        before it runs again. :meth:`run_step` skips a finished step's code entirely.

        Args:
            name: The step's name: a non-empty str, unique within the job.

        Returns:
            The step, to use as ``async with ctx.step(name):``.
        """
        check_str("step name", name)
        return Step(self, name)

    @overload
    async def run_step(
        self, name: str, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    @overload
    async def run_step(
        self, name: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    async def run_step(
        self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once per job as the step ``name``; return its result.

        The result is stored with the step (as JSON, committed before this returns),
        and a later attempt of the job (a retry, a reclaim after a lost worker, a
        requeue) returns the stored result without calling ``fn`` at all. What is
        returned is the result as JSON gives it back, on the first attempt too: a tuple
        comes back as a list, dict keys as str. When ``fn`` raises, its exception
        propagates and the step is recorded as the one that failed (a later attempt
        calls ``fn`` again). A plain function cannot be interrupted: cancelled, the
        step waits for it to return.

        Args:
            name: The step's name: a non-empty str, unique within the job. Steps are
                known by name, not by order, so steps may run concurrently (in a task
                group), each storing its own result.
            fn: An async function (awaited in the handler's task), or a plain function,
                which runs in a worker thread (:func:`corral.to_thread`) so that it does
                not block the event loop: make it thread-safe, and make a function that
                must run on the event loop async.
            *args: Positional arguments for ``fn``.
            **kwargs: Keyword arguments for ``fn``.

        Returns:
            ``fn``'s result as JSON gives it back (on the first attempt too), or the
            stored result of an earlier attempt.

        Raises:
            StepResultError: ``fn`` returned something JSON cannot store (nothing is
                stored; the job fails as PERMANENT).
            ValueError: ``name`` was already used (by ``run_step`` or ``step``) in this
                attempt.
            LeaseLostError: another worker took the job over before the result was
                stored; let it propagate (the attempt is dropped).

        """
        check_str("step name", name)
        self._enter_step(name)
        steps = self._steps
        if name in steps:
            result = steps[name]
            if name not in self._step_json:  # encoded before the handler can change it
                self._step_json[name] = _dumps(result)
            await anyio.lowlevel.checkpoint()
            return result
        try:
            if is_async_callable(fn):
                result = await fn(*args, **kwargs)
            else:
                result = await to_thread(fn, *args, **kwargs)
            text = _dump_result(result, self._claimed.id, name)
        except BaseException:
            if self._failed_step is None:
                self._failed_step = name
            raise
        await self._finish_step(name, load_json(text), text)
        return steps[name]

    def _enter_step(self, name: str) -> None:
        """Note that the step ``name`` is used in this attempt; ValueError if it was."""
        entered = self._entered
        if entered is None:
            entered = self._entered = set()
        if name in entered:
            raise ValueError(
                f"step {name!r} was already used in this attempt of job "
                f"{self._claimed.id!r}: step names must be unique within a job (a finished "
                f"step is skipped on retry by its name); give each step its own name"
            )
        entered.add(name)

    def _steps_text(self) -> str:
        """Encode the finished steps as the ``steps`` column stores them."""
        texts = self._step_json
        parts = []
        for name, result in self._steps.items():
            text = texts.get(name)
            if text is None:  # decoded from the store, or a step without a result
                text = texts[name] = _dumps(result)
            parts.append(f"{_dumps(name)}:{text}")
        return "{" + ",".join(parts) + "}"

    async def _finish_step(self, name: str, result: object = None, text: str = "null") -> None:
        """Store the step ``name`` as finished, with its result (and ``text``, its JSON).

        Through the writer, grouped with the step records of other tasks queued beside
        it (group commit, see :func:`_record_steps`); returns once committed.
        """
        steps = self._steps
        if name not in steps:
            steps[name] = result
            self._step_json[name] = text
        # In a transaction even alone (not one_statement): cut off by a lost connection
        # before its COMMIT, it is written again on the new one, as it always was, rather
        # than leave its caller a CommitUnknownError and its progress unknown.
        held = await self._db._run_grouped(_record_steps, _StepWrite(self))
        if not held:
            raise LeaseLostError(
                f"job {self._claimed.id!r}: this worker's lease was taken over by another "
                f"worker (it was not renewed in time); this attempt stops here"
            )


class _StepWrite:
    """One call's step record: its job's context, and the progress its write carries."""

    __slots__ = ("ctx", "taken")

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        #: The progress taken from the job's counter for the write (by the first call of
        #: each job in its group), until it is committed or given back.
        self.taken = 0

    def give_back(self) -> None:
        """Put the progress taken back on the counter: its write was undone."""
        if self.taken:
            self.ctx.progress._give_back(self.taken)
            self.taken = 0


async def _record_steps(conn: Session, writes: list[_StepWrite]) -> list[bool]:
    """Store the finished steps of concurrent step records; return, per call, if held.

    Group commit: the writer runs this once for the step records queued one after
    another (``Database._run_grouped``), of any jobs, in one statement
    (:meth:`~corral._ports._jobs.JobStore.step_done_many`) and one commit. Each job is
    written once, with every step it has finished by then (encoded here, in the
    writer, whatever the order of concurrent steps' writes) and the progress counted
    since its last write, taken here: a call left out of the group (its caller
    cancelled before the group ran) takes none, so nothing is lost, and the next write
    of the job carries it. The progress taken goes back on the counter if the statement
    fails, or if a lost connection rolled the batch back and the writer runs the group
    again (with the same calls: once the group has begun, a cancelled caller's record
    is written all the same).
    """
    first: dict[JobContext, _StepWrite] = {}
    for write in writes:
        write.give_back()  # a run before, rolled back with its batch: taken again below
        first.setdefault(write.ctx, write)
    records: list[_claims.StepRecord] = []
    for ctx, write in first.items():
        write.taken = ctx._take_progress()
        records.append(_claims.StepRecord(ctx._claimed, ctx._steps_text(), write.taken))
    try:
        held = await conn.jobs.step_done_many(records)
    except BaseException:
        for write in first.values():
            write.give_back()
        raise
    return [write.ctx._claimed.token in held for write in writes]


def _dump_result(result: object, job_id: str, step: str) -> str:
    """Encode the result of step ``step``; StepResultError if JSON cannot store it."""
    limit = Job.MAX_PAYLOAD_DEPTH
    fix = (
        "return JSON types (dict, list, str, int, float, bool, None): convert it, or "
        "store the data elsewhere (a file, a table) and return a reference (a path, a key)"
    )
    try:
        text = dump_within(result, limit)
    except (TypeError, ValueError) as exc:
        raise StepResultError(
            f"job {job_id!r}: step {step!r} returned {type(result).__name__} that cannot be "
            f"stored as JSON ({exc}); {fix}"
        ) from exc
    if text is None:
        raise StepResultError(
            f"job {job_id!r}: step {step!r} returned a result nesting deeper than {limit} "
            f"levels (lists and dicts in one another), which not every worker could "
            f"decode; {fix}"
        )
    return text
