"""The admin API on every storage: cancel, retry, delete, bulk operations by filter, list and
count filters, prune, and the workers' retention policy (see the ``storage`` fixture).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import pgserver as pg
from conftest import WAIT, StartWorker, wait_for
from hauler import (
    CancelCounts,
    CancelResult,
    ConfigError,
    Job,
    JobNotFoundError,
    JobStatus,
    MaxRetries,
    QueueHandle,
    WorkerConfig,
    create_server,
    current_job_cancelled,
)
from hauler.storage import PostgresStorage, SqliteStorage, Storage


@dataclass
class Seen:
    """Shared state: what jobs did, and events to wait on."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ran: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)

    def record(self, item: str) -> None:
        with self.lock:
            self.ran.append(item)


class Note(Job[Seen]):
    """Records its text."""

    NAME = "note"
    MAX_RETRIES = MaxRetries.count(0)
    text: str = ""

    def run(self, state: Seen) -> None:
        state.record(self.text)


class Boom(Job[Seen]):
    """Always fails, with no retries."""

    NAME = "boom"
    MAX_RETRIES = MaxRetries.count(0)
    text: str = ""

    def run(self, state: Seen) -> None:
        state.record(self.text)
        raise ValueError(f"boom {self.text}")


class Cooperative(Job[Seen]):
    """A sync job that polls the cancel flag and returns once it is set."""

    NAME = "cooperative"
    HEARTBEAT_INTERVAL = 200

    def run(self, state: Seen) -> None:
        state.started.set()
        deadline = time.monotonic() + WAIT
        while not current_job_cancelled():
            if time.monotonic() > deadline:
                raise TimeoutError("never cancelled")
            time.sleep(0.01)
        state.record("noticed")


class Stubborn(Job[Seen]):
    """A sync job that ignores cancellation and returns normally once its gate opens."""

    NAME = "stubborn"

    def run(self, state: Seen) -> None:
        state.started.set()
        if not state.gate.wait(WAIT):
            raise TimeoutError("gate never opened")
        state.record("finished")


class Sleeper(Job[Seen]):
    """An async job that sleeps until cancelled."""

    NAME = "sleeper"
    MAX_RETRIES = MaxRetries.count(5)

    async def run(self, state: Seen) -> None:
        state.started.set()
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            state.record(f"cancelled, flag={current_job_cancelled()}")
            raise


def config(state: Seen, *jobs: type[Job[Seen]]) -> WorkerConfig[Seen]:
    c = WorkerConfig(lambda: state)
    for cls in jobs:
        c.register(cls)
    return c


def a_while_ago() -> datetime:
    return datetime.now(UTC) - timedelta(hours=1)


# ---------------------------------------------------------------------------------------
# Cancel


def test_cancel_waiting_jobs_never_run(storage: Storage, start_worker: StartWorker) -> None:
    handle = create_server(storage)
    now_id = handle.queue(Note(text="now"))
    later_id = handle.schedule(Note(text="later"), after=timedelta(milliseconds=200))
    kept_id = handle.queue(Note(text="kept"))
    assert handle.cancel(now_id) is CancelResult.CANCELLED
    assert handle.cancel(str(later_id)) is CancelResult.CANCELLED
    info = handle.get(now_id)
    assert info.status is JobStatus.CANCELLED
    assert info.finished_at is not None and info.cancel_requested_at is None
    assert (info.attempt, info.history) == (0, [])

    state = Seen()
    worker = start_worker(config(state, Note))
    worker.wait([kept_id], timeout=WAIT)
    time.sleep(0.4)  # past the scheduled job's run time
    assert state.ran == ["kept"]
    assert handle.get(later_id).status is JobStatus.CANCELLED
    assert handle.cancel(now_id) is CancelResult.ALREADY_FINISHED
    assert handle.cancel(kept_id) is CancelResult.ALREADY_FINISHED


def test_cancel_unknown_or_malformed_id(handle: QueueHandle) -> None:
    with pytest.raises(JobNotFoundError, match="no job with id"):
        handle.cancel(uuid.uuid4())
    with pytest.raises(ConfigError, match="expected a UUID"):
        handle.cancel("job-1")
    for call in (handle.retry, handle.delete):
        with pytest.raises(JobNotFoundError):
            call(uuid.uuid4())
        with pytest.raises(ConfigError, match="expected a UUID"):
            call("job-1")


def test_running_sync_job_sees_the_flag_and_ends_cancelled(start_worker: StartWorker) -> None:
    state = Seen()
    worker = start_worker(config(state, Cooperative))
    job_id = worker.queue(Cooperative())
    assert state.started.wait(WAIT)
    assert worker.cancel(job_id) is CancelResult.REQUESTED
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.CANCELLED
    assert state.ran == ["noticed"]
    assert info.cancel_requested_at is not None
    assert [(a.attempt, a.outcome, a.error) for a in info.history] == [(1, "cancelled", None)]


