"""Read-only views of stored jobs: :class:`JobInfo` and friends.

Times are timezone-aware ``datetime`` objects in UTC, converted from the engine's
microseconds since the Unix epoch.

Example:
    >>> from hauler.info import JobStatus
    >>> JobStatus("completed") is JobStatus.COMPLETED
    True

"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from hauler.errors import ConfigError

if TYPE_CHECKING:
    from hauler._native import AttemptDict, ErrorDict, GroupDict, JobDict, ScheduleDict

__all__ = [
    "AttemptInfo",
    "CancelCounts",
    "CancelResult",
    "ErrorInfo",
    "GroupInfo",
    "GroupStatus",
    "JobInfo",
    "JobPage",
    "JobStatus",
    "ScheduleInfo",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def _us_to_dt(us: int) -> datetime:
    """Convert microseconds since the Unix epoch to an aware UTC datetime, exactly."""
    return _EPOCH + timedelta(microseconds=us)


def _opt_dt(us: int | None) -> datetime | None:
    return None if us is None else _us_to_dt(us)


def _dt_to_us(dt: datetime) -> int:
    """Convert an aware datetime to microseconds since the Unix epoch, exactly.

    Raises:
        ConfigError: ``dt`` is naive (has no timezone), so it names no single instant.

    """
    if dt.utcoffset() is None:
        raise ConfigError(
            f"naive datetime {dt.isoformat()!r}: pass a timezone-aware datetime "
            "(for example datetime.now(timezone.utc))"
        )
    return (dt - _EPOCH) // _MICROSECOND


class JobStatus(enum.StrEnum):
    """Where a job is in its life.

    A job is pending while ``scheduled``, ``available`` or ``retryable``; ``running``
    while a worker holds it; and final once ``completed``, ``failed`` or ``cancelled``.

    Example:
        >>> JobStatus.RETRYABLE == "retryable"
        True

    """

    SCHEDULED = "scheduled"
    """Stored with a run time in the future."""
    AVAILABLE = "available"
    """Ready to be claimed by a worker."""
    RUNNING = "running"
    """Claimed by a worker that is running it."""
    RETRYABLE = "retryable"
    """An attempt failed; waiting for its retry time."""
    COMPLETED = "completed"
    """Finished successfully."""
    FAILED = "failed"
    """Failed for good: retries exhausted, or a permanent error."""
    CANCELLED = "cancelled"
    """Cancelled before it finished."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error raised by an attempt (or reported by the engine), carried as data.

    Example:
        >>> ErrorInfo.from_native({"kind": "ValueError", "message": "bad", "traceback": None})
        ErrorInfo(type='ValueError', message='bad', traceback=None)

    """

    type: str
    """The exception's qualified type name (``ValueError``), or an engine reason such as
    ``Timeout`` or ``LeaseExpired``."""
    message: str
    """The error message."""
    traceback: str | None
    """The formatted traceback, when there is one."""

    @classmethod
    def from_native(cls, d: ErrorDict) -> ErrorInfo:
        """Build from the engine's error dict."""
        return cls(type=d["kind"], message=d["message"], traceback=d["traceback"])


