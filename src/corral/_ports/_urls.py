"""URL helpers: hide a database URL's secrets; read a parameter's number of seconds.

Plain functions on URL strings, used wherever a URL or a driver's message may be shown
(a ``repr``, an error, the command line's output), and by the stores' URL parsers.
"""

from __future__ import annotations

import math
import urllib.parse

__all__ = ["redact", "scrub", "seconds"]


#: Query parameters whose value is a secret: asyncpg's (and libpq's) names for them.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def seconds(text: str, least: float = 0.0) -> float | None:
    """Return a URL parameter's value ``text`` as seconds, or None if it is not such.

    Seconds: a finite number at least ``least`` (``float`` syntax). The caller refuses
    a None with its own message, naming the parameter and the fix.
    """
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= least else None


def redact(url: str) -> str:
    """Return ``url`` with every secret in it replaced by ``***``.

    The password of ``user:password@host``, and the value of every ``password=`` and
    ``sslpassword=`` query parameter, however its name is percent-encoded (asyncpg
    decodes the names). A URL that cannot be parsed is hidden whole but for its scheme.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # say, an unbalanced [ in the host
        return f"{url.partition(':')[0]}://***"
    netloc = parts.netloc
    if "@" in netloc:
        auth, host = netloc.rsplit("@", 1)
        if ":" in auth:
            netloc = f"{auth.split(':', 1)[0]}:***@{host}"
    query = "&".join(
        f"{piece.partition('=')[0]}=***"
        if urllib.parse.unquote_plus(piece.partition("=")[0]) in _SECRET_PARAMETERS
        else piece
        for piece in parts.query.split("&")
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _secrets(url: str) -> set[str]:
    """Every secret in ``url``, as written and decoded (see :func:`redact`)."""
    found: set[str] = set()
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return found
    if "@" in parts.netloc:
        auth = parts.netloc.rsplit("@", 1)[0]
        if ":" in auth:
            # asyncpg takes the password up to the first @; redact() hides up to the last.
            for password in (auth.split(":", 1)[1], auth.split("@", 1)[0].partition(":")[2]):
                found.update((password, urllib.parse.unquote(password)))
    for piece in parts.query.split("&"):
        name, _, value = piece.partition("=")
        if urllib.parse.unquote_plus(name) in _SECRET_PARAMETERS:
            found.update((value, urllib.parse.unquote_plus(value)))
    found.discard("")
    return found


def scrub(text: str, url: str) -> str:
    """Return ``text`` (a driver's message) with every secret of ``url`` replaced by ``***``."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
