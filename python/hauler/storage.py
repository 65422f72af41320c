"""Where jobs are stored: :class:`SqliteStorage`, :class:`MemoryStorage`, or a URL.

A storage is a handle to the engine's store. Producers and workers in one process must
share the same object; pass it around rather than opening the same URL twice.

Example:
    >>> from hauler.storage import MemoryStorage, from_url
    >>> with MemoryStorage() as storage:
    ...     storage.url
    'memory://'
    >>> from_url("sqlite:///jobs.db?synchronous=full")  # doctest: +SKIP
    <SqliteStorage sqlite:///jobs.db?synchronous=full>

"""

import abc
import math
import os
from types import TracebackType
from typing import Final, Literal, Self, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from hauler import _logs, _native
from hauler.errors import ConfigError

__all__ = [
    "MemoryStorage",
    "PostgresStorage",
    "SqliteStorage",
    "Storage",
    "from_url",
    "migrate",
    "resolve_storage",
]

ENV_VAR: Final = "HAULER_STORAGE"
"""The environment variable :func:`resolve_storage` reads when given no storage."""

Synchronous = Literal["normal", "full"]

_ACCEPTED: Final = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql://user:password@host:port/database"
)
_POSTGRES_OPTIONS: Final = ("schema", "pool_size", "poll_interval")
_DEFAULT_PG_POLL_INTERVAL: Final = 1.0
_SQLITE_OPTIONS: Final = ("synchronous", "busy_timeout", "poll_interval")
_DEFAULT_BUSY_TIMEOUT: Final = 5.0
_DEFAULT_POLL_INTERVAL: Final = 0.1


class Storage(abc.ABC):
    """Base class of the storages; build a :class:`SqliteStorage` or :class:`MemoryStorage`.

    A storage can be used as a context manager, which closes it on exit. Once closed,
    every operation on it raises :class:`~hauler.errors.StorageClosedError`.

    Example:
        >>> with MemoryStorage() as storage:
        ...     storage.closed
        False
        >>> storage.closed
        True

    """

    def __init__(self, native: _native.Storage) -> None:
        _logs.start()  # the engine's log records reach `logging` from now on
        self._native = native

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The URL that :func:`from_url` turns into an equivalent storage."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._native.closed

    def close(self) -> None:
        """Close the storage; later operations raise ``StorageClosedError``."""
        self._native.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}{' closed' if self.closed else ''}>"


class MemoryStorage(Storage):
    """A storage that keeps jobs in this process's memory; they are lost when it exits.

    Good for tests and for work that needs no durability.

    Example:
        >>> MemoryStorage().url
        'memory://'

    """

    def __init__(self) -> None:
        super().__init__(_native.Storage.memory())

    @property
    def url(self) -> str:
        """``"memory://"``."""
        return "memory://"


