"""hauler: background jobs for Python with a Rust engine.

Define jobs as typed classes, queue them from anywhere, run them on worker pools that
retry with backoff and survive crashes. SQLite is the embedded default storage.

Example:
    >>> from hauler import Job, WorkerConfig, create_server

"""

import os as _os

from hauler import _native
from hauler._hooks import JobHook
from hauler.context import JobContext, current_job_cancelled
from hauler.errors import (
    ConfigError,
    GroupNotFoundError,
    HaulerError,
    JobNotFoundError,
    JobVersionError,
    LeaseLostError,
    ScheduleNotFoundError,
    SerializationError,
    StorageClosedError,
    StorageError,
    UnknownJobError,
    WorkerStoppedError,
)
from hauler.handle import DEFAULT_MAX_PAYLOAD_BYTES, QueuedId, QueueHandle, create_server
from hauler.info import (
    AttemptInfo,
    CancelCounts,
    CancelResult,
    ErrorInfo,
    GroupInfo,
    GroupStatus,
    JobInfo,
    JobPage,
    JobStatus,
    ScheduleInfo,
)
from hauler.job import DEFAULT_QUEUE, Job, Snooze
from hauler.limits import Unique
from hauler.retry import Backoff, MaxRetries
from hauler.worker import Worker, WorkerConfig

# A forked child inherits the parent's random generator state: reseed it, or parent and child
# would draw the same job ids and lease tokens.
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_native.reseed_after_fork)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_QUEUE",
    "AttemptInfo",
    "Backoff",
    "CancelCounts",
    "CancelResult",
    "ConfigError",
    "ErrorInfo",
    "GroupInfo",
    "GroupNotFoundError",
    "GroupStatus",
    "HaulerError",
    "Job",
    "JobContext",
    "JobHook",
    "JobInfo",
    "JobNotFoundError",
    "JobPage",
    "JobStatus",
    "JobVersionError",
    "LeaseLostError",
    "MaxRetries",
    "QueueHandle",
    "QueuedId",
    "ScheduleInfo",
    "ScheduleNotFoundError",
    "SerializationError",
    "Snooze",
    "StorageClosedError",
    "StorageError",
    "Unique",
    "UnknownJobError",
    "Worker",
    "WorkerConfig",
    "WorkerStoppedError",
    "create_server",
    "current_job_cancelled",
]
