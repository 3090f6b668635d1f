"""Every exception class corral raises: one class per condition."""

from __future__ import annotations

__all__ = [
    "ColumnTypeError",
    "CommitUnknownError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionLostError",
    "CorralError",
    "DataError",
    "DatabaseClosedError",
    "DatabaseMovedError",
    "DatabaseURLError",
    "DuplicateJobError",
    "IdentifierError",
    "JobError",
    "JobKindError",
    "JobNotFoundError",
    "JobStateError",
    "LeaseLostError",
    "MissingDriverError",
    "MissingKeyError",
    "NotPicklableError",
    "PayloadError",
    "PermanentError",
    "PoolClosedError",
    "ProgressNotFoundError",
    "QueryError",
    "ReadOnlyError",
    "RemoteError",
    "ResourceError",
    "SchemaError",
    "StepResultError",
    "TransientError",
    "UnknownColumnError",
    "UnstorableTextError",
    "WorkerCrashed",
    "WorkerInitializerError",
    "WriteError",
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

    Args:
        message: What happened, naming the worker and the call.
        pid: The operating-system id of the worker process that died.
        exitcode: Its exit code; negative for a signal, ``None`` if unknown.

    Attributes:
        pid: The operating-system id of the worker process that died.
        exitcode: Its exit code; negative for a signal (``-9`` is SIGKILL), ``None`` if
            unknown.
    """

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.pid = pid
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


class RemoteError(CorralError):
    """An exception raised in a worker process could not travel back as itself.

    It did not pickle in the worker, or it pickled but did not unpickle (the common
    ``__init__(self, code, message)`` that passes only ``message`` to
    ``super().__init__``). Only that call fails; the worker lives on. The remote
    traceback is chained as ``__cause__``, as for any exception raised in a worker.

    Args:
        message: What happened, naming the original exception.
        type_name: The qualified name of the original exception's class.
        original_message: ``str()`` of the original exception.
        remote_traceback: The original exception's traceback, formatted in the worker.

    Attributes:
        type_name: The qualified name of the original exception's class
            (``module.Class``).
        original_message: ``str()`` of the original exception.
        remote_traceback: The original exception's traceback, formatted in the worker.
    """

    def __init__(
        self,
        message: str,
        *,
        type_name: str = "",
        original_message: str = "",
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.original_message = original_message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_remote_error,
            (str(self), self.type_name, self.original_message, self.remote_traceback),
        )


def _rebuild_remote_error(
    message: str, type_name: str, original_message: str, remote_traceback: str
) -> RemoteError:
    return RemoteError(
        message,
        type_name=type_name,
        original_message=original_message,
        remote_traceback=remote_traceback,
    )


# -- databases ---------------------------------------------------------------------------


class MissingDriverError(CorralError, ImportError):
    """An optional dependency is not installed.

    The database driver for a URL's scheme (``pip install 'corral[postgres]'``), or rich
    for the live progress display (``pip install 'corral[cli]'``); the message names the
    fix.
    """


class ConnectError(CorralError, ConnectionError):
    """:func:`corral.connect` could not open the database.

    The driver's error is chained as ``__cause__``; the message names the URL (without
    its password).
    """


class DatabaseURLError(CorralError, ValueError):
    """A database URL is malformed, or asks for something corral does not support.

    An unknown scheme, an SQLite URL without its three slashes or with a NUL in its
    path, an unknown or bad query parameter (``sqlite:///x.db?mode=...``). The message
    names what is supported; it shows the URL without its password.
    """


class ReadOnlyError(CorralError):
    """A write was asked of a database opened read-only (``?mode=ro`` in an SQLite URL).

    Raised by ``put()`` before the row is accepted, and by the writes of corral's
    domains (progress, jobs); open the database without ``mode=ro`` to write to it.
    """


class DatabaseMovedError(CorralError):
    """The SQLite database file was moved, replaced or deleted while it was open.

    SQLite would go on committing into the file it holds open, where nobody could read
    the rows again. corral checks the path after every commit instead, and stops the
    writer: raised as the ``__cause__`` of the writer's :class:`WriteError`; the rows
    not committed before the file went away are not stored.
    """


class ConnectionLostError(CorralError, ConnectionError):
    """The connection to the database broke, or its server stopped answering.

    The server restarted or was shut down, the backend was terminated, the network
    dropped the connection, a statement got no answer within ``command_timeout``
    (a PostgreSQL URL parameter), or a DynamoDB endpoint did not answer (after
    botocore's retries). The writer reconnects (DynamoDB: waits for the endpoint) by
    itself, with backoff, for up to ``reconnect_timeout`` seconds (a URL parameter of
    both); this error is raised once it has given up. The driver's error is chained
    as ``__cause__``.

    Args:
        message: What broke, and what was being done.
        commit_sent: Whether ``COMMIT`` had been sent when the connection broke.

    Attributes:
        commit_sent: Whether the connection broke after ``COMMIT`` was sent, before its
            answer came: the transaction may or may not have committed.
    """

    def __init__(self, message: str, *, commit_sent: bool = False) -> None:
        super().__init__(message)
        self.commit_sent = commit_sent


class CommitUnknownError(ConnectionLostError):
    """The connection broke after ``COMMIT`` was sent: the operation may have committed.

    Raised to the caller of an operation (an enqueue, a claim, a report) whose batch
    was committing when the connection was lost. Its effect may or may not be in the
    database: read it back before doing it again. The writer has reconnected and goes
    on; nothing else of the batch is retried.
    """


class IdentifierError(CorralError, ValueError):
    """A table or column name is not a plain identifier.

    Names must match ``[A-Za-z_][A-Za-z0-9_]*`` (at most 63 characters), so that no
    name can carry SQL; corral also quotes every name it writes into a statement.
    """


class UnstorableTextError(CorralError, ValueError):
    """A name holds a character that a database cannot store as text.

    A NUL (U+0000: SQLite stores it, PostgreSQL refuses it) or a lone surrogate (U+D800
    to U+DFFF alone: not UTF-8, so neither database can encode it), in a job's id,
    customer, affinity, region or labels, a step's name, a processor's name, or a
    cluster's name, region or labels. Raised when the object is made, before anything
    is written; the message names the field. (A payload's strings may hold any
    character: they are stored as JSON escapes.)
    """


class SchemaError(CorralError, ValueError):
    """A row or a key does not fit the table it is written to.

    The base class of :class:`UnknownColumnError`, :class:`MissingKeyError` and
    :class:`ColumnTypeError`; raised itself when a table's schema cannot serve as asked
    (a key that is not the table's primary key or a unique index, or a type that cannot
    be inferred from ``None``), or a value the database cannot store faithfully (NaN on
    SQLite, a ``Decimal`` with more digits than SQLite's NUMERIC keeps). Raised by
    ``put()`` before the row is accepted.
    """


class UnknownColumnError(SchemaError):
    """A row names a column that the table does not have."""


class MissingKeyError(SchemaError):
    """A row lacks a value (or has ``None``) for one of the table's key columns."""


class ColumnTypeError(SchemaError, TypeError):
    """A row's value has a Python type that the column's SQL type does not take."""


class DatabaseClosedError(CorralError):
    """A write or a flush was asked of a database whose ``connect`` block has ended.

    Also raised after the writer stopped on a fatal error; that error is chained as
    ``__cause__``.
    """


class QueryError(CorralError):
    """The database refused a statement that corral's domains sent (progress, jobs).

    The message names the database and the statement; the driver's error (an
    ``asyncpg`` or ``sqlite3`` exception) is chained as ``__cause__``.
    """


class WriteError(CorralError):
    """Committing a row to the database failed.

    ``table`` and ``row`` name the row that failed; the driver's error is chained as
    ``__cause__``. Every other row of its batch was committed. Raised by the next
    ``put()`` or ``flush()`` after the failure, or when the ``connect`` block exits.
    When a whole batch could not be committed (the connection broke, ``COMMIT``
    failed), ``row`` is ``None`` and the writer stops.

    Args:
        message: What failed, naming the table and the row.
        table: The table the row was written to.
        row: The row that failed.

    Attributes:
        table: The name of the table the row was written to (``None`` for a whole
            batch).
        row: The row that failed, as a dict of column to value (``None`` for a whole
            batch).
    """

    def __init__(
        self, message: str, *, table: str | None = None, row: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.table = table
        self.row = row


class ProgressNotFoundError(CorralError, LookupError):
    """The run or subtask asked for is not in the database.

    Start it first (``db.progress.start_run`` / ``run.start_subtask``), or check the
    id and the database URL.
    """


# -- the job processor -------------------------------------------------------------------


class JobError(CorralError):
    """Base class of the errors a job handler raises to say how its failure is classified.

    ``category`` is one of ``"TRANSIENT"``, ``"RESOURCE"`` (retried with backoff),
    ``"CONFIGURATION"``, ``"DATA"``, ``"PERMANENT"`` (not retried). Raise a subclass;
    any other exception is classified by the processor's ``classify`` function.
    """

    category: str = "PERMANENT"
    """The error category this class stands for; each subclass sets its own."""


class TransientError(JobError):
    """A failure that may pass by itself (a timeout, a dropped connection): retried."""

    category = "TRANSIENT"
    """Retried with exponential backoff, resuming at the step that failed."""


class ResourceError(JobError):
    """Not enough of something right now (memory, quota, a busy cluster): retried."""

    category = "RESOURCE"
    """Retried with exponential backoff, resuming at the step that failed."""


class ConfigurationError(JobError):
    """The job or its environment is set up wrongly: failed at once, never retried."""

    category = "CONFIGURATION"
    """Failed at once, never retried."""


class DataError(JobError):
    """The job's input is bad: failed at once, never retried."""

    category = "DATA"
    """Failed at once, never retried."""


class PermanentError(JobError):
    """Any other failure that a retry cannot fix: failed at once, never retried."""

    category = "PERMANENT"
    """Failed at once, never retried."""


class PayloadError(CorralError, TypeError, ValueError):
    """A job's payload cannot be stored as JSON.

    It holds something ``json.dumps`` does not take (a set, an object, a circular
    reference), or it nests deeper than ``Job.MAX_PAYLOAD_DEPTH`` levels. Raised when
    the job is made, and again by ``enqueue`` if the payload was changed since (then
    no job of that call is stored).
    """


class JobNotFoundError(CorralError, LookupError):
    """No job with this id is stored in the database."""


class DuplicateJobError(CorralError, ValueError):
    """A job with this id is already stored: ids are unique (an idempotency key)."""


class JobStateError(CorralError, ValueError):
    """The job is not in a state that allows the operation (say, requeueing a running job)."""


class LeaseLostError(CorralError):
    """A worker's lease on its job was taken over: its writes for the job are refused.

    Raised inside a handler (by ``ctx.step`` and ``ctx.run_step``) when the lease expired
    and another worker reclaimed the job; the processor then drops this attempt without
    recording it.
    """


class StepResultError(PermanentError, TypeError, ValueError):
    """A step's result (``ctx.run_step``) cannot be stored as JSON.

    It holds something ``json.dumps`` does not take (a set, an object, bytes, a
    circular reference), or it nests deeper than ``Job.MAX_PAYLOAD_DEPTH`` levels.
    Raised before anything is stored; the job fails as PERMANENT (a retry would compute
    the same result again).
    """


class JobKindError(CorralError, TypeError, ValueError):
    """A job kind is not a valid name: kinds are short, non-empty str (``"render"``).

    Raised by ``Job(kind=...)``, by a ``Processor`` given a mapping of handlers whose
    keys are not such names, and by ``db.jobs.depth``/``list`` given such a ``kind=``.
    """
