"""The :class:`Job` base class: a job is a typed dataclass with a ``run`` method.

Example:
    >>> from hauler.job import Job
    >>> class SendEmail(Job[None]):
    ...     NAME = "send_email"
    ...     to: str
    ...     subject: str = "hello"
    ...
    ...     def run(self, state: None) -> None:
    ...         print(f"mail to {self.to}: {self.subject}")
    >>> SendEmail("ada@example.com")
    SendEmail(to='ada@example.com', subject='hello')

"""

import dataclasses
import inspect
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import (
    Any,
    ClassVar,
    Final,
    Generic,
    Self,
    TypeVar,
    cast,
    dataclass_transform,
    get_origin,
)

from hauler import _native
from hauler._codec import DataclassCodec, codec_for
from hauler.errors import ConfigError
from hauler.limits import Unique, _digest, parse_rate_limit
from hauler.retry import Backoff, MaxRetries, _native_retry

__all__ = ["DEFAULT_QUEUE", "MAX_SNOOZE", "Job", "JobSpec", "Snooze"]

DEFAULT_QUEUE: Final = "default"
"""The queue a job runs on unless its class sets ``QUEUE``."""

StateT = TypeVar("StateT")

MAX_SNOOZE: Final = timedelta(days=365)
"""The longest a job may snooze at once."""