def _seconds_to_ms(option: str, value: object, owner: str = "SqliteStorage") -> int:
    """Convert a positive number of seconds to milliseconds (at least 1)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{owner} {option} must be a positive number of seconds, got {value!r}")
    return max(1, round(value * 1000))


class SqliteStorage(Storage):
    """A durable storage in one SQLite database file, created if needed.

    Several processes on one machine can share the file: producers and workers alike.

    Args:
        path: The database file. A relative path is relative to the working directory.
        synchronous: ``"normal"`` (the default: safe against application crashes, fast)
            or ``"full"`` (also safe against power loss, slower writes).
        busy_timeout: How long, in seconds, to wait for a lock held by another process
            before failing with ``StorageError``.
        poll_interval: How often, in seconds, workers look for new jobs queued by other
            processes. Jobs queued through this same object wake them at once, and so
            (on Linux) does any other process's commit to the file, seen by a watch on
            its ``-wal`` file; polling is the fallback (network file systems, other
            systems).

    Raises:
        ConfigError: An option is invalid; the message names it and its value.
        StorageError: The file cannot be opened or created.

    Example:
        >>> storage = SqliteStorage("jobs.db", synchronous="full")  # doctest: +SKIP
        >>> storage.url  # doctest: +SKIP
        'sqlite:///jobs.db?synchronous=full'

    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "hauler.db",
        *,
        synchronous: Synchronous = "normal",
        busy_timeout: float = _DEFAULT_BUSY_TIMEOUT,
        poll_interval: float = _DEFAULT_POLL_INTERVAL,
    ) -> None:
        text = os.fspath(path)
        if not isinstance(text, str) or not text:
            raise ConfigError(f"SqliteStorage path must be a non-empty str, got {path!r}")
        if text == ":memory:":
            raise ConfigError("SqliteStorage needs a file path; for no file use MemoryStorage()")
        if synchronous not in ("normal", "full"):
            raise ConfigError(
                f"SqliteStorage synchronous must be 'normal' or 'full', got {synchronous!r}"
            )
        busy_ms = _seconds_to_ms("busy_timeout", busy_timeout)
        poll_ms = _seconds_to_ms("poll_interval", poll_interval)
        super().__init__(
            _native.Storage.sqlite(
                text,
                synchronous=synchronous,
                busy_timeout_ms=busy_ms,
                poll_interval_ms=poll_ms,
            )
        )
        self._path = text
        self._synchronous: Synchronous = synchronous
        self._busy_timeout = float(busy_timeout)
        self._poll_interval = float(poll_interval)

    @property
    def path(self) -> str:
        """The database file, as given."""
        return self._path

    @property
    def synchronous(self) -> Synchronous:
        """``"normal"`` or ``"full"``."""
        return self._synchronous

    @property
    def busy_timeout(self) -> float:
        """Seconds to wait for another process's lock."""
        return self._busy_timeout

    @property
    def poll_interval(self) -> float:
        """Seconds between looks for jobs queued by other processes."""
        return self._poll_interval

    @property
    def url(self) -> str:
        """``sqlite:///`` and the path, with the options that differ from the defaults."""
        options: list[tuple[str, str]] = []
        if self._synchronous != "normal":
            options.append(("synchronous", self._synchronous))
        if self._busy_timeout != _DEFAULT_BUSY_TIMEOUT:
            options.append(("busy_timeout", repr(self._busy_timeout)))
        if self._poll_interval != _DEFAULT_POLL_INTERVAL:
            options.append(("poll_interval", repr(self._poll_interval)))
        query = f"?{urlencode(options)}" if options else ""
        return f"sqlite:///{quote(self._path)}{query}"


