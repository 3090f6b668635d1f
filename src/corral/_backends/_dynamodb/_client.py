"""The DynamoDB client: the URL, credentials, the asyncio loop it runs on, its errors.

aioboto3 (on aiobotocore and aiohttp) runs on asyncio only. Under asyncio its calls are
awaited where the caller is; under trio, one asyncio loop runs in a dedicated thread,
started by :func:`open_client` and joined by :meth:`Client.close`, and every call is
handed to it (:mod:`corral._backends._aioloop`, as the PostgreSQL backend runs asyncpg).
aiobotocore 3.9+ can run on trio natively (httpx), but aioboto3, the SDK users have,
pins an older aiobotocore: one loop thread is the smaller price.

Credentials and region come from the usual AWS chain (environment, profile, instance
role); the URL's ``region`` and ``endpoint_url`` override them. What is missing fails
at ``connect`` with what to set; a secret is never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aioboto3
import anyio
import anyio.lowlevel
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ..._exceptions import ConnectError, ConnectionLostError, DatabaseURLError, QueryError
from .._aioloop import Direct, LoopThread

__all__ = ["Client", "DynamoURL", "code", "open_client", "parse"]

T = TypeVar("T")

#: A table prefix: what DynamoDB takes in a table name, less room for corral's suffixes.
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,200}")

_PARAMETERS = (
    "region=REGION, endpoint_url=URL and shards=N (e.g. dynamodb://corral?region=us-east-1)"
)

#: The most shards a URL may ask for (see docs/aws.md: how to choose N).
MAX_SHARDS = 100


@dataclass(frozen=True, slots=True)
class DynamoURL:
    """What a ``dynamodb://`` URL says: the tables' prefix, and the client's overrides."""

    #: The prefix of corral's tables (``corral``: ``corral_jobs``, ``corral_meta``, ...).
    prefix: str
    #: The region, or None for the AWS chain's.
    region: str | None = None
    #: Another endpoint (a local emulator), or None for AWS's.
    endpoint_url: str | None = None
    #: Over how many partitions the waiting index and each limit's counter are spread
    #: (``shards=N``; 1, the default, is the unsharded layout: ``w``, ``limit#all``).
    shards: int = 1


def parse(url: str) -> DynamoURL:
    """Read a ``dynamodb://PREFIX?region=...&endpoint_url=...&shards=N`` URL; refuse a bad one."""
    rest = url.partition("://")[2]
    prefix, _, query = rest.partition("?")
    prefix = urllib.parse.unquote(prefix).rstrip("/")
    if not _PREFIX.fullmatch(prefix):
        raise DatabaseURLError(
            f"{url!r}: {prefix!r} is not a table prefix; write dynamodb://PREFIX with a "
            f"PREFIX of letters, digits, '_', '-' or '.' (e.g. dynamodb://corral): "
            f"corral's tables are named PREFIX_jobs, PREFIX_meta, ..."
        )
    given: dict[str, str] = {}
    for piece in query.split("&") if query else ():
        raw, _, raw_value = piece.partition("=")
        name = urllib.parse.unquote_plus(raw)
        if name not in ("region", "endpoint_url", "shards"):
            raise DatabaseURLError(
                f"{url!r}: unknown parameter {name!r}; a DynamoDB URL takes {_PARAMETERS}"
            )
        if name in given:
            raise DatabaseURLError(f"{url!r} gives {name!r} twice: give it once")
        given[name] = urllib.parse.unquote_plus(raw_value)
    shards = 1
    if "shards" in given:
        text = given["shards"]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_SHARDS):
            raise DatabaseURLError(
                f"{url!r}: shards={text!r} is not a number of shards; give a whole number "
                f"from 1 to {MAX_SHARDS} (e.g. shards=4), the same in every process that "
                f"shares the tables"
            )
        shards = int(text)
    return DynamoURL(prefix, given.get("region") or None, given.get("endpoint_url") or None, shards)


