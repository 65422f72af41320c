"""Unique jobs and limits: ``UNIQUE``, ``SINGLETON``, ``CONCURRENCY`` and ``RATE_LIMIT``.

They are class constants of a :class:`~hauler.Job`; this module holds what they mean and
the keys hauler stores for them. Every limit is enforced by the storage, so it holds
across all workers, processes and hosts that share it:

- ``UNIQUE = Unique(...)``: queueing a job while an equal one is waiting or running stores
  nothing and returns the existing job's id (``queue(...).duplicate`` is true).
- ``SINGLETON = True``: at most one job of the class runs at a time (or one per key, with a
  function of the job).
- ``CONCURRENCY = n``: at most ``n`` jobs of the class run at a time.
- ``RATE_LIMIT = "100/m"``: at most 100 jobs of the class start in any minute.

Jobs held back by a limit wait in ``available`` and use up no attempt.

Example:
    >>> from datetime import timedelta
    >>> from hauler import Job, Unique
    >>> class SyncAccount(Job[None]):
    ...     NAME = "sync_account"
    ...     UNIQUE = Unique(by=("args",), for_=timedelta(minutes=5))
    ...     SINGLETON = True
    ...     account_id: int
    ...
    ...     def run(self, state: None) -> None: ...

"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from hauler.errors import ConfigError
from hauler.info import JobStatus

if TYPE_CHECKING:
    from hauler.job import Job

__all__ = ["Unique"]

UNIQUE_REQUIRED_STATES: Final = (
    JobStatus.SCHEDULED,
    JobStatus.AVAILABLE,
    JobStatus.RUNNING,
    JobStatus.RETRYABLE,
)
"""The statuses every unique job keeps its key in, and the default: all that are not final."""

_KEY_FUNCTION = Callable[["Job[Any]"], str]


class Unique:
    """Deduplicate a job class: set ``UNIQUE = Unique(...)`` on it.

    While a job of the class is in one of ``states``, queueing an equal job stores nothing
    and returns the existing job's id, with ``.duplicate`` true. Two jobs are equal when
    their keys are: by default the class's ``NAME`` and its fields (``by=("args",)``); with
    ``by=("name",)`` every job of the class is equal; or a function of the job returns the
    key. The storage enforces it with a unique index, so two processes queueing the same
    job at once store one.

    Args:
        by: ``("args",)`` (default), ``("name",)``, or a function ``job -> str``.
        for_: If given, equal jobs are deduplicated only within the same period of this
            length (periods are counted from the Unix epoch, as River's ``ByPeriod``): a
            job queued in the next period is stored even while the first still waits.
        states: The statuses in which a job keeps equal ones out. They must include every
            status that is not final (scheduled, available, running, retryable: a job
            moves between those on its own, so leaving one out could meet an equal job);
            add ``"completed"``, ``"failed"`` or ``"cancelled"`` to keep equal jobs out
            after it ended too.

    Raises:
        ConfigError: ``by``, ``for_`` or ``states`` is not one of the above.

    A manual :meth:`~hauler.QueueHandle.retry` of a failed or cancelled unique job is
    skipped (returns ``False``) while another job of its key holds it.

    Example:
        >>> from hauler import Job, Unique
        >>> class Report(Job[None]):
        ...     NAME = "report"
        ...     UNIQUE = Unique(
        ...         by=("name",),
        ...         states=("scheduled", "available", "running", "retryable", "completed"),
        ...     )
        ...     def run(self, state: None) -> None: ...

    """

    __slots__ = ("by", "for_", "states")

    by: tuple[str] | _KEY_FUNCTION
    """What makes two jobs equal."""
    for_: timedelta | None
    """The period within which equal jobs are deduplicated, or ``None`` (always)."""
    states: tuple[JobStatus, ...]
    """The statuses in which a job keeps equal ones out, in life-cycle order."""

    def __init__(
        self,
        by: tuple[str] | _KEY_FUNCTION = ("args",),
        *,
        for_: timedelta | None = None,
        states: Iterable[JobStatus | str] = UNIQUE_REQUIRED_STATES,
    ) -> None:
        if callable(by):
            self.by: tuple[str] | _KEY_FUNCTION = by
        elif isinstance(by, tuple | list) and tuple(by) in (("args",), ("name",)):
            self.by = (str(by[0]),)
        else:
            raise ConfigError(
                f'Unique(by=...) must be ("args",), ("name",) or a function job -> str, got {by!r}'
            )
        if for_ is not None and (
            not isinstance(for_, timedelta) or for_ < timedelta(milliseconds=1)
        ):
            raise ConfigError(
                f"Unique(for_=...) must be None or a timedelta of at least 1 ms, got {for_!r}"
            )
        self.for_ = for_
        if isinstance(states, str) or not isinstance(states, Iterable):
            raise ConfigError(f"Unique(states=...) must be a sequence of statuses, got {states!r}")
        chosen: set[JobStatus] = set()
        for s in states:
            try:
                chosen.add(JobStatus(s))
            except ValueError:
                allowed = ", ".join(st.value for st in JobStatus)
                raise ConfigError(
                    f"Unique(states=...): unknown status {s!r}; expected some of: {allowed}"
                ) from None
        missing = [s.value for s in UNIQUE_REQUIRED_STATES if s not in chosen]
        if missing:
            raise ConfigError(
                "Unique(states=...) must include every status that is not final "
                f"(scheduled, available, running, retryable); missing: {', '.join(missing)}"
            )
        self.states = tuple(s for s in JobStatus if s in chosen)

    def __repr__(self) -> str:
        by = getattr(self.by, "__qualname__", None) if callable(self.by) else self.by
        return f"Unique(by={by!r}, for_={self.for_!r}, states={[s.value for s in self.states]})"

    def key(self, name: str, job: Job[Any], *, now: float | None = None) -> str:
        """Return the unique key of ``job`` (of the class named ``name``) queued at ``now``.

        The fields are hashed (SHA-256 of their canonical JSON), so keys stay short
        whatever the job holds.

        Raises:
            ConfigError: the key function did not return a str.

        """
        if callable(self.by):
            value = self.by(job)
            if not isinstance(value, str):
                raise ConfigError(
                    f"{name}: the Unique(by=...) function must return a str, "
                    f"got {type(value).__name__}"
                )
            key = f"{name}:key:{_digest(value)}"
        elif self.by == ("args",):
            args = json.dumps(job._encode(), sort_keys=True, separators=(",", ":"))
            key = f"{name}:args:{_digest(args)}"
        else:
            key = f"{name}:name"
        if self.for_ is not None:
            period_us = self.for_ // timedelta(microseconds=1)
            now_us = round((time.time() if now is None else now) * 1_000_000)
            key = f"{key}:{now_us // period_us}"
        return key


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_RATE: Final = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*")
_UNITS: Final = {
    "s": 1_000,
    "sec": 1_000,
    "second": 1_000,
    "m": 60_000,
    "min": 60_000,
    "minute": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
}


def parse_rate_limit(text: object, *, label: str = "RATE_LIMIT") -> tuple[int, int]:
    """Parse ``"100/m"`` (also ``/s``, ``/h``, ``/d``, or ``"10/5m"``) into (starts, window ms).

    Raises:
        ConfigError: the text is not of that form; the message quotes the bad part.

    Example:
        >>> parse_rate_limit("100/m")
        (100, 60000)

    """
    if not isinstance(text, str):
        raise ConfigError(f'{label} must be a str such as "100/m", got {text!r}')
    m = _RATE.fullmatch(text.lower())
    if m is None:
        head, sep, per = text.partition("/")
        bad = text if not sep else (head if not head.strip().isdigit() else per)
        raise ConfigError(
            f'{label} must look like "100/m" (a count per s, m, h or d), got {text!r}: '
            f"cannot read {bad!r}"
        )
    count, multiple, unit = int(m.group(1)), m.group(2), m.group(3)
    if unit not in _UNITS:
        raise ConfigError(
            f'{label} must look like "100/m" (a count per s, m, h or d), got {text!r}: '
            f"unknown unit {unit!r}"
        )
    if count < 1 or count >= 2**31:
        raise ConfigError(f"{label} must allow from 1 to {2**31 - 1} starts, got {text!r}")
    window = _UNITS[unit] * (int(multiple) if multiple else 1)
    if window < 1:
        raise ConfigError(f"{label} must have a window of at least 1 ms, got {text!r}")
    return count, window
