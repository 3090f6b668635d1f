"""``map`` and ``imap``: a bounded worker pool over lazy input.

One engine serves both. At most ``limit`` workers (tasks) run; each pulls the next
item from the input only when it is free, so the input is read lazily and never more
than O(limit) items are taken and not yet handed back. ``imap`` in order also stops
pulling when the next result in order is slow (a window of ``2 * limit`` items, times
the chunk size for processes), rather than buffer without bound.

Failures: with ``return_exceptions=False`` the first exception cancels the remaining
calls and is raised itself (never wrapped in an ExceptionGroup), with a note naming the
item; results that had already completed are still handed out first by ``imap``. With
``return_exceptions=True`` every item runs and exceptions stand in place of results.
An exception from the input iterable is always raised.

The modules: ``_engine`` (the state every run shares: arguments, input and window,
results in order, failures naming the item, progress, timeout messages), one per
strategy that makes the calls (``_fast_loop`` and ``_loop`` for coroutines,
``_thread_crew`` and ``_threads`` for plain functions in threads, ``_processes`` for a
process pool), and ``_api`` (``map``, ``imap``, and which strategy a run takes).
"""

from ._api import IMap as IMap
from ._api import MapResults as MapResults
from ._api import imap as imap
from ._api import map as map
from ._engine import DEFAULT_LIMITS as DEFAULT_LIMITS
from ._engine import ProgressSink as ProgressSink
from ._engine import is_async_callable as is_async_callable

__all__ = [
    "DEFAULT_LIMITS",
    "MapResults",
    "ProgressSink",
    "imap",
    "map",
]