class PostgresStorage(Storage):
    """Jobs in PostgreSQL: many workers on many hosts share one queue.

    hauler keeps its tables in their own schema (``hauler`` by default), created and
    upgraded on first use (safe when many processes start at once), or ahead of time with
    :func:`migrate`. Idle workers are woken by ``LISTEN``/``NOTIFY`` when a job is queued
    anywhere; ``poll_interval`` is only the fallback. Jobs are claimed with
    ``SELECT ... FOR UPDATE SKIP LOCKED``; a worker that dies loses its jobs to the others
    once their leases expire.

    Args:
        dsn: A libpq-style connection string: ``postgresql://user:pw@host:5432/db?...``
            or ``host=... user=... dbname=...``. Its options (``sslmode``,
            ``application_name``, ``connect_timeout``...) pass through. TLS is not built in
            yet: use ``sslmode=disable`` or ``prefer`` (the default).
        schema: The schema for hauler's tables (lowercase letters, digits, ``_``).
        pool_size: The most connections this process opens (default 10).
        poll_interval: Seconds between looks for due jobs when no notification arrives.
        connect_timeout: Seconds one connection attempt may take.
        listen: Wake workers with ``LISTEN``/``NOTIFY`` (turn off behind a pooler in
            transaction mode; workers then poll).
        migrate: Apply pending migrations on connect; when false the schema must already
            be up to date (see :func:`migrate`).

    Raises:
        ConfigError: An option is invalid or the DSN cannot be parsed.
        StorageError: The server cannot be reached, is older than PostgreSQL 13, or holds
            a schema written by a newer hauler.

    Example:
        >>> storage = PostgresStorage("postgresql://app@db/app")  # doctest: +SKIP

    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "hauler",
        pool_size: int = 10,
        poll_interval: float = _DEFAULT_PG_POLL_INTERVAL,
        connect_timeout: float = 10.0,
        listen: bool = True,
        migrate: bool = True,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ConfigError(f"PostgresStorage needs a non-empty DSN str, got {dsn!r}")
        if not isinstance(schema, str):
            raise ConfigError(f"PostgresStorage schema must be a str, got {schema!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError(f"PostgresStorage pool_size must be an int >= 1, got {pool_size!r}")
        native = _native.Storage.postgres(
            dsn,
            schema=schema,
            pool_size=pool_size,
            poll_interval_ms=_seconds_to_ms("poll_interval", poll_interval, "PostgresStorage"),
            connect_timeout_ms=_seconds_to_ms(
                "connect_timeout", connect_timeout, "PostgresStorage"
            ),
            listen=bool(listen),
            migrate=bool(migrate),
        )
        super().__init__(native)
        self._dsn = dsn
        self._schema = schema
        self._pool_size = pool_size
        self._poll_interval = float(poll_interval)

    @property
    def schema(self) -> str:
        """The schema hauler's tables live in."""
        return self._schema

    @property
    def url(self) -> str:
        """The DSN with hauler's options that differ from the defaults added as a query."""
        options: list[tuple[str, str]] = []
        if self._schema != "hauler":
            options.append(("schema", self._schema))
        if self._pool_size != 10:
            options.append(("pool_size", str(self._pool_size)))
        if self._poll_interval != _DEFAULT_PG_POLL_INTERVAL:
            options.append(("poll_interval", repr(self._poll_interval)))
        if not options:
            return self._dsn
        sep = "&" if "?" in self._dsn else "?"
        return f"{self._dsn}{sep}{urlencode(options)}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_redact(self.url)}>"


def _postgres_from_url(url: str) -> PostgresStorage:
    parts = urlsplit(url)
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise ConfigError(f"storage URL {_redact(url)!r} has a malformed query") from None
    ours = {k: v for k, v in pairs if k in _POSTGRES_OPTIONS}
    rest = [(k, v) for k, v in pairs if k not in _POSTGRES_OPTIONS]
    scheme = "postgresql" if parts.scheme.lower().startswith("postgres") else parts.scheme
    dsn = urlunsplit(parts._replace(scheme=scheme, query=urlencode(rest)))
    pool = ours.get("pool_size", "10")
    if not pool.isdigit():
        raise ConfigError(f"storage URL option pool_size must be an int, got {pool!r}")
    poll = ours.get("poll_interval")
    return PostgresStorage(
        dsn,
        schema=ours.get("schema", "hauler"),
        pool_size=int(pool),
        poll_interval=(
            _DEFAULT_PG_POLL_INTERVAL if poll is None else _float_option("poll_interval", poll)
        ),
    )


def migrate(dsn: str, *, schema: str = "hauler", connect_timeout: float = 10.0) -> int:
    """Create or upgrade hauler's PostgreSQL schema, for teams that migrate at deploy time.

    Safe to run from many processes at once (an advisory lock serializes them). Workers
    started with ``PostgresStorage(dsn, migrate=False)`` then only check the version.

    Returns:
        The schema version now in the database.

    Raises:
        ConfigError: A bad DSN or schema name.
        StorageError: The server cannot be reached or refuses.

    Example:
        >>> migrate("postgresql://app@db/app")  # doctest: +SKIP
        1

    """
    if isinstance(dsn, str) and urlsplit(dsn).scheme.lower() == "postgres":
        dsn = "postgresql" + dsn[len("postgres") :]
    return _native.postgres_migrate(
        dsn,
        schema=schema,
        connect_timeout_ms=_seconds_to_ms("connect_timeout", connect_timeout, "migrate"),
    )


