"""The DynamoDB store shared by real processes (moto, serialized: see ``moto_endpoint``).

The same proofs as tests/test_jobs_processes.py, on a ``dynamodb://`` URL: three worker
processes (tests/jobs_worker.py, two on asyncio, one on trio) share the jobs, each
completed exactly once, with ``max_concurrent``, each cluster's capacity and
``per_customer`` never exceeded (the handlers count what runs, across processes, and
the test samples the jobs in progress from a client of its own); and a worker killed
with SIGKILL in the middle of a job has its job reclaimed once its lease has expired,
and finished once.

moto serves about a job a second to three polling workers here, so the suite runs 30
jobs; ``CORRAL_TEST_AWS_JOBS=300`` runs the issue's 300 (about five minutes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import corral
import test_jobs_processes
from corral import jobs
from corral._ports import Session
from test_jobs_processes import run_limits
from test_jobs_processes import (
    test_a_killed_workers_job_is_reclaimed_and_finished_once as killed_worker,
)

JOBS = int(os.environ.get("CORRAL_TEST_AWS_JOBS", "30"))

pytestmark = pytest.mark.timeout(60 + 2 * JOBS)


async def read_queue(url: str, n: int) -> tuple[jobs.QueueDepth, list[jobs.JobRecord]]:
    """The queue's depth (from the port: the face's depth awaits the kinds branch) and jobs."""

    async def depth(session: Session) -> dict[str, int]:
        return await session.jobs.depth()

    async with corral.connect(url) as db:
        counts: dict[str, Any] = await db._run(depth)
        fields = jobs.QueueDepth.__dataclass_fields__
        return jobs.QueueDepth(**{k: v for k, v in counts.items() if k in fields}), list(
            await db.jobs.list(limit=n + 1)
        )


def test_limits_hold_across_three_processes_on_dynamodb(
    dynamodb_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(test_jobs_processes, "read_queue", read_queue)
    run_limits(dynamodb_url, tmp_path, JOBS, ["asyncio", "trio", "asyncio"])


async def test_a_killed_workers_job_is_reclaimed_and_finished_once_on_dynamodb(
    dynamodb_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    await killed_worker(dynamodb_url, tmp_path, anyio_backend)
