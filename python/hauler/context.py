"""What a running job can ask about itself.

For now: whether its cancel was requested (:func:`current_job_cancelled`). The job
context of a later release (``run(self, state, ctx)``) reads the same per-run flag, so
``ctx.cancelled`` and this function always agree.

Example:
    >>> from hauler import current_job_cancelled
    >>> current_job_cancelled()  # outside a job
    False

"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hauler._native import CancelFlag

__all__ = ["current_job_cancelled"]

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
