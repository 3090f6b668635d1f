"""Clusters: named places where work runs, each with a capacity limiter.

A cluster's ``capacity`` is the number of units of work that run on it at once in this
process, counted by its limiter (a :class:`~corral._sync.LoopSafeSemaphore`). A map call
holds a unit while it runs; so does a job that a :class:`corral.jobs.Processor` runs on
the cluster, for as long as its handler runs. A job lends its unit to the maps its
handler runs on the same cluster (through a context variable, which the map's tasks
inherit): their calls run on the job's unit, or on a unit that is free when the call
starts, and otherwise wait for the job's unit, never for another job to end. So a
handler that maps on its own cluster cannot deadlock, and the units in use never exceed
the capacity.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import anyio.lowlevel

from ._dask import DaskPool
from ._sync import LoopSafeSemaphore
from ._validate import (
    check_number,
    check_offload,
    check_positive_int,
    check_str,
    check_type,
    type_error,
)

__all__ = ["Cluster", "ClusterStatistics", "Offload"]

Offload = Literal["thread", "process"]
"""Where a plain function runs: ``"thread"`` (worker threads) or ``"process"`` (the default
process pool)."""


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """A snapshot of one cluster's capacity limiter."""

    name: str
    """The cluster's name."""
    capacity: int
    """The most units of work that may run on the cluster at once."""
    borrowed: int
    """Units in use right now (never more than ``capacity``): one per job running on the
    cluster, and one per map call not running on its job's unit."""
    waiting: int
    """Map calls and jobs waiting for a free unit right now (calls of a job's map that
    wait for the job's own unit are not counted)."""


