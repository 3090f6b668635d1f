"""The command line's reading commands: they read, and create nothing (issue 11, item 19).

In process, through click's runner; ``tests/test_cli_jobs.py`` runs real processes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

import corral
from corral._backends import Connection, parse_url
from corral._cli import _common, cli

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cr3t-Pw"

#: Every command that only reads, and what it says on a database with no table yet.
READERS = [
    (["progress"], 0, "no runs recorded in {url} yet"),
    (["progress", "7"], 1, "no run 7: no runs recorded in {url} yet"),
    (["jobs", "status"], 0, "no jobs in {url} yet"),
    (["jobs", "status", "--cluster", "a"], 0, "no jobs in {url} yet"),
    (["jobs", "list"], 0, "no jobs in {url} yet"),
    (["jobs", "list", "--state", "dead"], 0, "no jobs in {url} yet"),
    (["jobs", "show", "x"], 1, "no job with id 'x': no jobs in {url} yet"),
]


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


def _schema(url: str) -> set[str]:
    """Every table, index and function in the database (PostgreSQL: in the schema)."""
    if parse_url(url)[0] == "sqlite":
        with contextlib.closing(sqlite3.connect(parse_url(url)[1])) as conn:
            return {
                f"{kind} {name}"
                for kind, name in conn.execute("SELECT type, name FROM sqlite_master")
            }

    async def main() -> set[str]:
        async def read(conn: Connection) -> list[dict[str, object]]:
            return await conn.fetch(
                "SELECT 'table ' || table_name AS name FROM information_schema.tables "
                "WHERE table_schema = current_schema() UNION ALL "
                "SELECT 'function ' || proname FROM pg_proc "
                "WHERE pronamespace = current_schema()::regnamespace"
            )

        async with corral.connect(url) as db:
            return {str(row["name"]) for row in await db._run(read)}

    return anyio.run(main)


def _empty(url: str) -> None:
    """Open the database once (SQLite: the file is made), writing nothing."""

    async def main() -> None:
        async with corral.connect(url):
            pass

    anyio.run(main)


@pytest.mark.parametrize(("args", "code", "said"), READERS, ids=lambda x: str(x))
def test_reading_an_empty_database_creates_nothing(
    db_url: str, args: list[str], code: int, said: str
) -> None:
    _empty(db_url)
    before = _schema(db_url)
    result = _invoke(*args, "--db", db_url)
    assert result.exit_code == code, result.output
    assert said.format(url=db_url) in " ".join(result.output.split())
    assert _schema(db_url) == before


@pytest.mark.parametrize(("args", "code", "said"), READERS, ids=lambda x: str(x))
def test_reading_a_missing_sqlite_file_creates_nothing(
    tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}?mode=ro"
    result = _invoke(*args, "--db", url)
    assert result.exit_code == 1, result.output
    assert "no database at" in result.output
    assert list(tmp_path.iterdir()) == []


def test_sqlite_reads_are_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the tables there, the readers open the file with mode=ro: nothing changes."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    opened: list[str] = []

    def connect(url: str) -> contextlib.AbstractAsyncContextManager[corral.Database]:
        opened.append(url)
        return corral.connect(url)

    async def main() -> None:
        async with corral.connect(url) as db:
            await db.jobs.enqueue(corral.jobs.Job("a"))
            run = await db.progress.start_run("STATIC", "r")
            await run.complete()  # done: ``progress --watch`` has nothing to follow

    anyio.run(main)
    (tmp_path / "jobs.db").chmod(0o444)  # root may write it all the same: mode=ro may not
    before = (tmp_path / "jobs.db").read_bytes()
    monkeypatch.setattr(_common, "connect", connect)
    for args, _, _ in READERS:
        result = _invoke(*args, "--db", f"{url}?mode=rwc")
        assert "no database" not in result.output
        assert "yet" not in result.output, (args, result.output)
    assert _invoke("jobs", "status", "--db", url).output.count("ready") == 1
    assert (tmp_path / "jobs.db").read_bytes() == before
    assert opened == [f"{url}?mode=ro"] * (len(READERS) + 1)  # the URL's own mode replaced


def test_the_commands_hide_the_password(postgres_url: str) -> None:
    url = f"{postgres_url}&password={SECRET}"
    for args, _, _ in READERS:
        result = _invoke(*args, "--db", url)
        assert SECRET not in result.output
        assert "password=***" in result.output, (args, result.output)
