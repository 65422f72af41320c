"""Queue handles: the producer side of hauler (``create_server``) and the base of ``Worker``."""

from __future__ import annotations

import asyncio
import builtins
import functools
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, TypedDict, Unpack

from hauler import _native
from hauler._hooks import JobHook, call_hook, check_hook, read_jobs
from hauler.errors import (
    ConfigError,
    GroupNotFoundError,
    JobNotFoundError,
    ScheduleNotFoundError,
    StorageError,
)
from hauler.info import (
    CancelCounts,
    CancelResult,
    GroupInfo,
    JobInfo,
    JobPage,
    JobStatus,
    ScheduleInfo,
    _dt_to_us,
)
from hauler.job import _UTF8, Job, _is_utf8
from hauler.storage import Storage, resolve_storage

_FINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
# The statuses each bulk operation can change.
_CANCELLABLE = frozenset(
    {JobStatus.SCHEDULED, JobStatus.AVAILABLE, JobStatus.RETRYABLE, JobStatus.RUNNING}
)
_RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
_DELETABLE = frozenset(JobStatus) - {JobStatus.RUNNING}

_Ids = Iterable[uuid.UUID | str]
_Status = JobStatus | str | Iterable[JobStatus | str]


class JobFilterArgs(TypedDict, total=False):
    """The keyword filters of :meth:`QueueHandle.list` and the bulk operations."""

    status: _Status | None
    name: str | None
    queue: str | None
    created_from: datetime | None
    created_to: datetime | None
    args_contains: str | None
    ids: _Ids | None
    group: uuid.UUID | str | None


DEFAULT_MAX_PAYLOAD_BYTES: Final = 1 << 20
"""The largest job payload a queue handle accepts by default: 1 MiB of JSON."""


def _max_payload(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"max_payload_bytes must be a positive int or None (no limit), got {value!r}"
        )
    return value


class _Cursor(Protocol):
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> Any: ...
    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


class DbConnection(Protocol):
    """What transactional enqueue needs of a connection: a psycopg (3) ``Connection``."""

    def cursor(self) -> _Cursor:
        """Open a cursor on the connection's current transaction."""
        ...


def _class_of(cls: type) -> _native._JobClassTuple:
    """Return what ``Storage.enqueue`` reads of job class ``cls`` (once per class and call)."""
    if not issubclass(cls, Job):
        raise ConfigError(f"expected a hauler Job instance, got {cls.__name__}")
    return cls._spec().native


def _job_tuple(job: Job[Any], run_at_us: int | None) -> _native._NewJobTuple:
    if not isinstance(job, Job):
        raise ConfigError(f"expected a hauler Job instance, got {type(job).__name__}")
    spec = type(job)._spec()
    return (
        spec.name,
        spec.queue,
        job._encode(),
        spec.priority,
        spec.retry,
        spec.timeout_ms,
        spec.heartbeat_ms,
        run_at_us,
        spec.version,
        spec.limits(job),
    )


class QueuedId(uuid.UUID):
    """The id :meth:`QueueHandle.queue` returns: a :class:`uuid.UUID` that says what happened.

    Whether the job was stored, or matched an equal unique job already queued. It is a
    ``uuid.UUID`` in every other respect (compares, hashes and prints as one), so code
    that treats the result as an id keeps working.

    Example:
        >>> job_id = queue_handle.queue(SyncAccount(account_id=7))  # doctest: +SKIP
        >>> job_id.duplicate  # doctest: +SKIP
        True

    """

    __slots__ = ("duplicate",)

    duplicate: bool
    """``True`` if the job was not stored because an equal unique job (see
    :class:`~hauler.Unique`) was already queued: the id is then that job's."""

    def __init__(self, hex: str, *, duplicate: bool = False) -> None:
        super().__init__(hex)
        object.__setattr__(self, "duplicate", duplicate)

    @property
    def inserted(self) -> bool:
        """``True`` if this call stored the job (the opposite of :attr:`duplicate`)."""
        return not self.duplicate

    def __repr__(self) -> str:
        return f"QueuedId({str(self)!r}, duplicate={self.duplicate})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_queued_id, (str(self), self.duplicate))


def _queued_id(hex: str, duplicate: bool) -> QueuedId:
    return QueuedId(hex, duplicate=duplicate)


# How many times a transactional insert of unique jobs tries again when a key's holder let
# go of it before it could be looked up (as the storage's own insert does).
_UNIQUE_ROUNDS: Final = 16


