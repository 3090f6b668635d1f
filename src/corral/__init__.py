"""corral: structured concurrency for batch work, on anyio (asyncio and trio).

A bounded worker pool maps a function over lazy input (:func:`map`, :func:`imap`);
plain functions run in threads or in a persistent process pool (:func:`to_thread`,
:func:`to_process`, :class:`ProcessPool`); a :class:`Cluster` bounds how much runs in
one place. :mod:`corral.blocking` offers the same engine to synchronous code.
"""

from ._cluster import Cluster as Cluster
from ._cluster import ClusterStatistics as ClusterStatistics
from ._cluster import Offload as Offload
from ._exceptions import CorralError as CorralError
from ._exceptions import NotPicklableError as NotPicklableError
from ._exceptions import PoolClosedError as PoolClosedError
from ._exceptions import WorkerCrashed as WorkerCrashed
from ._exceptions import WorkerInitializerError as WorkerInitializerError
from ._map import IMap as IMap
from ._map import MapResults as MapResults
from ._map import ProgressSink as ProgressSink
from ._map import imap as imap
from ._map import map as map
from ._pickling import is_picklable as is_picklable
from ._process import ProcessPool as ProcessPool
from ._process import ProcessPoolStatistics as ProcessPoolStatistics
from ._process import cpu_count as cpu_count
from ._process import to_process as to_process
from ._thread import to_thread as to_thread

__version__ = "0.1.0"

__all__ = (
    "Cluster",
    "ClusterStatistics",
    "CorralError",
    "IMap",
    "MapResults",
    "NotPicklableError",
    "Offload",
    "PoolClosedError",
    "ProcessPool",
    "ProcessPoolStatistics",
    "ProgressSink",
    "WorkerCrashed",
    "WorkerInitializerError",
    "cpu_count",
    "imap",
    "is_picklable",
    "map",
    "to_process",
    "to_thread",
)
