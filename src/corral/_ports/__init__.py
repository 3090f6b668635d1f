"""The ports: the storage protocols, and the plain data types that cross them.

The bottom layer. The backends (``corral._backends``) implement these protocols; the
engine (the writer, ``Database``) and the domains (jobs, progress) call them. A port's
docstrings state what every backend must guarantee. This package imports nothing of
corral but :mod:`corral._exceptions`.

- :mod:`._store`: :class:`Store`, what the writer needs from the store it owns, and
  the types of a batch (:class:`Run`, :class:`TableSchema`, :class:`Batch`, ...).
- :mod:`._session`: :class:`Session`, what a writer operation is given.
- :mod:`._jobs`: :class:`JobStore`, the job queue's storage.
- :mod:`._progress`: :class:`ProgressStore`, runs and subtasks.
- :mod:`._urls`: :func:`redact` and :func:`scrub`, which hide a URL's secrets, and
  :func:`seconds`, which reads a URL parameter's number of seconds.
"""

from ._jobs import JobStore as JobStore
from ._progress import ProgressStore as ProgressStore
from ._session import Session as Session
from ._store import Batch as Batch
from ._store import Column as Column
from ._store import Failure as Failure
from ._store import Operation as Operation
from ._store import Run as Run
from ._store import Segment as Segment
from ._store import Source as Source
from ._store import Store as Store
from ._store import TableSchema as TableSchema
from ._urls import redact as redact
from ._urls import scrub as scrub
from ._urls import seconds as seconds

__all__ = (
    "Batch",
    "Column",
    "Failure",
    "JobStore",
    "Operation",
    "ProgressStore",
    "Run",
    "Segment",
    "Session",
    "Source",
    "Store",
    "TableSchema",
    "redact",
    "seconds",
    "scrub",
)