def code(exc: BaseException) -> str:
    """Return the error code of a botocore ``ClientError`` (``""`` for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


#: Error codes worth a retry with backoff (throttling, a busy service).
RETRYABLE = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)


def translate(what: str, exc: Exception) -> Exception:
    """Return corral's error for a driver error of call ``what`` (chain it with ``from``)."""
    if isinstance(exc, EndpointConnectionError | BotoConnectionError):
        return ConnectionLostError(f"DynamoDB is unreachable ({what}): {exc}")
    if isinstance(exc, ClientError):
        return QueryError(f"DynamoDB refused {what}: {code(exc)}: {exc}")
    return QueryError(f"DynamoDB {what} failed: {type(exc).__name__}: {exc}")


class Client:
    """One aioboto3 DynamoDB client, and the loop its calls run on."""

    def __init__(
        self, runner: Direct | LoopThread, client: Any, stack: contextlib.AsyncExitStack
    ) -> None:
        self._runner = runner
        #: The aiobotocore client (used on its loop only: through :meth:`call`).
        self.raw = client
        self._stack = stack
        #: Requests sent, by operation name (for the cost benchmark and tests).
        self.requests: dict[str, int] = {}

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` (a coroutine function of the aiobotocore side) on its loop."""
        return await self._runner.call(fn, *args)

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Send one request, retrying throttling; raise ``ClientError`` for the others."""
        return await self.run(self.send, operation, kwargs)

    async def send(self, operation: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request from the client's own loop (see :meth:`call`)."""
        method = getattr(self.raw, operation)
        delay = 0.05
        for attempt in range(8):
            self.requests[operation] = self.requests.get(operation, 0) + 1
            try:
                result: dict[str, Any] = await method(**kwargs)
                return result
            except ClientError as exc:
                if code(exc) not in RETRYABLE or attempt == 7:
                    raise
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Close the client, then its loop thread (if any); never raises."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._runner.call(self._stack.aclose)
            await self._runner.close()


#: botocore's loader of service models, shared by every session of the process: each
#: session would read and parse the JSON models again (a quarter of a second a connect).
_loader: list[Any] = []


def _session() -> Any:
    """Return a new aioboto3 session that shares the process's model loader."""
    session = aioboto3.Session()
    core = getattr(session, "_session", None)
    if core is not None:
        if _loader:
            core.register_component("data_loader", _loader[0])
        else:
            _loader.append(core.get_component("data_loader"))
    return session


async def _enter(
    target: DynamoURL, service: str = "dynamodb"
) -> tuple[Any, contextlib.AsyncExitStack]:
    """Make the client (on the loop it will run on), checking credentials and region."""
    session = _session()
    credentials = await session.get_credentials()
    if credentials is None:
        raise ConnectError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE, or ~/.aws/credentials), or run where an instance or task role "
            "gives them"
        )
    region = target.region or session.region_name
    if not region:
        raise ConnectError(
            "no AWS region: add region=... to the URL (dynamodb://corral?region=us-east-1), "
            "or set AWS_REGION (or AWS_DEFAULT_REGION, or a profile's region)"
        )
    config = AioConfig(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)
    plain = (target.endpoint_url or "").lower().startswith("http://")
    stack = contextlib.AsyncExitStack()
    try:
        client = await stack.enter_async_context(
            session.client(
                service,
                region_name=region,
                endpoint_url=target.endpoint_url,
                config=config,
                # A plain http:// endpoint (a local emulator) has no TLS to verify: no
                # certificate bundle to load (a tenth of a second a connect).
                verify=False if plain else None,
            )
        )
    except BaseException:
        await stack.aclose()
        raise
    return client, stack


async def open_client(url: str, target: DynamoURL, service: str = "dynamodb") -> Client:
    """Open a client for ``target``; raise :class:`~corral.ConnectError` saying what is missing.

    ``service``: the AWS service (``dynamodb``; ``sns`` and ``s3`` for corral.jobs').
    """
    native = anyio.lowlevel.current_token().native_token
    runner: Direct | LoopThread
    runner = Direct() if isinstance(native, asyncio.AbstractEventLoop) else LoopThread()
    try:
        client, stack = await runner.call(_enter, target, service)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await runner.close()
        if isinstance(exc, ConnectError):
            raise
        if isinstance(exc, NoCredentialsError | NoRegionError | BotoCoreError):
            raise ConnectError(f"could not open {service} for {url!r}: {exc}") from exc
        raise
    return Client(runner, client, stack)
