"""What a running job can ask about itself.

A job whose ``run`` takes a third argument, ``run(self, state, ctx)``, is given a
:class:`JobContext`: its id, attempt, name and queue, a logger that stamps them on every
record, whether its cancel was requested, and a way to save its progress and its own
state (kept across retries, so a retried job resumes where it stopped).
:func:`current_job_cancelled` reads the same per-run flag, so ``ctx.cancelled`` and this
function always agree.

Example:
    >>> from hauler import current_job_cancelled
    >>> current_job_cancelled()  # outside a job
    False

"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from hauler.errors import ConfigError, LeaseLostError, SerializationError

if TYPE_CHECKING:
    from hauler._native import CancelFlag, JobRun

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
        ...         done = ctx.get_state().get("done", 0)  # 0, or where a failed attempt got
        ...         chunks = state.chunks()
        ...         for i, chunk in enumerate(chunks[done:], start=done):
        ...             if ctx.cancelled:
        ...                 return  # the job ends cancelled
        ...             state.write(chunk)
        ...             ctx.set_state({"done": i + 1})
        ...             ctx.set_progress(100 * (i + 1) // len(chunks), message=f"chunk {i + 1}")

    """

    __slots__ = (
        "_cancel",
        "_max_payload_bytes",
        "_run",
        "_state",
        "attempt",
        "job_id",
        "logger",
        "name",
        "queue",
    )

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
        self,
        *,
        job_id: UUID,
        attempt: int,
        name: str,
        queue: str,
        cancel: CancelFlag | None,
        run: JobRun | None = None,
        max_payload_bytes: int | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.name = name
        self.queue = queue
        self.logger = JobLoggerAdapter(
            logging.getLogger(f"{JOB_LOGGER}.{name}"), job_id=job_id, name=name, attempt=attempt
        )
        self._cancel = cancel
        self._run = run
        self._max_payload_bytes = max_payload_bytes
        self._state = run.claimed_state if run is not None else None

    @property
    def cancelled(self) -> bool:
        """Whether a cancel of this job was requested (see :func:`current_job_cancelled`)."""
        return self._cancel is not None and self._cancel.is_set()

    def set_progress(self, percent: float, message: str | None = None) -> None:
        """Save how far the job got, at once: ``JobInfo.progress`` and ``progress_message``.

        A context built by hand (outside a worker, as in a unit test) checks the values
        and saves nothing.

        Args:
            percent: From 0 to 100 (a float is rounded down).
            message: Said with it (``None``: none, replacing an earlier message).

        Raises:
            ConfigError: ``percent`` is not a number from 0 to 100, or ``message`` is not a
                str or ``None`` (or holds a NUL or a lone surrogate, which not every storage
                can keep).
            LeaseLostError: The job no longer runs under this attempt's lease (see
                :class:`~hauler.errors.LeaseLostError`); nothing was saved.

        Example:
            >>> ctx.set_progress(40, message="page 4 of 10")  # doctest: +SKIP

        """
        if (
            isinstance(percent, bool)
            or not isinstance(percent, (int, float))
            or math.isnan(percent)
            or not 0 <= percent <= 100
        ):
            raise ConfigError(f"progress must be a number from 0 to 100, got {percent!r}")
        if message is not None and not isinstance(message, str):
            raise ConfigError(f"progress message must be a str or None, got {message!r}")
        if message is not None and ("\x00" in message or not message.isascii()):
            try:
                message.encode()
            except UnicodeEncodeError:
                raise ConfigError("progress message holds a lone surrogate") from None
            if "\x00" in message:
                raise ConfigError("progress message holds a NUL character")
        if self._run is not None and not self._run.set_progress(int(percent), message):
            raise self._lease_lost("progress")

    def get_state(self) -> dict[str, Any]:
        """Return the state last saved with :meth:`set_state`, by this or an earlier attempt.

        ``{}`` if none was saved. Each call returns a fresh copy.

        Example:
            >>> start = ctx.get_state().get("page", 0)  # doctest: +SKIP

        """
        if self._state is None:
            return {}
        state: dict[str, Any] = json.loads(self._state)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Save the job's own state at once; it replaces what was saved before.

        The state is kept across retries (and reclaims after a worker died): a later
        attempt's :meth:`get_state` returns it, so it can resume where this one stopped.
        It is shown as ``JobInfo.state`` and kept after the job ends. A context built by
        hand (outside a worker) keeps it in memory only.

        Args:
            state: A dict of JSON values (str keys; str, int, float, bool, None, lists and
                dicts of those), at most the queue handle's ``max_payload_bytes`` as JSON.

        Raises:
            SerializationError: ``state`` is not a dict, holds a value JSON cannot carry
                (a set, a NaN, ...), or is too large.
            LeaseLostError: The job no longer runs under this attempt's lease; nothing was
                saved.

        Example:
            >>> ctx.set_state({"page": 4})  # doctest: +SKIP

        """
        if not isinstance(state, dict):
            raise SerializationError(f"job state must be a dict, got {type(state).__name__}")
        if not all(isinstance(k, str) for k in state):
            raise SerializationError(f"job state of {self.name!r} must have str keys")
        try:
            text = json.dumps(state, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"job state of {self.name!r} is not JSON: {exc}") from None
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            raise SerializationError(
                f"job state of {self.name!r} holds a lone surrogate, which is not JSON text"
            ) from None
        if self._max_payload_bytes is not None and size > self._max_payload_bytes:
            raise SerializationError(
                f"job state of {self.name!r} takes {size} bytes as JSON, more than "
                f"max_payload_bytes ({self._max_payload_bytes})"
            )
        if self._run is not None and not self._run.set_state(text):
            raise self._lease_lost("state")
        self._state = text

    def _lease_lost(self, what: str) -> LeaseLostError:
        return LeaseLostError(
            f"job {self.name!r} ({self.job_id}) attempt {self.attempt} lost its lease; "
            f"its {what} was not saved"
        )

    def __repr__(self) -> str:
        return (
            f"JobContext(job_id={self.job_id!s}, name={self.name!r}, queue={self.queue!r}, "
            f"attempt={self.attempt})"
        )