def _opt_error(d: ErrorDict | None) -> ErrorInfo | None:
    return None if d is None else ErrorInfo.from_native(d)


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """One finished attempt of a job."""

    attempt: int
    """The attempt's number, 1 for the first."""
    worker_id: str
    """The worker that ran it."""
    started_at: datetime
    """When it started (aware, UTC)."""
    finished_at: datetime
    """When it ended, or was found abandoned (aware, UTC)."""
    outcome: str
    """How it ended: ``"completed"``, ``"failed"``, ``"lease_expired"`` (the worker died
    or stalled), ``"released"`` (handed back at shutdown, not counted) ``"cancelled"``
    (its cancel was requested while it ran; ``error`` is what it raised, if anything) or
    ``"snoozed"`` (``run`` raised or returned :meth:`~hauler.Job.snooze`; not counted, and
    the next attempt has the same number).

    ``"retried"`` marks no attempt but a manual :meth:`~hauler.QueueHandle.retry`: the
    attempt count started again from 0 (``attempt`` is the count before), and
    ``started_at`` and ``finished_at`` are the time of the retry."""
    error: ErrorInfo | None
    """The error of a failed or abandoned attempt."""

    @classmethod
    def from_native(cls, d: AttemptDict) -> AttemptInfo:
        """Build from the engine's attempt dict."""
        return cls(
            attempt=d["attempt"],
            worker_id=d["worker_id"],
            started_at=_us_to_dt(d["started_at"]),
            finished_at=_us_to_dt(d["finished_at"]),
            outcome=d["outcome"],
            error=_opt_error(d["error"]),
        )


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A stored job: its arguments, its state and its history."""

    id: UUID
    """The job's id."""
    name: str
    """The job class's ``NAME``."""
    queue: str
    """The queue it runs on."""
    args: dict[str, Any]
    """The stored fields, as JSON-compatible values (``{}`` if the stored payload is not a
    JSON object: see :attr:`raw_args`)."""
    status: JobStatus
    """Where it is in its life."""
    attempt: int
    """Attempts started so far."""
    max_retries: int | None
    """Retries allowed after the first attempt; ``None`` for infinite."""
    priority: int
    """Higher runs first within a queue."""
    created_at: datetime
    """When it was stored (aware, UTC)."""
    run_at: datetime
    """When it may next run, or last became runnable (aware, UTC)."""
    started_at: datetime | None
    """When the current or last attempt started (aware, UTC)."""
    finished_at: datetime | None
    """When it reached a final status (aware, UTC)."""
    last_error: ErrorInfo | None
    """The most recent error."""
    history: list[AttemptInfo]
    """Every finished attempt, oldest first."""
    worker_id: str | None
    """The worker running it, while it runs."""
    lease_expires_at: datetime | None
    """When the running worker's lease ends unless renewed (aware, UTC)."""
    timeout: float | None
    """The time limit of one attempt in seconds, or ``None``."""
    version: int
    """The ``VERSION`` of the class that stored it."""
    raw_args: str | None = None
    """The stored payload as text when it is not a JSON object (a row damaged in the
    storage; such a job fails when a worker claims it), else ``None``."""
    cancel_requested_at: datetime | None = None
    """When a cancel was requested while the job ran (it then ends ``cancelled``), else
    ``None``."""
    progress: int | None = None
    """The progress (0 to 100) the job last reported with ``ctx.set_progress``, or
    ``None``; kept after it ends."""
    progress_message: str | None = None
    """The message given with that progress, or ``None``."""
    state: dict[str, Any] | None = None
    """What the job last saved with ``ctx.set_state`` (kept across retries), or ``None``."""
    unique_key: str | None = None
    """The key a unique job (``UNIQUE``, see :class:`~hauler.Unique`) is deduplicated by,
    or ``None``."""
    group_id: UUID | None = None
    """The id of the group the job is a member of (:meth:`~hauler.QueueHandle.queue_group`),
    or ``None``."""

    @classmethod
    def from_native(cls, d: JobDict) -> JobInfo:
        """Build from the engine's job dict."""
        timeout_ms = d["timeout_ms"]
        args = d["args"]
        return cls(
            id=UUID(d["id"]),
            name=d["name"],
            queue=d["queue"],
            args={} if isinstance(args, str) else args,
            raw_args=args if isinstance(args, str) else None,
            status=JobStatus(d["status"]),
            attempt=d["attempt"],
            max_retries=d["max_retries"],
            priority=d["priority"],
            created_at=_us_to_dt(d["created_at"]),
            run_at=_us_to_dt(d["run_at"]),
            started_at=_opt_dt(d["started_at"]),
            finished_at=_opt_dt(d["finished_at"]),
            last_error=_opt_error(d["last_error"]),
            history=[AttemptInfo.from_native(a) for a in d["history"]],
            worker_id=d["worker_id"],
            lease_expires_at=_opt_dt(d["lease_expires_at"]),
            timeout=None if timeout_ms is None else timeout_ms / 1000,
            version=d["version"],
            cancel_requested_at=_opt_dt(d["cancel_requested_at"]),
            progress=d["progress"],
            progress_message=d["progress_message"],
            state=state if isinstance(state := d["state"], dict) else None,
            unique_key=d["unique_key"],
            group_id=None if d["group_id"] is None else UUID(d["group_id"]),
        )


