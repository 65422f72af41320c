"""Type stubs for ``hauler._native``, the Rust engine (private: use the ``hauler`` package).

Conventions at this boundary: timestamps are integers of microseconds since the Unix
epoch (UTC); job ids are hyphenated UUID strings; job arguments are JSON-compatible
Python values (dict/list/str/int/float/bool/None) which Rust serializes with serde_json.
Errors are raised as the classes in ``hauler.errors``.
"""

import builtins
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypedDict, TypeVar, final, type_check_only

__all__ = [
    "CancelFlag",
    "JobRun",
    "Storage",
    "Worker",
    "backoff_delay",
    "check_schedule",
    "now_us",
    "postgres_migrate",
    "reseed_after_fork",
    "take_log_records",
    "validate_retry",
    "wait_sync_threads",
]

_IdT = TypeVar("_IdT", bound=uuid.UUID)

# The dict shapes and tuple aliases below exist only for type checking: the runtime passes
# plain dicts and tuples. The aliases are private (stubtest skips private names that do not
# exist at runtime); the TypedDicts are marked ``@type_check_only``.

@type_check_only
class ErrorDict(TypedDict):
    """An error carried as data."""

    kind: str
    message: str
    traceback: str | None

@type_check_only
class AttemptDict(TypedDict):
    """One finished attempt."""

    attempt: int
    worker_id: str
    started_at: int
    finished_at: int
    outcome: str
    error: ErrorDict | None

@type_check_only
class JobDict(TypedDict):
    """A stored job as the engine returns it."""

    id: str
    name: str
    queue: str
    args: dict[str, Any] | str  # str: the raw stored text, when not a JSON object
    status: str
    attempt: int
    max_retries: int | None
    priority: int
    timeout_ms: int | None
    heartbeat_ms: int
    version: int
    created_at: int
    run_at: int
    started_at: int | None
    finished_at: int | None
    worker_id: str | None
    lease_expires_at: int | None
    cancel_requested_at: int | None
    last_error: ErrorDict | None
    history: list[AttemptDict]
    progress: int | None
    progress_message: str | None
    state: dict[str, Any] | str | None  # str: the raw stored text, when not a JSON object
    unique_key: str | None
    group_id: str | None

@type_check_only
class GroupDict(TypedDict):
    """A stored job group with its members' counts."""

    id: str
    name: str
    concurrency: int | None
    on_complete_name: str | None  # the NAME of the on_complete job, if any
    on_complete_job_id: str | None  # its id, once stored
    created_at: int
    finished_at: int | None
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    status: str  # in_progress, done, done_with_errors or cancelled

@type_check_only
class FilterDict(TypedDict):
    """Which jobs a listing, count or admin operation applies to.

    Every key must be given; ``None`` or ``[]`` means not filtered on, except ``ids=[]``,
    which matches nothing.
    """

    ids: list[str] | None
    statuses: list[str]
    name: str | None
    queue: str | None
    created_from: int | None  # created_at >= this
    created_to: int | None  # created_at < this
    args_contains: str | None  # a case-sensitive substring of the stored JSON text
    group: str | None  # members of this group only

@type_check_only
class ScheduleSpecDict(TypedDict, total=False):
    """When a schedule entry ticks: ``cron`` (with ``timezone``) or ``every_ms``."""

    cron: str
    timezone: str
    every_ms: int

@type_check_only
class ScheduleDict(TypedDict):
    """A stored schedule entry as the engine returns it (times in µs since the epoch)."""

    name: str
    cron: str | None
    timezone: str | None
    every_ms: int | None
    catch_up: str
    job_name: str
    queue: str
    args: str  # the job's fields as stored JSON text
    next_run_at: int
    last_enqueued_at: int | None
    created_at: int
    updated_at: int

# A job to store: (name, queue, args, priority, retry, timeout_ms, heartbeat_ms,
# run_at_us or None for now, version). ``retry`` is
# {"max_retries": int | None, "backoff": kind, "seconds": float, "max_delay": float,
#  "jitter": float} where kind is "fixed", "linear" or "exponential" ("seconds" is the
# base for exponential).
_NewJobTuple = tuple[
    str,
    str,
    dict[str, Any],
    int,
    dict[str, Any],
    int | None,
    int,
    int | None,
    int,
    dict[str, Any] | None,
]
# The last item: None, or the job's limits {"unique_key": str, "unique_states": [status],
# "concurrency_key": str, "concurrency_limit": int, "rate_key": str, "rate_limit": int,
# "rate_window_ms": int}, each key optional.

# What ``Storage.enqueue`` reads of a job class: (name, queue, priority, retry,
# timeout_ms, heartbeat_ms, version, field names, encode, limits), the constants as in
# ``_NewJobTuple``; ``encode(job)`` gives the fields as a JSON-compatible dict (used when a
# field is not a plain str, int, float, bool or None), ``limits(job)`` the job's limits
# (None: the class sets none).
_JobClassTuple = tuple[
    str,
    str,
    int,
    dict[str, Any],
    int | None,
    int,
    int,
    tuple[str, ...],
    Callable[[Any], dict[str, Any]],
    Callable[[Any], dict[str, Any] | None] | None,
]

