"""The settings a PostgreSQL URL gives corral itself: its timeouts, in seconds."""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass

from ..._exceptions import DatabaseURLError
from ..._ports import redact, seconds

__all__ = ["SETTINGS", "Settings", "split_settings"]

#: The query parameters of a PostgreSQL URL that corral reads itself (they are not sent
#: to the server), with their defaults in seconds.
SETTINGS: dict[str, float] = {
    "connect_timeout": 10.0,
    "command_timeout": 60.0,
    "reconnect_timeout": 30.0,
}


@dataclass(frozen=True, slots=True)
class Settings:
    """The timeouts of one database, in seconds (see :data:`SETTINGS`)."""

    connect_timeout: float
    """The most that opening a connection (TCP, TLS, authentication) may take."""
    command_timeout: float
    """The most that one statement (or one ``COPY``) may wait for the server."""
    reconnect_timeout: float
    """How long the writer keeps trying to connect again after losing its connection
    (0: it does not reconnect)."""


def split_settings(dsn: str) -> tuple[str, Settings]:
    """Return ``dsn`` without corral's own query parameters, and their values.

    Raises :class:`~corral.DatabaseURLError` for a value that is not a number of
    seconds (> 0; ``reconnect_timeout`` may be 0).
    """
    parts = urllib.parse.urlsplit(dsn)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    values = dict(SETTINGS)
    kept: list[tuple[str, str]] = []
    for name, text in pairs:
        if name not in SETTINGS:
            kept.append((name, text))
            continue
        least = 0.0 if name == "reconnect_timeout" else math.ulp(0.0)
        value = seconds(text, least)
        if value is None:
            bound = ">= 0" if least == 0 else "> 0"
            raise DatabaseURLError(
                f"{name}={text!r} in {redact(dsn)!r} is not a finite number of seconds "
                f"{bound}; write it like ?{name}={SETTINGS[name]:g}"
            )
        values[name] = value
    if len(kept) < len(pairs):
        dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
    return dsn, Settings(**values)
