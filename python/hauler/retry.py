"""Retry policies: how many times a failed job runs again, and how long it waits first.

A job class sets ``MAX_RETRIES`` to a :class:`MaxRetries` and ``BACKOFF`` to a
:class:`Backoff`. The engine applies them; :meth:`Backoff.delay` computes the same delays
in Python, for tests and for planning.

Example:
    >>> from hauler.retry import Backoff, MaxRetries
    >>> MaxRetries.count(3)
    MaxRetries.count(3)
    >>> [Backoff.exponential(2, max_delay=10).delay(k) for k in (1, 2, 3, 4)]
    [2.0, 4.0, 8.0, 10.0]

"""

import math
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final, Literal, final

from hauler.errors import ConfigError

__all__ = ["Backoff", "BackoffKind", "MaxRetries"]

BackoffKind = Literal["fixed", "linear", "exponential"]

_U32_MAX: Final = 2**32 - 1
_DEFAULT_MAX_DELAY: Final = 86_400.0


def _check_count(n: object) -> int:
    if type(n) is not int or not 0 <= n <= _U32_MAX:
        raise ConfigError(f"MaxRetries.count(n) needs an int from 0 to {_U32_MAX}, got {n!r}")
    return n


@final
@dataclass(frozen=True, slots=True, repr=False)
class MaxRetries:
    """How many times a failed job is retried after its first attempt.

    Build one with :meth:`count` or :meth:`infinite`; instances are immutable, hashable and
    compare by value.

    Example:
        >>> MaxRetries.count(3).count_value  # at most 4 attempts in all
        3
        >>> MaxRetries.infinite().count_value is None
        True
        >>> MaxRetries.count(2) == MaxRetries.count(2)
        True

    """

    count_value: int | None
    """The number of retries after the first attempt, or ``None`` for infinite."""

    def __post_init__(self) -> None:
        if self.count_value is not None:
            _check_count(self.count_value)

    @classmethod
    def count(cls, n: int) -> "MaxRetries":
        """Retry up to ``n`` times after the first attempt: at most ``n + 1`` attempts.

        Args:
            n: The number of retries, an int from 0 (never retry) to 4294967295.

        Raises:
            ConfigError: ``n`` is negative, too large, or not an int (a bool is refused).

        Example:
            >>> MaxRetries.count(0)  # one attempt, no retry
            MaxRetries.count(0)

        """
        return cls(_check_count(n))

    @classmethod
    def infinite(cls) -> "MaxRetries":
        """Retry forever (until the job succeeds or is cancelled).

        Example:
            >>> MaxRetries.infinite()
            MaxRetries.infinite()

        """
        return cls(None)

    @property
    def is_infinite(self) -> bool:
        """Whether the job is retried forever."""
        return self.count_value is None

    def __repr__(self) -> str:
        n = self.count_value
        return "MaxRetries.infinite()" if n is None else f"MaxRetries.count({n})"