def reseed_after_fork() -> None:
    """Reseed the random generator of job ids and lease tokens (in a child after fork)."""

def validate_retry(retry: dict[str, Any]) -> None:
    """Raise ``ConfigError`` naming every problem in a retry policy dict."""

def backoff_delay(retry: dict[str, Any], retry_number: int, unit: float) -> float:
    """Return the delay in seconds before retry ``retry_number`` (1-based), jitter draw ``unit``."""

def wait_sync_threads(timeout: float | None = None) -> bool:
    """Wait until every pool's sync threads have left Python and exited; False on timeout.

    Call it after stopping every pool: interpreter exit must not start while a sync thread
    still runs a job (a released or timed-out one finishes first, its result ignored).
    """

def postgres_migrate(dsn: str, *, schema: str = "hauler", connect_timeout_ms: int = 10000) -> int:
    """Create or upgrade hauler's schema in the PostgreSQL database; return its version."""

def take_log_records(timeout: float) -> tuple[list[tuple[int, str, str]], int]:
    """Wait up to ``timeout`` s for engine log records: ``(level, logger, message)`` each.

    Also returns how many records were dropped since the last call (queue full).
    """

def check_schedule(spec: ScheduleSpecDict) -> None:
    """Raise ``ConfigError`` naming the bad part of a malformed schedule spec.

    That is: a malformed cron expression, an unknown time zone or a bad interval.
    """

def now_us() -> int:
    """Return the engine's clock: microseconds since the epoch."""

