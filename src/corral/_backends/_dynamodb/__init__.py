"""DynamoDB through aioboto3: the store of ``dynamodb://PREFIX?region=...`` URLs.

Every table is named from the URL's prefix and made on first use, billed on demand:

- ``PREFIX_meta`` (``pk``): counters (job order, run ids), the limits' counter items
  (``limit#all``, ``limit#cluster#NAME``, ``limit#customer#NAME``, or ``KEY#0`` ...
  ``KEY#N-1`` with ``shards=N``: each holds the set of its holders, whose size is the
  count), the layout (``layout``: the number of shards) and the catalog of user tables;
- ``PREFIX_jobs`` (``id``), with the sparse index ``waiting`` (``wq``, ``wsort``) of the
  jobs ready or retrying, in claim order (see :mod:`._jobs`);
- ``PREFIX_progress`` (``pk`` run, ``sk`` the run itself or a subtask: :mod:`._progress`);
- ``PREFIX_t_NAME`` for ``db.table("NAME", key=...)`` (:mod:`._tables`).

A batch has no transaction to live in: see :mod:`._session` for what a rollback is
here (an undo log), and :mod:`._jobs` for how claims stay exact without one.

**Outages.** An endpoint that stops answering (after botocore's retries) does not stop
the writer: :meth:`DynamoStore.apply` waits for it to answer again (:mod:`._outage`:
probes with backoff, for up to the URL's ``reconnect_timeout`` seconds, 30 by default),
then undoes what the batch wrote. If the undo completes, the batch is raised as lost
before anything of it was kept (``commit_sent=False``), and the writer writes it again
whole; if the wait is given up or the undo cannot complete (an update applied whose
answer, the item as it was, was lost), the batch may be partly applied
(``commit_sent=True``): its operations get :class:`~corral.CommitUnknownError`.
Staged rows are upserts, and the job store's renewals, outcomes, releases, steps and
reclaims are fenced: writing them twice leaves what once would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from ..._exceptions import ConnectError, ConnectionLostError, CorralError, QueryError, SchemaError
from ..._ports import Batch, TableSchema, redact
from ._client import RECONNECT_TIMEOUT, Client, open_client, parse, translate
from ._outage import Outage, probe
from ._session import DynamoSession
from ._tables import MAX_KEY_COLUMNS, create_table, resolve, write_staged

__all__ = ["MAX_KEY_COLUMNS", "DynamoStore", "Names", "open_store"]


@dataclass(frozen=True, slots=True)
class Names:
    """The names of corral's tables under one prefix."""

    prefix: str
    #: Partitions of the waiting index and of each limit's counter (the URL's ``shards``).
    shards: int = 1

    @property
    def meta(self) -> str:
        """Counters, limits and the catalog of user tables."""
        return f"{self.prefix}_meta"

    @property
    def jobs(self) -> str:
        """The job queue."""
        return f"{self.prefix}_jobs"

    @property
    def progress(self) -> str:
        """Runs and subtasks."""
        return f"{self.prefix}_progress"


async def ensure_meta(client: Client, names: Names) -> None:
    """Create the meta table if it is missing."""
    await create_table(client, names.meta, [("pk", "S")])


async def open_store(url: str) -> DynamoStore:
    """Open the ``dynamodb://`` URL's tables (made on first use).

    One ``DescribeTable`` of the meta table checks, creating nothing, that the endpoint
    answers and takes the credentials: if not, :class:`~corral.ConnectError` says so
    here, at ``connect``, as the SQL stores fail there (a table not made yet, or a
    role not allowed to describe it, is fine).
    """
    target = parse(url)
    client = await open_client(url, target)
    names = Names(target.prefix, target.shards)
    try:
        await probe(client, names.meta)
    except BaseException as exc:
        await client.close()
        if isinstance(exc, CorralError):
            raise ConnectError(f"could not open DynamoDB for {redact(url)!r}: {exc}") from exc
        raise
    return DynamoStore(client, names, target.reconnect_timeout)


