"""Glue the native worker calls into: decode a job, run it, report the outcome as data.

The Rust pool calls :meth:`JobRunner.run_sync` on its worker threads (holding the GIL only
while Python runs) and :meth:`JobRunner.submit_async` from one submitter thread; async jobs
run on the :class:`EventLoopThread` the pool owns. Exceptions never cross back into Rust:
they become ``(type, message, traceback, permanent)`` tuples.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any
from uuid import UUID

from hauler._hooks import Hooks, call_hook, read_job, recorded_hook
from hauler._signals import block_async_signals
from hauler.context import JobContext, _enter, _leave
from hauler.errors import JobVersionError
from hauler.info import JobStatus
from hauler.job import Job, Snooze

if TYPE_CHECKING:
    from hauler._native import CancelFlag, JobRun, Storage

# None: success; a tuple: failure; an int: snoozed for that many milliseconds.
Outcome = tuple[str, str, str | None, bool] | int | None


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _failure(exc: BaseException, *, permanent: bool) -> Outcome:
    tb = "".join(traceback.format_exception(exc))
    return (_type_name(exc), str(exc), tb, permanent)


def _version_failure(
    name: str, version: int, cls: type[Job[Any]], what: str, exc: Exception
) -> Outcome:
    """Return the permanent failure of a job whose migration from ``version`` went wrong."""
    error = JobVersionError(
        f"job {name!r} was stored with VERSION {version}, older than "
        f"{cls.__name__}.MIN_SUPPORTED_VERSION ({cls._spec().min_supported_version}), and "
        f"{what}: {_type_name(exc)}: {exc}"
    )
    error.__cause__ = exc
    return _failure(error, permanent=True)


class EventLoopThread:
    """An asyncio event loop running on its own daemon thread, for a pool's async jobs."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        block_async_signals()
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop and stop it."""
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop)
            try:
                fut.result(timeout)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


class JobRunner:
    """Runs registered jobs for one worker pool, with the pool's shared state."""

    def __init__(
        self,
        registry: Mapping[str, type[Job[Any]]],
        state: Any,
        *,
        max_payload_bytes: int | None,
        hooks: Hooks | None = None,
        storage: Storage | None = None,
    ) -> None:
        self._registry = dict(registry)
        self._state = state
        self._max_payload_bytes = max_payload_bytes
        self._hooks = hooks or Hooks()
        self._storage = storage
        self.loop: EventLoopThread | None = None

    def _on_start(self, job_id: str) -> None:
        """Call the ``on_start`` hook with the job as stored now (running)."""
        hook = self._hooks.on_start
        if hook is None or self._storage is None:
            return
        info = read_job(self._storage, job_id, "on_start")
        if info is not None:
            call_hook("on_start", hook, info)

    def recorded(self, job_id: str, kind: str) -> None:
        """Call the hook that follows an outcome the storage recorded (on the hooks thread).

        ``kind`` is ``"completed"``, ``"retry"`` or ``"failed"``. A job whose cancel was
        requested ends ``cancelled`` whatever it reported: no hook follows it.
        """
        event, hook = recorded_hook(self._hooks, kind)
        if hook is None or self._storage is None:
            return
        info = read_job(self._storage, job_id, event)
        if info is not None and info.status is not JobStatus.CANCELLED:
            call_hook(event, hook, info)

    def _build(self, name: str, args: dict[str, Any], version: int) -> Job[Any] | Outcome:
        cls = self._registry.get(name)
        if cls is None:
            return (
                "UnknownJobError",
                f"no job class is registered under NAME {name!r}",
                None,
                True,
            )
        spec = cls._spec()
        own = spec.version
        if not 1 <= version <= own:
            # Stored by newer code (or damaged): this class cannot know what its fields mean.
            error = JobVersionError(
                f"job {name!r} was stored with VERSION {version}, but the registered class "
                f"{cls.__name__} has VERSION {own}; a worker runs only jobs stored with its "
                "class's VERSION or older"
            )
            return _failure(error, permanent=True)
        oldest = spec.min_supported_version
        if oldest is not None and version < oldest:
            if not spec.migrates:
                return _failure(
                    JobVersionError(
                        f"job {name!r} was stored with VERSION {version}, older than "
                        f"{cls.__name__}.MIN_SUPPORTED_VERSION ({oldest}), and "
                        f"{cls.__name__} defines no migrate(); it was not run"
                    ),
                    permanent=True,
                )
            return self._migrate(cls, name, args, version)
        try:
            return cls._decode(args)
        except Exception as exc:  # a payload that does not decode will never decode
            return _failure(exc, permanent=True)

    @staticmethod
    def _migrate(
        cls: type[Job[Any]], name: str, args: dict[str, Any], version: int
    ) -> Job[Any] | Outcome:
        """Upgrade a job stored with an old ``version`` through ``cls.migrate``, and build it.

        Any failure is permanent: migrating the same stored fields again gives the same.
        """
        what = f"{cls.__name__}.migrate(old_args, {version})"
        try:
            new_args = cls.migrate(args, version)
            if not isinstance(new_args, dict):
                raise TypeError(f"it must return a dict of fields, got {type(new_args).__name__}")
        except Exception as exc:
            return _version_failure(name, version, cls, f"{what} failed", exc)
        try:
            return cls._decode(new_args)
        except Exception as exc:
            return _version_failure(
                name, version, cls, f"{what} returned fields that do not fit", exc
            )

    def _call(
        self, job: Job[Any], job_id: str, attempt: int, cancel: CancelFlag, run: JobRun
    ) -> Awaitable[Snooze | None] | Snooze | None:
        """Call ``job.run`` with the state, and the context if its ``run`` takes one."""
        spec = type(job)._spec()
        if not spec.takes_ctx:
            return job.run(self._state)
        ctx = JobContext(
            job_id=UUID(job_id),
            attempt=attempt,
            name=spec.name,
            queue=spec.queue,
            cancel=cancel,
            run=run,
            max_payload_bytes=self._max_payload_bytes,
        )
        return job.run(self._state, ctx)

    def run_sync(
        self,
        name: str,
        args: dict[str, Any],
        job_id: str,
        attempt: int,
        version: int,
        cancel: CancelFlag,
        run: JobRun,
    ) -> Outcome:
        """Run a sync job to its end on the calling (worker) thread."""
        job = self._build(name, args, version)
        if not isinstance(job, Job):
            return job
        if self._hooks.on_start is not None:
            self._on_start(job_id)
        token = _enter(cancel)
        try:
            result = self._call(job, job_id, attempt, cancel, run)
        except Snooze as snooze:
            return snooze.delay_ms
        except BaseException as exc:
            return _failure(exc, permanent=False)
        finally:
            _leave(token)
        return result.delay_ms if isinstance(result, Snooze) else None

    async def _run_async(
        self, job: Job[Any], job_id: str, attempt: int, cancel: CancelFlag, run: JobRun
    ) -> Outcome:
        _enter(cancel)  # the task's own context: gone with the task
        if self._hooks.on_start is not None:
            await asyncio.to_thread(self._on_start, job_id)  # off the loop: it reads storage
        try:
            result = self._call(job, job_id, attempt, cancel, run)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            raise
        except Snooze as snooze:
            return snooze.delay_ms
        except BaseException as exc:
            return _failure(exc, permanent=False)
        return result.delay_ms if isinstance(result, Snooze) else None

    def submit_async(
        self,
        name: str,
        args: dict[str, Any],
        job_id: str,
        attempt: int,
        version: int,
        done: Callable[[Outcome], None],
        cancel: CancelFlag,
        run: JobRun,
    ) -> concurrent.futures.Future[Outcome] | None:
        """Schedule an async job on the pool's loop; ``done`` gets its outcome."""
        job = self._build(name, args, version)
        if not isinstance(job, Job):
            done(job)
            return None
        if self.loop is None:  # pragma: no cover - the pool always creates one
            done(("WorkerError", "no event loop for async jobs", None, False))
            return None
        coro: Coroutine[Any, Any, Outcome] = self._run_async(job, job_id, attempt, cancel, run)
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop.loop)

        def _report(f: concurrent.futures.Future[Outcome]) -> None:
            if f.cancelled():
                done(("CancelledError", "the attempt was cancelled", None, False))
            elif (exc := f.exception()) is not None:
                done(_failure(exc, permanent=False))
            else:
                done(f.result())

        fut.add_done_callback(_report)
        return fut
