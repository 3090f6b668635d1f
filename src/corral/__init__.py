"""corral: structured concurrency for batch work, on anyio (asyncio and trio).

A bounded worker pool maps a function over lazy input (:func:`map`, :func:`imap`);
plain functions run in threads or in a persistent process pool (:func:`to_thread`,
:func:`to_process`, :class:`ProcessPool`); a :class:`Cluster` bounds how much runs in
one place. :func:`connect` opens a database whose one writer coroutine batches every
write; ``db.progress`` tracks runs and subtasks in it, with exact counts.
:mod:`corral.blocking` offers the same engine to synchronous code.
"""

import logging as _logging

from ._cluster import Cluster as Cluster
from ._cluster import ClusterStatistics as ClusterStatistics
from ._cluster import Offload as Offload
from ._connect import Database as Database
from ._connect import connect as connect
from ._database import DatabaseStatistics as DatabaseStatistics
from ._database import Table as Table
from ._display import show_progress as show_progress
from ._exceptions import ColumnTypeError as ColumnTypeError
from ._exceptions import CommitUnknownError as CommitUnknownError
from ._exceptions import ConnectError as ConnectError
from ._exceptions import ConnectionLostError as ConnectionLostError
from ._exceptions import CorralError as CorralError
from ._exceptions import DatabaseClosedError as DatabaseClosedError
from ._exceptions import DatabaseMovedError as DatabaseMovedError
from ._exceptions import DatabaseURLError as DatabaseURLError
from ._exceptions import IdentifierError as IdentifierError
from ._exceptions import MissingDriverError as MissingDriverError
from ._exceptions import MissingKeyError as MissingKeyError
from ._exceptions import NotPicklableError as NotPicklableError
from ._exceptions import PoolClosedError as PoolClosedError
from ._exceptions import ProgressNotFoundError as ProgressNotFoundError
from ._exceptions import QueryError as QueryError
from ._exceptions import ReadOnlyError as ReadOnlyError
from ._exceptions import RemoteError as RemoteError
from ._exceptions import SchemaError as SchemaError
from ._exceptions import UnknownColumnError as UnknownColumnError
from ._exceptions import UnstorableTextError as UnstorableTextError
from ._exceptions import WorkerCrashed as WorkerCrashed
from ._exceptions import WorkerInitializerError as WorkerInitializerError
from ._exceptions import WriteError as WriteError
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
from ._progress import ProgressTracker as ProgressTracker
from ._progress import Run as Run
from ._progress import RunProgress as RunProgress
from ._progress import Status as Status
from ._progress import Subtask as Subtask
from ._progress import SubtaskProgress as SubtaskProgress
from ._public import fixup_module_metadata as _fixup_module_metadata
from ._thread import to_thread as to_thread

__version__ = "0.1.0"

# A library logs, the application decides where to: nothing is printed unless logging
# is configured (the job processor's LoggingNotifier logs on "corral.jobs").
_logging.getLogger("corral").addHandler(_logging.NullHandler())

__all__ = (
    "Cluster",
    "ClusterStatistics",
    "ColumnTypeError",
    "CommitUnknownError",
    "ConnectError",
    "ConnectionLostError",
    "CorralError",
    "Database",
    "DatabaseClosedError",
    "DatabaseMovedError",
    "DatabaseURLError",
    "DatabaseStatistics",
    "IMap",
    "IdentifierError",
    "MapResults",
    "MissingDriverError",
    "MissingKeyError",
    "NotPicklableError",
    "Offload",
    "PoolClosedError",
    "ProcessPool",
    "ProcessPoolStatistics",
    "ProgressNotFoundError",
    "ProgressSink",
    "ProgressTracker",
    "QueryError",
    "ReadOnlyError",
    "RemoteError",
    "Run",
    "RunProgress",
    "SchemaError",
    "Status",
    "Subtask",
    "SubtaskProgress",
    "Table",
    "UnknownColumnError",
    "UnstorableTextError",
    "WorkerCrashed",
    "WorkerInitializerError",
    "WriteError",
    "connect",
    "cpu_count",
    "imap",
    "is_picklable",
    "map",
    "show_progress",
    "to_process",
    "to_thread",
)

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
