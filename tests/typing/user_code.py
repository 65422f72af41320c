"""A small user program, checked by ``mypy --strict`` (see pyproject.toml), never run.

Each ``# type: ignore[code]`` marks a line that must be an error: with
``warn_unused_ignores`` (part of ``--strict``), mypy fails if that error goes undetected.
"""

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, assert_type
from uuid import UUID

from hauler import (
    DEFAULT_QUEUE,
    Backoff,
    CancelCounts,
    CancelResult,
    GroupInfo,
    GroupStatus,
    Job,
    JobContext,
    JobHook,
    JobInfo,
    JobStatus,
    JobVersionError,
    MaxRetries,
    ScheduleInfo,
    SerializationError,
    Snooze,
    WorkerConfig,
    create_server,
    current_job_cancelled,
)
from hauler.storage import MemoryStorage, SqliteStorage, Storage, from_url, resolve_storage


@dataclass
class AppState:
    smtp_host: str


class SendEmail(Job[AppState]):
    NAME = "send_email"
    QUEUE = DEFAULT_QUEUE
    MAX_RETRIES = MaxRetries.count(3)
    BACKOFF = Backoff.exponential(2, max_delay=600, jitter=0.1)
    TIMEOUT = 30.0
    PRIORITY = 0
    HEARTBEAT_INTERVAL = 5000
    VERSION = 1

    to: str
    subject: str
    cc: list[str] = field(default_factory=list)
    send_at: datetime | None = None

    def run(self, state: AppState) -> None:
        print(f"sending {self.subject!r} to {self.to} via {state.smtp_host}")


class Cleanup(Job[AppState]):
    NAME = "cleanup"
    MAX_RETRIES = MaxRetries.infinite()
    BACKOFF = Backoff.fixed(10)
    TIMEOUT = None

    older_than_days: int = 30

    async def run(self, state: AppState) -> None:
        pass


class Export(Job[AppState]):
    NAME = "export"

    def run(self, state: AppState, ctx: JobContext) -> None:
        ctx.logger.info("attempt %d of %s on %s", ctx.attempt, ctx.name, ctx.queue)
        assert_type(ctx.job_id, UUID)
        assert_type(ctx.cancelled, bool)
        ctx.attempt = "2"  # type: ignore[assignment]
        page = ctx.get_state().get("page", 0)
        ctx.set_state({"page": page + 1})
        ctx.set_progress(50, message="half")
        ctx.set_progress(12.5)
        ctx.set_state([page])  # type: ignore[arg-type]
        ctx.set_progress("50")  # type: ignore[arg-type]


class AsyncExport(Job[AppState]):
    NAME = "async_export"

    async def run(self, state: AppState, ctx: JobContext) -> None:
        pass


class Poll(Job[AppState]):
    NAME = "poll"

    def run(self, state: AppState) -> Snooze | None:
        if not state.smtp_host:
            return self.snooze(timedelta(minutes=5))
        raise self.snooze(timedelta(seconds=30))


class AsyncPoll(Job[AppState]):
    NAME = "async_poll"

    async def run(self, state: AppState, ctx: JobContext) -> Snooze | None:
        return self.snooze(timedelta(seconds=ctx.attempt))


Poll().snooze(30)  # type: ignore[arg-type]


