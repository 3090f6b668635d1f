"""The DynamoDB store shared by real processes (moto, serialized: see ``moto_endpoint``).

The same proofs as tests/test_jobs_processes.py, on a ``dynamodb://`` URL: three worker
processes (tests/jobs_worker.py, two on asyncio, one on trio) share the jobs, each
completed exactly once, with ``max_concurrent``, each cluster's capacity and
``per_customer`` never exceeded (the handlers count what runs, across processes, and
the test samples the jobs in progress from a client of its own); and a worker killed
with SIGKILL in the middle of a job has its job reclaimed once its lease has expired,
and finished once.

moto serves about three jobs a second to three polling workers here, so the suite runs 30
jobs; ``CORRAL_TEST_AWS_JOBS=300`` runs the issue's 300 (about two minutes here), which
CI does too (``.ci/run``, after the suite).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_jobs_processes import run_limits
from test_jobs_processes import (
    test_a_killed_workers_job_is_reclaimed_and_finished_once as killed_worker,
)

JOBS = int(os.environ.get("CORRAL_TEST_AWS_JOBS", "30"))

pytestmark = pytest.mark.timeout(60 + 2 * JOBS)


def test_limits_hold_across_three_processes_on_dynamodb(dynamodb_url: str, tmp_path: Path) -> None:
    run_limits(dynamodb_url, tmp_path, JOBS, ["asyncio", "trio", "asyncio"])


async def test_a_killed_workers_job_is_reclaimed_and_finished_once_on_dynamodb(
    dynamodb_url: str, tmp_path: Path, anyio_backend: str
) -> None:
    await killed_worker(dynamodb_url, tmp_path, anyio_backend)
