"""The deliverer: hands a processor's notifications to its notifier, from a bounded buffer.

The other roles queue events with :func:`send`, which never waits; the deliverer, a
task of its own (in a task group around theirs), gives them to the notifier one at a
time, oldest first, so that a slow notifier holds back no job. When it is
``notify_buffer`` events behind, the oldest are dropped, counted and logged.
"""

from __future__ import annotations

import logging

import anyio

from ._notify import JobEvent
from ._state import ProcessorState

__all__ = ["deliver", "send", "wake_deliverer"]

log = logging.getLogger("corral.jobs")


def send(state: ProcessorState, event: JobEvent) -> None:
    """Queue ``event`` for the notifier; never waits (if it is behind, drop the oldest)."""
    events = state.events
    if len(events) >= state.config.notify_buffer:
        events.popleft()
        state.counts["notifications_dropped"] += 1
        if not state.overflowing:
            state.overflowing = True
            log.warning(
                "%s: the notifier is %d notifications behind (notify_buffer): dropping "
                "the oldest until it catches up (counted in statistics()."
                "notifications_dropped)",
                state.label,
                len(events) + 1,
            )
    events.append(event)
    wake_deliverer(state)


def wake_deliverer(state: ProcessorState) -> None:
    """Wake the deliverer if it waits for a notification (or for the end)."""
    wakeup = state.events_wakeup
    if wakeup is not None:
        state.events_wakeup = None
        wakeup.set()


async def deliver(state: ProcessorState, scope: anyio.CancelScope) -> None:
    """Hand the queued notifications to the notifier, oldest first, one at a time.

    In ``scope``, shielded: the end of ``run()`` cuts no notification short, but
    the deadline it then sets (``notify_timeout``) does. A notification that
    raises is logged and counted.
    """
    events = state.events
    current: JobEvent | None = None
    with scope:
        while True:
            if not events:
                state.overflowing = False
                if state.events_end:
                    break
                wakeup = state.events_wakeup = anyio.Event()
                await wakeup.wait()
                continue
            current = events.popleft()
            try:
                await state.notifier.notify(current)
            except Exception:
                state.counts["notifications_failed"] += 1
                log.exception("%s: the notifier raised on %r; ignored", state.label, current)
            current = None
    left = len(events) + (current is not None)
    if left:
        events.clear()
        state.counts["notifications_dropped"] += left
        log.warning(
            "%s: %d notifications were not delivered within notify_timeout (%s s) "
            "after run() ended; dropped",
            state.label,
            left,
            state.config.notify_timeout,
        )
