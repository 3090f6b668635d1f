"""The renewer: extends the leases of a processor's running jobs, and drops those it lost.

Every third of ``lease_seconds`` it renews the lease of each job still running (with
the progress counted since), in one transaction; a job whose lease another worker took
over is marked lost and its runner's cancel scope cancelled, so that its attempt is
dropped, not recorded. A job whose cancellation was asked (``db.jobs.cancel``) is
marked cancelling and its runner's cancel scope cancelled, so that it ends
``cancelled``. A cancellation asked on the processor's own database wakes it at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from .._ports._jobs import Renewal
from . import _claims
from ._state import ProcessorState

if TYPE_CHECKING:
    from .._ports import Session

__all__ = ["renewer"]


async def renewer(state: ProcessorState) -> None:
    """Renew the leases of the running jobs every third of ``lease_seconds``, until cancelled."""
    period = state.config.lease_seconds / 3
    while True:
        with anyio.move_on_after(period):
            await state.renew_wakeup.wait()
        state.renew_wakeup = anyio.Event()
        entries = [e for e in state.running.values() if e._outcome is None]
        if not entries:
            continue
        leases = [(e._claimed, e._take_progress()) for e in entries]

        async def renew(conn: Session, leases: list[Any] = leases) -> Renewal:
            return await conn.jobs.renew(leases, state.config.lease_seconds)

        call = _claims.Call(renew)
        try:
            held, cancel = await call.run(state.db)
        except BaseException:
            if not call.committing:  # its progress is to be written with the next
                for entry, lease in zip(entries, leases, strict=True):
                    entry.progress._give_back(lease[1])
            raise
        for entry in entries:
            if entry._outcome is not None:
                continue
            token = entry._claimed.token
            if token not in held:
                entry._lost = True
            elif token in cancel and token not in state.cancelling:
                state.cancelling.add(token)
            else:
                continue
            if entry._scope is not None:
                entry._scope.cancel()