class SendEmailV3(Job[AppState]):
    NAME = "send_email_v3"
    VERSION = 3
    MIN_SUPPORTED_VERSION = 2

    to: list[str]

    @classmethod
    def migrate(cls, old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
        return {"to": [old_args["to"]]}

    def run(self, state: AppState) -> None:
        pass


class BadVersions(Job[AppState]):
    NAME = "bad_versions"
    MIN_SUPPORTED_VERSION = "2"  # type: ignore[assignment]

    @classmethod
    def migrate(  # type: ignore[override]
        cls, old_args: dict[str, Any], old_version: str
    ) -> dict[str, Any]:
        return old_args

    def run(self, state: AppState) -> None:
        pass


assert_type(Job.MIN_SUPPORTED_VERSION, int | None)
assert_type(SendEmailV3.migrate({"to": "a@b.c"}, 1), dict[str, Any])


class WrongCtxState(Job[AppState]):
    NAME = "wrong_ctx_state"

    def run(self, state: str, ctx: JobContext) -> None:  # type: ignore[override]
        pass


# Construction: positional, keyword, defaults.
email = SendEmail("ada@example.com", "hello")
email2 = SendEmail(to="ada@example.com", subject="hi", cc=["bob@example.com"])
email3 = SendEmail("ada@example.com", "hi", send_at=datetime.now(UTC))
cleanup = Cleanup()
assert_type(email.to, str)
assert_type(email.cc, list[str])
assert_type(email.send_at, datetime | None)
assert_type(cleanup.older_than_days, int)
assert_type(SendEmail.NAME, str)
assert_type(SendEmail.MAX_RETRIES, MaxRetries)
assert_type(SendEmail.MAX_RETRIES.count_value, int | None)
assert_type(SendEmail.BACKOFF.delay(3), float)
assert_type(dataclasses.replace(email, subject="re: hello"), SendEmail)

# Mistakes mypy must catch.
SendEmail(to=42, subject="hello")  # type: ignore[arg-type]
SendEmail("ada@example.com")  # type: ignore[call-arg]
SendEmail("ada@example.com", "hello", bcc=[])  # type: ignore[call-arg]
SendEmail("ada@example.com", "hello", cc="bob@example.com")  # type: ignore[arg-type]
Cleanup(older_than_days="30")  # type: ignore[arg-type]
email.run(state="localhost")  # type: ignore[arg-type]
MaxRetries.count("3")  # type: ignore[arg-type]
Backoff.fixed(1, 2.0)  # type: ignore[call-arg]


class WrongState(Job[AppState]):
    NAME = "wrong_state"

    def run(self, state: int) -> None:  # type: ignore[override]
        pass


class BadConstant(Job[AppState]):
    NAME = "bad_constant"
    MAX_RETRIES = 3  # type: ignore[assignment]

    def run(self, state: AppState) -> None:
        pass


# Storages.
storages: list[Storage] = [
    MemoryStorage(),
    SqliteStorage("jobs.db", synchronous="full", busy_timeout=2.0),
    from_url("sqlite:///jobs.db"),
    resolve_storage(None),
]
SqliteStorage("jobs.db", synchronous="off")  # type: ignore[arg-type]
SqliteStorage("jobs.db", "full")  # type: ignore[call-arg]
with SqliteStorage() as sqlite:
    assert_type(sqlite, SqliteStorage)
    assert_type(sqlite.url, str)

# The admin API.
handle = create_server(MemoryStorage())
job_id = handle.queue(email)
assert_type(handle.cancel(job_id), CancelResult)
assert_type(handle.retry(job_id), bool)
assert_type(handle.delete(str(job_id)), bool)
assert_type(handle.cancel_many(status="available", name="send_email"), CancelCounts)
assert_type(handle.retry_many(status=[JobStatus.FAILED], created_from=datetime.now(UTC)), int)
assert_type(handle.delete_many(ids=[job_id], args_contains="ada@example.com"), int)
assert_type(handle.count(queue=DEFAULT_QUEUE), int)
assert_type(handle.prune(older_than=timedelta(days=7), states=["failed"]), int)
assert_type(current_job_cancelled(), bool)
assert_type(handle.get(job_id).progress, int | None)
assert_type(handle.get(job_id).progress_message, str | None)
assert_type(handle.get(job_id).state, dict[str, Any] | None)
handle.prune(older_than=7)  # type: ignore[arg-type]
handle.cancel_many("available")  # type: ignore[call-arg]
handle.count(created_from="2024-01-01")  # type: ignore[arg-type]
WorkerConfig(retention=timedelta(hours=1))
WorkerConfig(retention=3600)  # type: ignore[arg-type]

# Job groups.
group_id = handle.queue_group("emails", [email, email], concurrency=1, on_complete=email)
assert_type(group_id, UUID)
assert_type(handle.group(group_id), GroupInfo)
assert_type(handle.group(str(group_id)).status, GroupStatus)
assert_type(handle.group(group_id).progress, int)
assert_type(handle.cancel_group(group_id), CancelCounts)
assert_type(handle.list(group=group_id).jobs[0].group_id, UUID | None)
assert_type(handle.count(group=group_id, status="running"), int)
handle.queue_group("emails", [email], concurrency="2")  # type: ignore[arg-type]
handle.queue_group([email])  # type: ignore[call-arg, arg-type]

# Periodic jobs.
cron_config = WorkerConfig(lambda: AppState("app")).cron("@daily", email, timezone="Europe/Paris")
assert_type(cron_config, WorkerConfig[AppState])
assert_type(handle.every(timedelta(minutes=5), email, name="beat", catch_up="none"), ScheduleInfo)
assert_type(handle.unschedule("beat"), bool)
assert_type(handle.run_now("digest"), UUID)
assert_type(handle.schedules()[0].next_run_at, datetime)
handle.every(300, email, name="beat")  # type: ignore[arg-type]
handle.every(timedelta(minutes=5), email)  # type: ignore[call-arg]


async def manage_schedules() -> None:
    """The async twins of the schedule methods."""
    info = await handle.aevery(timedelta(minutes=5), email, name="beat", catch_up="none")
    assert_type(info, ScheduleInfo)
    assert_type(await handle.aschedules(), list[ScheduleInfo])
    assert_type(await handle.arun_now("beat"), UUID)
    assert_type(await handle.aunschedule("beat"), bool)
    await handle.aevery(300, email, name="beat")  # type: ignore[arg-type]


# Lifecycle hooks.
def alert(info: JobInfo) -> None:
    print(f"{info.name} {info.id} failed for good: {info.last_error}")


def count_started(info: JobInfo) -> int:
    return info.attempt  # a hook's return value is ignored


hook: JobHook = alert
hooked = WorkerConfig(
    lambda: AppState("app"),
    on_enqueue=print,
    on_start=count_started,
    on_success=hook,
    on_failure=alert,
    on_retry=lambda info: print(info.last_error),
)
assert_type(hooked, WorkerConfig[AppState])
create_server(MemoryStorage(), on_enqueue=alert)
WorkerConfig(on_failure=lambda: None)  # type: ignore[arg-type,misc]
WorkerConfig(on_success="alert")  # type: ignore[arg-type]
create_server(on_enqueue=alert, max_payload_bytes=None)
assert issubclass(JobVersionError, SerializationError)