class Cluster:
    """A named capacity pool: at most ``capacity`` units of work run on it at once.

    A unit of work is a map call or a running job. Every :func:`corral.map` or
    :func:`corral.imap` given ``cluster=`` takes a unit for each call in flight (a chunk
    sent to a process counts as one call, since it occupies one worker), so concurrent
    maps on one cluster share its capacity exactly. A :class:`corral.jobs.Processor`
    takes a unit for each job it runs on the cluster, held while the job's handler runs
    (a job claimed while every unit is taken waits for one). A map that the handler runs
    on the job's own cluster (``cluster=ctx.cluster``) runs its calls on the job's unit,
    or on units free when a call starts, and otherwise waits for the job's unit: it never
    waits for another job, so it cannot deadlock, and a job and its map together count
    as the units they use, not one more. :meth:`statistics` counts the jobs' units too.

    The limiter is this process's; across processes the processor also bounds the jobs
    in progress on a cluster of this name through the database, to ``capacity`` in all.
    A cluster may be created at import time and shared by any number of event loops and
    threads.

    Args:
        name: A label for the cluster, shown in statistics and errors, and its name in
            the job queue.
        capacity: The most units of work (map calls, running jobs) at once; a positive
            integer.
        offload: Where plain functions mapped on this cluster run, ``"thread"``,
            ``"process"`` or a :class:`corral.dask.DaskPool` (each chunk in flight on the
            Dask cluster holds a unit); ``None`` leaves it to :func:`corral.map`'s
            ``offload``.
        region: Routing attribute (data locality) for the job processor; stored only.
        cost: Routing attribute (relative cost) for the job processor, cheapest
            first; stored only. Give every cluster of a processor a cost, or none: one
            without a cost ranks after those with one, as the most expensive (the
            :class:`~corral.jobs.Processor` warns of such a mix).
        labels: Routing attribute (resources such as ``"gpu"``); stored as a frozenset.

    Raises:
        TypeError: An argument has the wrong type (``labels`` given as one ``str``, say).
        ValueError: ``capacity`` is not positive, ``offload`` is not a known place, or a
            name holds a character a database cannot store
            (:class:`~corral.UnstorableTextError`).

    Attributes:
        name: The cluster's name.
        offload: Where plain functions mapped on it run (``None``: the map decides).
        region: Its routing region, or ``None``.
        cost: Its routing cost as a float, or ``None``.
        labels: Its routing labels.
    """

    __slots__ = ("_semaphore", "cost", "labels", "name", "offload", "region")

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        offload: Offload | DaskPool | None = None,
        region: str | None = None,
        cost: float | None = None,
        labels: Iterable[str] = (),
    ) -> None:
        check_str("Cluster name", name)
        check_positive_int("capacity", capacity)
        if offload is not None and not isinstance(offload, DaskPool):
            check_offload(offload, pools="a corral.dask.DaskPool")
        if isinstance(labels, str):
            raise type_error(
                "Cluster labels",
                "a collection of str",
                labels,
                f"write labels={{{labels!r}}}",
            )
        check_type("Cluster labels", labels, Iterable, "a collection of str")
        label_set = frozenset(labels)
        for label in label_set:
            check_str("Cluster label", label)
        self.name: str = name
        self.offload: Offload | DaskPool | None = offload
        self.region: str | None = check_str("Cluster region", region, optional=True)
        self.cost: float | None = check_number("Cluster cost", cost, optional=True)
        self.labels: frozenset[str] = label_set
        self._semaphore = LoopSafeSemaphore(capacity)

    @property
    def capacity(self) -> int:
        """The most units of work (map calls, running jobs) that run on it at once."""
        return self._semaphore.value

    def statistics(self) -> ClusterStatistics:
        """Return a frozen snapshot of capacity, borrowed and waiting units."""
        sem = self._semaphore
        return ClusterStatistics(self.name, sem.value, sem.borrowed, sem.waiting)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one unit of the cluster for the body of an ``async with`` block.

        Inside a job running on this cluster, the unit is the job's own if it is free,
        else a free unit of the cluster, else the job's own once it is free.
        """
        lent = _lent.get()
        if lent is not None and lent.cluster is self:
            source = await lent.take()
        else:
            source = self._semaphore
            await source.acquire()
        try:
            yield
        finally:
            source.release()

    def _job_unit(self) -> _JobUnit:
        """Return the unit a job holds while its handler runs: ``async with``."""
        return _JobUnit(self)

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


#: Held while a job's unit makes its gate (rare: once per job that maps on its cluster).
_MAKING = threading.Lock()


class _JobUnit:
    """One unit of a cluster, held by a running job and lent to the maps of its handler.

    ``async with`` takes the unit from the cluster's limiter (waiting in line if none is
    free) and lends it, through :data:`_lent`, to what runs in the block and in the
    tasks it starts; the block's end takes the loan back and frees the unit. The loan is
    a gate of one token: a map call on the job's cluster takes it, or a free unit of the
    cluster, or waits for it.
    """

    __slots__ = ("_gate", "_token", "cluster")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._gate: LoopSafeSemaphore | None = None
        self._token: Token[_JobUnit | None] | None = None

    async def __aenter__(self) -> None:
        semaphore = self.cluster._semaphore
        if not semaphore.acquire_nowait():
            await semaphore.acquire()
        self._token = _lent.set(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._token is not None
        _lent.reset(self._token)
        self.cluster._semaphore.release()

    @property
    def gate(self) -> LoopSafeSemaphore:
        """The job's unit as lent: a semaphore of one token."""
        gate = self._gate
        if gate is None:
            with _MAKING:  # threads may ask at once: they must share one gate
                gate = self._gate
                if gate is None:
                    gate = self._gate = LoopSafeSemaphore(1)
        return gate

    async def take(self) -> LoopSafeSemaphore:
        """Take the job's unit, or a free one of the cluster, or wait for the job's.

        Returns the semaphore to release when the call is done.
        """
        gate = self.gate
        if gate.acquire_nowait():
            source = gate
        elif self.cluster._semaphore.acquire_nowait():
            source = self.cluster._semaphore
        else:
            await gate.acquire()
            return gate
        try:
            await anyio.lowlevel.checkpoint()
        except BaseException:
            source.release()
            raise
        return source


#: The unit lent by the job whose handler runs in this context, if any.
_lent: ContextVar[_JobUnit | None] = ContextVar("corral_lent_unit", default=None)
