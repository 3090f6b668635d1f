"""Mistakes in a database URL get a message that names the problem and the fix.

A PostgreSQL ``search_path`` naming a schema that does not exist, an SQLite path in a
folder that does not exist, and a bare path where a URL belongs (``corral.db``: did you
mean ``sqlite:///corral.db``?), through ``corral.connect`` and through the command line
(real processes).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral
from conftest import POSTGRES_URL, postgres_admin, with_search_path
from corral._backends._postgres._search_path import (
    missing_schemas,
    parse_search_path,
    search_path_in,
)

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cr3t-Pw"


def corral_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m corral ARGS`` in ``cwd``, without $CORRAL_DB."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("CORRAL_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


def fails(*args: str, cwd: Path) -> str:
    """Run a command that must fail with status 1, cleanly; return its stderr on one line."""
    result = corral_cli(*args, cwd=cwd)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


# -- PostgreSQL: a search_path naming a schema that does not exist ---------------------------


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema whose name needs quoting (upper case): created, dropped after."""
    name = f"Corral_Msg_{uuid.uuid4().hex[:8]}"
    postgres_admin(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        postgres_admin(f'DROP SCHEMA "{name}" CASCADE')


async def test_a_search_path_naming_a_missing_schema_is_refused_at_connect(schema: str) -> None:
    missing = f"nope_{uuid.uuid4().hex[:8]}"
    url = with_search_path(POSTGRES_URL, missing)
    with pytest.raises(corral.ConnectError) as caught:
        async with corral.connect(url):
            pass
    message = str(caught.value)
    assert f"search_path names schema {missing!r}, which does not exist" in message
    assert f"create it (CREATE SCHEMA {missing}) or drop it from search_path" in message
    assert url in message  # the URL, which has no secret here
    # One missing among several is named too; the others, quoted or not, are found.
    quoted = urllib.parse.quote(f'"{schema}"')
    url = with_search_path(POSTGRES_URL, f"{quoted},{missing},public")
    with pytest.raises(corral.ConnectError, match=f"names schema '{missing}', which"):
        async with corral.connect(url):
            pass
    # Unquoted, a name is folded to lower case, as PostgreSQL does: that one is missing.
    url = with_search_path(POSTGRES_URL, schema)
    with pytest.raises(corral.ConnectError) as caught:
        async with corral.connect(url):
            pass
    assert f"names schema {schema.lower()!r}, which does not exist" in str(caught.value)
    assert f'CREATE SCHEMA "{schema.lower()}"' not in str(caught.value)
    async with corral.connect(with_search_path(POSTGRES_URL, f"{quoted},public")) as db:
        assert (await db.jobs.depth()).total == 0  # the tables go in the quoted schema


def test_search_path_is_read_as_postgresql_reads_it() -> None:
    assert parse_search_path('"$user", public') == ["public"]
    assert parse_search_path(' Ab_C ,"Mixed ""Q"", x",$user,,"ü"') == ["ab_c", 'Mixed "Q", x', "ü"]
    assert parse_search_path("") == []
    assert search_path_in("postgresql://h/db?search_path=a")
    assert search_path_in("postgresql://h/db?options=-c%20search_path%3Da")
    assert not search_path_in("postgresql://h/db?command_timeout=5")


def test_a_role_or_database_setting_needs_one_schema_that_exists() -> None:
    """Not from the URL, a missing schema is reported only when none is left: ``public``
    dropped on purpose, with the role's own schema in use, is a setup that works."""
    import asyncpg

    missing = f"nope_{uuid.uuid4().hex[:8]}"

    async def main() -> list[list[str]]:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=10)
        try:
            found = []
            for path, from_url in [
                (f"{missing}, public", False),
                (f"{missing}, public", True),
                (missing, False),
                ('"$user"', False),
            ]:
                await conn.execute(f"SET search_path = {path}")
                found.append(await missing_schemas(conn, from_url=from_url))
            return found
        finally:
            await conn.close()

    assert asyncio.run(main()) == [[], [missing], [missing], []]


def test_the_secret_of_a_refused_search_path_url_stays_out(tmp_path: Path) -> None:
    missing = f"nope_{uuid.uuid4().hex[:8]}"
    parts = urllib.parse.urlsplit(POSTGRES_URL)
    url = with_search_path(POSTGRES_URL, missing).replace(
        f"{parts.username}@", f"{parts.username}:{SECRET}@"
    )
    text = fails("jobs", "status", "--db", url, cwd=tmp_path)  # it read "no jobs yet"
    assert f"search_path names schema '{missing}', which does not exist" in text
    assert SECRET not in text


# -- SQLite: a path in a folder that does not exist ------------------------------------------


async def test_an_sqlite_path_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "missing" / "dir"
    with pytest.raises(corral.ConnectError) as caught:
        async with corral.connect(f"sqlite:///{folder / 'x.db'}"):
            pass
    message = str(caught.value)
    assert "unable to open database file" not in message
    assert f"its folder {str(folder)!r} does not exist" in message
    assert "corral creates the database file, not the folders above it" in message
    assert f"mkdir -p {folder}" in message
    # A file where the folder should be.
    (tmp_path / "plain").write_text("")
    with pytest.raises(corral.ConnectError, match=r"plain' is a file, not a folder"):
        async with corral.connect(f"sqlite:///{tmp_path / 'plain' / 'x.db'}"):
            pass
    # mode=rw opens only a file that exists.
    opens = r"x\.db': the file does not exist, and mode=rw opens only a database that exists"
    with pytest.raises(corral.ConnectError, match=opens):
        async with corral.connect(f"sqlite:///{tmp_path / 'x.db'}?mode=rw"):
            pass


def test_the_worker_names_the_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text("async def handle(ctx):\n    return None\n")
    text = fails(
        "worker", "--handler", "handlers:handle", "--until-idle",
        "--db", "sqlite:///missing/x.db",
        cwd=tmp_path,
    )  # fmt: skip
    assert f"its folder {str(tmp_path / 'missing')!r} does not exist" in text
    assert "unable to open database file" not in text


# -- a bare path where a URL belongs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("corral.db", "sqlite:///corral.db"),
        ("data/jobs.sqlite3", "sqlite:///data/jobs.sqlite3"),
        ("/var/lib/corral.db", "sqlite:////var/lib/corral.db"),
        (":memory:", "sqlite:///:memory:"),
    ],
)
async def test_a_bare_path_asks_did_you_mean_sqlite(given: str, meant: str) -> None:
    with pytest.raises(corral.DatabaseURLError) as caught:
        async with corral.connect(given):
            pass
    assert f"{given!r} is not a database URL (it has no scheme): did you mean {meant}?" in str(
        caught.value
    )


async def test_a_bare_server_address_asks_did_you_mean_postgresql() -> None:
    with pytest.raises(corral.DatabaseURLError) as caught:
        async with corral.connect(f"app:{SECRET}@db.example/prod"):
            pass
    message = str(caught.value)
    assert "did you mean postgresql://app:***@db.example/prod?" in message
    assert SECRET not in message


def test_the_command_line_asks_did_you_mean_sqlite(tmp_path: Path) -> None:
    text = fails("jobs", "status", "--db", "corral.db", cwd=tmp_path)
    assert "'corral.db' is not a database URL (it has no scheme)" in text
    assert "did you mean sqlite:///corral.db?" in text
    text = fails("--db", f"app:{SECRET}@db.example/prod", "jobs", "list", cwd=tmp_path)
    assert "did you mean postgresql://app:***@db.example/prod?" in text
    assert SECRET not in text
