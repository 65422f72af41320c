"""What a running job can ask about itself.

A job whose ``run`` takes a third argument, ``run(self, state, ctx)``, is given a
:class:`JobContext`: its id, attempt, name and queue, a logger that stamps them on every
record, and whether its cancel was requested. :func:`current_job_cancelled` reads the
same per-run flag, so ``ctx.cancelled`` and this function always agree.

Example:
    >>> from hauler import current_job_cancelled
    >>> current_job_cancelled()  # outside a job
    False

"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

if TYPE_CHECKING:
    from hauler._native import CancelFlag

__all__ = ["JOB_LOGGER", "JobContext", "JobLoggerAdapter", "current_job_cancelled"]

JOB_LOGGER: Final = "hauler.job"
"""The name of the logger :attr:`JobContext.logger` writes to (``hauler.job.<NAME>``)."""

# The cancel flag of the job running in this thread (sync jobs) or task (async jobs).
_cancel_flag: ContextVar[CancelFlag | None] = ContextVar("hauler_cancel_flag", default=None)


def current_job_cancelled() -> bool:
    """Whether a cancel was requested for the job running in this thread or asyncio task.

    A sync job cannot be interrupted: check this between steps and return (or raise) once
    it is true. An async job is also interrupted (``asyncio.CancelledError`` at its next
    ``await``), and this is true there as well. Either way, once a running job's cancel is
    requested it ends ``cancelled``, whatever ``run`` then returns or raises.

    The flag is set when the worker learns of the cancel: at once for a cancel made
    through a queue handle on the worker's own storage object, otherwise at the job's
    next heartbeat (``HEARTBEAT_INTERVAL``). Outside a job it is always ``False``.

    Example:
        >>> class Export(Job[AppState]):  # doctest: +SKIP
        ...     NAME = "export"
        ...     def run(self, state: AppState) -> None:
        ...         for chunk in state.chunks():
        ...             if current_job_cancelled():
        ...                 return  # the job ends cancelled
        ...             state.write(chunk)

    """
    flag = _cancel_flag.get()
    return flag is not None and flag.is_set()


def _enter(flag: CancelFlag) -> Token[CancelFlag | None]:
    """Make ``flag`` the current job's (in this thread or task) until :func:`_leave`."""
    return _cancel_flag.set(flag)


def _leave(token: Token[CancelFlag | None]) -> None:
    _cancel_flag.reset(token)


class JobLoggerAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger for one run of one job: every record names the job.

    Each record gets the extra attributes ``job_id`` (str), ``job_name`` and
    ``job_attempt``, for formatters and filters (``%(job_id)s``), and its message is
    prefixed with ``[<name> <id> attempt <n>]`` so plain formats show them too. Extra
    fields given to a call are kept, and win over the job's on a clash.
    """

    def __init__(self, logger: logging.Logger, *, job_id: UUID, name: str, attempt: int) -> None:
        super().__init__(logger, {"job_id": str(job_id), "job_name": name, "job_attempt": attempt})
        self._prefix = f"[{name} {job_id} attempt {attempt}] "

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        """Prefix the message and merge the job's fields into ``extra``."""
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return f"{self._prefix}{msg}", kwargs


class JobContext:
    """What a running job knows about itself; given to ``run(self, state, ctx)``.

    Write ``run`` with a third parameter to receive one (sync or async alike); a ``run``
    with two keeps working unchanged. A context belongs to one attempt: do not keep it
    past ``run``.

    Example:
        >>> class Export(Job[AppState]):  # doctest: +SKIP
        ...     NAME = "export"
        ...     def run(self, state: AppState, ctx: JobContext) -> None:
        ...         ctx.logger.info("starting")  # "[export <id> attempt 1] starting"
        ...         for chunk in state.chunks():
        ...             if ctx.cancelled:
        ...                 return  # the job ends cancelled
        ...             state.write(chunk)

    """

    __slots__ = ("_cancel", "attempt", "job_id", "logger", "name", "queue")

    job_id: UUID
    """The job's id (the one ``queue()`` returned)."""
    attempt: int
    """Which attempt this is: 1 for the first run, 2 for the first retry, and so on."""
    name: str
    """The job's ``NAME``."""
    queue: str
    """The queue the job runs on."""
    logger: JobLoggerAdapter
    """A logger (``hauler.job.<NAME>``) that stamps the job's id, name and attempt on
    every record; see :class:`JobLoggerAdapter`."""

    def __init__(
        self, *, job_id: UUID, attempt: int, name: str, queue: str, cancel: CancelFlag | None
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.name = name
        self.queue = queue
        self.logger = JobLoggerAdapter(
            logging.getLogger(f"{JOB_LOGGER}.{name}"), job_id=job_id, name=name, attempt=attempt
        )
        self._cancel = cancel

    @property
    def cancelled(self) -> bool:
        """Whether a cancel of this job was requested (see :func:`current_job_cancelled`)."""
        return self._cancel is not None and self._cancel.is_set()

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id!s}, name={self.name!r}, queue={self.queue!r}, "
            f"attempt={self.attempt})"
        )
