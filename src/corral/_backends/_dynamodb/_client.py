"""The DynamoDB client: the URL, credentials, the asyncio loop it runs on, its errors.

aioboto3 (on aiobotocore and aiohttp) runs on asyncio only. Under asyncio its calls are
awaited where the caller is; under trio, one asyncio loop runs in a dedicated thread,
started by :func:`open_client` and joined by :meth:`Client.close`, and every call is
handed to it (:mod:`corral._backends._aioloop`, as the PostgreSQL backend runs asyncpg).
aiobotocore 3.9+ can run on trio natively (httpx), but aioboto3, the SDK users have,
pins an older aiobotocore: one loop thread is the smaller price.

Credentials and region come from the usual AWS chain (environment, profile, instance
role); the URL's ``region`` and ``endpoint_url`` override them. What is missing fails
at ``connect`` with what to set; a secret is never printed. The URL's other
parameters are corral's: ``shards=N`` (:mod:`._jobs`) and ``reconnect_timeout=SECONDS``
(how long the writer waits for an endpoint that stopped answering: :mod:`._outage`).
botocore retries in its standard mode, 3 attempts unless ``AWS_MAX_ATTEMPTS`` (or a
profile's ``max_attempts``) says otherwise.

**Errors.** A DynamoDB client is the store's boundary: :meth:`Client.send` retries
throttling with backoff, and translates every other botocore error into corral's
(:func:`translate`, chained with ``from``; an endpoint that does not answer is
:class:`~corral.ConnectionLostError`, which the store waits out), except the outcomes
of the request's own conditions (``ConditionalCheckFailedException``,
``TransactionCanceledException``) and the codes its caller names (``passing``), which
the store's code reads. An S3 or SNS client (``corral.jobs``) leaves botocore's errors
to its caller, which classifies them for the job.
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
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ..._exceptions import ConnectError, ConnectionLostError, DatabaseURLError, QueryError
from ..._ports import seconds
from .._aioloop import Direct, LoopThread

__all__ = [
    "RECONNECT_TIMEOUT",
    "Client",
    "DynamoURL",
    "code",
    "gather",
    "left_in",
    "open_client",
    "parse",
    "unprocessed",
]

T = TypeVar("T")

#: A table prefix: what DynamoDB takes in a table name, less room for corral's suffixes.
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,200}")

_PARAMETERS = (
    "region=REGION, endpoint_url=URL, shards=N and reconnect_timeout=SECONDS "
    "(e.g. dynamodb://corral?region=us-east-1)"
)
_NAMES = ("region", "endpoint_url", "shards", "reconnect_timeout")

#: How long the writer waits for an endpoint that stopped answering, by default (s).
RECONNECT_TIMEOUT = 30.0

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
    #: How long the writer waits for the endpoint to answer again after it stopped
    #: answering, in seconds (``reconnect_timeout=SECONDS``, as on PostgreSQL; 0: it
    #: does not wait, the first lost connection is fatal).
    reconnect_timeout: float = RECONNECT_TIMEOUT


def parse(url: str) -> DynamoURL:
    """Read a ``dynamodb://PREFIX?region=...&endpoint_url=...&shards=N`` URL; refuse a bad one.

    Its parameters: ``region``, ``endpoint_url``, ``shards`` and ``reconnect_timeout``
    (seconds, >= 0: see :class:`DynamoURL`).
    """
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
        if name not in _NAMES:
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
    reconnect_timeout = RECONNECT_TIMEOUT
    if "reconnect_timeout" in given:
        text = given["reconnect_timeout"]
        parsed = seconds(text)
        if parsed is None:
            raise DatabaseURLError(
                f"reconnect_timeout={text!r} in {url!r} is not a finite number of seconds "
                f">= 0; write it like ?reconnect_timeout={RECONNECT_TIMEOUT:g} (how long to "
                f"wait for DynamoDB to answer again; 0: never wait)"
            )
        reconnect_timeout = parsed
    return DynamoURL(
        prefix,
        given.get("region") or None,
        given.get("endpoint_url") or None,
        shards,
        reconnect_timeout,
    )


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
        "LimitExceededException",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)
#: Tries of a request refused with a code of :data:`RETRYABLE` (each one botocore's
#: own retries, too), waiting 0.05 s doubled each time up to 2 s between them.
TRIES = 8

#: Sends of a batch request's unprocessed items (throttled) before it is given up.
BATCH_TRIES = 10


def unprocessed(what: str, attempt: int, left: int) -> float:
    """Return the wait before sending ``left`` unprocessed items of ``what`` again.

    ``attempt`` counts from 0 the sends so far but the first: jittered, from 0.05 s
    doubled up to 2 s. Raises :class:`~corral.QueryError` once :data:`BATCH_TRIES` sends
    left items unprocessed.
    """
    if attempt + 1 >= BATCH_TRIES:
        raise QueryError(
            f"DynamoDB left {left} items of {what} unprocessed after {BATCH_TRIES} tries "
            f"with backoff (throttled): raise the table's capacity, or run fewer workers "
            f"(docs/aws.md: the throughput ceiling)"
        )
    return min(0.05 * 2.0**attempt, 2.0) * (0.5 + random.random())


async def gather(*aws: Awaitable[T]) -> list[T]:
    """Await ``aws`` at once, on the client's loop; return their results in order.

    Unlike a bare ``asyncio.gather``, it raises (the first error) only once every one
    of them has ended: none goes on writing after the error, behind an undo that
    follows it.
    """
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def left_in(pending: Mapping[str, Any]) -> int:
    """Count the keys or write requests of a batch request's unprocessed part."""
    return sum(len(v["Keys"]) if isinstance(v, Mapping) else len(v) for v in pending.values())


