"""The progress statements on SQLite and PostgreSQL: :class:`SqlProgressStore`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import Connection

__all__ = ["SqlProgressStore"]


class SqlProgressStore:
    """:class:`~corral._ports._progress.ProgressStore` on one SQL connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
