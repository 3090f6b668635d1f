"""The ``search_path`` a PostgreSQL connection got, checked when the database opens.

PostgreSQL skips a schema in ``search_path`` that does not exist: with none left, the
first ``CREATE TABLE`` fails with "no schema has been selected to create in", and every
read finds no table (``corral jobs status`` said "no jobs yet"); with another left, the
tables go there instead. So every schema that the URL's ``search_path`` names (its
``?search_path=``, or ``options=-c search_path=...``) must exist, and so must one at
least of those the role's or the database's own setting names (a missing one there is
usually ``public`` dropped on purpose, with the role's own schema in use). The error
names the schemas missing, and the fix.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

__all__ = ["missing_schemas", "parse_search_path", "search_path_in", "search_path_problem"]

#: What a name in ``search_path`` can be without quotes, as PostgreSQL reads it.
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")
#: Folds ASCII letters only, as PostgreSQL folds an identifier that is not quoted.
_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def search_path_in(dsn: str) -> bool:
    """Return whether the URL ``dsn`` sets ``search_path`` (as a parameter, or in ``options``)."""
    return "search_path" in urllib.parse.unquote_plus(urllib.parse.urlsplit(dsn).query)


def parse_search_path(text: str) -> list[str]:
    """Return the schema names of a ``search_path`` setting, as PostgreSQL reads them.

    Comma-separated; a name in double quotes is taken as written (``""`` is one
    quote), any other is folded to lower case (ASCII letters). ``"$user"`` and
    ``$user`` (the role's own schema, skipped when it does not exist) are left out.
    """
    names: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\n\r,":
            i += 1
        if i >= n:
            break
        quoted = text[i] == '"'
        if quoted:
            j, name = i + 1, ""
            while j < n:
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        name, j = name + '"', j + 2
                        continue
                    break
                name, j = name + text[j], j + 1
            i = j + 1
        else:
            j = i
            while j < n and text[j] != ",":
                j += 1
            name, i = text[i:j].strip().translate(_FOLD), j
        if name != "$user":
            names.append(name)
    return names


async def missing_schemas(conn: Any, *, from_url: bool) -> list[str]:
    """Return the schemas of the connection's ``search_path`` to report as missing.

    ``from_url``: the URL sets ``search_path``, so every schema it names must exist;
    else only one of them must (see the module's docstring).
    """
    row = await conn.fetchrow("SELECT current_setting('search_path'), current_schemas(false)")
    names = parse_search_path(str(row[0]))
    if set(names) <= set(row[1]):  # all there (current_schemas skips the missing ones)
        return []
    rows = await conn.fetch(  # those not there may only be out of this role's reach
        "SELECT n FROM unnest($1::text[]) AS n "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = n)",
        names,
    )
    missing = [str(row[0]) for row in rows]
    return missing if from_url or len(missing) == len(names) else []


def _identifier(name: str) -> str:
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def search_path_problem(missing: list[str], shown_url: str, *, from_url: bool) -> str:
    """Return the message for a ``search_path`` naming schemas that do not exist."""
    if len(missing) == 1:
        what, it = f"schema {missing[0]!r}, which does not exist", "it"
    else:
        what, it = f"schemas {', '.join(map(repr, missing))}, which do not exist", "them"
    create = "; ".join(f"CREATE SCHEMA {_identifier(name)}" for name in missing)
    where = (
        "in the URL"
        if from_url
        else "the role's or the database's setting: ALTER ROLE ... RESET search_path, or "
        "give one in the URL, ?search_path=..."
    )
    return (
        f"PostgreSQL at {shown_url!r}: search_path names {what}; PostgreSQL skips a "
        f"missing schema, so corral would look for its tables and create them in another "
        f"schema, or in none: create {it} ({create}) or drop {it} from search_path ({where})"
    )
