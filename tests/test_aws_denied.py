"""S3InputsValidator against a real denial: moto's server enforcing IAM policies.

moto checks the signature and the IAM policies of each request once
``moto.settings.INITIAL_NO_AUTH_ACTION_COUNT`` requests have been served (infinity by
default: no checks). The test sets up buckets and a user whose policy reads one bucket
only, with checks off, then turns them on for the validator's requests alone, on the
session's moto server (tests run one at a time, and the setting is restored after).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import boto3
import pytest

from corral import jobs

pytestmark = pytest.mark.timeout(120)

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::open-reads/*"},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::open-reads"},
    ],
}


@pytest.fixture
def reader(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Two buckets with an object each; this process's credentials read ``open-reads`` only."""
    import moto.settings

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    for bucket in ("open-reads", "locked-reads"):
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="ws-001/r1.fq.gz", Body=b"@r1\nACGT\n+\nIIII\n")
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader", PolicyName="read-open", PolicyDocument=json.dumps(POLICY)
    )
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    yield key
    monkeypatch.undo()  # checks off again before the buckets go
    for bucket in ("open-reads", "locked-reads"):
        s3.delete_object(Bucket=bucket, Key="ws-001/r1.fq.gz")
        s3.delete_bucket(Bucket=bucket)
    iam.delete_access_key(UserName="reader", AccessKeyId=key["AccessKeyId"])
    iam.delete_user_policy(UserName="reader", PolicyName="read-open")
    iam.delete_user(UserName="reader")


def _job(*inputs: str) -> jobs.Job:
    return jobs.Job("ws-001", {"inputs": list(inputs)})


async def test_a_denied_bucket_is_a_configuration_error(
    moto_endpoint: str, reader: dict[str, str]
) -> None:
    validate = jobs.S3InputsValidator(lambda job: job.payload["inputs"], endpoint_url=moto_endpoint)
    await validate(_job("s3://open-reads/ws-001/r1.fq.gz"))  # allowed, and there
    with pytest.raises(jobs.DataError, match="s3://open-reads/ws-001/none does not exist"):
        await validate(_job("s3://open-reads/ws-001/r1.fq.gz", "s3://open-reads/ws-001/none"))
    with pytest.raises(
        jobs.ConfigurationError, match=re.escape("s3://locked-reads/ws-001/r1.fq.gz")
    ) as info:
        await validate(_job("s3://open-reads/ws-001/r1.fq.gz", "s3://locked-reads/ws-001/r1.fq.gz"))
    for secret in (reader["AccessKeyId"], reader["SecretAccessKey"]):
        assert secret not in str(info.value)  # no credentials in the message
    assert jobs.classify(info.value) is jobs.ErrorCategory.CONFIGURATION
