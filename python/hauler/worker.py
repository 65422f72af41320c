"""The worker side: ``WorkerConfig`` describes a pool, ``start()`` runs it."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, Generic, TypeVar

from hauler import _native
from hauler._hooks import Hooks, JobHook, check_hook
from hauler._runtime import EventLoopThread, JobRunner
from hauler.errors import ConfigError, StorageClosedError, UnknownJobError
from hauler.handle import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    QueueHandle,
    _catch_up,
    _job_tuple,
    _max_payload,
    _schedule_job,
    _schedule_name,
)
from hauler.job import _UTF8, Job, _is_utf8
from hauler.storage import Storage, resolve_storage

StateT = TypeVar("StateT")

DEFAULT_WORKER_COUNT = 4
"""Workers per registered queue unless ``set_worker_count`` says otherwise."""

DEFAULT_RETENTION = timedelta(hours=24)
"""How long workers keep completed jobs unless ``WorkerConfig(retention=...)`` says
otherwise."""

log = logging.getLogger("hauler.worker")
# Running pools, held strongly: a pool runs in the background whether or not the caller keeps
# the Worker (`WorkerConfig(...).start(queue_handle)` is a complete statement), until stopped.
_running: set[Worker] = set()
_running_lock = threading.Lock()
# The signal that asked this process to terminate (set once by the SIGTERM handler).
_terminating: int | None = None


def _stop_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"stop_timeout must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _retention_ms(value: timedelta | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ConfigError(
            f"retention must be a positive timedelta or None (keep forever), got {value!r}"
        )
    return max(1, -(-value // timedelta(milliseconds=1)))


def _positive_seconds(name: str, value: float | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return max(1, round(value * 1000))


class WorkerConfig(Generic[StateT]):
    """Describes a worker pool: which jobs it runs, on how many workers, with what state.

    ``state_factory()`` is called once when the pool starts; its result is passed to every
    job the pool runs.

    Args:
        state_factory: Makes the state passed to every job (``None``: jobs get ``None``).
        storage: Where jobs are claimed from: a :class:`~hauler.storage.Storage`, a URL, or
            ``None`` (see :meth:`start`).
        poll_interval: Seconds between looks for jobs queued by other processes
            (default: the storage's own interval).
        reclaim_interval: Seconds between passes that take back jobs whose lease expired.
        worker_id: The id recorded on claimed jobs (default ``host:pid:random``).
        max_payload_bytes: The JSON size limit of jobs queued through the started
            :class:`Worker` (it is also a queue handle); see :class:`QueueHandle`.
        stop_timeout: Seconds running jobs get to finish when the worker is stopped
            without an explicit timeout: :meth:`Worker.stop()`, the end of a ``with``
            block, SIGTERM, interpreter exit. Jobs still running then are released.
        handle_sigterm: Turn SIGTERM into a graceful stop (see :class:`Worker`). Only
            done when ``start()`` runs in the main thread and SIGTERM has no handler yet.
        retention: How long completed jobs are kept (default 24 h); ``None`` keeps them
            forever. The pool deletes older ones in batches, at most ``min(retention,
            1 min)`` late. Failed and cancelled jobs are kept: prune them with
            :meth:`QueueHandle.prune`.
        on_enqueue: Lifecycle hook: called with each job queued through the started
            :class:`Worker` (it is a queue handle) or through the queue handle given to
            :meth:`start`, while the pool runs; see ``on_enqueue`` of
            :class:`QueueHandle` for the details (``create_server(on_enqueue=...)`` sets
            it on a producer's handle).
        on_start: Lifecycle hook: called before each attempt's ``run``, on the thread
            that runs the job (an async job's is called off the event loop), with the job
            ``running``; its time counts toward the job's ``TIMEOUT``. Not called for a
            job that cannot be built (an unknown NAME, fields that do not decode, an
            unsupported VERSION): it fails at once.
        on_success: Lifecycle hook: called once a job's success is recorded (``completed``).
        on_failure: Lifecycle hook: called once a job has failed for good (``failed``:
            its retries are used up, or the failure is permanent).
        on_retry: Lifecycle hook: called once a failed attempt is recorded with a retry
            scheduled (``retryable``; ``JobInfo.last_error`` holds the error and
            ``run_at`` the retry time; a retry due at once may already be running).

    Lifecycle hooks are plain functions (not ``async def``), each given the
    :class:`~hauler.JobInfo` of the job, read from the storage when the hook is due: a
    hook that is not set costs nothing, one that is set costs one storage read per call.
    They fire for sync and async jobs alike. ``on_success``, ``on_failure`` and
    ``on_retry`` run one at a time on the pool's hooks thread, after the storage recorded
    the outcome (a slow hook delays later hooks, never jobs); :meth:`Worker.stop` waits
    up to 5 s for those still due. A snooze fires none, nor does an outcome this pool did
    not record: a job whose cancel was requested ends ``cancelled`` (no hook), a job whose
    worker died is retried or failed by the worker that reclaims it. Whatever a hook
    raises is logged on the ``hauler.hooks`` logger with the job's id; the job's outcome
    never changes and the job is never lost. Hooks run on several threads at once: make
    them thread-safe.

    Example:
        >>> config = WorkerConfig(lambda: AppState("my app")).register(SendEmail)  # doctest: +SKIP
        >>> worker = config.set_worker_count("default", 16).start()  # doctest: +SKIP
        >>> def alert(info: JobInfo) -> None:
        ...     print(f"{info.name} {info.id} failed: {info.last_error}")
        >>> config = WorkerConfig(on_failure=alert)  # doctest: +SKIP

    """

    def __init__(
        self,
        state_factory: Callable[[], StateT] | None = None,
        *,
        storage: Storage | str | None = None,
        poll_interval: float | None = None,
        reclaim_interval: float = 1.0,
        worker_id: str | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        stop_timeout: float = 30.0,
        handle_sigterm: bool = True,
        retention: timedelta | None = DEFAULT_RETENTION,
        on_enqueue: JobHook | None = None,
        on_start: JobHook | None = None,
        on_success: JobHook | None = None,
        on_failure: JobHook | None = None,
        on_retry: JobHook | None = None,
    ) -> None:
        if state_factory is not None and not callable(state_factory):
            raise ConfigError(f"state_factory must be callable, got {type(state_factory).__name__}")
        self._state_factory = state_factory
        self._storage = storage
        self._poll_interval_ms = _positive_seconds("poll_interval", poll_interval)
        self._reclaim_interval_ms = _positive_seconds("reclaim_interval", reclaim_interval) or 1000
        if worker_id is not None and (
            not isinstance(worker_id, str) or not worker_id or not _is_utf8(worker_id)
        ):
            raise ConfigError(f"worker_id must be non-empty {_UTF8}, got {worker_id!r}")
        self._worker_id = worker_id
        self._max_payload_bytes = _max_payload(max_payload_bytes)
        self._stop_timeout = _stop_seconds(stop_timeout)
        self._handle_sigterm = bool(handle_sigterm)
        self._retention_ms = _retention_ms(retention)
        self._hooks = Hooks(
            on_enqueue=check_hook("on_enqueue", on_enqueue),
            on_start=check_hook("on_start", on_start),
            on_success=check_hook("on_success", on_success),
            on_failure=check_hook("on_failure", on_failure),
            on_retry=check_hook("on_retry", on_retry),
        )
        self._jobs: dict[str, type[Job[Any]]] = {}
        self._counts: dict[str, int] = {}
        # name -> (spec, catch_up, job): the cron entries stored when the pool starts.
        self._schedules: dict[str, tuple[_native.ScheduleSpecDict, str, Job[Any]]] = {}

    def register(self, job_cls: type[Job[StateT]]) -> WorkerConfig[StateT]:
        """Run jobs of ``job_cls`` in this pool. Its NAME must be unique in the pool.

        Raises:
            ConfigError: not a Job subclass, an invalid class constant, or another class is
                already registered under the same NAME.

        """
        if not (isinstance(job_cls, type) and issubclass(job_cls, Job)):
            raise ConfigError(f"register() takes a Job subclass, got {job_cls!r}")
        spec = job_cls._spec()
        other = self._jobs.get(spec.name)
        if other is not None and other is not job_cls:
            raise ConfigError(
                f"job NAME {spec.name!r} is already registered by "
                f"{other.__module__}.{other.__qualname__}; each NAME must be unique"
            )
        self._jobs[spec.name] = job_cls
        return self

    def cron(
        self,
        expr: str,
        job: Job[StateT] | type[Job[StateT]],
        *,
        name: str | None = None,
        timezone: str = "UTC",
        catch_up: str = "one",
    ) -> WorkerConfig[StateT]:
        """Queue ``job`` at the times of the cron expression ``expr``, and run it here.

        ``expr`` has five fields (minute, hour, day of month, month, day of week) or six
        with seconds first; ``*``, ``*/5``, ``0/5``, ranges, lists, month and day names
        (``jan``, ``mon-fri``) and the aliases ``@yearly``, ``@monthly``, ``@weekly``,
        ``@daily`` and ``@hourly`` work. Times are in ``timezone`` (an IANA name).

        The entry is stored when the pool starts. However many workers (processes, hosts)
        register the same entry, each tick queues exactly one job: ticks are taken in the
        storage, by entry name and tick time. The job's class is registered too.

        Args:
            expr: The cron expression.
            job: The job each tick queues (a class with no required fields works too).
            name: The entry's unique name (default: the job's ``NAME``); workers that
                register the same name share one schedule.
            timezone: The zone ``expr`` is read in (default ``"UTC"``).
            catch_up: ``"one"`` (default): ticks missed while no worker ran are queued once
                at start-up; ``"none"``: they are skipped.

        Raises:
            ConfigError: a malformed expression (the message quotes the bad field), an
                unknown time zone, a bad ``catch_up`` or name, or a second entry with the
                same name.

        Example:
            >>> config.cron("0 3 * * *", PruneSessions(), timezone="Europe/Paris")  # doctest: +SKIP
            >>> config.cron("*/10 * * * * *", Ping, name="ping")  # doctest: +SKIP

        """
        instance = _schedule_job(job)
        entry = _schedule_name(name if name is not None else type(instance)._spec().name)
        if entry in self._schedules:
            raise ConfigError(
                f"schedule {entry!r} is registered twice; give each cron entry its own name="
            )
        if not isinstance(expr, str) or not isinstance(timezone, str):
            raise ConfigError(f"expr and timezone must be str, got {expr!r} and {timezone!r}")
        spec: _native.ScheduleSpecDict = {"cron": expr, "timezone": timezone}
        _native.check_schedule(spec)
        mode = _catch_up(catch_up)
        self.register(type(instance))
        self._schedules[entry] = (spec, mode, instance)
        return self

    def set_worker_count(self, queue: str, count: int) -> WorkerConfig[StateT]:
        """Run up to ``count`` jobs of ``queue`` at once (default 4 per registered queue)."""
        if not isinstance(queue, str) or not queue:
            raise ConfigError(f"queue must be a non-empty str, got {queue!r}")
        if not _is_utf8(queue):
            raise ConfigError(f"queue must be {_UTF8}, got {queue!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(
                f"worker count for queue {queue!r} must be an int >= 1, got {count!r}"
            )
        self._counts[queue] = count
        return self

    def job_class(self, name: str) -> type[Job[Any]]:
        """Return the class registered under ``name``.

        Raises:
            UnknownJobError: nothing is registered under that name.

        """
        try:
            return self._jobs[name]
        except KeyError:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise UnknownJobError(
                f"no job registered under NAME {name!r} (registered: {known})"
            ) from None

    def start(self, queue_handle: QueueHandle | None = None) -> Worker:
        """Start the pool and return it running.

        The storage is the queue handle's if one is given, else the ``storage=`` given to the
        config, else ``$HAULER_STORAGE``, else ``SqliteStorage("hauler.db")``.

        Raises:
            ConfigError: no job registered, or a worker count set for a queue no registered
                job uses, or a bad storage URL.
            StorageClosedError: the storage was closed.

        """
        if not self._jobs:
            raise ConfigError("no job registered: call register(JobClass) before start()")
        queues: dict[str, int] = {}
        names: dict[str, str] = {}
        async_names: list[str] = []
        for name, cls in self._jobs.items():
            spec = cls._spec()
            names[name] = spec.queue
            queues[spec.queue] = self._counts.get(spec.queue, DEFAULT_WORKER_COUNT)
            if spec.is_async:
                async_names.append(name)
        unused = sorted(set(self._counts) - set(queues))
        if unused:
            raise ConfigError(
                f"worker count set for queue(s) {unused} but no registered job runs there"
            )
        if queue_handle is not None:
            if self._storage is not None and queue_handle.storage is not self._storage:
                raise ConfigError(
                    "give the storage either to WorkerConfig or via the queue handle, not both"
                )
            storage_arg: Storage | str | None = queue_handle.storage
        else:
            storage_arg = self._storage
        storage = resolve_storage(storage_arg)
        if storage.closed:
            raise StorageClosedError(f"cannot start a worker on a closed storage ({storage!r})")
        state = self._state_factory() if self._state_factory is not None else None
        worker_id = (
            self._worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        return Worker._start(
            self, storage, queues, names, async_names, state, worker_id, queue_handle
        )


class Worker(QueueHandle):
    """A running worker pool. It is also a :class:`QueueHandle` on the same storage.

    Use it as a context manager to stop (drain) it on exit:

    Example:
        >>> with WorkerConfig().register(SendEmail).start() as worker:  # doctest: +SKIP
        ...     worker.queue(SendEmail(to="a@b.c", subject="hi"))

    Stopping and signals: a pool runs until :meth:`stop`, the end of its ``with`` block,
    or interpreter exit, each of which drains it (``stop_timeout``, 30 s by default).
    When ``start()`` is called from the main thread and SIGTERM has no handler, hauler
    installs one, so the usual way to ask a worker process to finish (``kill``,
    ``docker stop``, systemd, Kubernetes) drains too: SIGTERM raises ``SystemExit(143)``
    in the main thread, which unwinds ``with`` blocks and runs interpreter exit; running
    pools stop claiming, their jobs get ``stop_timeout`` seconds to finish, the rest are
    released so another worker starts them at once (not after their lease expires), and
    the process exits with status 143 without waiting for sync jobs that were released.
    Further SIGTERMs while draining are ignored; SIGKILL still ends the process at once
    (its jobs then come back when their lease expires). A SIGTERM arriving when no pool
    runs any more terminates the process as if hauler had installed nothing. Pass
    ``handle_sigterm=False`` to leave SIGTERM alone, or install your own handler first.

    """

    _native_worker: _native.Worker
    _loop: EventLoopThread | None
    _runner: JobRunner
    _stop_timeout: float
    _hooked_handle: QueueHandle | None

    @classmethod
    def _start(
        cls,
        config: WorkerConfig[Any],
        storage: Storage,
        queues: dict[str, int],
        names: dict[str, str],
        async_names: list[str],
        state: Any,
        worker_id: str,
        queue_handle: QueueHandle | None,
    ) -> Worker:
        hooks = config._hooks
        self = cls(
            storage, max_payload_bytes=config._max_payload_bytes, on_enqueue=hooks.on_enqueue
        )
        self._stop_timeout = config._stop_timeout
        self._hooked_handle = None
        runner = JobRunner(
            config._jobs,
            state,
            max_payload_bytes=config._max_payload_bytes,
            hooks=hooks,
            storage=storage._native,
        )
        recorded_kinds = hooks.recorded_kinds()
        self._loop = EventLoopThread(f"hauler-async-{worker_id}") if async_names else None
        runner.loop = self._loop
        self._runner = runner
        try:
            for entry, (spec, catch_up, job) in config._schedules.items():
                self.storage._native.schedule_add(
                    entry,
                    spec,
                    catch_up,
                    _job_tuple(job, None),
                    max_payload_bytes=config._max_payload_bytes,
                )
            self._native_worker = _native.Worker(
                self.storage._native,
                queues,
                names,
                runner.run_sync,
                runner.submit_async if async_names else None,
                async_names,
                worker_id=worker_id,
                poll_interval_ms=config._poll_interval_ms,
                reclaim_interval_ms=config._reclaim_interval_ms,
                retention_ms=config._retention_ms,
                on_recorded=runner.recorded if recorded_kinds else None,
                recorded_kinds=recorded_kinds,
            )
        except BaseException:
            if self._loop is not None:
                self._loop.stop()
            raise
        if hooks.on_enqueue is not None and queue_handle is not None:
            queue_handle._add_enqueue_hook(hooks.on_enqueue)
            self._hooked_handle = queue_handle
        with _running_lock:
            _running.add(self)
        if config._handle_sigterm:
            _install_sigterm_handler()
        return self

    @property
    def worker_id(self) -> str:
        """Return the pool's id (host:pid:random), recorded on every job it claims."""
        return self._native_worker.worker_id

    @property
    def running(self) -> bool:
        """Whether the pool is still running."""
        return self._native_worker.running

    @property
    def in_flight(self) -> int:
        """How many jobs the pool is running right now."""
        return self._native_worker.in_flight()

    def stop(self, timeout: float | None = None) -> None:
        """Drain: claim nothing more, let running jobs finish for up to ``timeout`` seconds.

        Jobs still running after that are handed back to the storage at once (available to
        another worker, the attempt not counted). A sync job's thread cannot be interrupted:
        it runs on in the background and its result is ignored. Idempotent: a second call
        waits for the first to finish. If the wait is interrupted (Ctrl-C), the stop goes
        on in the background and interpreter exit waits for it.

        Args:
            timeout: Seconds to wait for running jobs; ``None`` (the default) uses the
                config's ``stop_timeout``.

        """
        timeout = self._stop_timeout if timeout is None else timeout
        try:
            self._native_worker.stop(timeout)
        finally:
            # Interrupted while the pool still drains: leave it to interpreter exit.
            if not self._native_worker.running:
                hooked, self._hooked_handle = self._hooked_handle, None
                if hooked is not None and self._enqueue_hooks:
                    hooked._remove_enqueue_hook(self._enqueue_hooks[0])
                if self._loop is not None:
                    self._loop.stop()
                with _running_lock:
                    _running.discard(self)
                    last = not _running
                if last:
                    _uninstall_sigterm_handler()

    def join(self, timeout: float | None = None) -> bool:
        """Block until the pool stops (Ctrl-C raises KeyboardInterrupt); False on timeout."""
        return self._native_worker.join(timeout)

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into a graceful exit while pools run (see :class:`Worker`)."""
    global _terminating
    if _terminating is not None:
        return  # already draining: the stop in progress ends the process
    if not _running:
        # No pool left: terminate the way the process would have without hauler.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _terminating = signum
    raise SystemExit(128 + signum)


def _uninstall_sigterm_handler() -> None:
    """Give SIGTERM back its default once no pool runs (if hauler's handler is set)."""
    if threading.current_thread() is not threading.main_thread():
        return  # the handler itself falls back to the default when no pool runs
    if _terminating is None and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _install_sigterm_handler() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


@atexit.register
def _stop_running_workers() -> None:
    with _running_lock:
        workers = list(_running)
    for w in workers:
        try:
            w.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass
    # A sync job still in Python when the interpreter finalizes would abort the process
    # (its thread cannot take the GIL back), so exit waits for those jobs to return, as
    # for non-daemon threads. Their leases were released by stop(): their results are
    # ignored and another worker runs them.
    if _native.wait_sync_threads(timeout=1.0):
        return
    if _terminating is not None:
        # Asked to terminate: the stop timeout has passed and the jobs were handed back,
        # so leave without finalizing the interpreter (which those threads would abort).
        log.warning("exiting on signal %d with released sync jobs still running", _terminating)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + _terminating)
    log.warning("waiting for running sync jobs to return before exiting")
    _native.wait_sync_threads()