class Snooze(Exception):
    """A job's request to run again later without counting an attempt; see :meth:`Job.snooze`.

    Raise it or return it from ``run``. The job goes back to ``scheduled`` until ``delay``
    has passed; its history gets a ``snoozed`` entry and its attempt count is unchanged,
    so a job may snooze any number of times without using up its retries.

    Attributes:
        delay: How long to wait before the next run.

    """

    delay: timedelta

    def __init__(self, delay: timedelta) -> None:
        if not isinstance(delay, timedelta):
            raise ConfigError(f"snooze delay must be a timedelta, got {type(delay).__name__}")
        if not timedelta(0) <= delay <= MAX_SNOOZE:
            raise ConfigError(f"snooze delay must be from 0 to {MAX_SNOOZE.days} days, got {delay}")
        super().__init__(f"snoozed for {delay}")
        self.delay = delay

    @property
    def delay_ms(self) -> int:
        """The delay in whole milliseconds, rounded up."""
        return -(-self.delay // timedelta(milliseconds=1))


_I32: Final = 2**31
_U32_MAX: Final = 2**32 - 1
# A class attribute named like a constant is configuration, never a field.
_CONSTANT: Final = re.compile(r"[A-Z][A-Z0-9_]*")
_CLASSVAR_TEXT: Final = re.compile(r"(typing\.)?ClassVar\b")


@dataclasses.dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything the engine needs to know about a job class, validated.

    Built by :meth:`Job._spec` on first use and cached on the class.
    """

    cls: "type[Job[Any]]"
    """The job class."""
    name: str
    """``NAME``: the job's unique name, stored with each job."""
    queue: str
    """``QUEUE``."""
    priority: int
    """``PRIORITY``: higher runs first within a queue."""
    retry: dict[str, Any]
    """``MAX_RETRIES`` and ``BACKOFF`` in the shape ``hauler._native`` takes."""
    timeout_ms: int | None
    """``TIMEOUT`` in milliseconds, or ``None`` for no limit."""
    heartbeat_ms: int
    """``HEARTBEAT_INTERVAL`` in milliseconds."""
    version: int
    """``VERSION``."""
    min_supported_version: int | None
    """``MIN_SUPPORTED_VERSION``: stored jobs of an older version are migrated or failed."""
    migrates: bool
    """Whether the class defines :meth:`Job.migrate`."""
    is_async: bool
    """Whether ``run`` is a coroutine function (``async def``)."""
    takes_ctx: bool
    """Whether ``run`` takes a third argument, the :class:`~hauler.JobContext`."""
    codec: "DataclassCodec[Job[Any]]"
    """Encodes and decodes the fields."""
    unique: Unique | None = None
    """``UNIQUE``: how equal jobs are deduplicated, or ``None``."""
    concurrency: "tuple[Callable[[Job[Any]], str] | None, int] | None" = None
    """``SINGLETON``/``CONCURRENCY``: the per-key function (``None``: one key, the name) and
    the most jobs of a key running at once; ``None`` for no limit."""
    rate: tuple[int, int] | None = None
    """``RATE_LIMIT``: the most starts per window and the window in ms, or ``None``."""
    native: "_native._JobClassTuple" = dataclasses.field(init=False, repr=False, compare=False)
    """What ``Storage.enqueue`` reads of the class: its constants, the field names, the
    encoder (for fields that are not plain values) and :meth:`limits` (``None`` when the
    class sets none)."""

    def __post_init__(self) -> None:
        has_limits = not (self.unique is None and self.concurrency is None and self.rate is None)
        native: _native._JobClassTuple = (
            self.name,
            self.queue,
            self.priority,
            self.retry,
            self.timeout_ms,
            self.heartbeat_ms,
            self.version,
            self.codec.field_names,
            self.codec.encode,
            self.limits if has_limits else None,
        )
        object.__setattr__(self, "native", native)

    def limits(self, job: "Job[Any]") -> dict[str, Any] | None:
        """Return the limits to store with ``job`` (``None`` when the class sets none)."""
        if self.unique is None and self.concurrency is None and self.rate is None:
            return None
        out: dict[str, Any] = {}
        if self.unique is not None:
            out["unique_key"] = self.unique.key(self.name, job)
            out["unique_states"] = [s.value for s in self.unique.states]
        if self.concurrency is not None:
            per_key, limit = self.concurrency
            key = self.name
            if per_key is not None:
                value = per_key(job)
                if not isinstance(value, str):
                    raise ConfigError(
                        f"{self.cls.__name__}.SINGLETON function must return a str, "
                        f"got {type(value).__name__}"
                    )
                # Long keys are hashed: they are indexed, and index entries have a size limit.
                key = f"{self.name}:{value if len(value) <= 100 else _digest(value)}"
            out["concurrency_key"] = key
            out["concurrency_limit"] = limit
        if self.rate is not None:
            out["rate_key"] = self.name
            out["rate_limit"], out["rate_window_ms"] = self.rate
        return out


def _is_int(value: object) -> bool:
    return type(value) is int


_UTF8: Final = (
    "valid Unicode text (no lone surrogates and no NUL character: it is stored as UTF-8 "
    "text, which PostgreSQL cannot hold with NUL)"
)


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be stored as a name on every storage.

    It must encode as UTF-8 (so no lone surrogates) and hold no NUL, which PostgreSQL
    text cannot store; a name is refused alike on every storage, so a job class written
    for one storage runs unchanged on the others.
    """
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_constant(attr: str, annotation: object) -> bool:
    """Whether ``attr`` is named like a constant but not yet annotated as a ClassVar."""
    if _CONSTANT.fullmatch(attr) is None:
        return False
    if isinstance(annotation, str):
        return _CLASSVAR_TEXT.match(annotation) is None
    return annotation is not ClassVar and get_origin(annotation) is not ClassVar


@dataclass_transform(field_specifiers=(dataclasses.field, dataclasses.Field))
class Job(Generic[StateT]):
    """Base class of every job: subclass it, set ``NAME``, declare fields, write ``run``.

    Each subclass becomes a dataclass over its annotated attributes (its fields): it can
    be built with positional or keyword arguments, fields may have defaults, and instances
    compare by value and have a readable ``repr``. Attributes named in UPPER_CASE are
    class constants, never fields (leave them unannotated, as type checkers would take an
    annotated one for a field). The fields are stored as JSON, so they must hold values
    hauler can encode (see :mod:`hauler._codec`): ``str``, ``int``, ``float``, ``bool``,
    ``None``, lists, tuples, dicts with ``str`` keys, aware ``datetime``, ``date``,
    ``UUID``, ``Decimal``, ``Enum`` and dataclasses of those.

    ``StateT`` is the type of the application state that the worker passes to ``run``
    (a database pool, an HTTP client...).

    The class constants are checked the first time the class is used (queued, or given to
    a worker), not when it is defined, so an intermediate base class without ``NAME`` is
    fine.

    Example:
        >>> from dataclasses import dataclass
        >>> from hauler.retry import Backoff, MaxRetries
        >>> @dataclass
        ... class AppState:
        ...     sent: list[str]
        >>> class SendEmail(Job[AppState]):
        ...     NAME = "send_email"
        ...     MAX_RETRIES = MaxRetries.count(3)
        ...     BACKOFF = Backoff.exponential(2, max_delay=600)
        ...     TIMEOUT = 30.0
        ...     to: str
        ...
        ...     def run(self, state: AppState) -> None:
        ...         state.sent.append(self.to)
        >>> state = AppState(sent=[])
        >>> SendEmail(to="ada@example.com").run(state)
        >>> state.sent
        ['ada@example.com']

    """

    NAME: ClassVar[str]
    """The job's unique name (required). It is stored with each job and tells a worker
    which class runs it, so keep it stable when renaming or moving the class."""
    QUEUE: ClassVar[str] = DEFAULT_QUEUE
    """The queue the job runs on."""
    MAX_RETRIES: ClassVar[MaxRetries] = MaxRetries.count(5)
    """How many times a failed job is retried after its first attempt."""
    BACKOFF: ClassVar[Backoff] = Backoff.exponential(2)
    """How long to wait before each retry."""
    TIMEOUT: ClassVar[float | None] = None
    """The time limit of one attempt in seconds, or ``None`` for no limit."""
    PRIORITY: ClassVar[int] = 0
    """Higher runs first within a queue."""
    HEARTBEAT_INTERVAL: ClassVar[int] = 5000
    """How often, in milliseconds, a running job tells the storage it is alive. A job whose
    worker stops heartbeating for three intervals is taken back and retried."""
    VERSION: ClassVar[int] = 1
    """The version of the job's fields, stored with each job; bump it when they change.

    A worker runs a stored job only if its version is at most the registered class's
    ``VERSION`` (a job stored by newer code fails at once, never retried) and, when
    ``MIN_SUPPORTED_VERSION`` is set, at least that (else see :meth:`migrate`)."""
    MIN_SUPPORTED_VERSION: ClassVar[int | None] = None
    """The oldest stored ``VERSION`` the class still runs as is (``None``: every one up to
    ``VERSION``). A stored job of an older version is passed to :meth:`migrate` if the
    class defines it, else it is not run: it ends ``failed`` at once (no retries) with a
    :class:`~hauler.errors.JobVersionError` naming the job, its stored version and this
    minimum. An int from 1 to ``VERSION``."""
    UNIQUE: ClassVar[Unique | None] = None
    """Deduplicate equal jobs while one waits or runs (see :class:`~hauler.Unique`)."""
    SINGLETON: ClassVar["bool | Callable[[Any], str]"] = False
    """``True``: at most one job of the class runs at a time, across every worker and host.
    A function ``job -> str``: at most one per key it returns (at most ``CONCURRENCY``
    per key, if that is set too). Jobs that must wait stay ``available``, no attempt used."""
    CONCURRENCY: ClassVar[int | None] = None
    """At most this many jobs of the class run at a time, across every worker and host."""
    RATE_LIMIT: ClassVar[str | None] = None
    """At most this many jobs of the class start per window, e.g. ``"100/m"`` (``/s``,
    ``/m``, ``/h``, ``/d``), across every worker and host: a sliding window over the
    recorded start times. Jobs over the limit wait in ``available``, no attempt used."""

    _hauler_spec: ClassVar[JobSpec | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = inspect.get_annotations(cls)
        if any(_is_constant(attr, annotation) for attr, annotation in own.items()):
            cls.__annotations__ = {
                attr: ClassVar[annotation] if _is_constant(attr, annotation) else annotation
                for attr, annotation in own.items()
            }
        cls._hauler_spec = None  # each class computes its own spec
        dataclasses.dataclass(cls)

    def run(
        self, state: StateT, *args: Any, **kwargs: Any
    ) -> Awaitable[Snooze | None] | Snooze | None:
        """Do the job's work; write it as ``def run`` or ``async def run``.

        Write it as ``run(self, state)``, or as ``run(self, state, ctx)`` to be given a
        :class:`~hauler.JobContext` as well (its id, attempt, a logger, ``cancelled``).
        Raising or returning :meth:`snooze` runs it again later. Raising an exception fails
        the attempt; the job is retried per ``MAX_RETRIES`` and
        ``BACKOFF``.

        Args:
            state: The application state the worker was given.
            *args: Nothing, or the ``ctx`` of a ``run(self, state, ctx)``.
            **kwargs: Never given; present so either signature type-checks as an override.

        Raises:
            NotImplementedError: The subclass did not define ``run``.

        """
        raise NotImplementedError(f"{type(self).__name__} must define run(self, state)")

    @classmethod
    def migrate(cls, old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
        """Upgrade the stored fields of a job older than ``MIN_SUPPORTED_VERSION``.

        Not defined by default. Define it as a classmethod on a class that sets
        ``MIN_SUPPORTED_VERSION``: a worker that claims a job stored with an older
        ``VERSION`` calls it with the job's stored fields (as JSON values, the way
        :attr:`~hauler.JobInfo.args` shows them) and runs the job with the fields it
        returns, decoded like any stored job. The stored job is not rewritten: it keeps
        its old fields and version, and each attempt migrates it again, so keep
        ``migrate`` a pure function of its arguments. If it raises (or returns fields
        that do not fit the class), the job ends ``failed`` at once, not retried, with a
        :class:`~hauler.errors.JobVersionError` that gives the reason.

        Args:
            old_args: The fields as stored by the old version.
            old_version: The ``VERSION`` the job was stored with (below
                ``MIN_SUPPORTED_VERSION``).

        Returns:
            The fields in the shape of the current ``VERSION``, as JSON values.

        Example:
            >>> class SendEmail(Job[None]):  # doctest: +SKIP
            ...     NAME = "send_email"
            ...     VERSION = 3
            ...     MIN_SUPPORTED_VERSION = 2
            ...     to: list[str]  # VERSION 1 stored a single address
            ...
            ...     @classmethod
            ...     def migrate(cls, old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
            ...         return {"to": [old_args["to"]]}

        """
        raise NotImplementedError(f"{cls.__name__} defines no migrate()")

    def snooze(self, delay: timedelta) -> Snooze:
        """Ask to run again after ``delay`` without counting an attempt: raise or return it.

        The job goes back to ``scheduled`` until ``delay`` has passed, then runs again with
        the same attempt number; its history records a ``snoozed`` entry. Use it to wait for
        something outside the job (a rate limit, a file not there yet) without burning
        retries. A cancel requested while the job ran still wins: it ends ``cancelled``.

        Args:
            delay: How long to wait, from 0 to :data:`MAX_SNOOZE` (365 days).

        Returns:
            The :class:`Snooze` to raise (or return) from ``run``.

        Raises:
            ConfigError: ``delay`` is not a ``timedelta`` in that range.

        Example:
            >>> class Poll(Job[None]):  # doctest: +SKIP
            ...     NAME = "poll"
            ...     def run(self, state: None) -> None:
            ...         if not report_ready():
            ...             raise self.snooze(timedelta(minutes=5))

        """
        return Snooze(delay)

    @classmethod
    def _spec(cls) -> JobSpec:
        """Return the class's validated :class:`JobSpec`, computed once and cached.

        Raises:
            ConfigError: A class constant, ``run`` or a field type is invalid; the message
                names the class and every bad attribute.

        """
        spec = cls._hauler_spec
        if spec is None:
            spec = cls._hauler_spec = _build_spec(cls)
        return spec

    def _encode(self) -> dict[str, Any]:
        """Encode the fields to a JSON-compatible dict.

        Raises:
            SerializationError: A field holds a value that cannot be stored.

        """
        return type(self)._spec().codec.encode(self)

    @classmethod
    def _decode(cls, args: Mapping[str, Any]) -> Self:
        """Rebuild a job from the dict :meth:`_encode` made.

        Raises:
            SerializationError: A field is missing or unknown, or a value does not fit.

        """
        return cast(Self, cls._spec().codec.decode(args))


def _build_spec(cls: type[Job[Any]]) -> JobSpec:
    """Validate ``cls``'s constants, ``run`` and field types; report every problem at once."""
    label = cls.__name__
    problems: list[str] = []

    def problem(attr: str, expected: str) -> None:
        problems.append(f"{label}.{attr} must be {expected}, got {getattr(cls, attr, None)!r}")

    name = cls.__dict__.get("NAME")
    if name is None:
        inherited = getattr(cls, "NAME", None)
        problems.append(
            f"{label}.NAME is missing: set NAME = '...' to a unique job name"
            if inherited is None
            else f"{label}.NAME is missing: every job class needs its own NAME "
            f"(it would inherit {inherited!r})"
        )
    elif not isinstance(name, str) or not name:
        problem("NAME", "a non-empty str")
        name = None
    elif not _is_utf8(name):
        problem("NAME", _UTF8)
        name = None
    queue = cls.QUEUE
    if not isinstance(queue, str) or not queue:
        problem("QUEUE", "a non-empty str")
    elif not _is_utf8(queue):
        problem("QUEUE", _UTF8)
    if not isinstance(cls.MAX_RETRIES, MaxRetries):
        problem("MAX_RETRIES", "a MaxRetries, such as MaxRetries.count(3)")
    if not isinstance(cls.BACKOFF, Backoff):
        problem("BACKOFF", "a Backoff, such as Backoff.exponential(2)")
    timeout = cls.TIMEOUT
    timeout_ms = None
    if timeout is not None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            problem("TIMEOUT", "None or a positive number of seconds")
        else:
            timeout_ms = max(1, round(timeout * 1000))
    if not _is_int(cls.PRIORITY) or not -_I32 <= cls.PRIORITY < _I32:
        problem("PRIORITY", f"an int from {-_I32} to {_I32 - 1}")
    if not _is_int(cls.HEARTBEAT_INTERVAL) or cls.HEARTBEAT_INTERVAL <= 0:
        problem("HEARTBEAT_INTERVAL", "a positive int (milliseconds)")
    version_ok = _is_int(cls.VERSION) and 1 <= cls.VERSION <= _U32_MAX
    if not version_ok:
        problem("VERSION", f"an int from 1 to {_U32_MAX}")
    min_version = cls.MIN_SUPPORTED_VERSION
    if min_version is not None and (
        not _is_int(min_version) or min_version < 1 or (version_ok and min_version > cls.VERSION)
    ):
        problem(
            "MIN_SUPPORTED_VERSION",
            f"None or an int from 1 to VERSION ({cls.VERSION!r})",
        )
    migrates = inspect.getattr_static(cls, "migrate") is not inspect.getattr_static(Job, "migrate")
    if migrates:
        if not isinstance(inspect.getattr_static(cls, "migrate"), classmethod):
            problems.append(
                f"{label}.migrate must be a classmethod: "
                "@classmethod def migrate(cls, old_args, old_version)"
            )
        elif min_version is None:
            problems.append(
                f"{label}.migrate is never called without MIN_SUPPORTED_VERSION: set it to "
                "the oldest VERSION the class runs as is"
            )
    run = getattr(cls, "run", None)
    takes_ctx = False
    if run is Job.run or not callable(run):
        problems.append(f"{label} must define run(self, state)")
    else:
        arity = _run_arity(run)
        if arity is None:
            problems.append(
                f"{label}.run must take (self, state) or (self, state, ctx), "
                f"got {label}.run{_signature(run)}"
            )
        takes_ctx = arity == 2
    codec = None
    try:
        codec = codec_for(cls)
    except ConfigError as e:
        problems.append(str(e))
    unique = cls.UNIQUE
    if unique is not None and not isinstance(unique, Unique):
        problem("UNIQUE", "None or a Unique(...)")
    concurrency = _concurrency(cls, problem)
    rate = None
    if cls.RATE_LIMIT is not None:
        try:
            rate = parse_rate_limit(cls.RATE_LIMIT, label=f"{label}.RATE_LIMIT")
        except ConfigError as e:
            problems.append(str(e))
    if problems or name is None or codec is None:
        raise ConfigError("; ".join(problems))
    return JobSpec(
        cls=cls,
        name=name,
        queue=queue,
        priority=cls.PRIORITY,
        retry=_native_retry(cls.MAX_RETRIES, cls.BACKOFF),
        timeout_ms=timeout_ms,
        heartbeat_ms=cls.HEARTBEAT_INTERVAL,
        version=cls.VERSION,
        min_supported_version=min_version,
        migrates=migrates,
        is_async=inspect.iscoroutinefunction(run),
        takes_ctx=takes_ctx,
        codec=codec,
        unique=unique,
        concurrency=concurrency,
        rate=rate,
    )


def _concurrency(
    cls: type[Job[Any]], problem: Callable[[str, str], None]
) -> tuple[Callable[[Job[Any]], str] | None, int] | None:
    """``SINGLETON`` and ``CONCURRENCY`` as (per-key function or None, limit), or None."""
    singleton, limit = cls.SINGLETON, cls.CONCURRENCY
    if limit is not None and (not _is_int(limit) or not 1 <= limit < _I32):
        problem("CONCURRENCY", f"None or an int from 1 to {_I32 - 1}")
        return None
    if singleton is False:
        return None if limit is None else (None, limit)
    if singleton is True:
        if limit is not None and limit != 1:
            problem(
                "SINGLETON",
                f"False when CONCURRENCY is {limit} (SINGLETON = True means one at a time; "
                "use a function of the job for one per key)",
            )
            return None
        return (None, 1)
    if callable(singleton):
        return (singleton, 1 if limit is None else limit)
    problem("SINGLETON", "True, False or a function job -> str")
    return None


def _signature(fn: Any) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def _run_arity(run: Any) -> int | None:
    """How many arguments after ``self`` the worker passes ``run``: 1, 2 or ``None`` (bad).

    Two (``state`` and ``ctx``) when ``run`` can take two positionally (a third parameter,
    with or without a default, or ``*args``), else one; ``None`` when it cannot be called
    with ``(state)`` or ``(state, ctx)``, e.g. a required keyword-only parameter.
    """
    try:
        params = list(inspect.signature(run).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):
        return 1  # no signature to read (a C callable): call it the classic way
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    if any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params):
        return None
    if len(required) > 2:
        return None
    if len(positional) >= 2 or varargs:
        return 2
    if len(positional) == 1:
        return 1
    return None