class GroupStatus(enum.StrEnum):
    """Where a job group is, from its members' statuses.

    Example:
        >>> GroupStatus("done_with_errors") is GroupStatus.DONE_WITH_ERRORS
        True

    """

    IN_PROGRESS = "in_progress"
    """Some member is still waiting or running."""
    DONE = "done"
    """Every member completed."""
    DONE_WITH_ERRORS = "done_with_errors"
    """Every member is final; some failed and none was cancelled."""
    CANCELLED = "cancelled"
    """Every member is final and some were cancelled (:meth:`~hauler.QueueHandle.cancel_group`
    or a member's own cancel)."""


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A job group and where its members are (:meth:`~hauler.QueueHandle.group`).

    Example:
        >>> info = queue_handle.group(group_id)  # doctest: +SKIP
        >>> f"{info.name}: {info.progress}% ({info.failed} failed)"  # doctest: +SKIP
        'resize: 40% (0 failed)'

    """

    id: UUID
    """The group's id."""
    name: str
    """The name given to :meth:`~hauler.QueueHandle.queue_group`."""
    status: GroupStatus
    """``in_progress`` until every member is final; then ``done``, ``done_with_errors`` or
    ``cancelled``."""
    total: int
    """Members still stored (deleted members no longer count)."""
    done: int
    """Members that completed."""
    failed: int
    """Members that failed for good."""
    cancelled: int
    """Members that were cancelled."""
    running: int
    """Members running now."""
    pending: int
    """Members waiting to run (scheduled, available or retryable)."""
    concurrency: int | None
    """At most this many members run at once, or ``None`` for no limit."""
    on_complete: str | None
    """The ``NAME`` of the job queued when the group finishes, or ``None``."""
    on_complete_job_id: UUID | None
    """The id of that job once it was queued (it is queued once, ever), else ``None``."""
    created_at: datetime
    """When the group was queued (aware, UTC)."""
    finished_at: datetime | None
    """When its last member became final (aware, UTC); ``None`` while some member is not,
    and again after a member is retried."""

    @property
    def finished(self) -> int:
        """Members in a final status: done, failed or cancelled."""
        return self.done + self.failed + self.cancelled

    @property
    def progress(self) -> int:
        """Finished members as a whole percentage of :attr:`total` (0 to 100).

        Rounded down; 100 for a group with no members left. Members' own
        ``ctx.set_progress`` values are not counted: a member counts once it is final,
        however it ended.
        """
        return 100 if self.total == 0 else self.finished * 100 // self.total

    @classmethod
    def from_native(cls, d: GroupDict) -> GroupInfo:
        """Build from the engine's group dict."""
        job_id = d["on_complete_job_id"]
        return cls(
            id=UUID(d["id"]),
            name=d["name"],
            status=GroupStatus(d["status"]),
            total=d["pending"] + d["running"] + d["completed"] + d["failed"] + d["cancelled"],
            done=d["completed"],
            failed=d["failed"],
            cancelled=d["cancelled"],
            running=d["running"],
            pending=d["pending"],
            concurrency=d["concurrency"],
            on_complete=d["on_complete_name"],
            on_complete_job_id=None if job_id is None else UUID(job_id),
            created_at=_us_to_dt(d["created_at"]),
            finished_at=_opt_dt(d["finished_at"]),
        )


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a job listing, newest first; iterate it, or pass ``next_cursor`` on.

    Example:
        >>> page = JobPage(jobs=[], next_cursor=None)
        >>> len(page), list(page), page.next_cursor
        (0, [], None)

    """

    jobs: list[JobInfo]
    """The jobs on this page."""
    next_cursor: str | None
    """The cursor of the next (older) page, or ``None`` on the last page."""

    def __iter__(self) -> Iterator[JobInfo]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)


class CancelResult(enum.StrEnum):
    """What :meth:`~hauler.QueueHandle.cancel` did.

    Example:
        >>> CancelResult.REQUESTED == "requested"
        True

    """

    CANCELLED = "cancelled"
    """The job was waiting (scheduled, available or retryable): it is now ``cancelled``
    and will never run."""
    REQUESTED = "requested"
    """The job is running: it was asked to stop, and ends ``cancelled`` when its attempt
    ends, however that is (see :func:`~hauler.current_job_cancelled`)."""
    ALREADY_FINISHED = "already_finished"
    """The job had already completed, failed or been cancelled: nothing changed."""


@dataclass(frozen=True, slots=True)
class CancelCounts:
    """What :meth:`~hauler.QueueHandle.cancel_many` did.

    Example:
        >>> CancelCounts(cancelled=3, requested=1).total
        4

    """

    cancelled: int
    """Waiting jobs that are now ``cancelled`` and will never run."""
    requested: int
    """Running jobs asked to stop; each ends ``cancelled``."""

    @property
    def total(self) -> int:
        """Every job the call affected."""
        return self.cancelled + self.requested


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A stored schedule entry (:meth:`QueueHandle.schedules`).

    Attributes:
        name: The entry's unique name.
        cron: The cron expression, or ``None`` for an interval entry.
        timezone: The cron expression's IANA time zone (``None`` for an interval entry).
        every: The interval, or ``None`` for a cron entry.
        catch_up: ``"one"`` or ``"none"``: what a worker does with ticks missed while no
            worker ran.
        job_name: The ``NAME`` of the job each tick queues.
        queue: Its queue.
        args: Its fields, as stored.
        next_run_at: The next tick not yet taken (in the past if no worker has run since).
        last_enqueued_at: When a tick or :meth:`QueueHandle.run_now` last queued the job.
        created_at: When the entry was first stored.
        updated_at: When its definition was last written (a worker registering it).

    Example:
        >>> [s.name for s in queue_handle.schedules()]  # doctest: +SKIP
        ['nightly_report']

    """

    name: str
    cron: str | None
    timezone: str | None
    every: timedelta | None
    catch_up: str
    job_name: str
    queue: str
    args: Any
    next_run_at: datetime
    last_enqueued_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_native(cls, d: ScheduleDict) -> ScheduleInfo:
        """Build from the engine's dict."""
        try:
            args: Any = json.loads(d["args"])
        except ValueError:
            args = d["args"]
        every_ms = d["every_ms"]
        return cls(
            name=d["name"],
            cron=d["cron"],
            timezone=d["timezone"],
            every=None if every_ms is None else timedelta(milliseconds=every_ms),
            catch_up=d["catch_up"],
            job_name=d["job_name"],
            queue=d["queue"],
            args=args,
            next_run_at=_us_to_dt(d["next_run_at"]),
            last_enqueued_at=_opt_dt(d["last_enqueued_at"]),
            created_at=_us_to_dt(d["created_at"]),
            updated_at=_us_to_dt(d["updated_at"]),
        )
