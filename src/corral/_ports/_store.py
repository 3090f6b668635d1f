"""The writer's port: :class:`Store`, what one writer needs from the store it owns.

The writer (:mod:`corral._writer`) collects rows, operations and the pending writes of
its sources into batches, and hands each batch to its store whole:
:meth:`Store.apply`. How a store makes a batch atomic is its own business: the SQL
backends open one transaction per batch with a savepoint around each run, operation
and source (``corral._backends._sql._batch``); a store without interactive
transactions does what it can, and says so in its docstring.

The plain types that cross the port live here too: :class:`Column` and
:class:`TableSchema` (what :meth:`Store.resolve` describes), :class:`Run` (rows of one
table with the same columns, one bulk upsert), :data:`Failure`, and the
:class:`Operation` and :class:`Source` protocols the writer implements and the store
calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from ._session import Session

__all__ = [
    "Batch",
    "Column",
    "Failure",
    "Operation",
    "Run",
    "Segment",
    "Source",
    "Store",
    "TableSchema",
]

#: The session a store gives operations and sources (a SQL store's adds SQL).
S = TypeVar("S", bound=Session)
S_contra = TypeVar("S_contra", bound=Session, contravariant=True)


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table, with the Python types a value for it may have."""

    name: str
    sql_type: str
    #: Accepted Python types; ``None`` accepts anything (the driver decides).
    types: tuple[type, ...] | None = None
    #: Subclasses of ``types`` that are refused all the same (``bool`` for ``int``).
    exclude: tuple[type, ...] = ()
    #: Turns an accepted value into what the driver binds (SQLite: dates to text).
    convert: Callable[[object], object] | None = None
    #: The store cannot keep NaN here: the message of the ``SchemaError`` refusing it.
    nan_error: str | None = None

    def describe_types(self) -> str:
        """Name the accepted types for an error message."""
        if self.types is None:
            return "anything"
        return " or ".join(t.__name__ for t in self.types)


@dataclass(slots=True, eq=False)
class TableSchema:
    """A table as the writer knows it: its name, key and columns in order."""

    name: str
    key: tuple[str, ...]
    columns: dict[str, Column]
    #: Store-private cache: statements per column tuple, a staging table name.
    cache: dict[object, object] = field(default_factory=dict)
    #: The writer's bookkeeping: the newest run of this table still in its queue.
    tail: Run | None = None


@dataclass(slots=True, eq=False)
class Run:
    """Consecutive rows for one table with the same columns: one bulk statement."""

    table: TableSchema
    columns: tuple[str, ...]
    rows: list[tuple[object, ...]]
    #: The writer's bookkeeping: rows may still be added (the run is in its queue) ...
    open: bool = True
    #: ... if no operation was queued since the run was (operations order the rows).
    epoch: int = 0


#: A row that failed: (index of its run, index of the row in that run, the driver error).
Failure = tuple[int, int, Exception]


class Operation(Protocol[S_contra]):
    """A call queued by ``Database._run``: the store runs it inside its batch.

    Implemented by the writer. The store checks :attr:`abandoned` before it spends a
    round trip on the operation (an abandoned one is skipped), then awaits :meth:`run`
    and keeps its work only if that returns true.
    """

    @property
    def abandoned(self) -> bool:
        """Whether the caller gave up on the call: skip it."""
        ...

    @property
    def autocommit(self) -> bool:
        """Whether its work is one statement, atomic by itself.

        Alone in its batch, a store may run it outside a transaction (the statement
        commits on its own).
        """
        ...

    async def run(self, session: S_contra) -> bool:
        """Call the operation on ``session``; return whether its work is to be kept.

        It returns false when the call failed (its error is the caller's, kept by the
        operation) or was abandoned while it ran. It raises only what is the batch's:
        a :class:`~corral.ConnectionLostError`.
        """
        ...