def _insert_or_get(
    cursor: Any,
    sql: str,
    params: dict[str, Any],
    ids: builtins.list[str],
    holders_sql: str,
    keys: builtins.list[str | None],
) -> builtins.list[QueuedId]:
    """Finish a transactional insert of unique jobs whose insert ``cursor`` just ran.

    The insert skipped the jobs whose key is held (the unique index decides, waiting for a
    concurrent insert of the key to commit or roll back); look their holders up, and
    insert again the jobs whose holder let go of the key meanwhile.
    """
    out: dict[int, QueuedId] = {}
    pending = list(range(len(ids)))
    for _ in range(_UNIQUE_ROUNDS):
        stored = {str(row[0]) for row in cursor.fetchall() if row[0] is not None}
        missing = []
        for i in pending:
            if ids[i] in stored:
                out[i] = QueuedId(ids[i])
            else:
                missing.append(i)
        if not missing:
            break
        cursor.execute(holders_sql, {"p1": [keys[i] for i in missing]})
        held = {key: str(job_id) for key, job_id in cursor.fetchall()}
        pending = []
        for i in missing:
            holder = held.get(keys[i] or "")
            if holder is None:
                pending.append(i)
            else:
                out[i] = QueuedId(holder, duplicate=True)
        if not pending:
            break
        again = {
            name: [value[i] for i in pending] if isinstance(value, list) else value
            for name, value in params.items()
        }
        cursor.execute(sql, again)
    if len(out) < len(ids):
        raise StorageError(
            f"storing unique jobs: their keys changed hands {_UNIQUE_ROUNDS} times while "
            "being stored"
        )
    return [out[i] for i in range(len(ids))]


_CATCH_UP: Final = ("one", "none")


def _catch_up(value: object) -> str:
    if value not in _CATCH_UP:
        raise ConfigError(f'catch_up must be "one" or "none", got {value!r}')
    return str(value)


def _schedule_name(name: object) -> str:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConfigError(f"a schedule name must be a non-empty str without NUL, got {name!r}")
    return name


def _schedule_job(job: Job[Any] | type[Job[Any]]) -> Job[Any]:
    """Return the job of a schedule entry: the instance given, or the class built bare."""
    if isinstance(job, type) and issubclass(job, Job):
        try:
            return job()
        except TypeError as e:
            raise ConfigError(
                f"{job.__name__} has fields without defaults: pass an instance, "
                f"e.g. {job.__name__}(...) ({e})"
            ) from None
    if not isinstance(job, Job):
        raise ConfigError(f"expected a hauler Job instance or class, got {type(job).__name__}")
    return job


def _parse_id(job_id: uuid.UUID | str) -> str:
    if isinstance(job_id, uuid.UUID):
        return str(job_id)
    try:
        return str(uuid.UUID(job_id))
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(f"invalid job id {job_id!r}: expected a UUID") from None


def _parse_group_id(group_id: uuid.UUID | str) -> str:
    if isinstance(group_id, uuid.UUID):
        return str(group_id)
    try:
        return str(uuid.UUID(group_id))
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(f"invalid group id {group_id!r}: expected a UUID") from None


def _run_at(at: datetime | None, after: timedelta | None) -> int:
    if (at is None) == (after is None):
        raise ConfigError(
            "schedule() takes exactly one of at= (a datetime) or after= (a timedelta)"
        )
    if at is not None:
        if not isinstance(at, datetime):
            raise ConfigError(f"at= must be a datetime, got {type(at).__name__}")
        return _dt_to_us(at)
    if not isinstance(after, timedelta):
        raise ConfigError(f"after= must be a timedelta, got {type(after).__name__}")
    if after < timedelta(0):
        raise ConfigError(f"after= must not be negative, got {after}")
    return _native.now_us() + after // timedelta(microseconds=1)


def _statuses(status: _Status | None, *, what: str = "status") -> list[str]:
    if status is None:
        return []
    items = [status] if isinstance(status, str) else list(status)
    out = []
    for s in items:
        try:
            out.append(JobStatus(s).value)
        except ValueError:
            allowed = ", ".join(m.value for m in JobStatus)
            raise ConfigError(f"unknown job {what} {s!r}; expected one of: {allowed}") from None
    return out


