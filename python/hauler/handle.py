"""Queue handles: the producer side of hauler (``create_server``) and the base of ``Worker``."""

from __future__ import annotations

import asyncio
import builtins
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from hauler import _native
from hauler.errors import ConfigError, JobNotFoundError
from hauler.info import JobInfo, JobPage, JobStatus, _dt_to_us
from hauler.job import Job
from hauler.storage import Storage, resolve_storage

_FINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

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
    )


def _parse_id(job_id: uuid.UUID | str) -> str:
    if isinstance(job_id, uuid.UUID):
        return str(job_id)
    try:
        return str(uuid.UUID(job_id))
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(f"invalid job id {job_id!r}: expected a UUID") from None


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


def _statuses(status: JobStatus | str | Iterable[JobStatus | str] | None) -> list[str]:
    if status is None:
        return []
    items = [status] if isinstance(status, str) else list(status)
    out = []
    for s in items:
        try:
            out.append(JobStatus(s).value)
        except ValueError:
            allowed = ", ".join(m.value for m in JobStatus)
            raise ConfigError(f"unknown job status {s!r}; expected one of: {allowed}") from None
    return out


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

    Raises:
        ConfigError: ``max_payload_bytes`` is not a positive int or ``None``.

    Example:
        >>> handle = create_server("memory://", max_payload_bytes=64 * 1024)
        >>> job_id = handle.queue(SendEmail(to="a@b.c", subject="hi"))  # doctest: +SKIP

    """

    def __init__(
        self,
        storage: Storage | str | None = None,
        *,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self._max_payload_bytes = _max_payload(max_payload_bytes)
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
        self, tuples: builtins.list[_native._NewJobTuple], connection: DbConnection | None
    ) -> builtins.list[str]:
        native = self._storage._native
        if connection is None:
            return native.push_many(tuples, max_payload_bytes=self._max_payload_bytes)
        sql, params, ids = native.pg_insert(tuples, max_payload_bytes=self._max_payload_bytes)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
        return ids

    def queue(self, job: Job[Any], *, connection: DbConnection | None = None) -> uuid.UUID:
        """Store ``job`` to run as soon as a worker is free; return its id once durable.

        Args:
            job: The job to run.
            connection: PostgreSQL only: an open psycopg (3) connection of your own. The job
                is inserted in that connection's current transaction, so it exists if and
                only if your transaction commits (and workers are notified at commit). The
                connection must reach the same database as the storage.

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
    ) -> builtins.list[uuid.UUID]:
        """Store many jobs in one transaction (all or none); return their ids in order.

        ``connection`` is as for :meth:`queue`.
        """
        tuples = [_job_tuple(j, None) for j in jobs]
        if not tuples:
            return []
        return [uuid.UUID(i) for i in self._push(tuples, connection)]

    def schedule(
        self,
        job: Job[Any],
        *,
        at: datetime | None = None,
        after: timedelta | None = None,
        connection: DbConnection | None = None,
    ) -> uuid.UUID:
        """Store ``job`` to run at ``at`` (a timezone-aware datetime) or ``after`` from now.

        ``connection`` is as for :meth:`queue`.

        Raises:
            ConfigError: neither or both of ``at``/``after``, a naive datetime, or a negative
                delay.

        """
        run_at = _run_at(at, after)
        return uuid.UUID(self._push([_job_tuple(job, run_at)], connection)[0])

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
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs matching every given filter, newest first, one page at a time.

        Pass the returned page's ``next_cursor`` as ``cursor`` to get the next page.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive int, got {limit!r}")
        if cursor is not None:
            cursor = _parse_id(cursor)
        rows = self._storage._native.list(_statuses(status), name, queue, cursor, limit)
        jobs = [JobInfo.from_native(d) for d in rows]
        next_cursor = str(jobs[-1].id) if len(jobs) == limit else None
        return JobPage(jobs=jobs, next_cursor=next_cursor)

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

    async def aqueue(self, job: Job[Any]) -> uuid.UUID:
        """Async twin of :meth:`queue` (the storage work runs off the event loop)."""
        return await asyncio.to_thread(self.queue, job)

    async def aqueue_many(self, jobs: Iterable[Job[Any]]) -> builtins.list[uuid.UUID]:
        """Async twin of :meth:`queue_many`."""
        return await asyncio.to_thread(self.queue_many, list(jobs))

    async def aschedule(
        self, job: Job[Any], *, at: datetime | None = None, after: timedelta | None = None
    ) -> uuid.UUID:
        """Async twin of :meth:`schedule`."""
        return await asyncio.to_thread(self.schedule, job, at=at, after=after)

    async def aget(self, job_id: uuid.UUID | str) -> JobInfo:
        """Async twin of :meth:`get`."""
        return await asyncio.to_thread(self.get, job_id)

    async def alist(
        self,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> JobPage:
        """Async twin of :meth:`list`."""
        return await asyncio.to_thread(
            self.list, status=status, name=name, queue=queue, limit=limit, cursor=cursor
        )

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
) -> QueueHandle:
    """Return a queue handle for a process that only enqueues (a web app, a script).

    ``storage`` is a :class:`~hauler.storage.Storage`, a storage URL (``sqlite:///jobs.db``,
    ``memory://``), or ``None`` for ``$HAULER_STORAGE`` or else ``SqliteStorage("hauler.db")``.
    ``max_payload_bytes`` caps the JSON size of each queued job's fields (default 1 MiB;
    ``None``: no limit); see :class:`QueueHandle`.

    Example:
        >>> from hauler import create_server
        >>> handle = create_server("memory://")
        >>> handle.max_payload_bytes
        1048576

    """
    return QueueHandle(storage, max_payload_bytes=max_payload_bytes)
