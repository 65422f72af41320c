"""The exceptions hauler raises.

Every exception derives from :class:`HaulerError`, so ``except HaulerError`` catches all of
them. Most also derive from the built-in exception a caller would expect (``ValueError``,
``TypeError``, ``LookupError``, ``RuntimeError``), so code written against the built-ins
keeps working. The native engine raises these same classes.

Example:
    >>> from hauler.errors import ConfigError, HaulerError
    >>> issubclass(ConfigError, HaulerError) and issubclass(ConfigError, ValueError)
    True

"""

__all__ = [
    "ConfigError",
    "GroupNotFoundError",
    "HaulerError",
    "JobNotFoundError",
    "JobVersionError",
    "LeaseLostError",
    "ScheduleNotFoundError",
    "SerializationError",
    "StorageClosedError",
    "StorageError",
    "UnknownJobError",
    "WorkerStoppedError",
]


class HaulerError(Exception):
    """Base class of every exception raised by hauler.

    Example:
        >>> try:
        ...     raise UnknownJobError("no job class named 'send_email'")
        ... except HaulerError as e:
        ...     print(type(e).__name__)
        UnknownJobError

    """


class ConfigError(HaulerError, ValueError):
    """A configuration value is invalid.

    Raised when a job class declares a bad constant (``NAME``, ``QUEUE``, ``MAX_RETRIES``,
    ...) or a field type hauler cannot store, when a retry or backoff policy is built with
    bad numbers, when a storage URL or option is not understood, and when a naive
    ``datetime`` is given where a point in time is needed. The message names the offending
    attribute or value; when several are wrong, it lists all of them.

    Example:
        >>> from hauler.retry import MaxRetries
        >>> MaxRetries.count(-1)
        Traceback (most recent call last):
        ...
        hauler.errors.ConfigError: MaxRetries.count(n) needs an int from 0 to 4294967295, got -1

    """


class SerializationError(HaulerError, TypeError):
    """A job's fields could not be encoded for storage, or decoded from it.

    Raised when queueing a job whose field holds a value of an unsupported type (a set, a
    naive ``datetime``, a float NaN...), and when a stored job's arguments no longer fit its
    class (a missing field, or a value of the wrong type). The message names the job class,
    the path of the field (for example ``Report.items[2].when``) and the type involved.
    """


class JobVersionError(SerializationError):
    """A stored job's ``VERSION`` is one its registered class cannot run.

    Recorded (as the job's ``last_error``) when a worker claims a job stored with a
    ``VERSION`` newer than its class's, or older than its class's
    ``MIN_SUPPORTED_VERSION`` with no ``migrate`` defined, or whose ``migrate`` failed.
    The job ends ``failed`` at once, never retried; the message names the job, its stored
    version and the versions the class runs.
    """


class UnknownJobError(HaulerError, LookupError):
    """No job class is registered under a job's ``NAME``.

    Raised when a worker claims, or a caller looks up, a job whose name matches none of the
    job classes it was given.
    """


class JobNotFoundError(HaulerError, LookupError):
    """No job with the given id exists in the storage."""


class GroupNotFoundError(HaulerError, LookupError):
    """No job group with the given id exists in the storage.

    It was never stored, or it was deleted with its last member.
    """


class ScheduleNotFoundError(HaulerError, LookupError):
    """No schedule entry with the given name exists in the storage."""


class LeaseLostError(HaulerError, RuntimeError):
    """A running job wrote its progress or state after losing its lease.

    Raised inside the job by ``ctx.set_progress`` and ``ctx.set_state`` when the job no
    longer runs under this attempt's lease: it missed heartbeats long enough for another
    worker to reclaim it, or it already ended. Nothing was written; the attempt cannot
    report back either, so the job should stop.
    """


class StorageError(HaulerError):
    """The storage failed: an I/O error, a lock timeout, a corrupt file, a lost connection.

    The message carries the underlying cause.
    """


class StorageClosedError(StorageError, ValueError):
    """The storage was closed and can no longer be used.

    Raised by any operation on a storage after its ``close()`` was called, like
    operations on a closed file raise ``ValueError``.
    """


class WorkerStoppedError(HaulerError, RuntimeError):
    """The worker was already stopped.

    Raised when asking a stopped worker to do something that needs it running.
    """
