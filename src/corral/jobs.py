"""The durable job processor: jobs in a database, run on clusters, within exact limits.

.. code-block:: python

    from corral import jobs

    async with corral.connect(url) as db:
        await db.jobs.enqueue(jobs.Job(id="ws-001", payload={"n": 3}, customer="acme"))
        processor = jobs.Processor(db, handler, clusters=[corral.Cluster("a", capacity=4)])
        await processor.run(until_idle=True)

Jobs are stored in the database's ``corral_jobs`` table (SQLite or PostgreSQL), claimed
by any number of :class:`Processor` s (on PostgreSQL, in any number of processes and
hosts), routed to a cluster, retried by error category with exponential backoff,
resumed from the step that failed, and never lost when a worker dies: a claim is a
lease that its worker renews, that another worker reclaims once it expires, and that
fences the old worker's late writes. See ``docs/jobs.md``.
"""

from ._exceptions import ConfigurationError as ConfigurationError
from ._exceptions import DataError as DataError
from ._exceptions import DuplicateJobError as DuplicateJobError
from ._exceptions import JobError as JobError
from ._exceptions import JobKindError as JobKindError
from ._exceptions import JobNotFoundError as JobNotFoundError
from ._exceptions import JobStateError as JobStateError
from ._exceptions import LeaseLostError as LeaseLostError
from ._exceptions import PayloadError as PayloadError
from ._exceptions import PermanentError as PermanentError
from ._exceptions import ResourceError as ResourceError
from ._exceptions import StepResultError as StepResultError
from ._exceptions import TransientError as TransientError
from ._jobs._aws import S3InputsValidator as S3InputsValidator
from ._jobs._aws import SNSNotifier as SNSNotifier
from ._jobs._context import JobContext as JobContext
from ._jobs._context import JobProgress as JobProgress
from ._jobs._context import Step as Step
from ._jobs._model import Cancellation as Cancellation
from ._jobs._model import ErrorCategory as ErrorCategory
from ._jobs._model import Job as Job
from ._jobs._model import JobRecord as JobRecord
from ._jobs._model import LastError as LastError
from ._jobs._model import Priority as Priority
from ._jobs._model import ProcessorConfig as ProcessorConfig
from ._jobs._model import QueueDepth as QueueDepth
from ._jobs._model import RetryPolicy as RetryPolicy
from ._jobs._model import State as State
from ._jobs._model import classify as classify
from ._jobs._notify import EventKind as EventKind
from ._jobs._notify import JobEvent as JobEvent
from ._jobs._notify import LoggingNotifier as LoggingNotifier
from ._jobs._notify import Notifier as Notifier
from ._jobs._processor import Processor as Processor
from ._jobs._processor import ProcessorStatistics as ProcessorStatistics
from ._jobs._queue import JobQueue as JobQueue
from ._public import fixup_module_metadata as _fixup_module_metadata

__all__ = (
    "Cancellation",
    "ConfigurationError",
    "DataError",
    "DuplicateJobError",
    "ErrorCategory",
    "EventKind",
    "Job",
    "JobContext",
    "JobError",
    "JobEvent",
    "JobKindError",
    "JobNotFoundError",
    "JobProgress",
    "JobQueue",
    "JobRecord",
    "JobStateError",
    "LastError",
    "LeaseLostError",
    "LoggingNotifier",
    "Notifier",
    "PayloadError",
    "PermanentError",
    "Priority",
    "ProcessorConfig",
    "ProcessorStatistics",
    "Processor",
    "QueueDepth",
    "ResourceError",
    "RetryPolicy",
    "S3InputsValidator",
    "SNSNotifier",
    "State",
    "Step",
    "StepResultError",
    "TransientError",
    "classify",
)

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