class Source(Protocol[S_contra]):
    """Something that accumulates writes in memory and hands them to the writer.

    The writer calls :meth:`write` inside every batch for which :meth:`pending` is
    true, polls :meth:`pending` at least every flush interval when nothing else
    arrives, and once more while it drains at exit.
    """

    def pending(self) -> bool:
        """Return whether there is something to write; cheap and thread-safe."""
        ...

    async def write(self, session: S_contra) -> None:
        """Write what is pending through ``session``, inside the batch.

        Its work is kept only if it returns: if it raises, what it did is undone (a
        savepoint on SQL), the rest of the batch is committed, and the error is raised
        as a ``WriteError`` by the next ``put``/``flush`` or at exit. The writer does
        not call it again for the same data, so a source that wants a retry must keep
        what it could not write.
        It runs in the writer's task: it must not wait on the database (``flush``,
        ``Database._run``, ``put`` on a full queue), which raises ``RuntimeError``.
        """
        ...


#: One step of a batch: consecutive runs of rows (written together), or an operation.
Segment = list[Run] | Operation[S]


@dataclass(slots=True, eq=False)
class Batch(Generic[S]):
    """One batch of the writer: what :meth:`Store.apply` writes, and what it reports.

    The store fills in :attr:`failures`, :attr:`written` and :attr:`source_errors` as
    it goes, so that the writer can read them even when :meth:`Store.apply` raises.
    """

    segments: list[Segment[S]]
    """Runs and operations, in the order they were queued."""
    sources: list[Source[S]]
    """The sources with something pending: written after the segments."""
    failures: list[tuple[Run, int, Exception]] = field(default_factory=list)
    """Rows that failed and were left out: (their run, their index in it, the error)."""
    written: list[Source[S]] = field(default_factory=list)
    """The sources whose write succeeded (kept, unless the batch is lost)."""
    source_errors: list[tuple[Source[S], Exception]] = field(default_factory=list)
    """The sources whose write raised (their work undone), with what they raised."""


class Store(Protocol[S]):
    """What the writer needs from a store; one per open database, used by its writer only.

    Nothing calls a store but its writer's one task, one call at a time, so a store
    needs no locking of its own. A store translates its driver's errors at this
    boundary (:class:`~corral.QueryError`, :class:`~corral.SchemaError`, ...),
    chaining the driver's error with ``from``.
    """

    #: The kind of store: ``"sqlite"``, ``"postgresql"``.
    dialect: str
    #: Whether :meth:`reconnect` can restore a lost connection. If not, a
    #: :class:`~corral.ConnectionLostError` stops the writer.
    reconnects: bool

    @property
    def session(self) -> S:
        """What operations and sources are given; it runs on the store's one connection."""
        ...

    async def resolve(
        self, name: str, key: tuple[str, ...], row: Mapping[str, object]
    ) -> TableSchema:
        """Describe table ``name``, creating it from ``row`` when it does not exist.

        Raises :class:`~corral.SchemaError` if ``key`` cannot be upserted on (neither
        the primary key nor a unique index), or the row cannot make a table.
        """
        ...

    async def apply(self, batch: Batch[S]) -> None:
        """Write ``batch``: every segment in order, then every source, then commit.

        Guarantees, where the store has transactions: the batch commits whole or not
        at all; a row that fails is left out alone (reported in
        :attr:`Batch.failures`), the rest of its run kept; an operation's work is kept
        only if :meth:`Operation.run` returned true, and a source's only if its write
        returned (else it lands in :attr:`Batch.source_errors`). An abandoned
        operation is not run. Rows of one key are written in the order queued.

        Raises what is not a row's or an operation's own error: the connection, the
        commit. A lost connection is :class:`~corral.ConnectionLostError`, saying
        whether the commit had been sent (then the batch may have committed).
        """
        ...

    async def reconnect(self) -> None:
        """Connect again after a :class:`~corral.ConnectionLostError` (if :attr:`reconnects`).

        Restores what the session held (staging tables, wake-up registrations).
        Raises :class:`~corral.ConnectionLostError` once it gives up.
        """
        ...

    async def close(self) -> None:
        """Close the connection (and any thread the store runs); never raises."""
        ...
