"""The public database: :func:`connect`, and the :class:`Database` it yields.

The face of the engine's database (:mod:`corral._database`): the same object, with
the views of corral's domains named on it, ``db.progress`` and ``db.jobs``. They are
attached through the engine's view registry (``Database._view``), so the engine
imports no domain and every domain reaches its own view the same way.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from . import _database
from ._jobs._queue import JobQueue
from ._progress import DEFAULT_HEARTBEAT, ProgressTracker, check_heartbeat

__all__ = ["Database", "connect"]


class Database(_database.Database):
    """An open database: its writer, its tables, and the hooks corral's domains use.

    Made by :func:`connect`, valid inside its ``async with`` block. All writes go
    through one writer coroutine, which owns the connection and commits in batches.
    """

    #: Seconds between two heartbeats of an open, idle progress run (``connect``'s).
    _progress_heartbeat: float = DEFAULT_HEARTBEAT

    @property
    def progress(self) -> ProgressTracker:
        """Progress tracking of runs and subtasks in this database (made on first use)."""
        return self._view(ProgressTracker)

    @property
    def jobs(self) -> JobQueue:
        """The durable job queue in this database (see :mod:`corral.jobs`)."""
        return self._view(JobQueue)


def _asyncio_saw_sigint() -> bool:
    """Return whether asyncio's runner has received Ctrl-C (best effort).

    ``asyncio.run`` (and ``anyio.run`` on asyncio) answers SIGINT by cancelling its main
    task, and raises ``KeyboardInterrupt`` only once that task has ended: inside it,
    Ctrl-C reads as a cancellation. The runner's handler counts the signals it got.
    """
    try:
        handler = signal.getsignal(signal.SIGINT)
    except ValueError:  # pragma: no cover - not the main interpreter
        return False
    runner = getattr(getattr(handler, "func", None), "__self__", None)
    return isinstance(runner, asyncio.Runner) and getattr(runner, "_interrupt_count", 0) > 0


@asynccontextmanager
async def connect(
    url: str | None = None,
    *,
    batch_size: int = 50_000,
    flush_interval: float = 0.05,
    max_pending: int = 100_000,
    heartbeat: float = DEFAULT_HEARTBEAT,
) -> AsyncIterator[Database]:
    """Open a database and run its writer for the body of an ``async with`` block.

    Args:
        url: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
            ``sqlite:///:memory:``, or ``postgresql://user@host:port/dbname``
            (``postgres://`` too; query parameters such as ``?search_path=...`` go to
            the server, except corral's own timeouts in seconds: ``connect_timeout``
            (10), ``command_timeout`` (60, per statement) and ``reconnect_timeout``
            (30; 0 never reconnects)); or ``dynamodb://PREFIX?region=...`` (its
            parameters: ``region``, ``endpoint_url``, ``shards`` and
            ``reconnect_timeout``, 30 s as on PostgreSQL; see docs/aws.md). ``None``:
            :func:`default_url`, the ``CORRAL_DB`` environment variable or
            ``sqlite:///corral.db``.
        batch_size: The most rows in one transaction.
        flush_interval: The most seconds a row waits for its batch to fill before it is
            committed anyway; also how often registered sources are polled.
        max_pending: The most rows queued for the writer; ``put`` waits for room beyond
            it (backpressure), so memory stays bounded however fast producers are.
        heartbeat: Seconds between two heartbeats of a progress run started here and
            open but idle (a run being counted gets one at most once a second, in the
            batch that adds its counts). Readers judge a RUNNING run abandoned after
            ``corral progress --abandoned-after`` seconds without one (120 by default,
            four periods of the default 30): raise both together.

    Yields:
        The open :class:`Database`, valid inside the block.

    Raises:
        DatabaseURLError: If ``url`` is malformed, or asks for something corral does
            not support.
        MissingDriverError: If the driver for the URL's scheme is not installed
            (asyncpg: ``pip install 'corral[postgres]'``).
        WriteError: For a row that failed to commit (by the next ``put`` or ``flush``,
            or else when the block exits), or when a failure outside a row stopped the
            writer (see below).

    Guarantees: every row accepted by ``put`` is committed before ``connect`` returns,
    whether the body ends normally, raises or is cancelled (the drain is shielded from
    cancellation), unless it fails. A row that fails to commit (a constraint, a value
    the driver refuses) is left out of its batch, whose other rows are committed, and
    is raised as a :class:`~corral.WriteError` naming the table and the row, with the
    driver's error as ``__cause__``: by the next ``put`` or ``flush``, or else when the
    block exits. If the body itself raised, that exception propagates with a note
    naming the write errors. A failure outside a row (the connection breaks, ``COMMIT``
    fails) stops the writer: the body is cancelled and ``connect`` raises it as a
    ``WriteError`` counting the rows and operations not committed; those rows are
    counted as failed.

    On PostgreSQL a lost connection (a restart, ``pg_terminate_backend``, a network
    failure, a statement past ``command_timeout``) does not stop the writer: it
    connects again with exponential backoff, for up to ``reconnect_timeout`` seconds,
    and writes the batch the server rolled back again. A batch that lost its
    connection after its ``COMMIT`` was sent may have committed: its operations fail
    with :class:`~corral.CommitUnknownError`, and its rows are written again only if it
    held nothing else (else they are raised as a ``WriteError``). Since no statement
    waits past ``command_timeout`` and no reconnection past ``reconnect_timeout``, the
    drain at exit cannot hang on a stalled server.

    On DynamoDB an endpoint that stops answering (after botocore's retries) does not
    stop the writer either: it waits for the endpoint with backoff, for up to
    ``reconnect_timeout`` seconds, undoes what the batch wrote and writes it again
    whole. Only a batch whose undo could not complete (an update applied whose answer
    was lost) fails its operations with :class:`~corral.CommitUnknownError`.

    SQLite runs through the standard library's ``sqlite3`` in a worker thread, in WAL
    mode; PostgreSQL through asyncpg (``pip install 'corral[postgres]'``), copying
    each run of rows straight into its table (through a staging table and one upsert
    only where a key already exists); DynamoDB through aioboto3 (``pip install
    'corral[aws]'``), with ``BatchWriteItem``.

    Progress runs started in the block (``db.progress.start_run``) and still open when
    it is left on an exception are ended before the writer drains: FAILED, with the
    exception's type and text as their message, or INTERRUPTED for a
    ``KeyboardInterrupt`` (Ctrl-C), a ``SystemExit`` or a cancellation. A block that
    ends normally leaves its open runs RUNNING (another process may finish them).

    """
    period = check_heartbeat(heartbeat)
    async with _database.open_database(
        Database,
        url,
        batch_size=batch_size,
        flush_interval=flush_interval,
        max_pending=max_pending,
    ) as db:
        db._progress_heartbeat = period
        try:
            yield db
        except BaseException as exc:
            tracker = db._views.get(ProgressTracker)
            if isinstance(tracker, ProgressTracker):
                with anyio.CancelScope(shield=True):
                    await tracker._end_open_runs(
                        exc, anyio.get_cancelled_exc_class(), sigint=_asyncio_saw_sigint()
                    )
            raise