def _finite_number(label: str, value: object) -> float:
    """``value`` as a float, or a ConfigError when it is not a finite non-negative number."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"{label} must be a finite number >= 0, got {value!r}")
    return float(value)


@final
@dataclass(frozen=True, slots=True, repr=False)
class Backoff:
    """How long a failed job waits before retry number ``k`` (``k = 1`` for the first retry).

    The delay in seconds is computed in three steps:

    1. the shape: ``fixed(s)`` gives ``s``; ``linear(s)`` gives ``s * k``;
       ``exponential(base)`` gives ``base ** k``;
    2. the cap: ``min(delay, max_delay)`` (``max_delay`` defaults to one day);
    3. the jitter: ``delay * (1 + jitter * (2 * u - 1))`` with ``u`` drawn uniformly from
       ``[0, 1)``, so the delay spreads over ``[delay * (1 - jitter), delay * (1 + jitter)]``.

    Build one with :meth:`fixed`, :meth:`linear` or :meth:`exponential`; instances are
    immutable, hashable and compare by value.

    Example:
        >>> Backoff.linear(30).delay(3)
        90.0
        >>> Backoff.exponential(2, max_delay=60, jitter=0.5).delay(10, unit=1.0)
        90.0

    """

    kind: BackoffKind
    """``"fixed"``, ``"linear"`` or ``"exponential"``."""
    seconds: float
    """The delay (fixed), the step (linear) or the base (exponential)."""
    _: KW_ONLY
    max_delay: float = _DEFAULT_MAX_DELAY
    """The cap on a delay, in seconds."""
    jitter: float = 0.0
    """The random spread, as a fraction of the delay (0 to 1)."""

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in ("fixed", "linear", "exponential"):
            raise ConfigError(
                f"Backoff kind must be 'fixed', 'linear' or 'exponential', got {kind!r}"
            )
        label = "Backoff.exponential base" if kind == "exponential" else f"Backoff.{kind} seconds"
        seconds = _finite_number(label, self.seconds)
        if kind == "exponential" and seconds < 1:
            raise ConfigError(f"{label} must be >= 1, got {self.seconds!r}")
        max_delay = _finite_number("Backoff max_delay", self.max_delay)
        jitter = self.jitter
        if (
            isinstance(jitter, bool)
            or not isinstance(jitter, int | float)
            or not 0 <= jitter <= 1  # also refuses NaN
        ):
            raise ConfigError(f"Backoff jitter must be a number from 0 to 1, got {jitter!r}")
        object.__setattr__(self, "seconds", seconds)
        object.__setattr__(self, "max_delay", max_delay)
        object.__setattr__(self, "jitter", float(jitter))

    @classmethod
    def fixed(
        cls, seconds: float, *, max_delay: float = _DEFAULT_MAX_DELAY, jitter: float = 0.0
    ) -> "Backoff":
        """Wait the same ``seconds`` before every retry.

        Args:
            seconds: The delay, a finite number >= 0.
            max_delay: The largest delay in seconds.
            jitter: Random spread, from 0 (none) to 1 (anywhere from 0 to twice the delay).

        Raises:
            ConfigError: A number is negative, NaN or infinite, or ``jitter`` is outside
                ``[0, 1]``.

        Example:
            >>> Backoff.fixed(10).delay(5)
            10.0

        """
        return cls("fixed", seconds, max_delay=max_delay, jitter=jitter)

    @classmethod
    def linear(
        cls, seconds: float, *, max_delay: float = _DEFAULT_MAX_DELAY, jitter: float = 0.0
    ) -> "Backoff":
        """Wait ``seconds * k`` before retry ``k``.

        Args:
            seconds: The step, a finite number >= 0.
            max_delay: The largest delay in seconds.
            jitter: Random spread, from 0 to 1.

        Raises:
            ConfigError: A number is negative, NaN or infinite, or ``jitter`` is outside
                ``[0, 1]``.

        Example:
            >>> [Backoff.linear(5).delay(k) for k in (1, 2, 3)]
            [5.0, 10.0, 15.0]

        """
        return cls("linear", seconds, max_delay=max_delay, jitter=jitter)

    @classmethod
    def exponential(
        cls, base: float, *, max_delay: float = _DEFAULT_MAX_DELAY, jitter: float = 0.0
    ) -> "Backoff":
        """Wait ``base ** k`` seconds before retry ``k``.

        Args:
            base: A finite number >= 1.
            max_delay: The largest delay in seconds.
            jitter: Random spread, from 0 to 1.

        Raises:
            ConfigError: ``base`` is below 1, NaN or infinite, ``max_delay`` is negative,
                NaN or infinite, or ``jitter`` is outside ``[0, 1]``.

        Example:
            >>> [Backoff.exponential(3).delay(k) for k in (1, 2, 3)]
            [3.0, 9.0, 27.0]

        """
        return cls("exponential", base, max_delay=max_delay, jitter=jitter)

    def delay(self, retry_number: int, *, unit: float = 0.5) -> float:
        """Return the delay in seconds before retry ``retry_number``, as the engine computes it.

        Args:
            retry_number: 1 for the first retry (after the first attempt failed); values
                below 1 count as 1.
            unit: The jitter draw, in ``[0, 1]`` (clamped): 0 gives the shortest delay, 1
                the longest, and the default 0.5 the delay without jitter.

        Returns:
            ``min(shape(k), max_delay) * (1 + jitter * (2 * unit - 1))``.

        Example:
            >>> b = Backoff.fixed(10, jitter=0.2)
            >>> b.delay(1, unit=0.0), b.delay(1), b.delay(1, unit=1.0)
            (8.0, 10.0, 12.0)

        """
        k = max(retry_number, 1)
        try:
            if self.kind == "fixed":
                raw = self.seconds
            elif self.kind == "linear":
                raw = self.seconds * k
            else:
                raw = self.seconds**k
        except OverflowError:  # a huge k: the cap applies
            raw = math.inf
        capped = min(raw, self.max_delay)
        return capped * (1.0 + self.jitter * (2.0 * min(max(unit, 0.0), 1.0) - 1.0))

    def __repr__(self) -> str:
        options = ""
        if self.max_delay != _DEFAULT_MAX_DELAY:
            options += f", max_delay={self.max_delay!r}"
        if self.jitter:
            options += f", jitter={self.jitter!r}"
        return f"Backoff.{self.kind}({self.seconds!r}{options})"


def _native_retry(max_retries: MaxRetries, backoff: Backoff) -> dict[str, Any]:
    """Convert a retry policy to the dict ``hauler._native`` takes.

    Example:
        >>> _native_retry(MaxRetries.count(3), Backoff.fixed(10))
        {'max_retries': 3, 'backoff': 'fixed', 'seconds': 10.0, 'max_delay': 86400.0, 'jitter': 0.0}

    """
    return {
        "max_retries": max_retries.count_value,
        "backoff": backoff.kind,
        "seconds": backoff.seconds,
        "max_delay": backoff.max_delay,
        "jitter": backoff.jitter,
    }