#: The outcomes of a request's own conditions: the store reads them, never translated.
CONDITIONS = frozenset({"ConditionalCheckFailedException", "TransactionCanceledException"})

#: Codes of credentials that AWS does not accept (wrong, expired, missing).
_CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "MissingAuthenticationTokenException",
        "SignatureDoesNotMatch",
    }
)

_SET_CREDENTIALS = (
    "set valid AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
    "an instance or task role; a temporary session token may have expired)"
)


#: Requests that write nothing (see :func:`translate`).
_READS = frozenset({"DescribeTable", "GetItem", "BatchGetItem", "Query", "Scan"})


def describe(operation: str, kwargs: Mapping[str, Any]) -> str:
    """Name a request for a message: ``UpdateItem on table 'corral_jobs'``."""
    name = "".join(part.capitalize() for part in operation.split("_"))
    tables: set[str] = set()
    if isinstance(kwargs.get("TableName"), str):
        tables.add(kwargs["TableName"])
    requested = kwargs.get("RequestItems")
    if isinstance(requested, Mapping):
        tables.update(str(t) for t in requested)
    for action in kwargs.get("TransactItems") or ():
        for body in action.values():
            if isinstance(body, Mapping) and isinstance(body.get("TableName"), str):
                tables.add(body["TableName"])
    if not tables:
        return name
    listed = ", ".join(repr(t) for t in sorted(tables))
    return f"{name} on table {listed}" if len(tables) == 1 else f"{name} on tables {listed}"


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)