def test_running_async_job_is_interrupted_and_never_retried(start_worker: StartWorker) -> None:
    state = Seen()
    worker = start_worker(config(state, Sleeper))
    job_id = worker.queue(Sleeper())
    assert state.started.wait(WAIT)
    started = time.monotonic()
    assert worker.cancel(job_id) is CancelResult.REQUESTED
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert time.monotonic() - started < WAIT / 2, "interrupted, not waited out"
    assert info.status is JobStatus.CANCELLED
    assert info.attempt == 1, "a cancelled job is not retried"
    assert [a.outcome for a in info.history] == ["cancelled"]
    assert info.history[0].error is not None
    assert info.history[0].error.type == "CancelledError"
    wait_for(lambda: state.ran == ["cancelled, flag=True"])


def test_a_job_that_ignores_the_cancel_still_ends_cancelled(start_worker: StartWorker) -> None:
    state = Seen()
    worker = start_worker(config(state, Stubborn))
    job_id = worker.queue(Stubborn())
    assert state.started.wait(WAIT)
    assert worker.cancel(job_id) is CancelResult.REQUESTED
    assert worker.cancel(job_id) is CancelResult.REQUESTED, "still stopping"
    state.gate.set()
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert state.ran == ["finished"]
    assert info.status is JobStatus.CANCELLED
    assert [a.outcome for a in info.history] == ["cancelled"]


def reopen(storage: Storage, tmp_path: Path) -> Storage | None:
    """Another storage object on the same jobs (as another process would have)."""
    if isinstance(storage, SqliteStorage):
        return SqliteStorage(tmp_path / "jobs.db")
    if isinstance(storage, PostgresStorage):
        return PostgresStorage(pg.dsn(), schema=storage.schema, pool_size=2)
    return None


def test_cancel_from_another_process_arrives_with_the_next_heartbeat(
    storage: Storage, start_worker: StartWorker, tmp_path: Path
) -> None:
    other = reopen(storage, tmp_path)
    if other is None:
        pytest.skip("a memory storage is not shared with other processes")
    state = Seen()
    worker = start_worker(config(state, Cooperative))
    job_id = worker.queue(Cooperative())
    assert state.started.wait(WAIT)
    try:
        assert create_server(other).cancel(job_id) is CancelResult.REQUESTED
    finally:
        other.close()
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.CANCELLED
    assert state.ran == ["noticed"]


def test_current_job_cancelled_is_false_outside_a_job() -> None:
    assert current_job_cancelled() is False


# ---------------------------------------------------------------------------------------
# Retry and delete


def test_retry_a_failed_job_runs_it_again_with_its_history(
    storage: Storage, start_worker: StartWorker
) -> None:
    state = Seen()
    worker = start_worker(config(state, Boom, Note))
    job_id = worker.queue(Boom(text="1"))
    done_id = worker.queue(Note(text="done"))
    (info, _) = worker.wait([job_id, done_id], timeout=WAIT)
    assert (info.status, info.attempt) == (JobStatus.FAILED, 1)

    assert worker.retry(job_id) is True
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.FAILED
    assert [(a.attempt, a.outcome) for a in info.history] == [
        (1, "failed"),
        (1, "retried"),
        (1, "failed"),
    ]
    retried = info.history[1]
    assert (retried.worker_id, retried.error) == ("", None)
    assert retried.started_at == retried.finished_at
    assert state.ran.count("1") == 2

    assert worker.retry(done_id) is False, "a completed job is not retried"
    assert worker.get(done_id).status is JobStatus.COMPLETED


def test_retry_a_cancelled_job(handle: QueueHandle) -> None:
    job_id = handle.queue(Note())
    assert handle.cancel(job_id) is CancelResult.CANCELLED
    assert handle.retry(job_id) is True
    info = handle.get(job_id)
    assert (info.status, info.attempt, info.finished_at) == (JobStatus.AVAILABLE, 0, None)
    assert [a.outcome for a in info.history] == ["retried"]
    assert handle.retry(job_id) is False, "available: nothing to retry"


def test_delete_removes_a_job_but_not_a_running_one(
    storage: Storage, start_worker: StartWorker
) -> None:
    handle = create_server(storage)
    waiting = handle.queue(Note())
    assert handle.delete(waiting) is True
    with pytest.raises(JobNotFoundError):
        handle.get(waiting)
    with pytest.raises(JobNotFoundError):
        handle.delete(waiting)

    state = Seen()
    start_worker(config(state, Stubborn))
    running = handle.queue(Stubborn())
    assert state.started.wait(WAIT)
    assert handle.delete(running) is False
    assert handle.get(running).status is JobStatus.RUNNING
    state.gate.set()
    handle.wait([running], timeout=WAIT)
    assert handle.delete(running) is True
    assert handle.count() == 0