class DynamoStore:
    """corral's tables in DynamoDB, reached through one client: a ``Store``."""

    dialect = "dynamodb"
    #: An endpoint that stopped answering is waited for (see :meth:`reconnect`).
    reconnects = True
    #: Key columns a user table may have (``db.table`` refuses more).
    max_key_columns = MAX_KEY_COLUMNS

    def __init__(
        self, client: Client, names: Names, reconnect_timeout: float = RECONNECT_TIMEOUT
    ) -> None:
        self.client = client
        self.names = names
        #: Whether the endpoint answers, and the wait for it when it does not.
        self.outage = Outage(client, names.meta, reconnect_timeout)
        #: What operations and sources are given.
        self.session = DynamoSession(self)
        self._meta_ready = False
        self._schemas: dict[str, TableSchema] = {}

    async def _ensure_meta(self) -> None:
        if not self._meta_ready:
            await ensure_meta(self.client, self.names)
            self._meta_ready = True

    async def resolve(
        self, name: str, key: tuple[str, ...], row: Mapping[str, object]
    ) -> TableSchema:
        """Describe user table ``name``, creating it from ``row`` when it does not exist."""
        await self._ensure_meta()
        try:
            schema = await resolve(self.client, self.names.prefix, self.names.meta, name, key, row)
        except CorralError:  # SchemaError, IdentifierError: the row's, already named
            raise
        except Exception as exc:
            raise translate(f"making table {name!r}", exc) from exc
        self._schemas[name] = schema
        return schema

    async def resolve_existing(self, name: str) -> TableSchema:
        """Describe user table ``name``, which a batch has written (or raise SchemaError)."""
        schema = self._schemas.get(name)
        if schema is not None:
            return schema
        await self._ensure_meta()
        found = await self.client.call(
            "get_item", TableName=self.names.meta, Key={"pk": {"S": f"table#{name}"}}
        )
        item = found.get("Item")
        if item is None:
            raise SchemaError(f"there is no table {name!r} in DynamoDB under {self.names.prefix!r}")
        key = tuple(v["S"] for v in item["key"]["L"])
        return await self.resolve(name, key, {})

    async def apply(self, batch: Batch[DynamoSession]) -> None:
        """Write ``batch``: its operations and sources at once, its rows at the end.

        See :mod:`._session`: what a failed operation or source wrote is undone; what
        raises out of here undoes the whole batch first. An endpoint that stopped
        answering is waited for first (see :meth:`_lost`): the
        :class:`~corral.ConnectionLostError` raised says whether the batch was undone
        (``commit_sent=False``) or may be partly applied (``commit_sent=True``).
        """
        session = self.session
        log = session.undo_log
        log.clear()
        staged = session.staged
        staged.tables.clear()
        try:
            for segment in batch.segments:
                if isinstance(segment, list):
                    for run in segment:
                        staged.stage(run, batch.failures)
                    continue
                if segment.abandoned:
                    continue
                mark = session.mark()
                if not await segment.run(session):
                    await session.rollback_to(mark)
            for source in batch.sources:
                mark = session.mark()
                try:
                    await source.write(session)
                except ConnectionLostError:
                    raise  # the batch's, not the source's
                except Exception as exc:
                    await session.rollback_to(mark)
                    batch.source_errors.append((source, exc))
                else:
                    batch.written.append(source)
            if staged.tables:
                try:
                    await write_staged(self.client, self.names.prefix, staged, batch.failures)
                except CorralError:  # translated by the client, saying what broke
                    raise
                except Exception as exc:
                    raise QueryError(
                        f"DynamoDB failed while the batch's rows were written (some may be "
                        f"written): {type(exc).__name__}: {exc}"
                    ) from exc
        except ConnectionLostError as exc:
            with anyio.CancelScope(shield=True):
                lost = await self._lost(exc)
            raise lost from exc
        except BaseException:
            # The batch's own error is the one raised; its undo does what it can.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await session.rollback_to(0)
            raise
        else:
            self.outage.over()
        finally:
            log.clear()
            staged.tables.clear()

    async def _lost(self, lost: ConnectionLostError) -> ConnectionLostError:
        """Wait for the endpoint, undo the batch; return what to raise: whether it is undone.

        The undo is tried again after each loss in it (an undo is safe to repeat), for
        as long as the outage may last. ``commit_sent=False``: the batch is undone, the
        writer writes it again whole (:meth:`reconnect` returns at once); ``True``: the
        wait was given up, or an undo failed otherwise, and the batch may be partly
        applied. With ``reconnect_timeout=0`` the undo is tried once, at once, and the
        outage stays (:meth:`reconnect` then gives up).
        """
        outage = self.outage
        outage.begin(lost)
        while True:
            if outage.budget:
                try:
                    await outage.wait()
                except ConnectionLostError as exc:
                    return ConnectionLostError(
                        f"{exc}; what the batch wrote could not be undone: it may be "
                        f"partly applied",
                        commit_sent=True,
                    )
            try:
                await self.session.rollback_to(0)
            except ConnectionLostError as exc:
                outage.begin(exc)
                if outage.budget:
                    continue
                why: Exception = exc
            except Exception as exc:
                why = exc
            else:
                return ConnectionLostError(
                    f"{lost}; what the batch wrote is undone", commit_sent=False
                )
            return ConnectionLostError(
                f"{lost}; undoing what the batch wrote failed too ({type(why).__name__}: "
                f"{why}): it may be partly applied",
                commit_sent=True,
            )

    async def reconnect(self) -> None:
        """Wait for the endpoint to answer again, with backoff (see :mod:`._outage`).

        Returns at once if it answered since it was lost (:meth:`apply` waits for it
        to undo its batch). Raises :class:`~corral.ConnectionLostError` once
        ``reconnect_timeout`` seconds are spent since it stopped answering (at once if
        it is 0).
        """
        await self.outage.wait()

    async def close(self) -> None:
        """Close the client and its loop thread; never raises."""
        await self.client.close()
