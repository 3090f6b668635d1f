"""Every async test runs on asyncio and on trio (anyio's pytest plugin, auto mode)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- databases -------------------------------------------------------------------------------

#: The PostgreSQL server the tests use; each test gets a fresh schema in it.
POSTGRES_URL = os.environ.get(
    "CORRAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_admin(sql: str) -> None:
    """Run one statement on the test server, from a thread with its own event loop."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def with_search_path(url: str, schema: str) -> str:
    """Return ``url`` with ``search_path=schema`` added to its query (asyncpg passes it on)."""
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL of the test PostgreSQL server whose search_path is a fresh, empty schema."""
    schema = f"corral_test_{uuid.uuid4().hex[:12]}"
    unreachable = None
    try:
        postgres_admin(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:
        unreachable = f"{type(exc).__name__}: {exc}"
    if unreachable is not None:  # fail, never skip: these tests need a real server
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({unreachable}). The database "
            f"tests need a server: start one, or point CORRAL_TEST_POSTGRES_URL at one "
            f"(postgresql://user@host:port/dbname).",
            pytrace=False,
        )
    try:
        yield with_search_path(POSTGRES_URL, schema)
    finally:
        postgres_admin(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL: a real SQLite file in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("postgres_url"))


# -- the backend contract suite ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store of every backend: what the contract suite runs on.

    ``tests/test_contract_*.py`` test the ports (``corral._ports``) through this fixture
    only, so a new backend runs the whole suite by adding its name to ``params`` and the
    line that makes a fresh store's URL below.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    raise AssertionError(f"no URL for store {request.param!r}")
