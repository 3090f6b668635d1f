"""A fair counting semaphore that any event loop in any thread may share.

anyio's primitives belong to the event loop that first used them. A
:class:`~corral.Cluster` or the default process pool outlives event loops (the
blocking facade starts one per call, possibly in several threads at once), so their
capacity is counted here: a :class:`threading.Lock` guards the count, and a waiter
from another thread is woken on its own event loop through its loop token.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque

import anyio
from anyio.lowlevel import EventLoopToken, current_token

from ._lowlevel import loop_scheduler

__all__ = ["LoopSafeSemaphore"]


class _Waiter:
    __slots__ = ("event", "granted", "thread", "token")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.token: EventLoopToken = current_token()
        self.thread = threading.get_ident()
        self.granted = False

    def wake(self) -> None:
        """Set the waiter's event from whatever thread holds the semaphore's lock."""
        if threading.get_ident() == self.thread:
            self.event.set()
            return
        with contextlib.suppress(RuntimeError):  # that loop closed: its waiter was cancelled
            loop_scheduler(self.token)(self.event.set)


class LoopSafeSemaphore:
    """A FIFO-fair semaphore of ``value`` tokens, safe across threads and event loops.

    A released token passes straight to the longest waiter (no barging), so no waiter
    starves and the count never exceeds ``value``, not even for a moment.
    """

    def __init__(self, value: int) -> None:
        self._value = value
        self._borrowed = 0
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    @property
    def value(self) -> int:
        """The total number of tokens."""
        return self._value

    @property
    def borrowed(self) -> int:
        """Tokens held right now."""
        return self._borrowed

    @property
    def waiting(self) -> int:
        """Tasks waiting for a token right now."""
        return len(self._waiters)

    def acquire_nowait(self) -> bool:
        """Take a token if one is free and nobody waits; return whether it was taken."""
        with self._lock:
            if self._borrowed < self._value and not self._waiters:
                self._borrowed += 1
                return True
            return False

    async def acquire(self) -> None:
        """Take a token, waiting in line for one if none is free."""
        if self.acquire_nowait():
            try:
                await anyio.lowlevel.checkpoint()
            except BaseException:
                self.release()
                raise
            return
        waiter = _Waiter()
        with self._lock:
            if self._borrowed < self._value and not self._waiters:
                self._borrowed += 1
                waiter.granted = True
            else:
                self._waiters.append(waiter)
        if waiter.granted:
            try:
                await anyio.lowlevel.checkpoint()
            except BaseException:
                self.release()
                raise
            return
        try:
            await waiter.event.wait()
        except BaseException:
            with self._lock:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                    raise
            self.release()  # granted while being cancelled: pass the token on
            raise

    def release(self) -> None:
        """Give a token back; the longest waiter, if any, gets it at once."""
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True
                waiter.wake()
                return
            if self._borrowed <= 0:
                raise RuntimeError("release() called more often than acquire()")
            self._borrowed -= 1