def _redact(url: str) -> str:
    """Hide a password in ``url`` before quoting it in a message."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _float_option(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"storage URL option {name} must be a number, got {value!r}") from None


def _sqlite_from_url(url: str) -> SqliteStorage:
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigError(
            f"storage URL {url!r} has a host ({parts.netloc!r}) but SQLite URLs have none: "
            "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if parts.fragment:
        raise ConfigError(f"storage URL {url!r} has a '#' fragment; write '#' in a path as %23")
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path:
        raise ConfigError(
            f"storage URL {url!r} has no database path: "
            "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(f"storage URL {url!r} has a malformed query") from None
    options: dict[str, str] = {}
    for name, value in pairs:
        if name not in _SQLITE_OPTIONS:
            raise ConfigError(
                f"storage URL {url!r} has an unknown option {name!r}; "
                f"known: {', '.join(_SQLITE_OPTIONS)}"
            )
        if name in options:
            raise ConfigError(f"storage URL {url!r} sets {name} twice")
        options[name] = value
    busy = options.get("busy_timeout")
    poll = options.get("poll_interval")
    return SqliteStorage(
        path,
        # SqliteStorage checks the value and names it if it is neither.
        synchronous=cast(Synchronous, options.get("synchronous", "normal")),
        busy_timeout=_DEFAULT_BUSY_TIMEOUT if busy is None else _float_option("busy_timeout", busy),
        poll_interval=(
            _DEFAULT_POLL_INTERVAL if poll is None else _float_option("poll_interval", poll)
        ),
    )


def from_url(url: str) -> Storage:
    """Open the storage a URL names.

    Accepted URLs:

    - ``memory://``: a :class:`MemoryStorage`;
    - ``sqlite:///relative/path.db`` (three slashes) or ``sqlite:////absolute/path.db``
      (four): a :class:`SqliteStorage`, with the options ``synchronous``, ``busy_timeout``
      and ``poll_interval`` (seconds) as a query, for example
      ``sqlite:///jobs.db?synchronous=full&busy_timeout=2&poll_interval=0.05``;
    - ``postgresql://user:password@host:5432/database`` (or ``postgres://``): a
      :class:`PostgresStorage`; ``schema``, ``pool_size`` and ``poll_interval`` in the
      query are hauler's options, every other query option goes to the connection.

    Args:
        url: The storage URL.

    Returns:
        A new storage. Calling ``from_url`` twice opens two handles; share one instead.

    Raises:
        ConfigError: The URL is not understood (the message lists the accepted forms) or
            carries a bad option.
        StorageError: The database cannot be opened or reached.

    Example:
        >>> from_url("memory://")
        <MemoryStorage memory://>

    """
    if not isinstance(url, str):
        raise ConfigError(f"storage URL must be a str, got {url!r}")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        if url.lower() != "memory://":
            raise ConfigError(f"storage URL {url!r}: memory:// takes no path or options")
        return MemoryStorage()
    if scheme == "sqlite":
        return _sqlite_from_url(url)
    if scheme in ("postgres", "postgresql"):
        return _postgres_from_url(url)
    raise ConfigError(f"unsupported storage URL {_redact(url)!r}; accepted: {_ACCEPTED}")


def resolve_storage(storage: Storage | str | None = None) -> Storage:
    """Return the storage to use for ``storage``.

    Args:
        storage: A :class:`Storage`, returned as it is (the same object, so producers
            and workers share it); a URL, opened with :func:`from_url`; or ``None``: the
            URL in the ``HAULER_STORAGE`` environment variable if it is set and not empty,
            else ``SqliteStorage("hauler.db")``.

    Raises:
        ConfigError: The URL is not understood, or ``storage`` is of another type.

    Example:
        >>> s = MemoryStorage()
        >>> resolve_storage(s) is s
        True

    """
    if isinstance(storage, Storage):
        return storage
    if storage is None:
        env = os.environ.get(ENV_VAR)
        return from_url(env) if env else SqliteStorage("hauler.db")
    if isinstance(storage, str):
        return from_url(storage)
    raise ConfigError(f"storage must be a Storage, a URL str or None, got {type(storage).__name__}")
