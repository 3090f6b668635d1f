"""Worksets on AWS: jobs in DynamoDB, inputs validated in S3, outcomes announced on SNS.

Each workset names its input files in S3. A ``jobs.Processor`` on a ``dynamodb://`` store
claims them (limits exact over every worker sharing the tables), checks every input
exists before it runs (``jobs.S3InputsValidator``: a missing file fails the workset as
DATA, at once), and publishes each outcome to an SNS topic (``jobs.SNSNotifier``), read
back here from an SQS queue subscribed to it. Progress and a results table live in
DynamoDB too.

    python examples/worksets_aws.py --quick                       # on moto, started here
    python examples/worksets_aws.py --endpoint-url http://127.0.0.1:5000   # an emulator
    python examples/worksets_aws.py --region us-west-2 --prefix corral-demo  # real AWS

On real AWS (credentials from the usual chain) it makes the tables ``PREFIX_*``, a
bucket, a topic and a queue named from the prefix, and leaves them: delete them after.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

import anyio
import boto3

import corral
from corral import jobs

CLUSTERS = [corral.Cluster("cluster-a", capacity=4), corral.Cluster("cluster-b", capacity=4)]
CONFIG = jobs.ProcessorConfig(max_concurrent=6, per_customer=3, poll_interval=0.1)


def start_moto() -> str:
    """Start moto's server on loopback (every AWS service); return its endpoint."""
    import logging
    import os

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def set_up(args: argparse.Namespace, names: int) -> tuple[str, str, Any]:
    """Make the bucket (with the inputs that exist), the topic and the queue."""
    kw = {"region_name": args.region, "endpoint_url": args.endpoint_url}
    s3, sns, sqs = (boto3.client(s, **kw) for s in ("s3", "sns", "sqs"))
    bucket = f"{args.prefix}-inputs".lower()
    if args.region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": args.region}
        )
    for n in range(names):
        if n % 4 != 3:  # every fourth workset misses its second input
            s3.put_object(Bucket=bucket, Key=f"ws-{n:03d}/r2.fq.gz", Body=b"ACGT")
        s3.put_object(Bucket=bucket, Key=f"ws-{n:03d}/r1.fq.gz", Body=b"ACGT")
    topic = sns.create_topic(Name=f"{args.prefix}-worksets")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"{args.prefix}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
    )
    return bucket, topic, (sqs, queue)


async def main(args: argparse.Namespace) -> None:
    n = 8 if args.quick else 40
    bucket, topic, (sqs, queue) = set_up(args, n)
    query = f"region={args.region}" + (
        f"&endpoint_url={args.endpoint_url}" if args.endpoint_url else ""
    )
    url = f"dynamodb://{args.prefix}?{query}"
    async with corral.connect(url) as db:
        for i in range(n):
            inputs = [f"s3://{bucket}/ws-{i:03d}/r1.fq.gz", f"s3://{bucket}/ws-{i:03d}/r2.fq.gz"]
            await db.jobs.enqueue(
                jobs.Job(
                    f"ws-{i:03d}",
                    {"inputs": inputs},
                    customer=f"customer-{i % 3}",
                    affinity="cluster-a" if i % 5 == 0 else None,
                )
            )
        run = await db.progress.start_run("STATIC", "Process worksets")
        sub = await run.start_subtask(1, "worksets", items_total=n)
        results = db.table("results", key=("workset", "file"))

        async def handler(ctx: jobs.JobContext) -> None:
            for uri in ctx.job.payload["inputs"]:
                await results.put({"workset": ctx.job.id, "file": uri, "bases": 4})
            sub.increment()

        processor = jobs.Processor(
            db,
            handler,
            clusters=CLUSTERS,
            config=CONFIG,
            validate=jobs.S3InputsValidator(
                lambda job: job.payload["inputs"],
                region=args.region,
                endpoint_url=args.endpoint_url,
            ),
            notifier=jobs.SNSNotifier(topic, region=args.region, endpoint_url=args.endpoint_url),
        )
        await processor.run(until_idle=True)
        await sub.complete()
        await run.complete()
        stats = processor.statistics()
        print(f"worksets: {n}, completed {stats.completed}, failed {stats.failed}")
        for record in await db.jobs.list(jobs.State.FAILED):
            assert record.last_error is not None
            print(
                f"  {record.id} failed ({record.last_error.category.value}): "
                f"{record.last_error.message}"
            )
    events: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not got.get("Messages"):
            break
        events.extend(json.loads(m["Body"]) for m in got["Messages"])
    kinds = sorted({e["kind"] for e in events})
    print(f"SNS events read back from SQS: {len(events)} ({', '.join(kinds)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 worksets (default 40)")
    parser.add_argument("--endpoint-url", default=None, help="an emulator (moto, LocalStack)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--prefix", default=f"worksets{uuid.uuid4().hex[:8]}")
    parser.add_argument("--aws", action="store_true", help="real AWS: start no emulator")
    args = parser.parse_args()
    if args.endpoint_url is None and not args.aws:
        args.endpoint_url = start_moto()  # no AWS account needed for the demo
    anyio.run(main, args)
