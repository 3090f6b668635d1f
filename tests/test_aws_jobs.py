"""corral.jobs on AWS: SNSNotifier (read back through an SQS queue) and S3InputsValidator.

On the moto server of ``moto_endpoint``; the AWS resources are made with boto3.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

import corral
from corral import jobs
from corral._jobs._aws import classify_s3

pytestmark = pytest.mark.timeout(60)


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(service, region_name="us-east-1", endpoint_url=endpoint)


async def test_sns_notifier_publishes_events_with_their_attributes(moto_endpoint: str) -> None:
    sns, sqs = _client("sns", moto_endpoint), _client("sqs", moto_endpoint)
    topic = sns.create_topic(Name="worksets")["TopicArn"]
    queue = sqs.create_queue(QueueName="worksets-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    notifier = jobs.SNSNotifier(topic, endpoint_url=moto_endpoint)
    events = [
        jobs.JobEvent(jobs.EventKind.COMPLETED, "ws-001", 1, "cluster-a", worker="w"),
        jobs.JobEvent(jobs.EventKind.RETRYING, "ws-002", 1, "cluster-a"),  # not published
        jobs.JobEvent(
            jobs.EventKind.FAILED,
            "ws-003",
            2,
            "cluster-b",
            category=jobs.ErrorCategory.DATA,
            message="input missing",
            fence=7,
        ),
    ]
    for event in events:
        await notifier.notify(event)
    got = sqs.receive_message(
        QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    bodies = sorted(
        ((json.loads(m["Body"]), m["MessageAttributes"]) for m in got),
        key=lambda pair: str(pair[0]["job_id"]),
    )
    assert [(b["job_id"], b["kind"], b["attempt"]) for b, _ in bodies] == [
        ("ws-001", "completed", 1),
        ("ws-003", "failed", 2),
    ]
    attributes = {b["job_id"]: {k: v["StringValue"] for k, v in a.items()} for b, a in bodies}
    assert attributes["ws-003"] == {
        "job_id": "ws-003",
        "attempt": "2",
        "kind": "failed",
        "category": "DATA",
        "fence": "7",
    }
    assert "fence" not in attributes["ws-001"]  # an event without one has none
    assert (bodies[1][0]["message"], bodies[1][0]["fence"]) == ("input missing", 7)


async def test_a_failing_publish_is_logged_never_raised(
    caplog: pytest.LogCaptureFixture, moto_endpoint: str
) -> None:
    notifier = jobs.SNSNotifier(
        "arn:aws:sns:us-east-1:123456789012:nowhere", endpoint_url=moto_endpoint, retries=1
    )
    await notifier.notify(jobs.JobEvent(jobs.EventKind.DEAD, "ws-9", 3, None))
    assert "SNS publish of job ws-9 dead" in caplog.text


async def test_s3_inputs_validator_fails_missing_inputs_as_data_and_passes_present_ones(
    moto_endpoint: str, tmp_path: Path
) -> None:
    s3 = _client("s3", moto_endpoint)
    s3.create_bucket(Bucket="reads")
    s3.put_object(Bucket="reads", Key="ws-001/r1.fq.gz", Body=b"ACGT")
    validate = jobs.S3InputsValidator(
        lambda job: job.payload["inputs"], region="us-east-1", endpoint_url=moto_endpoint
    )
    seen: list[str] = []

    async def handler(ctx: jobs.JobContext) -> None:
        seen.append(ctx.job.id)

    async with corral.connect(f"sqlite:///{tmp_path / 'jobs.db'}") as db:
        await db.jobs.enqueue(jobs.Job("ok", {"inputs": ["s3://reads/ws-001/r1.fq.gz"]}))
        await db.jobs.enqueue(
            jobs.Job("gone", {"inputs": ["s3://reads/ws-001/r1.fq.gz", "s3://reads/no/such"]})
        )
        await db.jobs.enqueue(jobs.Job("bad", {"inputs": ["reads/ws-001"]}))
        config = jobs.ProcessorConfig(poll_interval=0.05)
        processor = jobs.Processor(db, handler, config=config, validate=validate)
        await processor.run(until_idle=True)
        ok, gone, bad = [await db.jobs.get(i) for i in ("ok", "gone", "bad")]
    assert seen == ["ok"]
    assert ok.state is jobs.State.COMPLETED
    for record, says in ((gone, "s3://reads/no/such does not exist"), (bad, "not an S3 URI")):
        assert record.state is jobs.State.FAILED  # not retried
        assert record.last_error is not None
        assert record.last_error.category is jobs.ErrorCategory.DATA
        assert says in record.last_error.message


def _error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "HeadObject",
    )


def test_s3_errors_are_classified_denied_as_configuration_busy_as_transient() -> None:
    # moto's server does not enforce bucket policies (no IAM), so a denied HEAD is the
    # error S3 returns for one, classified as the validator does.
    uri = "s3://reads/k"
    assert isinstance(classify_s3(uri, _error("403", 403)), jobs.ConfigurationError)
    assert isinstance(classify_s3(uri, _error("AccessDenied", 403)), jobs.ConfigurationError)
    assert isinstance(classify_s3(uri, _error("404", 404)), jobs.DataError)
    assert isinstance(classify_s3(uri, _error("SlowDown", 503)), jobs.TransientError)
    assert isinstance(classify_s3(uri, ConnectionError("unreachable")), jobs.TransientError)


def test_a_bad_topic_arn_is_refused() -> None:
    with pytest.raises(ValueError, match="topic's ARN"):
        jobs.SNSNotifier("worksets")


@pytest.mark.timeout(150)
def test_the_worksets_example_runs_against_moto(moto_endpoint: str) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "worksets_aws.py"
    result = subprocess.run(
        [sys.executable, "-W", "error", str(example), "--quick", "--endpoint-url", moto_endpoint],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "worksets: 8, completed 6, failed 2" in result.stdout
    assert "SNS events read back from SQS: 8 (completed, failed)" in result.stdout
    assert result.stderr == ""