def _text(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty str or None, got {value!r}")
    if not _is_utf8(value):
        raise ConfigError(f"{name} must be {_UTF8}, got {value!r}")
    return value


def _time(name: str, value: datetime | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ConfigError(f"{name} must be a timezone-aware datetime, got {value!r}")
    try:
        return _dt_to_us(value)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


def _filter(
    *,
    ids: _Ids | None = None,
    status: _Status | None = None,
    name: str | None = None,
    queue: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    args_contains: str | None = None,
    group: uuid.UUID | str | None = None,
) -> _native.FilterDict:
    """Check the filter arguments shared by list, count and the bulk operations."""
    id_list = None
    if ids is not None:
        if isinstance(ids, (str, bytes, uuid.UUID)) or not isinstance(ids, Iterable):
            raise ConfigError(f"ids must be a list of job ids, got {ids!r}")
        id_list = [_parse_id(i) for i in ids]
    start, end = _time("created_from", created_from), _time("created_to", created_to)
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"created_from ({created_from}) must be before created_to ({created_to})")
    return {
        "ids": id_list,
        "statuses": _statuses(status),
        "name": _text("name", name),
        "queue": _text("queue", queue),
        "created_from": start,
        "created_to": end,
        "args_contains": _text("args_contains", args_contains),
        "group": None if group is None else _parse_group_id(group),
    }


def _bulk(what: str, f: _native.FilterDict, allowed: frozenset[JobStatus]) -> _native.FilterDict:
    """Check a bulk operation's filter: some criterion, and statuses it can change."""
    if (
        f["ids"] is None
        and not f["statuses"]
        and all(
            f[k] is None
            for k in ("name", "queue", "created_from", "created_to", "args_contains", "group")
        )
    ):
        raise ConfigError(
            f"{what}() needs at least one filter (ids, status, name, queue, created_from, "
            "created_to, args_contains or group); to act on every job, pass every status"
        )
    bad = [s for s in f["statuses"] if s not in allowed]
    if bad:
        can = ", ".join(s.value for s in JobStatus if s in allowed)
        raise ConfigError(f"{what}() changes only jobs that are {can}; got status {bad}")
    return f


class QueueHandle:
    """Queues jobs into a storage and inspects them.

    Get one with :func:`create_server` (a process that only enqueues, such as a web app) or
    from :meth:`WorkerConfig.start` (a :class:`Worker` is also a queue handle).

    Args:
        storage: A :class:`~hauler.storage.Storage`, a storage URL, or ``None`` (see
            :func:`~hauler.storage.resolve_storage`).
        max_payload_bytes: The most bytes a job's fields may take once encoded as JSON
            (default :data:`DEFAULT_MAX_PAYLOAD_BYTES`, 1 MiB), or ``None`` for no limit. A
            larger job is refused by :meth:`queue` with ``SerializationError`` and nothing is
            stored: keep big data (files, blobs) elsewhere and queue a reference to it.
        on_enqueue: A hook called with the :class:`~hauler.JobInfo` of each job queued
            through this handle (:meth:`queue`, :meth:`queue_many`, :meth:`schedule`,
            :meth:`run_now` and their async twins), once the job is durable, in the
            calling thread, before the call returns. Not called for jobs queued with
            ``connection=`` (they exist only if that transaction commits), by schedule
            ticks, or through other handles and processes. The job is read back once
            stored (one storage read per call, per 500 jobs for :meth:`queue_many`), so a
            worker may already be running it (its ``on_start`` may come first). Whatever
            the hook raises is logged on the ``hauler.hooks`` logger and the job stays
            queued.

    Raises:
        ConfigError: ``max_payload_bytes`` is not a positive int or ``None``, or
            ``on_enqueue`` is not a plain function.

    Example:
        >>> handle = create_server("memory://", max_payload_bytes=64 * 1024)
        >>> job_id = handle.queue(SendEmail(to="a@b.c", subject="hi"))  # doctest: +SKIP

    """

    def __init__(
        self,
        storage: Storage | str | None = None,
        *,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        on_enqueue: JobHook | None = None,
    ) -> None:
        self._max_payload_bytes = _max_payload(max_payload_bytes)
        hook = check_hook("on_enqueue", on_enqueue)
        self._enqueue_hooks: tuple[JobHook, ...] = () if hook is None else (hook,)
        self._storage = resolve_storage(storage)

    @property
    def storage(self) -> Storage:
        """The storage this handle writes to."""
        return self._storage

    @property
    def max_payload_bytes(self) -> int | None:
        """The most bytes of JSON a job's fields may take, or ``None`` for no limit."""
        return self._max_payload_bytes

    def _push(
        self,
        jobs: Iterable[Job[Any]],
        run_at_us: int | None,
        connection: DbConnection | None,
    ) -> builtins.list[QueuedId]:
        native = self._storage._native
        if connection is None:
            out = native.enqueue(
                jobs,
                _class_of,
                QueuedId,
                run_at_us=run_at_us,
                max_payload_bytes=self._max_payload_bytes,
            )
            if self._enqueue_hooks:
                self._enqueued([str(i) for i in out if not i.duplicate])
            return out
        tuples = [_job_tuple(j, run_at_us) for j in jobs]
        if not tuples:
            return []
        sql, params, ids, unique = native.pg_insert(
            tuples, max_payload_bytes=self._max_payload_bytes
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            if unique is None:
                return [QueuedId(i) for i in ids]
            return _insert_or_get(cursor, sql, params, ids, *unique)

    def _enqueued(self, ids: builtins.list[str]) -> None:
        """Call the ``on_enqueue`` hooks with the jobs just stored (if there are hooks)."""
        hooks = self._enqueue_hooks
        if not hooks:
            return
        for info in read_jobs(self._storage._native, ids, "on_enqueue"):
            for hook in hooks:
                call_hook("on_enqueue", hook, info, catch=Exception)

    def _add_enqueue_hook(self, hook: JobHook) -> None:
        self._enqueue_hooks = (*self._enqueue_hooks, hook)

    def _remove_enqueue_hook(self, hook: JobHook) -> None:
        hooks = list(self._enqueue_hooks)
        if hook in hooks:
            hooks.remove(hook)
        self._enqueue_hooks = tuple(hooks)

    def queue(self, job: Job[Any], *, connection: DbConnection | None = None) -> QueuedId:
        """Store ``job`` to run as soon as a worker is free; return its id once durable.

        For a unique job (``UNIQUE``, see :class:`~hauler.Unique`) equal to one already
        queued, nothing is stored and the existing job's id is returned: the result's
        :attr:`QueuedId.duplicate` tells which happened.

        Args:
            job: The job to run.
            connection: PostgreSQL only: an open psycopg (3) connection of your own. The job
                is inserted in that connection's current transaction, so it exists if and
                only if your transaction commits (and workers are notified at commit). The
                connection must reach the same database as the storage. A unique job is
                deduplicated there too; if another transaction has just queued an equal job
                and not yet committed, this call waits until it commits (a duplicate) or
                rolls back (stored).

        Raises:
            SerializationError: a field cannot be serialized, or the fields take more than
                :attr:`max_payload_bytes` as JSON (nothing is stored).
            StorageError: the storage failed (nothing is stored).
            ConfigError: ``connection`` given for a storage that is not PostgreSQL.

        Example:
            >>> with psycopg.connect(dsn) as conn:  # doctest: +SKIP
            ...     conn.execute("INSERT INTO users (email) VALUES (%s)", [email])
            ...     queue_handle.queue(SendEmail(to=email, subject="hi"), connection=conn)

        """
        return self.queue_many([job], connection=connection)[0]

    def queue_many(
        self, jobs: Iterable[Job[Any]], *, connection: DbConnection | None = None
    ) -> builtins.list[QueuedId]:
        """Store many jobs in one transaction (all or none); return their ids in order.

        Each id says, as for :meth:`queue`, whether its job was a duplicate; of two equal
        unique jobs in one call, the second is a duplicate of the first. ``connection`` is
        as for :meth:`queue`.
        """
        return self._push(jobs, None, connection)

    def schedule(
        self,
        job: Job[Any],
        *,
        at: datetime | None = None,
        after: timedelta | None = None,
        connection: DbConnection | None = None,
    ) -> QueuedId:
        """Store ``job`` to run at ``at`` (a timezone-aware datetime) or ``after`` from now.

        ``connection`` and the result are as for :meth:`queue`.

        Raises:
            ConfigError: neither or both of ``at``/``after``, a naive datetime, or a negative
                delay.

        """
        run_at = _run_at(at, after)
        return self._push([job], run_at, connection)[0]

    def every(
        self,
        interval: timedelta,
        job: Job[Any] | type[Job[Any]],
        *,
        name: str,
        catch_up: str = "one",
    ) -> ScheduleInfo:
        """Queue ``job`` every ``interval``, from any worker that has registered its class.

        The entry is stored (or, if one of that name exists, updated): however many
        workers run, each tick queues one job. Ticks fall on multiples of ``interval``
        since the Unix epoch, so every process agrees on them.

        Args:
            interval: At least one millisecond.
            job: The job each tick queues (a class with no required fields works too).
            name: The entry's unique name (for :meth:`unschedule` and :meth:`run_now`).
            catch_up: ``"one"`` (default): ticks missed while no worker ran are queued
                once when a worker starts; ``"none"``: they are skipped.

        Raises:
            ConfigError: a bad interval, name or ``catch_up``.
            SerializationError: the job's fields cannot be serialized.

        Example:
            >>> queue_handle.every(timedelta(minutes=5), Beat(), name="beat")  # doctest: +SKIP

        """
        if not isinstance(interval, timedelta) or interval < timedelta(milliseconds=1):
            raise ConfigError(f"interval must be a timedelta of at least 1 ms, got {interval!r}")
        every_ms = interval // timedelta(milliseconds=1)
        d = self._storage._native.schedule_add(
            _schedule_name(name),
            {"every_ms": every_ms},
            _catch_up(catch_up),
            _job_tuple(_schedule_job(job), None),
            max_payload_bytes=self._max_payload_bytes,
        )
        return ScheduleInfo.from_native(d)

    def unschedule(self, name: str) -> bool:
        """Remove the schedule entry ``name``: no worker queues its job any more.

        Jobs it already queued are left alone. A worker whose config registers the entry
        (:meth:`WorkerConfig.cron`) stores it again when it next starts.

        Returns:
            Whether the entry existed.

        Example:
            >>> queue_handle.unschedule("nightly_report")  # doctest: +SKIP
            True

        """
        return self._storage._native.schedule_delete(name)

    def run_now(self, name: str) -> uuid.UUID:
        """Queue the job of schedule entry ``name`` now; its ticks stay where they are.

        Raises:
            ScheduleNotFoundError: no entry has that name.

        Example:
            >>> job_id = queue_handle.run_now("nightly_report")  # doctest: +SKIP

        """
        job_id = self._storage._native.schedule_run_now(name)
        if job_id is None:
            raise ScheduleNotFoundError(f"no schedule entry named {name!r}")
        self._enqueued([job_id])
        return uuid.UUID(job_id)

    def schedules(self) -> builtins.list[ScheduleInfo]:
        """Every schedule entry, by name, with its next run time.

        Example:
            >>> for s in queue_handle.schedules():  # doctest: +SKIP
            ...     print(s.name, s.cron or s.every, s.next_run_at)

        """
        return [ScheduleInfo.from_native(d) for d in self._storage._native.schedule_list()]

    def queue_group(
        self,
        name: str,
        jobs: Iterable[Job[Any]],
        *,
        concurrency: int | None = None,
        on_complete: Job[Any] | None = None,
    ) -> uuid.UUID:
        """Store a group of jobs, all or none in one transaction; return the group's id.

        The members may be of any job classes and queues; each is an ordinary job (see
        :meth:`get`, :meth:`list` with ``group=``), and :meth:`group` reports on them
        together.

        Args:
            name: A name for the group, for people (need not be unique).
            jobs: The member jobs (at least one).
            concurrency: At most this many members run at once, across every worker and
                process; the others wait (``available``, no attempt counted) and other
                jobs run meanwhile. ``None`` (default): no limit. It is the members'
                concurrency limit (as ``CONCURRENCY``, keyed by the group), so a member
                whose class has its own ``SINGLETON`` or ``CONCURRENCY`` is refused here;
                without a group limit, members keep their class's limits.
            on_complete: A job queued once when the group finishes: when every member is
                completed, failed or cancelled. It is queued in the same transaction as the
                last member's end, exactly once however many workers finish members at the
                same moment. A member retried by hand afterwards reopens the group, but
                ``on_complete`` is not queued again.

        Raises:
            ConfigError: no jobs, a name that is not a non-empty str, ``concurrency`` not a
                positive int, a member whose class is ``UNIQUE`` (never allowed in a
                group), or, with ``concurrency``, a member whose class has ``SINGLETON``
                or ``CONCURRENCY`` (a job holds one concurrency limit). Nothing is stored.
            SerializationError: a job's fields cannot be serialized, or take more than
                :attr:`max_payload_bytes` (nothing is stored).

        Example:
            >>> group_id = queue_handle.queue_group(  # doctest: +SKIP
            ...     "thumbnails",
            ...     [Resize(path=p) for p in paths],
            ...     concurrency=4,
            ...     on_complete=Notify(text="thumbnails ready"),
            ... )

        """
        if not isinstance(name, str) or not name or not _is_utf8(name):
            raise ConfigError(f"a group name must be a non-empty str ({_UTF8}), got {name!r}")
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise ConfigError(
                f"concurrency must be a positive int or None (no limit), got {concurrency!r}"
            )
        if isinstance(jobs, Job) or not isinstance(jobs, Iterable):
            raise ConfigError(f"jobs must be a list of hauler Job instances, got {jobs!r}")
        tuples = [_job_tuple(j, None) for j in jobs]
        if not tuples:
            raise ConfigError(f"group {name!r} needs at least one job")
        callback = None if on_complete is None else _job_tuple(on_complete, None)
        group_id, ids = self._storage._native.group_push(
            name,
            tuples,
            concurrency=concurrency,
            on_complete=callback,
            max_payload_bytes=self._max_payload_bytes,
        )
        self._enqueued(ids)
        return uuid.UUID(group_id)

    def group(self, group_id: uuid.UUID | str) -> GroupInfo:
        """Report on a group: its members' counts, progress and status.

        Raises:
            GroupNotFoundError: no such group (never stored, or deleted with its last
                member).
            ConfigError: ``group_id`` is not a UUID.

        Example:
            >>> info = queue_handle.group(group_id)  # doctest: +SKIP
            >>> info.status, info.progress  # doctest: +SKIP
            (<GroupStatus.IN_PROGRESS: 'in_progress'>, 40)

        """
        d = self._storage._native.group_get(_parse_group_id(group_id))
        if d is None:
            raise GroupNotFoundError(f"no job group with id {group_id}")
        return GroupInfo.from_native(d)

    def cancel_group(self, group_id: uuid.UUID | str) -> CancelCounts:
        """Cancel the rest of a group; say how many members that changed.

        Its waiting members are cancelled at once and its running ones asked to stop (as
        :meth:`cancel` does each); finished members are left alone. The group finishes
        (and its ``on_complete`` job is queued) when the last running member ends; its
        status is then ``cancelled``.

        Raises:
            GroupNotFoundError: no such group.

        Example:
            >>> queue_handle.cancel_group(group_id)  # doctest: +SKIP
            CancelCounts(cancelled=7, requested=2)

        """
        f = _filter(group=group_id)
        cancelled, requested = self._storage._native.cancel(f)
        if not cancelled and not requested:
            self.group(group_id)  # raises GroupNotFoundError
        return CancelCounts(cancelled=cancelled, requested=requested)

    def get(self, job_id: uuid.UUID | str) -> JobInfo:
        """Return the job with this id, with its whole history.

        Raises:
            JobNotFoundError: no such job (never stored, or pruned).

        """
        d = self._storage._native.get(_parse_id(job_id))
        if d is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return JobInfo.from_native(d)

    def list(
        self,
        *,
        status: _Status | None = None,
        name: str | None = None,
        queue: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        args_contains: str | None = None,
        ids: _Ids | None = None,
        group: uuid.UUID | str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs matching every given filter, newest first, one page at a time.

        Pass the returned page's ``next_cursor`` as ``cursor`` to get the next page.

        Args:
            status: One status or several (any of them).
            name: The job class's ``NAME``.
            queue: The queue.
            created_from: Jobs stored at or after this (timezone-aware) time.
            created_to: Jobs stored before this time.
            args_contains: Text the job's arguments contain, as stored: a case-sensitive
                substring of their JSON (so ``"alice@example.com"`` finds a field with that
                value; quotes and backslashes are as JSON escapes them).
            ids: Only these jobs.
            group: Only the members of this group (:meth:`queue_group`).
            limit: The most jobs per page.
            cursor: Where the previous page ended.

        Raises:
            ConfigError: an unknown status, a naive datetime, ``created_from`` not before
                ``created_to``, an empty name, queue or text, a malformed id or cursor.

        Example:
            >>> page = queue_handle.list(status="failed", args_contains="a@b.c")  # doctest: +SKIP

        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive int, got {limit!r}")
        f = _filter(
            ids=ids,
            status=status,
            name=name,
            queue=queue,
            created_from=created_from,
            created_to=created_to,
            args_contains=args_contains,
            group=group,
        )
        if cursor is not None:
            cursor = _parse_id(cursor)
        rows = self._storage._native.list(f, cursor, limit)
        jobs = [JobInfo.from_native(d) for d in rows]
        next_cursor = str(jobs[-1].id) if len(jobs) == limit else None
        return JobPage(jobs=jobs, next_cursor=next_cursor)

    def count(self, **filters: Unpack[JobFilterArgs]) -> int:
        """How many jobs match every given filter (the filters of :meth:`list`).

        Example:
            >>> queue_handle.count(status="failed", queue="images")  # doctest: +SKIP
            3

        """
        f = _filter(**filters)
        return self._storage._native.count(f)

    def cancel(self, job_id: uuid.UUID | str) -> CancelResult:
        """Cancel a job; say what that did.

        A waiting job (scheduled, available, retryable) becomes ``cancelled`` at once and
        never runs: :attr:`CancelResult.CANCELLED`. A running job is asked to stop:
        :attr:`CancelResult.REQUESTED`; an async job gets ``asyncio.CancelledError``, a
        sync job sees :func:`~hauler.current_job_cancelled` turn true, and whatever ``run``
        then does, the job ends ``cancelled`` (never retried). A job that already finished
        is left alone: :attr:`CancelResult.ALREADY_FINISHED`.

        Raises:
            JobNotFoundError: no such job.

        Example:
            >>> queue_handle.cancel(job_id)  # doctest: +SKIP
            <CancelResult.CANCELLED: 'cancelled'>

        """
        cancelled, requested = self._storage._native.cancel(_filter(ids=[job_id]))
        if cancelled:
            return CancelResult.CANCELLED
        if requested:
            return CancelResult.REQUESTED
        self.get(job_id)  # raises JobNotFoundError
        return CancelResult.ALREADY_FINISHED

    def retry(self, job_id: uuid.UUID | str) -> bool:
        """Run a failed or cancelled job again; ``False`` if it is in another status.

        A unique job (see :class:`~hauler.Unique`) is not retried, and ``False`` returned,
        while another job of its key holds it: retrying would make a second live job of
        the key. Retry it once that job has finished.

        The job becomes ``available`` at once with its attempt count back to 0, so it gets
        its full ``MAX_RETRIES`` again. Its history is kept, with a ``"retried"`` entry
        marking where the new run starts.

        Raises:
            JobNotFoundError: no such job.

        Example:
            >>> if queue_handle.get(job_id).status == "failed":  # doctest: +SKIP
            ...     queue_handle.retry(job_id)
            True

        """
        if self._storage._native.retry(_filter(ids=[job_id])):
            return True
        self.get(job_id)  # raises JobNotFoundError
        return False

    def delete(self, job_id: uuid.UUID | str) -> bool:
        """Delete a job and its history; ``False`` if it is running (cancel it first).

        Raises:
            JobNotFoundError: no such job.

        Example:
            >>> queue_handle.delete(job_id)  # doctest: +SKIP
            True
            >>> queue_handle.get(job_id)  # doctest: +SKIP
            Traceback (most recent call last):
            ...
            hauler.errors.JobNotFoundError: no job with id ...

        """
        if self._storage._native.delete(_filter(ids=[job_id])):
            return True
        self.get(job_id)  # raises JobNotFoundError
        return False

    def cancel_many(self, **filters: Unpack[JobFilterArgs]) -> CancelCounts:
        """Cancel every waiting or running job matching the filters of :meth:`list`.

        One transaction; each job as :meth:`cancel` says. Finished jobs are left alone.

        Raises:
            ConfigError: no filter given, or a status that cannot be cancelled.

        Example:
            >>> queue_handle.cancel_many(name="send_email", status="available")  # doctest: +SKIP
            CancelCounts(cancelled=120, requested=0)

        """
        f = _filter(**filters)
        cancelled, requested = self._storage._native.cancel(_bulk("cancel_many", f, _CANCELLABLE))
        return CancelCounts(cancelled=cancelled, requested=requested)

    def retry_many(self, **filters: Unpack[JobFilterArgs]) -> int:
        """Retry every failed or cancelled job matching the filters; return how many.

        One transaction; each job as :meth:`retry` says.

        Raises:
            ConfigError: no filter given, or a status other than failed and cancelled.

        Example:
            >>> queue_handle.retry_many(status="failed", queue="images")  # doctest: +SKIP
            7

        """
        f = _filter(**filters)
        return self._storage._native.retry(_bulk("retry_many", f, _RETRYABLE))

    def delete_many(self, **filters: Unpack[JobFilterArgs]) -> int:
        """Delete every job matching the filters, with its history, except running ones.

        One transaction; returns how many were deleted.

        Raises:
            ConfigError: no filter given, or status ``running``.

        Example:
            >>> queue_handle.delete_many(status="cancelled", name="report")  # doctest: +SKIP
            12

        """
        f = _filter(**filters)
        return self._storage._native.delete(_bulk("delete_many", f, _DELETABLE))

    def prune(
        self,
        *,
        older_than: timedelta,
        states: _Status = (JobStatus.COMPLETED,),
    ) -> int:
        """Delete finished jobs that finished more than ``older_than`` ago; return how many.

        Workers already do this for completed jobs (``WorkerConfig(retention=...)``, 24 h
        by default); call it for other final states or a one-off clean-up. Deletes in
        batches of 1000, so it never holds the storage for long.

        Args:
            older_than: How long ago a job must have finished.
            states: Which final states: ``completed`` (default), ``failed``, ``cancelled``.

        Raises:
            ConfigError: a negative ``older_than``, or a state that is not final.

        Example:
            >>> week = timedelta(days=7)
            >>> queue_handle.prune(older_than=week, states=["failed"])  # doctest: +SKIP
            42

        """
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise ConfigError(f"older_than must be a timedelta >= 0, got {older_than!r}")
        statuses = _statuses(states, what="state")
        bad = [s for s in statuses if s not in _FINAL]
        if bad or not statuses:
            raise ConfigError(
                f"prune() deletes only finished jobs: states must be some of completed, "
                f"failed, cancelled; got {bad or statuses}"
            )
        before = _native.now_us() - older_than // timedelta(microseconds=1)
        return self._storage._native.prune(statuses, before)

    def counts(self) -> dict[str, dict[str, int]]:
        """Job counts as ``{queue: {status: n}}`` (statuses with no jobs are left out)."""
        out: dict[str, dict[str, int]] = {}
        for q, status, n in self._storage._native.counts():
            out.setdefault(q, {})[status] = n
        return out

    def wait(
        self, job_ids: uuid.UUID | str | Sequence[uuid.UUID | str], *, timeout: float | None = None
    ) -> builtins.list[JobInfo]:
        """Block until every given job is completed, failed or cancelled; return their infos.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.

        """
        ids = [job_ids] if isinstance(job_ids, (str, uuid.UUID)) else list(job_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = {_parse_id(i) for i in ids}
        done: dict[str, JobInfo] = {}
        delay = 0.002
        while True:
            for i in list(pending):
                info = self.get(i)
                if info.status in _FINAL:
                    done[i] = info
                    pending.discard(i)
            if not pending:
                return [done[_parse_id(i)] for i in ids]
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(pending)} job(s) not finished after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def aqueue(self, job: Job[Any]) -> QueuedId:
        """Async twin of :meth:`queue` (the storage work runs off the event loop)."""
        return await asyncio.to_thread(self.queue, job)

    async def aqueue_many(self, jobs: Iterable[Job[Any]]) -> builtins.list[QueuedId]:
        """Async twin of :meth:`queue_many`."""
        return await asyncio.to_thread(self.queue_many, list(jobs))

    async def aschedule(
        self, job: Job[Any], *, at: datetime | None = None, after: timedelta | None = None
    ) -> QueuedId:
        """Async twin of :meth:`schedule`."""
        return await asyncio.to_thread(self.schedule, job, at=at, after=after)

    async def aevery(
        self,
        interval: timedelta,
        job: Job[Any] | type[Job[Any]],
        *,
        name: str,
        catch_up: str = "one",
    ) -> ScheduleInfo:
        """Async twin of :meth:`every`."""
        return await asyncio.to_thread(self.every, interval, job, name=name, catch_up=catch_up)

    async def aunschedule(self, name: str) -> bool:
        """Async twin of :meth:`unschedule`."""
        return await asyncio.to_thread(self.unschedule, name)

    async def arun_now(self, name: str) -> uuid.UUID:
        """Async twin of :meth:`run_now`."""
        return await asyncio.to_thread(self.run_now, name)

    async def aschedules(self) -> builtins.list[ScheduleInfo]:
        """Async twin of :meth:`schedules`."""
        return await asyncio.to_thread(self.schedules)

    async def aqueue_group(
        self,
        name: str,
        jobs: Iterable[Job[Any]],
        *,
        concurrency: int | None = None,
        on_complete: Job[Any] | None = None,
    ) -> uuid.UUID:
        """Async twin of :meth:`queue_group`."""
        return await asyncio.to_thread(
            functools.partial(
                self.queue_group,
                name,
                list(jobs),
                concurrency=concurrency,
                on_complete=on_complete,
            )
        )

    async def agroup(self, group_id: uuid.UUID | str) -> GroupInfo:
        """Async twin of :meth:`group`."""
        return await asyncio.to_thread(self.group, group_id)

    async def acancel_group(self, group_id: uuid.UUID | str) -> CancelCounts:
        """Async twin of :meth:`cancel_group`."""
        return await asyncio.to_thread(self.cancel_group, group_id)

    async def aget(self, job_id: uuid.UUID | str) -> JobInfo:
        """Async twin of :meth:`get`."""
        return await asyncio.to_thread(self.get, job_id)

    async def alist(
        self, *, limit: int = 100, cursor: str | None = None, **filters: Unpack[JobFilterArgs]
    ) -> JobPage:
        """Async twin of :meth:`list` (same keyword filters)."""
        return await asyncio.to_thread(
            functools.partial(self.list, limit=limit, cursor=cursor, **filters)
        )

    async def acount(self, **filters: Unpack[JobFilterArgs]) -> int:
        """Async twin of :meth:`count` (same keyword filters)."""
        return await asyncio.to_thread(functools.partial(self.count, **filters))

    async def acancel(self, job_id: uuid.UUID | str) -> CancelResult:
        """Async twin of :meth:`cancel`."""
        return await asyncio.to_thread(self.cancel, job_id)

    async def aretry(self, job_id: uuid.UUID | str) -> bool:
        """Async twin of :meth:`retry`."""
        return await asyncio.to_thread(self.retry, job_id)

    async def adelete(self, job_id: uuid.UUID | str) -> bool:
        """Async twin of :meth:`delete`."""
        return await asyncio.to_thread(self.delete, job_id)

    async def acancel_many(self, **filters: Unpack[JobFilterArgs]) -> CancelCounts:
        """Async twin of :meth:`cancel_many` (same keyword filters)."""
        return await asyncio.to_thread(functools.partial(self.cancel_many, **filters))

    async def aretry_many(self, **filters: Unpack[JobFilterArgs]) -> int:
        """Async twin of :meth:`retry_many` (same keyword filters)."""
        return await asyncio.to_thread(functools.partial(self.retry_many, **filters))

    async def adelete_many(self, **filters: Unpack[JobFilterArgs]) -> int:
        """Async twin of :meth:`delete_many` (same keyword filters)."""
        return await asyncio.to_thread(functools.partial(self.delete_many, **filters))

    async def aprune(
        self, *, older_than: timedelta, states: _Status = (JobStatus.COMPLETED,)
    ) -> int:
        """Async twin of :meth:`prune`."""
        return await asyncio.to_thread(self.prune, older_than=older_than, states=states)

    async def acounts(self) -> dict[str, dict[str, int]]:
        """Async twin of :meth:`counts`."""
        return await asyncio.to_thread(self.counts)

    def close(self) -> None:
        """Close the underlying storage (shared with anything else using it)."""
        self._storage.close()


def create_server(
    storage: Storage | str | None = None,
    *,
    max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    on_enqueue: JobHook | None = None,
) -> QueueHandle:
    """Return a queue handle for a process that only enqueues (a web app, a script).

    ``storage`` is a :class:`~hauler.storage.Storage`, a storage URL (``sqlite:///jobs.db``,
    ``memory://``), or ``None`` for ``$HAULER_STORAGE`` or else ``SqliteStorage("hauler.db")``.
    ``max_payload_bytes`` caps the JSON size of each queued job's fields (default 1 MiB;
    ``None``: no limit), and ``on_enqueue`` is a hook called with each job queued through
    the handle; see :class:`QueueHandle`.

    Example:
        >>> from hauler import create_server
        >>> handle = create_server("memory://")
        >>> handle.max_payload_bytes
        1048576

    """
    return QueueHandle(storage, max_payload_bytes=max_payload_bytes, on_enqueue=on_enqueue)
