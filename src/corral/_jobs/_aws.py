"""AWS for job processors: :class:`SNSNotifier` (events on SNS), :class:`S3InputsValidator`.

Both need aioboto3 (``pip install 'corral[aws]'``), imported when first used, so that
``import corral.jobs`` works without it. Their clients are those of the DynamoDB
backend (:mod:`corral._backends._dynamodb._client`): the usual AWS chain for
credentials and region, ``region`` and ``endpoint_url`` to override, and on trio an
asyncio loop in a thread of its own. Each call opens its client and closes it: a
notifier and a validator have no end of life at which to close one.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio

from .._exceptions import ConfigurationError, DataError, MissingDriverError, TransientError
from ._model import Job
from ._notify import EventKind, JobEvent

if TYPE_CHECKING:
    from .._backends._dynamodb._client import Client

__all__ = ["S3InputsValidator", "SNSNotifier"]

log = logging.getLogger("corral.jobs")

#: The events an :class:`SNSNotifier` publishes by default.
PUBLISHED = frozenset({EventKind.COMPLETED, EventKind.FAILED, EventKind.DEAD, EventKind.RECLAIMED})


async def _open(service: str, region: str | None, endpoint_url: str | None) -> Client:
    try:
        from .._backends._dynamodb._client import DynamoURL, open_client
    except ImportError as exc:
        raise MissingDriverError(
            f"corral.jobs' {service.upper()} needs aioboto3 (the async AWS SDK), which is not "
            f"installed: pip install 'corral[aws]'"
        ) from exc
    return await open_client(f"{service}://", DynamoURL("-", region, endpoint_url), service)


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return str(error.get("Code", ""))
    return ""


class SNSNotifier:
    """A :class:`~corral.jobs.Notifier` that publishes job events to an SNS topic.

    Publishes the ``completed``, ``failed``, ``dead`` and ``reclaimed`` events (``kinds``
    to choose others), after they commit (the processor notifies then), at least once:
    the message is the event as JSON, with the message attributes ``job_id``,
    ``attempt`` (Number), ``kind``, ``category`` (for a failure) and ``fence`` (Number:
    the attempt's lease token; none for a reclaim), so that consumers can drop
    duplicates on ``(job_id, attempt, kind)``; on a FIFO topic (``.fifo``)
    that is also the deduplication id, and the job id the group. A publish that fails
    is retried ``retries`` times with backoff, then logged on ``corral.jobs``: it never
    fails the job.
    """

    def __init__(
        self,
        topic_arn: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        kinds: Iterable[EventKind] | None = None,
        retries: int = 3,
    ) -> None:
        if not isinstance(topic_arn, str) or not topic_arn.startswith("arn:"):
            raise ValueError(
                f"topic_arn must be an SNS topic's ARN (arn:aws:sns:REGION:ACCOUNT:NAME), "
                f"got {topic_arn!r}"
            )
        #: The topic published to.
        self.topic_arn = topic_arn
        #: The region (else the topic's, from its ARN) and endpoint of the SNS client.
        self.region: str | None = region or topic_arn.split(":")[3] or None
        self.endpoint_url = endpoint_url
        #: The kinds of event published (default: completed, failed, dead, reclaimed).
        self.kinds: frozenset[EventKind] = PUBLISHED if kinds is None else frozenset(kinds)
        #: How many times a failed publish is tried again.
        self.retries = retries

    def message(self, event: JobEvent) -> dict[str, Any]:
        """Return the parameters of the ``Publish`` of ``event``."""
        body = {
            "kind": event.kind.value,
            "job_id": event.job_id,
            "attempt": event.attempt,
            "cluster": event.cluster,
            "category": None if event.category is None else event.category.value,
            "step": event.step,
            "message": event.message,
            "worker": event.worker,
            "fence": event.fence,
        }
        attributes: dict[str, Any] = {
            "job_id": {"DataType": "String", "StringValue": event.job_id},
            "attempt": {"DataType": "Number", "StringValue": str(event.attempt)},
            "kind": {"DataType": "String", "StringValue": event.kind.value},
        }
        if event.category is not None:
            attributes["category"] = {"DataType": "String", "StringValue": event.category.value}
        if event.fence is not None:
            attributes["fence"] = {"DataType": "Number", "StringValue": str(event.fence)}
        request: dict[str, Any] = {
            "TopicArn": self.topic_arn,
            "Message": json.dumps(body),
            "MessageAttributes": attributes,
        }
        if self.topic_arn.endswith(".fifo"):
            request["MessageGroupId"] = event.job_id
            request["MessageDeduplicationId"] = f"{event.job_id}:{event.attempt}:{event.kind}"
        return request

    async def notify(self, event: JobEvent) -> None:
        """Publish ``event`` (if of one of :attr:`kinds`); log, never raise, if it fails."""
        if event.kind not in self.kinds:
            return
        request = self.message(event)
        delay = 0.1
        for attempt in range(self.retries + 1):
            try:
                client = await _open("sns", self.region, self.endpoint_url)
                try:
                    await client.call("publish", **request)
                finally:
                    await client.close()
                return
            except MissingDriverError:
                raise
            except Exception as exc:
                if attempt == self.retries:
                    log.error(
                        "SNS publish of job %s %s to %s failed %d times, dropped: %s",
                        event.job_id,
                        event.kind.value,
                        self.topic_arn,
                        attempt + 1,
                        exc,
                    )
                    return
            await anyio.sleep(delay * (0.5 + random.random()))
            delay = min(2 * delay, 5.0)


def _split(uri: str) -> tuple[str, str]:
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise DataError(f"input {uri!r} is not an S3 URI: write s3://bucket/key")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise DataError(f"input {uri!r} names no bucket and key: write s3://bucket/key")
    return bucket, key


#: Error codes of an S3 that is busy or unreachable: the job is tried again later.
_TRANSIENT = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "503", "500"}
)


def classify_s3(uri: str, exc: BaseException) -> Exception:
    """Return the job error for a failed ``HEAD`` of ``uri``: DATA, CONFIGURATION, TRANSIENT."""
    code = _code(exc)
    if code in ("404", "NoSuchKey", "NotFound"):
        return DataError(f"input {uri} does not exist (S3 HEAD: {code})")
    if code == "NoSuchBucket":
        return DataError(f"input {uri}: there is no such bucket")
    if code in ("403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId"):
        return ConfigurationError(
            f"input {uri}: access denied (S3 HEAD: {code}): grant s3:GetObject on the "
            f"bucket to this worker's role"
        )
    if code in _TRANSIENT or not code:
        return TransientError(f"input {uri}: S3 is busy or unreachable: {exc}")
    return ConfigurationError(f"input {uri}: S3 refused HEAD: {code}: {exc}")


class S3InputsValidator:
    """A processor's ``validate``: every ``s3://bucket/key`` of ``inputs_of(job)`` exists.

    Each input is checked with ``HEAD`` (concurrently) before the job is accepted for
    work. A missing object (or bucket, or a malformed URI) fails the job as DATA, an
    access error as CONFIGURATION, neither retried; a throttled or unreachable S3 is
    TRANSIENT (retried with the job's backoff). ``inputs_of`` may be async.
    """

    def __init__(
        self,
        inputs_of: Callable[[Job], Iterable[str] | Awaitable[Iterable[str]]],
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        if not callable(inputs_of):
            raise TypeError(f"inputs_of must be a function of a job, got {inputs_of!r}")
        self.inputs_of = inputs_of
        self.region = region
        self.endpoint_url = endpoint_url

    async def __call__(self, job: Job) -> None:
        """Check the job's inputs; raise its DataError, ConfigurationError or TransientError."""
        found = self.inputs_of(job)
        if inspect.isawaitable(found):
            found = await found
        uris = list(found)
        targets = [(uri, *_split(uri)) for uri in uris]
        if not targets:
            return
        try:
            client = await _open("s3", self.region, self.endpoint_url)
        except MissingDriverError:
            raise
        except Exception as exc:
            raise TransientError(f"S3 is unreachable: {exc}") from exc
        errors: list[tuple[str, BaseException]] = []

        async def head(uri: str, bucket: str, key: str) -> None:
            try:
                await client.send("head_object", {"Bucket": bucket, "Key": key})
            except Exception as exc:
                errors.append((uri, exc))

        async def all_of() -> None:
            import asyncio

            await asyncio.gather(*(head(*t) for t in targets))

        try:
            await client.run(all_of)
        finally:
            await client.close()
        if errors:
            uri, error = min(errors, key=lambda e: uris.index(e[0]))
            raise classify_s3(uri, error) from error
