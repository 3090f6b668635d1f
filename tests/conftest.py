"""Every async test runs on asyncio and on trio (anyio's pytest plugin, auto mode)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
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


@pytest.fixture(params=["sqlite", "postgresql", "dynamodb"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL of every store: SQLite, PostgreSQL, and DynamoDB (on moto).

    For the behaviour tests of ``db.jobs``, ``db.progress`` and ``db.table`` that hold
    on every store; a test that runs SQL, opens the SQLite file or needs a server's
    connection takes ``db_url`` instead.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("dynamodb_url"))


# -- the backend contract suite ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "dynamodb", "dynamodb-sharded"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store of every backend: what the contract suite runs on.

    ``tests/test_contract_*.py`` test the ports (``corral._ports``) through this fixture
    only, so a new backend runs the whole suite by adding its name to ``params`` and the
    line that makes a fresh store's URL below. ``dynamodb-sharded``: DynamoDB with its
    waiting index and limit counters spread over 3 shards (``shards=3``).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    if request.param == "dynamodb":
        return str(request.getfixturevalue("dynamodb_url"))
    if request.param == "dynamodb-sharded":
        return f"{request.getfixturevalue('dynamodb_url')}&shards=3"
    raise AssertionError(f"no URL for store {request.param!r}")


# -- AWS (moto) -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The endpoint of one moto server (every AWS service) on loopback, its requests serialized.

    moto applies concurrent ``TransactWriteItems`` without a lock (it snapshots the
    table, applies, and restores the snapshot on failure, so a failing transaction can
    undo another's committed write): it can admit more claims than a limit allows,
    although real DynamoDB never does. So this server holds one lock around moto's WSGI
    application for each request, the response read whole inside it: the requests of
    every client, task and process are applied one at a time, as DynamoDB's own
    conditional writes are atomic. An exactness test on an unserialized moto proves
    nothing. Fake credentials are set in the environment (inherited by subprocesses).
    """
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ: dict[str, object], start_response: object) -> list[bytes]:
        with lock:
            body = app(environ, start_response)  # type: ignore[arg-type]
            return [b"".join(body)]

    class Handler(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a connection per client, not per request

    server = make_server("127.0.0.1", 0, serialized, threaded=True, request_handler=Handler)
    thread = threading.Thread(target=server.serve_forever, name="moto", daemon=True)
    thread.start()
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(_AWS_ENV)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: Fake credentials for moto (it accepts any).
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def dynamodb_url(moto_endpoint: str) -> str:
    """A ``dynamodb://`` URL on the moto server with a fresh table prefix: an empty store."""
    return f"dynamodb://t{uuid.uuid4().hex[:12]}?region=us-east-1&endpoint_url={moto_endpoint}"


def _dynamodb_on_trio(item: pytest.Item) -> bool:
    """Whether ``item`` is a contract test (store_url) or a behaviour test (any_url) that
    runs on DynamoDB under trio."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if params.get("anyio_backend") != "trio":
        return False
    if params.get("any_url") == "dynamodb":
        return True
    module = item.module.__name__ if item.module is not None else ""
    dynamodb = params.get("store_url") in ("dynamodb", "dynamodb-sharded")
    return dynamodb and module.startswith("test_contract_")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The contract suites (store_url: dynamodb, and dynamodb-sharded with shards=3) and
    # the behaviour tests that run on every store (any_url) run on DynamoDB under asyncio
    # only: on trio the store runs the same code,
    # on an asyncio loop in a thread, and moto costs about a second a test.
    # tests/test_aws*.py (dynamodb_url) run the DynamoDB store, the notifier and the
    # validator on trio too. CORRAL_TEST_AWS_TRIO=1 runs every DynamoDB test on trio as
    # well; CORRAL_TEST_AWS_TRIO=only runs those left out alone (.ci/run runs them after
    # the README's test command, so that CI runs every test on both event loops).
    switch = os.environ.get("CORRAL_TEST_AWS_TRIO", "")
    if switch == "only":
        left = [item for item in items if not _dynamodb_on_trio(item)]
    elif not switch:
        left = [item for item in items if _dynamodb_on_trio(item)]
    else:
        left = []
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = [item for item in items if item not in left]
