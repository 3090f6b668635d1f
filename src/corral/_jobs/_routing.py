"""The scheduler's choice of a cluster for a job, and the reason it records."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from .._cluster import Cluster
from ._schema import stored_labels

__all__ = ["Placement", "Router", "route"]


class Routable(Protocol):
    """What the scheduler reads of a job: a :class:`~corral.jobs.Job` has it."""

    @property
    def affinity(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def requires(self) -> frozenset[str]: ...


class Placement(NamedTuple):
    """What the scheduler reads of a job, taken from its stored row."""

    affinity: str | None
    region: str | None
    requires: frozenset[str]


class Router:
    """:func:`route` over fixed clusters, for stored jobs, with the common case remembered.

    A stored job is placed from its row's ``affinity``, ``region`` and ``requires``
    columns (the job itself is not rebuilt: a claim places jobs while it holds the
    claim lock). When only one of the clusters has the labels a job requires, that
    cluster is the job's only choice whatever the free slots, and so is its reason:
    both are kept per kind of job, and a job of that kind is placed with one lookup.
    """

    __slots__ = ("_clusters", "_known")

    #: Kinds of job remembered at most (then forgotten, all at once).
    LIMIT = 1024

    def __init__(self, clusters: Sequence[Cluster]) -> None:
        self._clusters = tuple(clusters)
        self._known: dict[tuple[Any, Any, Any], tuple[Placement, tuple[str, str] | None]] = {}

    def __call__(self, row: Mapping[str, Any], free: Mapping[str, int]) -> tuple[str, str] | None:
        """Choose a cluster with a free slot for the job of ``row``, as :func:`route` does."""
        key = (row["affinity"], row["region"], row["requires"])
        try:
            place, only = self._known[key]
        except KeyError:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            affinity, region, requires = key
            place = Placement(affinity, region, stored_labels(requires))
            only = None if affinity is not None else self._single(place)
            self._known[key] = (place, only)
        if only is None:
            return route(place, self._clusters, free)
        return only if free.get(only[0], 0) > 0 else None

    def _single(self, place: Placement) -> tuple[str, str] | None:
        able = [c for c in self._clusters if place.requires <= c.labels]
        if len(able) != 1:
            return None
        return route(place, self._clusters, {able[0].name: 1})


def route(
    job: Routable, clusters: Sequence[Cluster], free: Mapping[str, int]
) -> tuple[str, str] | None:
    """Choose a cluster with a free slot for ``job``; return (name, reason) or None.

    A job with ``affinity`` runs on that cluster only (manual placement). Otherwise the
    clusters that have every label the job ``requires`` and a free slot are ranked by
    data locality (a cluster in the job's ``region`` first), then cost (cheapest first;
    a cluster without a cost after those with one, as the most expensive: a
    :class:`~corral.jobs.Processor` made with such a mix warns), then free slots (most
    first), then name.
    ``None`` means no cluster can take the job now; it stays queued.
    """
    if job.affinity is not None:
        if free.get(job.affinity, 0) <= 0:
            return None
        return job.affinity, f"affinity: pinned to {job.affinity}"
    requires = frozenset(job.requires)
    able = [c for c in clusters if requires <= c.labels and free.get(c.name, 0) > 0]
    if not able:
        return None

    def rank(c: Cluster) -> tuple[int, float, int, str]:
        local = 0 if job.region is not None and c.region == job.region else 1
        cost = math.inf if c.cost is None else c.cost
        return local, cost, -free[c.name], c.name

    best = min(able, key=rank)
    reasons: list[str] = []
    if job.region is not None:
        if best.region == job.region:
            reasons.append(f"locality: data in {job.region}")
        elif any(c.region == job.region for c in clusters):
            reasons.append(f"no free cluster in {job.region}")
        else:
            reasons.append(f"no cluster in {job.region}")
    having = " and ".join(sorted(requires))
    if requires and len(able) > 1:
        reasons.append(f"has {having}")
    # The clusters that tied with the best one on locality: cost decided among them.
    tier = [c for c in able if rank(c)[0] == rank(best)[0]]
    if len(able) == 1:
        reasons.append(
            f"the only cluster with {having} and a free slot"
            if requires
            else "the only cluster with a free slot"
        )
    elif len(tier) > 1:
        costs = {c.cost for c in tier}
        if best.cost is not None and len(costs) > 1:
            reasons.append(f"cost {best.cost:g}, cheapest of {len(tier)}")
        else:
            reasons.append(f"most free slots ({free[best.name]}) of {len(tier)}")
    return best.name, "scheduler: " + "; ".join(reasons)
