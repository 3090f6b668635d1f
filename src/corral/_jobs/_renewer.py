"""The renewer: extends the leases of a processor's running jobs, and drops those it lost.

Every third of ``lease_seconds`` it renews the lease of each job still running (with
the progress counted since), in one transaction; a job whose lease another worker took
over is marked lost and its runner's cancel scope cancelled, so that its attempt is
dropped, not recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from . import _claims
from ._state import ProcessorState

if TYPE_CHECKING:
    from .._ports import Session

__all__ = ["renewer"]


async def renewer(state: ProcessorState) -> None:
    """Renew the leases of the running jobs every third of ``lease_seconds``, until cancelled."""
    period = state.config.lease_seconds / 3
    while True:
        await anyio.sleep(period)
        entries = [e for e in state.running.values() if e._outcome is None]
        if not entries:
            continue
        leases = [(e._claimed, e._take_progress()) for e in entries]

        async def renew(conn: Session, leases: list[Any] = leases) -> set[int]:
            return await conn.jobs.renew(leases, state.config.lease_seconds)

        call = _claims.Call(renew)
        try:
            held = await call.run(state.db)
        except BaseException:
            if not call.committing:  # its progress is to be written with the next
                for entry, lease in zip(entries, leases, strict=True):
                    entry.progress._give_back(lease[1])
            raise
        for entry in entries:
            lost = entry._claimed.token not in held and entry._outcome is None
            if lost:
                entry._lost = True
                if entry._scope is not None:
                    entry._scope.cancel()
