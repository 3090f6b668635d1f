"""The job queue's statements on SQLite and PostgreSQL: :class:`SqlJobStore`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import Connection

__all__ = ["SqlJobStore"]


class SqlJobStore:
    """:class:`~corral._ports._jobs.JobStore` on one SQL connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