# ---------------------------------------------------------------------------------------
# Filters: list, count and the bulk operations


def queue_spaced(
    handle: QueueHandle, jobs: list[Job[Seen]]
) -> tuple[list[uuid.UUID], list[datetime]]:
    """Queue each job at a distinct instant; return the ids and the instant before each."""
    ids, marks = [], []
    for job in jobs:
        marks.append(datetime.now(UTC))
        time.sleep(0.005)
        ids.append(handle.queue(job))
        time.sleep(0.005)
    return ids, marks


def test_list_and_count_filter_by_time_text_and_ids(handle: QueueHandle) -> None:
    ids, marks = queue_spaced(
        handle,
        [
            Note(text="alice@example.com"),
            Boom(text="bob@example.com"),
            Note(text="alice@example.org"),
            Note(text='say "hi"'),
        ],
    )

    def listed(**filters: object) -> list[uuid.UUID]:
        page = handle.list(**filters)  # type: ignore[arg-type]
        assert handle.count(**filters) == len(page)  # type: ignore[arg-type]
        return [j.id for j in page]

    newest_first = ids[::-1]
    assert listed() == newest_first
    assert listed(created_from=marks[1]) == newest_first[:3]
    assert listed(created_to=marks[2]) == [ids[1], ids[0]]
    assert listed(created_from=marks[1], created_to=marks[3]) == [ids[2], ids[1]]
    assert listed(args_contains="alice") == [ids[2], ids[0]]
    assert listed(args_contains="example.com") == [ids[1], ids[0]]
    assert listed(args_contains="ALICE") == [], "case-sensitive"
    assert listed(args_contains='\\"hi\\"') == [ids[3]], "as the JSON text has it"
    assert listed(args_contains="alice", name="note", created_to=marks[2]) == [ids[0]]
    assert listed(ids=[ids[3], str(ids[1])]) == [ids[3], ids[1]]
    assert listed(ids=[]) == []
    assert listed(ids=[ids[0], ids[1]], name="boom") == [ids[1]]
    assert listed(status="available", args_contains="example") == [ids[2], ids[1], ids[0]]
    assert handle.count(status=["failed", "completed"]) == 0

    # Paging a filtered listing with the cursor.
    first = handle.list(args_contains="example", limit=2)
    assert [j.id for j in first] == [ids[2], ids[1]]
    assert first.next_cursor is not None
    rest = handle.list(args_contains="example", limit=2, cursor=first.next_cursor)
    assert [j.id for j in rest] == [ids[0]]
    assert rest.next_cursor is None


def test_bad_filters_are_config_errors(handle: QueueHandle) -> None:
    naive = datetime(2030, 1, 1)
    aware = datetime(2030, 1, 1, tzinfo=UTC)
    cases: list[tuple[dict[str, object], str]] = [
        ({"created_from": naive}, "created_from: naive datetime"),
        ({"created_to": "yesterday"}, "created_to must be a timezone-aware datetime"),
        ({"created_from": aware, "created_to": aware}, "must be before created_to"),
        ({"args_contains": ""}, "args_contains must be a non-empty str"),
        ({"name": ""}, "name must be a non-empty str"),
        ({"queue": 3}, "queue must be a non-empty str"),
        ({"args_contains": "\ud800"}, "args_contains must be valid Unicode text"),
        ({"ids": str(uuid.uuid4())}, "ids must be a list of job ids"),
        ({"ids": ["nope"]}, "expected a UUID"),
        ({"status": "done"}, "unknown job status 'done'"),
    ]
    for filters, message in cases:
        for call in (handle.list, handle.count, handle.cancel_many, handle.delete_many):
            with pytest.raises(ConfigError, match=message):
                call(**filters)  # type: ignore[arg-type]


def test_bulk_operations_need_a_filter_and_statuses_they_can_change(
    handle: QueueHandle,
) -> None:
    job_id = handle.queue(Note())
    for call in (handle.cancel_many, handle.retry_many, handle.delete_many):
        with pytest.raises(ConfigError, match="needs at least one filter"):
            call()
    with pytest.raises(ConfigError, match=r"cancel_many\(\) changes only jobs that are"):
        handle.cancel_many(status="completed")
    with pytest.raises(ConfigError, match=r"retry_many\(\) changes only .*failed, cancelled"):
        handle.retry_many(status=["failed", "running"])
    with pytest.raises(ConfigError, match=r"delete_many\(\) changes only"):
        handle.delete_many(status="running")
    assert handle.get(job_id).status is JobStatus.AVAILABLE, "nothing changed"


