"""The batch transaction of the SQL stores: how :meth:`Store.apply` is done in SQL.

One transaction per batch. Each run of rows is upserted in bulk in a savepoint by the
store's own ``write`` (a run that fails is written again row by row, each row in its
own savepoint, so that only the failing rows are left out); each operation and each
source runs in a savepoint of its own, rolled back if it fails; then ``COMMIT``. Two
shapes take fewer round trips: a batch of rows only is one ``write`` call that begins
and commits too, and an operation alone in its batch runs in the transaction itself,
without a savepoint (if it fails, the transaction is rolled back instead), or, when
its work is one statement (:attr:`~corral._ports.Operation.autocommit`: a lone
enqueue), outside a transaction where the store can. A fatal error rolls the
transaction back and is raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from ..._ports import Batch, Failure, Operation, Run, Session, Source

__all__ = ["Transactional", "apply"]

S = TypeVar("S", bound=Session)
S_co = TypeVar("S_co", bound=Session, covariant=True)


class Transactional(Protocol[S_co]):
    """What :func:`apply` needs of an SQL store: its transaction, in round trips."""

    @property
    def session(self) -> S_co:
        """What operations and sources are given."""
        ...

    async def write(self, runs: Sequence[Run], *, begin: bool, commit: bool) -> list[Failure]:
        """Upsert every run, each in a savepoint; return the rows that failed.

        A run whose bulk statement fails is rolled back to its savepoint and written
        again row by row, each row in its own savepoint, so that only failing rows are
        left out. ``begin`` opens the batch transaction first; ``commit`` commits it at
        the end. An error outside a row (the connection, the commit) is raised.
        """
        ...

    async def begin(self) -> None:
        """Open the batch transaction."""
        ...

    async def run_alone(self, op: Operation[S_co]) -> None:
        """Run an :attr:`~corral._ports.Operation.autocommit` operation alone in its batch.

        Outside a transaction if the store can (its one statement commits on its own: a
        lost connection then says the commit was sent); else as any lone operation.
        """
        ...

    async def commit(self) -> None:
        """Commit the batch transaction."""
        ...

    async def rollback(self) -> None:
        """Roll the batch transaction back (after a fatal error); never raises."""
        ...

    async def savepoint(self, name: str) -> None:
        """Set a savepoint inside the batch transaction."""
        ...

    async def release(self, name: str) -> None:
        """Release a savepoint (keep its work)."""
        ...

    async def rollback_to(self, name: str) -> None:
        """Undo the work since a savepoint, and release it."""
        ...


async def apply(store: Transactional[S], batch: Batch[S]) -> None:
    """Write ``batch`` in one transaction; see the module docstring."""
    segments = batch.segments
    sources = batch.sources
    failures = batch.failures
    try:
        if not sources and len(segments) < 2 and (not segments or isinstance(segments[0], list)):
            if segments:  # rows only: one call that begins and commits too
                runs = segments[0]
                assert isinstance(runs, list)
                failed = await store.write(runs, begin=True, commit=True)
                failures.extend((runs[n], i, exc) for n, i, exc in failed)
        elif len(segments) == 1 and not sources:
            # One call alone: no savepoint (two round trips, and a subtransaction,
            # less); if it fails, the whole transaction is rolled back instead.
            op = segments[0]
            assert not isinstance(op, list)
            if op.abandoned:
                pass
            elif op.autocommit:
                await store.run_alone(op)
            else:
                await store.begin()
                if await op.run(store.session):
                    await store.commit()
                else:
                    await store.rollback()
        else:
            await store.begin()
            for segment in segments:
                if isinstance(segment, list):
                    failed = await store.write(segment, begin=False, commit=False)
                    failures.extend((segment[n], i, exc) for n, i, exc in failed)
                else:
                    await _operation(store, segment)
            for source in sources:
                await _source(store, source, batch)
            await store.commit()
    except BaseException:
        await store.rollback()
        raise


async def _operation(store: Transactional[S], op: Operation[S]) -> None:
    """Run ``op`` in a savepoint of its own, kept only if it succeeded."""
    if op.abandoned:
        return
    await store.savepoint("corral_op")
    if await op.run(store.session):
        await store.release("corral_op")
    else:
        await store.rollback_to("corral_op")


async def _source(store: Transactional[S], source: Source[S], batch: Batch[S]) -> None:
    """Write ``source`` in a savepoint of its own; note how it went in ``batch``."""
    await store.savepoint("corral_source")
    try:
        await source.write(store.session)
    except Exception as exc:
        await store.rollback_to("corral_source")
        batch.source_errors.append((source, exc))
    else:
        batch.written.append(source)
        await store.release("corral_source")