def translate(what: str, exc: Exception) -> Exception:
    """Return corral's error for botocore's error ``exc`` of request ``what``.

    The caller raises it ``from exc``. An endpoint that does not answer (after
    botocore's retries) is :class:`~corral.ConnectionLostError`, a write marked as
    possibly applied (``commit_sent``: DynamoDB may have applied a request whose answer
    was lost; what a whole batch raises says whether the batch was undone, see
    ``DynamoStore.apply``); anything DynamoDB or AWS refused is
    :class:`~corral.QueryError`, saying what to fix. Credentials are never part of a
    message.
    """
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        write = what.split(" ", 1)[0] not in _READS
        return ConnectionLostError(
            f"DynamoDB did not answer {what}: {exc}; check the network, the region and "
            f"endpoint_url" + (" (the request may or may not have been applied)" if write else ""),
            commit_sent=write,
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return QueryError(
            f"no usable AWS credentials for {what} ({type(exc).__name__}): {_SET_CREDENTIALS}"
        )
    if isinstance(exc, ClientError):
        error = code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if error in _CREDENTIALS or (status == 403 and error in ("", "403")):
            # A bare 403: an error body botocore could not read (XML from an emulator
            # or a proxy). AWS's message may quote the access key id: it is left out.
            label = error if error in _CREDENTIALS else "HTTP 403"
            return QueryError(
                f"AWS refused the credentials of {what} ({label}): {_SET_CREDENTIALS}"
            )
        if error == "AccessDeniedException":
            action = what.split(" ", 1)[0]
            return QueryError(
                f"AWS denied {what} (AccessDeniedException: {_message(exc)}): grant these "
                f"credentials dynamodb:{action} on the table (docs/aws.md lists every "
                f"permission corral needs)"
            )
        if error == "ResourceNotFoundException":
            return QueryError(
                f"DynamoDB refused {what}: the table does not exist ({_message(exc)}). It "
                f"was deleted while corral used it, or the URL's prefix or region names "
                f"another; corral makes its tables on first use: connect again to have "
                f"them made"
            )
        if error in RETRYABLE:
            return QueryError(
                f"DynamoDB kept refusing {what} as over its throughput ({error}, {TRIES} "
                f"tries with backoff): raise the table's capacity or the account's quotas, "
                f"or run fewer workers (docs/aws.md: the throughput ceiling)"
            )
        if error == "ValidationException":
            return QueryError(f"DynamoDB refused {what} as invalid: {_message(exc)}")
        return QueryError(f"DynamoDB refused {what}: {error}: {_message(exc)}")
    return QueryError(f"DynamoDB {what} failed: {type(exc).__name__}: {exc}")


class Client:
    """One aioboto3 DynamoDB client, and the loop its calls run on."""

    def __init__(
        self,
        runner: Direct | LoopThread,
        client: Any,
        stack: contextlib.AsyncExitStack,
        *,
        translating: bool = True,
    ) -> None:
        self._runner = runner
        #: Whether botocore's errors are translated (DynamoDB: see the module docstring).
        self.translating = translating
        #: The aiobotocore client (used on its loop only: through :meth:`call`).
        self.raw = client
        self._stack = stack
        #: Requests sent, by operation name (for the cost benchmark and tests).
        self.requests: dict[str, int] = {}

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` (a coroutine function of the aiobotocore side) on its loop."""
        return await self._runner.call(fn, *args)

    async def call(
        self, operation: str, *, passing: frozenset[str] = frozenset(), **kwargs: Any
    ) -> dict[str, Any]:
        """Send one request from any loop (see :meth:`send`)."""
        return await self.run(self.send, operation, kwargs, passing)

    async def send(
        self, operation: str, kwargs: Mapping[str, Any], passing: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Send one request from the client's own loop, retrying throttling with backoff.

        What it raises is corral's error (:func:`translate`), but a ``ClientError`` of
        the request's own conditions (:data:`CONDITIONS`) or of a code in ``passing``,
        which the caller reads; all of botocore's errors if not :attr:`translating`.
        """
        method = getattr(self.raw, operation)
        delay = 0.05
        for attempt in range(TRIES):
            self.requests[operation] = self.requests.get(operation, 0) + 1
            try:
                result: dict[str, Any] = await method(**kwargs)
                return result
            except ClientError as exc:
                error = code(exc)
                if error not in RETRYABLE or attempt == TRIES - 1:
                    if not self.translating or error in CONDITIONS or error in passing:
                        raise
                    raise translate(describe(operation, kwargs), exc) from exc
            except BotoCoreError as exc:
                if not self.translating:
                    raise
                raise translate(describe(operation, kwargs), exc) from exc
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
    # botocore's standard retries, at their default of 3 attempts (or AWS_MAX_ATTEMPTS,
    # or a profile's max_attempts): an endpoint that does not answer fails in seconds
    # (5 attempts waited some 15 s at connect), and the writer waits for it to answer
    # again (the store's reconnect_timeout); throttling is retried further by
    # Client.send, TRIES times.
    config = AioConfig(retries={"mode": "standard"}, max_pool_connections=32)
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
    return Client(runner, client, stack, translating=service == "dynamodb")
