"""The SQL extra of a SQL backend's session: :class:`Connection`, raw statements."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from ..._ports import Session

__all__ = ["Connection"]


class Connection(Session, Protocol):
    """The writer's connection, as given to hooks (``Database._run``, sources).

    Every call runs on the writer's one connection, inside the current batch
    transaction, so it sees every row accepted before it. SQL uses ``?`` placeholders
    on both databases (the PostgreSQL wrapper numbers them ``$1, $2, ...``); write
    names through :func:`quote` after :func:`check_identifier`.
    """

    #: ``"sqlite"`` or ``"postgresql"``.
    dialect: str

    async def execute(self, sql: str, *args: object) -> None:
        """Run one statement."""

    async def executemany(self, sql: str, args: Iterable[Sequence[object]]) -> None:
        """Run one statement once for each sequence of arguments."""

    async def fetch(self, sql: str, *args: object) -> list[dict[str, object]]:
        """Run a query and return its rows as dicts of column name to value."""

    async def fetch_rows(self, sql: str, *args: object) -> Sequence[Mapping[str, Any]]:
        """Run a query and return its rows, each read by column name (``row["name"]``).

        Unlike :meth:`fetch`, the rows may be the driver's own (not copied into dicts):
        for the many rows of a claim.
        """

    async def fetchval(self, sql: str, *args: object) -> object:
        """Run a query and return the first column of its first row (``None`` if none)."""
