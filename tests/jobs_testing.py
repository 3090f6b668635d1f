"""What the processor tests share: a fast retry policy, a recording notifier, a config."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import corral
from corral import jobs

#: Retries that wait milliseconds, not seconds, and no jitter.
FAST = jobs.RetryPolicy(base=0.01, cap=0.05, jitter=0)


class Recorder:
    """A notifier that keeps every event."""

    def __init__(self) -> None:
        self.events: list[jobs.JobEvent] = []

    async def notify(self, event: jobs.JobEvent) -> None:
        self.events.append(event)

    def kinds(self, job_id: str) -> list[str]:
        """The kinds of the events of job ``job_id``, in order."""
        return [e.kind.value for e in self.events if e.job_id == job_id]


def config(**kwargs: Any) -> jobs.ProcessorConfig:
    """A ProcessorConfig for tests: fast retries and polls, a lease longer than any test."""
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("lease_seconds", 30)
    return jobs.ProcessorConfig(**kwargs)


@asynccontextmanager
async def database(url: str) -> AsyncIterator[corral.Database]:
    """``corral.connect(url)``, as the processor tests open it."""
    async with corral.connect(url) as db:
        yield db