def test_bulk_cancel_retry_and_delete_by_filter(
    storage: Storage, start_worker: StartWorker
) -> None:
    handle = create_server(storage)
    ids, marks = queue_spaced(
        handle,
        [Note(text="a1"), Note(text="a2"), Note(text="b1"), Boom(text="a3")],
    )
    assert handle.cancel_many(args_contains='"a') == CancelCounts(cancelled=3, requested=0)
    assert handle.count(status="cancelled") == 3
    assert handle.cancel_many(args_contains='"a') == CancelCounts(cancelled=0, requested=0)

    assert handle.retry_many(name="note", created_from=marks[1]) == 1, "only a2"
    assert handle.get(ids[1]).status is JobStatus.AVAILABLE
    assert handle.get(ids[0]).status is JobStatus.CANCELLED

    state = Seen()
    worker = start_worker(config(state, Note, Boom, Stubborn))
    worker.wait([ids[1], ids[2]], timeout=WAIT)
    running = worker.queue(Stubborn())
    assert state.started.wait(WAIT)
    counts = worker.cancel_many(status=["available", "running"], name="stubborn")
    assert counts == CancelCounts(cancelled=0, requested=1)
    assert counts.total == 1
    state.gate.set()
    (info,) = worker.wait([running], timeout=WAIT)
    assert info.status is JobStatus.CANCELLED

    assert worker.delete_many(status="cancelled") == 3
    assert worker.delete_many(ids=[ids[1]]) == 1
    assert sorted(j.id for j in worker.list()) == sorted([ids[2]])


def test_async_twins(storage: Storage, start_worker: StartWorker) -> None:
    handle = create_server(storage)

    async def main() -> None:
        a, b, c = await handle.aqueue_many([Note(text="x"), Note(text="y"), Note(text="z")])
        assert await handle.acount(args_contains='"x"') == 1
        assert await handle.acancel(a) is CancelResult.CANCELLED
        assert await handle.acancel_many(ids=[b]) == CancelCounts(cancelled=1, requested=0)
        assert await handle.aretry(a) is True
        assert await handle.aretry_many(ids=[b]) == 1
        assert await handle.adelete(c) is True
        assert await handle.adelete_many(ids=[a, b]) == 2
        assert len(await handle.alist(created_from=a_while_ago())) == 0
        assert await handle.aprune(older_than=timedelta(0)) == 0

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# Prune and retention


def test_prune_deletes_old_finished_jobs(storage: Storage, start_worker: StartWorker) -> None:
    state = Seen()
    worker = start_worker(config(state, Note, Boom))
    done = [worker.queue(Note(text=str(i))) for i in range(3)]
    failed = worker.queue(Boom())
    worker.wait([*done, failed], timeout=WAIT)
    waiting = worker.schedule(Note(), after=timedelta(hours=1))

    assert worker.prune(older_than=timedelta(hours=1)) == 0, "nothing that old"
    time.sleep(0.05)
    assert worker.prune(older_than=timedelta(milliseconds=10)) == 3
    assert worker.count() == 2
    assert worker.prune(older_than=timedelta(0), states=["failed", "cancelled"]) == 1
    assert [j.id for j in worker.list()] == [waiting]


def test_prune_arguments(handle: QueueHandle) -> None:
    with pytest.raises(ConfigError, match="older_than must be a timedelta >= 0"):
        handle.prune(older_than=timedelta(seconds=-1))
    with pytest.raises(ConfigError, match="older_than must be a timedelta"):
        handle.prune(older_than=3600)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="deletes only finished jobs"):
        handle.prune(older_than=timedelta(0), states=["running"])
    with pytest.raises(ConfigError, match="unknown job state 'old'"):
        handle.prune(older_than=timedelta(0), states="old")


def test_retention_deletes_completed_jobs_and_keeps_failed_ones(
    storage: Storage, start_worker: StartWorker
) -> None:
    state = Seen()
    keep = start_worker(config(state, Note, Boom))
    done = keep.queue(Note())
    failed = keep.queue(Boom())
    keep.wait([done, failed], timeout=WAIT)
    keep.stop(timeout=5)

    retention = timedelta(milliseconds=300)
    worker = start_worker(WorkerConfig(lambda: state, retention=retention).register(Note))
    assert worker.get(done).status is JobStatus.COMPLETED
    wait_for(lambda: worker.count(ids=[done]) == 0)
    assert worker.get(failed).status is JobStatus.FAILED


def test_retention_none_keeps_everything(storage: Storage, start_worker: StartWorker) -> None:
    state = Seen()
    worker = start_worker(WorkerConfig(lambda: state, retention=None).register(Note))
    (info,) = worker.wait([worker.queue(Note())], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED


def test_bad_retention_is_a_config_error() -> None:
    for bad in (timedelta(0), timedelta(seconds=-1), 3600):
        with pytest.raises(ConfigError, match="retention must be a positive timedelta"):
            WorkerConfig(retention=bad)  # type: ignore[arg-type]
