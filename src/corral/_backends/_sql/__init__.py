"""What the SQL backends (SQLite, PostgreSQL) share: the statements of every port.

Each SQL connection class mixes in :class:`SqlSession`, which makes the port
implementations of this package on first use, bound to that connection.

- :mod:`._connection`: :class:`~._connection.Connection`, the SQL extra of the session.
- :mod:`._tables`: checked and quoted names, ``CREATE TABLE``, upserts, key checks.
- :mod:`._batch`: the batch transaction (:meth:`~corral._ports.Store.apply` in SQL).
- :mod:`._jobs`, :mod:`._progress`: the statements of the jobs and progress ports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._connection import Connection
    from ._jobs import SqlJobStore
    from ._progress import SqlProgressStore

__all__ = ["SqlSession"]


class SqlSession:
    """The :class:`~corral._ports._session.Session` of an SQL connection (a mixin)."""

    _jobs_store: SqlJobStore | None = None
    _progress_store: SqlProgressStore | None = None

    @property
    def jobs(self) -> SqlJobStore:
        """The job queue's statements, on this connection."""
        store = self._jobs_store
        if store is None:
            from ._jobs import SqlJobStore

            store = self._jobs_store = SqlJobStore(self._as_connection())
        return store

    @property
    def progress(self) -> SqlProgressStore:
        """The progress statements, on this connection."""
        store = self._progress_store
        if store is None:
            from ._progress import SqlProgressStore

            store = self._progress_store = SqlProgressStore(self._as_connection())
        return store

    def _as_connection(self) -> Connection:
        return self  # type: ignore[return-value]  # the class mixing this in is one
