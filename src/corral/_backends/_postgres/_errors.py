"""Which asyncpg errors mean that the connection is gone (not the statement's fault).

After one of them the connection is not used again: the store raises
:class:`~corral.ConnectionLostError` and the writer has it reconnect.
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]

__all__ = ["BROKEN", "broke"]


def broke(conn: asyncpg.Connection, exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) means that ``conn`` is unusable."""
    if conn.is_closed():
        return True
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, BROKEN):
            return True
        error = error.__cause__ or error.__context__
    return False


#: Errors after which the connection is not used again: it broke, the server is going
#: away (a restart, pg_terminate_backend), or it did not answer in time.
BROKEN: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, TimeoutError (asyncpg's timeouts) and the like
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
