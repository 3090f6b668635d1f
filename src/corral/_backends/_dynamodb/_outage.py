"""An endpoint that stopped answering, and the wait for it to answer again: :class:`Outage`.

DynamoDB has no connection to restore: each request is an HTTPS call of its own. What
the store can lose is the endpoint (the network, a proxy, a local emulator restarted):
its client then raises :class:`~corral.ConnectionLostError` (after botocore's own
retries). The store waits for the endpoint with a cheap request, ``DescribeTable`` of
the meta table (:func:`probe`, also sent by ``connect``): the first at once, then after
0.05 s, twice as long after each failure (5 s at most), each wait jittered, for as long
as ``reconnect_timeout`` seconds (a URL parameter, 30 by default, as on PostgreSQL)
since the endpoint first stopped answering without a batch written since. Then it gives
up: :class:`~corral.ConnectionLostError` saying so, which stops the writer.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING

import anyio
from botocore.exceptions import ClientError

from ..._exceptions import ConnectionLostError, CorralError

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Outage", "probe"]

log = logging.getLogger("corral.database")

#: The wait before the second probe; twice as long before each next one, at most
#: _MAX_DELAY (the first probe is sent at once). Each wait is jittered (0.5x to 1.5x).
_FIRST_DELAY = 0.05
_MAX_DELAY = 5.0

#: What DynamoDB may answer the probe with: it is there (a table not made yet, or a
#: role not allowed to describe it, is fine).
_PROBE_PASSES = frozenset({"ResourceNotFoundException", "AccessDeniedException"})


async def probe(client: Client, table: str) -> None:
    """Send ``DescribeTable`` of ``table``: return if DynamoDB answered it at all.

    Raises :class:`~corral.ConnectionLostError` if the endpoint did not answer, and
    corral's error for what AWS refused otherwise (refused credentials: a
    :class:`~corral.QueryError`).
    """
    with contextlib.suppress(ClientError):  # it answered, and took the credentials
        await client.call("describe_table", TableName=table, passing=_PROBE_PASSES)


class Outage:
    """The store's view of its endpoint: answering, or not since when (see the module)."""

    def __init__(self, client: Client, table: str, budget: float) -> None:
        self._client = client
        self._table = table
        #: ``reconnect_timeout``: the most seconds an outage is waited for (0: never).
        self.budget = budget
        #: The error that began the outage, while the endpoint has not answered since.
        self.lost: ConnectionLostError | None = None
        #: When the outage began (``time.monotonic``), none while the store writes well.
        self._since: float | None = None
        self._delay = 0.0
        self._attempts = 0
        self._warned = False

    def begin(self, lost: ConnectionLostError) -> None:
        """Note that the endpoint did not answer (an outage begins, or goes on)."""
        self.lost = lost
        if self._since is None:
            self._since = time.monotonic()

    def over(self) -> None:
        """Note that a batch was written: the next loss begins a new outage."""
        self.lost = self._since = None
        self._delay = 0.0
        self._attempts = 0
        self._warned = False

    async def wait(self) -> int:
        """Probe the endpoint with backoff until it answers; return the probes sent.

        Returns at once (0) if it has answered since the outage began. Raises
        :class:`~corral.ConnectionLostError` once ``reconnect_timeout`` seconds are
        spent since then, at once if it is 0, saying how many probes it sent in how long.
        """
        lost = self.lost
        if lost is None:
            return 0
        budget = self.budget
        start = self._since if self._since is not None else time.monotonic()
        last: BaseException = lost
        if budget and not self._warned:
            self._warned = True
            log.warning("%s; waiting for DynamoDB to answer again (for up to %g s)", lost, budget)
        while True:
            pause = self._delay * (0.5 + random.random())
            elapsed = time.monotonic() - start
            if budget == 0 or elapsed + pause >= budget:
                tried = (
                    "reconnect_timeout=0: not waiting for DynamoDB to answer again"
                    if budget == 0
                    else f"gave up waiting for DynamoDB to answer again after "
                    f"{self._attempts} attempts in {elapsed:.1f} s (reconnect_timeout={budget:g})"
                )
                raise ConnectionLostError(f"{lost}; {tried}", commit_sent=lost.commit_sent) from (
                    last
                )
            await anyio.sleep(pause)
            self._delay = min(max(2 * self._delay, _FIRST_DELAY), _MAX_DELAY)
            self._attempts += 1
            try:
                # A probe may not wait past the budget (an endpoint that takes the
                # connection and never answers: botocore's timeouts are a minute).
                with anyio.fail_after(max(budget - elapsed - pause, _FIRST_DELAY)):
                    await probe(self._client, self._table)
            except (ConnectionLostError, TimeoutError) as exc:
                last = exc
                continue
            except CorralError:
                pass  # it answered (refusing something): the batch's requests will say
            log.warning(
                "DynamoDB answers again after %d attempts in %.1f s; the writer goes on",
                self._attempts,
                time.monotonic() - start,
            )
            self.lost = None
            return self._attempts
