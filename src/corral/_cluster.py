"""Clusters: named places where work runs, each with a capacity limiter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from ._sync import LoopSafeSemaphore
from ._validate import check_offload, check_positive_int, check_text

__all__ = ["Cluster", "ClusterStatistics", "Offload"]

#: Where a plain function runs: ``"thread"`` or ``"process"``.
Offload = Literal["thread", "process"]


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """A snapshot of one cluster's capacity limiter."""

    name: str
    """The cluster's name."""
    capacity: int
    """The most calls that may run in the cluster at once."""
    borrowed: int
    """Calls running in the cluster right now (never more than ``capacity``)."""
    waiting: int
    """Calls waiting for a free slot right now."""


class Cluster:
    """A named capacity pool: at most ``capacity`` calls run in it at once.

    Every :func:`corral.map` or :func:`corral.imap` given ``cluster=`` takes a slot for
    each call in flight (a chunk sent to a process counts as one call, since it occupies
    one worker), so concurrent maps on one cluster share its capacity exactly. A cluster
    may be created at import time and shared by any number of event loops and threads.

    Args:
        name: A label for the cluster, shown in statistics and errors.
        capacity: The most calls in flight at once; a positive integer.
        offload: Where plain functions mapped on this cluster run, ``"thread"`` or
            ``"process"``; ``None`` leaves it to :func:`corral.map`'s ``offload``.
        region: Routing attribute (data locality) for the job processor; stored only.
        cost: Routing attribute (relative cost) for the job processor; stored only.
        labels: Routing attribute (resources such as ``"gpu"``); stored as a frozenset.

    """

    __slots__ = ("_semaphore", "cost", "labels", "name", "offload", "region")

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        offload: Offload | None = None,
        region: str | None = None,
        cost: float | None = None,
        labels: Iterable[str] = (),
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"Cluster name must be a non-empty str, got {name!r}")
        check_text("Cluster name", name)
        check_positive_int("capacity", capacity)
        if offload is not None:
            check_offload(offload)
        if region is not None and not isinstance(region, str):
            raise TypeError(f"Cluster region must be a str or None, got {region!r}")
        if region is not None:
            check_text("Cluster region", region)
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
            raise TypeError(f"Cluster cost must be a number or None, got {cost!r}")
        if isinstance(labels, str):
            raise TypeError(
                f"Cluster labels must be a collection of str, got the str {labels!r}; "
                f"write labels={{{labels!r}}}"
            )
        label_set = frozenset(labels)
        for label in label_set:
            if not isinstance(label, str):
                raise TypeError(f"Cluster labels must be str, got {label!r}")
            check_text("Cluster label", label)
        self.name = name
        self.offload: Offload | None = offload
        self.region = region
        self.cost = None if cost is None else float(cost)
        self.labels: frozenset[str] = label_set
        self._semaphore = LoopSafeSemaphore(capacity)

    @property
    def capacity(self) -> int:
        """The most calls that run in this cluster at once."""
        return self._semaphore.value

    def statistics(self) -> ClusterStatistics:
        """Return a frozen snapshot of capacity, borrowed and waiting slots."""
        sem = self._semaphore
        return ClusterStatistics(self.name, sem.value, sem.borrowed, sem.waiting)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot of the cluster for the body of an ``async with`` block."""
        await self._semaphore.acquire()
        try:
            yield
        finally:
            self._semaphore.release()

    def __repr__(self) -> str:
        parts = [f"{self.name!r}", f"capacity={self.capacity}"]
        if self.offload is not None:
            parts.append(f"offload={self.offload!r}")
        if self.region is not None:
            parts.append(f"region={self.region!r}")
        if self.cost is not None:
            parts.append(f"cost={self.cost!r}")
        if self.labels:
            parts.append("labels={" + ", ".join(repr(x) for x in sorted(self.labels)) + "}")
        return f"Cluster({', '.join(parts)})"
