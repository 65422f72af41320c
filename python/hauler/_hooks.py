"""Lifecycle hooks: check them, and call them so that nothing they do reaches the job.

A hook is a plain function given the :class:`~hauler.JobInfo` of a job. Whatever it raises
is logged on the ``hauler.hooks`` logger with the job's id, and never changes the job's
outcome. See :class:`~hauler.WorkerConfig` for when each hook is called.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from hauler.errors import ConfigError, JobNotFoundError
from hauler.info import JobInfo

if TYPE_CHECKING:
    from hauler import _native

__all__ = ["HOOK_LOGGER", "JobHook"]

JobHook: TypeAlias = Callable[[JobInfo], object]
"""A lifecycle hook: a plain (not ``async``) function given the job's :class:`JobInfo`;
what it returns is ignored."""

HOOK_LOGGER: Final = "hauler.hooks"
"""The logger a failing hook is reported on."""

log = logging.getLogger(HOOK_LOGGER)

# The recorded outcome each hook follows, as the native worker names it.
_RECORDED: Final = {"completed": "on_success", "retry": "on_retry", "failed": "on_failure"}


def check_hook(event: str, hook: object) -> JobHook | None:
    """Return ``hook`` if it can be a lifecycle hook (or ``None``).

    Raises:
        ConfigError: ``hook`` is not callable, or is an ``async def`` function.

    """
    if hook is None:
        return None
    if not callable(hook):
        raise ConfigError(f"{event} must be a function taking a JobInfo, got {hook!r}")
    if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - an object with an async __call__
    ):
        raise ConfigError(
            f"{event} must be a plain function, not async def ({hook!r}): hooks are called "
            "on worker threads; to do async work, hand it to your own event loop"
        )
    return hook


def call_hook(
    event: str, hook: JobHook, info: JobInfo, *, catch: type[BaseException] = BaseException
) -> None:
    """Call ``hook(info)``; log (never raise) whatever of type ``catch`` it raises.

    Worker threads catch everything; a hook run in the caller's thread (``on_enqueue``)
    lets ``KeyboardInterrupt`` and ``SystemExit`` through.
    """
    try:
        result = hook(info)
    except catch:
        log.exception(
            "%s hook failed for job %s (%s)",
            event,
            info.id,
            info.name,
            extra={"job_id": str(info.id), "job_name": info.name, "hook": event},
        )
        return
    if inspect.iscoroutine(result):
        result.close()  # never awaited: close it so Python does not warn about it
        log.error(
            "%s hook for job %s (%s) returned a coroutine, which was not run: hooks must be "
            "plain functions",
            event,
            info.id,
            info.name,
            extra={"job_id": str(info.id), "job_name": info.name, "hook": event},
        )


@dataclass(frozen=True, slots=True)
class Hooks:
    """The lifecycle hooks of one worker pool (see :class:`~hauler.WorkerConfig`)."""

    on_enqueue: JobHook | None = None
    on_start: JobHook | None = None
    on_success: JobHook | None = None
    on_failure: JobHook | None = None
    on_retry: JobHook | None = None

    def recorded_kinds(self) -> list[str]:
        """Return the recorded outcomes some hook follows, as the native worker names them."""
        return [kind for kind, event in _RECORDED.items() if getattr(self, event) is not None]


def read_job(storage: _native.Storage, job_id: str, event: str) -> JobInfo | None:
    """Read a job for its ``event`` hook; ``None`` (logged) if that fails or it is gone."""
    try:
        d = storage.get(job_id)
        if d is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        return JobInfo.from_native(d)
    except Exception as exc:
        log.warning(
            "%s hook not called for job %s: could not read the job: %s",
            event,
            job_id,
            exc,
            extra={"job_id": job_id, "hook": event},
        )
        return None


def read_jobs(storage: _native.Storage, job_ids: Iterable[str], event: str) -> list[JobInfo]:
    """Read jobs for their ``event`` hooks, in order, in batches; log those that fail."""
    ids = list(job_ids)
    found: dict[str, Any] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        flt: _native.FilterDict = {
            "ids": chunk,
            "statuses": [],
            "name": None,
            "queue": None,
            "created_from": None,
            "created_to": None,
            "args_contains": None,
            "group": None,
        }
        try:
            rows = storage.list(flt, None, len(chunk))
        except Exception as exc:
            log.warning(
                "%s hook not called for %d job(s): could not read them: %s",
                event,
                len(chunk),
                exc,
                extra={"hook": event},
            )
            continue
        found.update((d["id"], d) for d in rows)
    infos = []
    for i in ids:
        d = found.get(i)
        if d is not None:
            infos.append(JobInfo.from_native(d))
    return infos


def recorded_hook(hooks: Hooks, kind: str) -> tuple[str, JobHook | None]:
    """Return the name and hook that follow a recorded outcome of ``kind``."""
    event = _RECORDED[kind]
    hook: JobHook | None = getattr(hooks, event)
    return event, hook
