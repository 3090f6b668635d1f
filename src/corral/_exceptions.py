"""Every exception class corral raises: one class per condition."""

from __future__ import annotations

__all__ = [
    "CorralError",
    "NotPicklableError",
    "PoolClosedError",
    "WorkerCrashed",
    "WorkerInitializerError",
]


class CorralError(Exception):
    """Base class of every error that corral itself raises."""


class NotPicklableError(CorralError, TypeError):
    """Something that must cross a process boundary cannot be pickled.

    Raised before any work starts for the function, and before an item is sent for
    its arguments. The message names the object and suggests ``offload="thread"``.
    """


class WorkerCrashed(CorralError):
    """A worker process died while it ran this call.

    The process exited (``os._exit``), was killed by a signal or by the OOM killer.
    Only the call that was running in it fails; the pool starts a replacement.
    """

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        #: The operating-system id of the worker process that died.
        self.pid = pid
        #: Its exit code; negative for a signal (``-9`` is SIGKILL), ``None`` if unknown.
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_worker_crashed, (str(self), self.pid, self.exitcode))


def _rebuild_worker_crashed(message: str, pid: int | None, exitcode: int | None) -> WorkerCrashed:
    return WorkerCrashed(message, pid=pid, exitcode=exitcode)


class WorkerInitializerError(CorralError):
    """A process pool's ``initializer`` raised in a new worker.

    The original exception is chained as ``__cause__``. Calls that needed that worker
    fail with this error; fix the initializer, it runs once in every worker.
    """


class PoolClosedError(CorralError):
    """A call was made on a :class:`~corral.ProcessPool` that was already closed."""