@final
class Storage:
    """A handle to a storage; share one between producers and workers in a process."""

    @staticmethod
    def memory() -> Storage:
        """Open an in-process storage with no persistence."""

    @staticmethod
    def sqlite(
        path: str,
        *,
        synchronous: str = "normal",
        busy_timeout_ms: int = 5000,
        poll_interval_ms: int = 100,
    ) -> Storage:
        """Open (creating if needed) the SQLite database at ``path``."""

    @staticmethod
    def postgres(
        dsn: str,
        *,
        schema: str = "hauler",
        pool_size: int = 10,
        poll_interval_ms: int = 1000,
        connect_timeout_ms: int = 10000,
        listen: bool = True,
        migrate: bool = True,
    ) -> Storage:
        """Connect to PostgreSQL at ``dsn``, applying hauler's migrations unless told not to."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""

    @property
    def kind(self) -> str:
        """``"memory"``, ``"sqlite"`` or ``"postgres"``."""

    def push_many(
        self, jobs: Sequence[_NewJobTuple], *, max_payload_bytes: int | None = None
    ) -> list[tuple[str, bool]]:
        """Store jobs in one transaction; once durable, return per job (id, duplicate).

        ``duplicate`` is true for a unique job that matched a stored one: the id is then
        that job's.

        A job whose arguments take more than ``max_payload_bytes`` bytes as JSON raises
        ``SerializationError`` naming both sizes, and nothing is stored.
        """

    def enqueue(
        self,
        jobs: Iterable[object],
        class_of: Callable[[type], _JobClassTuple],
        ids: type[_IdT],
        *,
        run_at_us: int | None = None,
        max_payload_bytes: int | None = None,
    ) -> list[_IdT]:
        """Store job objects in one transaction; once durable, return their ids in order.

        ``class_of(type(job))`` is called once per job class and call. Each id is built as
        ``ids`` (a ``uuid.UUID`` subclass with a ``duplicate`` slot) without calling its
        ``__init__``: ``int`` and ``is_safe`` set as ``UUID.__init__`` does, ``duplicate``
        true for a unique job that matched a stored one (the id is then that job's).
        Errors as for :meth:`push_many`; nothing is stored then.
        """

    def pg_insert(
        self, jobs: Sequence[_NewJobTuple], *, max_payload_bytes: int | None = None
    ) -> tuple[
        str,
        dict[str, Any],
        builtins.list[str],
        tuple[str, builtins.list[str | None]] | None,
    ]:
        """Build the transactional-enqueue statement (psycopg style), its parameters, the ids.

        For a batch with unique jobs, the statement skips jobs whose key is held and answers
        the ids it stored; the last item is then the holder lookup (parameter ``p1``: keys;
        answers key, id) and each job's key. Otherwise the last item is ``None``.
        """

    def group_push(
        self,
        name: str,
        jobs: Sequence[_NewJobTuple],
        *,
        concurrency: int | None = None,
        on_complete: _NewJobTuple | None = None,
        max_payload_bytes: int | None = None,
    ) -> tuple[str, builtins.list[str]]:
        """Store a group and its member jobs in one transaction; ``(group id, member ids)``.

        ``concurrency`` caps the members running at once; ``on_complete`` is the job stored
        when every member is final. No jobs, or a ``concurrency`` below 1, raise
        ``ConfigError``.
        """

    def group_get(self, group_id: str) -> GroupDict | None:
        """One group with its members' counts, or ``None``."""

    def get(self, job_id: str) -> JobDict | None:
        """One job, or ``None``."""

    def list(self, filter: FilterDict, cursor: str | None, limit: int) -> builtins.list[JobDict]:
        """Jobs matching ``filter``, newest first, older than ``cursor``."""

    def count(self, filter: FilterDict) -> int:
        """How many jobs match ``filter``."""

    def cancel(self, filter: FilterDict) -> tuple[int, int]:
        """Cancel the matching jobs: ``(cancelled at once, running ones asked to stop)``."""

    def retry(self, filter: FilterDict) -> int:
        """Make the matching failed and cancelled jobs available again; how many."""

    def delete(self, filter: FilterDict) -> int:
        """Delete the matching jobs that are not running, with their history; how many."""

    def prune(self, statuses: Sequence[str], finished_before: int, *, batch: int = 1000) -> int:
        """Delete jobs of final ``statuses`` finished before ``finished_before``; how many.

        Works in batches of ``batch`` jobs, one transaction each.
        """

    def counts(self) -> builtins.list[tuple[str, str, int]]:
        """(queue, status, count) triples."""

    def schedule_add(
        self,
        name: str,
        spec: ScheduleSpecDict,
        catch_up: str,
        job: _NewJobTuple,
        *,
        max_payload_bytes: int | None = None,
    ) -> ScheduleDict:
        """Store a schedule entry, or update the one of that name; return it as stored."""

    def schedule_delete(self, name: str) -> bool:
        """Delete a schedule entry; whether it existed."""

    def schedule_run_now(self, name: str) -> str | None:
        """Store the entry's job now; its id, or None if there is no such entry."""

    def schedule_list(self) -> builtins.list[ScheduleDict]:
        """Every schedule entry, by name."""

    def close(self) -> None:
        """Close the storage; later calls raise ``StorageClosedError``."""

# Outcome of a sync run, or passed to an async run's done callback:
#   None                                  -> success
#   (kind, message, traceback, permanent) -> failure; permanent=True skips retries
#   int                                   -> snoozed for that many milliseconds
_Outcome = tuple[str, str, str | None, bool] | int | None

@final
class CancelFlag:
    """A running job's cancel flag: set once a cancel of the job is requested."""

    def is_set(self) -> bool:
        """Whether a cancel of the job was requested."""

@final
class JobRun:
    """One run of one job: saves its progress and state under the run's lease."""

    @property
    def claimed_state(self) -> str | None:
        """The state an earlier attempt saved (a JSON object as text), as claimed."""

    def set_progress(self, percent: int, message: str | None = None) -> bool:
        """Save progress (0 to 100) and its message at once; False if the lease was lost."""

    def set_state(self, state: str) -> bool:
        """Save the state (a JSON object as text) at once; False if the lease was lost."""

@final
class Worker:
    """A running worker pool (one per ``WorkerConfig.start``)."""

    def __new__(
        cls,
        storage: Storage,
        queues: dict[str, int],
        names: dict[str, str],
        run_sync: Callable[[str, dict[str, Any], str, int, int, CancelFlag, JobRun], _Outcome],
        submit_async: Callable[
            [str, dict[str, Any], str, int, int, Callable[[_Outcome], None], CancelFlag, JobRun],
            Any,
        ]
        | None,
        async_names: Sequence[str],
        *,
        worker_id: str,
        poll_interval_ms: int | None = None,
        reclaim_interval_ms: int = 1000,
        retention_ms: int | None = None,
        on_recorded: Callable[[str, str], None] | None = None,
        recorded_kinds: Sequence[str] = ...,
    ) -> Worker:
        """Start claiming and running jobs.

        ``queues`` maps queue name to worker count; ``names`` maps each registered job
        NAME to its queue. ``run_sync(name, args, job_id, attempt, version, cancel)`` runs
        a sync job on a worker thread and returns its outcome (``version``: the ``VERSION``
        the job was stored with; ``cancel``: its cancel flag). ``submit_async(name, args,
        job_id, attempt, version, done, cancel)`` schedules an async job on the pool's
        event loop without blocking, calls ``done(outcome)`` when it ends, and returns an
        object with a ``cancel()`` method (called when the job times out or is cancelled).
        ``retention_ms``: delete completed jobs this long after they finished (``None``:
        keep them). ``on_recorded(job_id, kind)`` is called on the pool's hooks thread,
        one call at a time, after the storage recorded an outcome of a kind listed in
        ``recorded_kinds`` (``"completed"``, ``"retry"``, ``"failed"``); ``stop`` waits
        up to 5 s for the calls still due.
        """

    @property
    def worker_id(self) -> str:
        """Return the pool's id, recorded on the jobs it claims."""

    @property
    def running(self) -> bool:
        """Whether the pool is still running."""

    def stop(self, timeout: float) -> None:
        """Stop claiming, wait up to ``timeout`` seconds for running jobs, release the rest."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the pool has stopped; ``False`` if ``timeout`` passed first."""

    def in_flight(self) -> int:
        """How many jobs this pool is running now."""
