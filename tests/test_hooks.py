"""Lifecycle hooks: on_enqueue, on_start, on_success, on_failure, on_retry, on every storage."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from conftest import WAIT, wait_for
from hauler import (
    Backoff,
    ConfigError,
    Job,
    JobContext,
    JobInfo,
    JobStatus,
    MaxRetries,
    QueueHandle,
    WorkerConfig,
    create_server,
)
from hauler.storage import Storage


class Seen:
    """Records each hook call as (event, job id, status, attempt), thread-safely."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, uuid.UUID, JobStatus, int]] = []
        self.infos: dict[tuple[str, uuid.UUID], list[JobInfo]] = {}
        self._lock = threading.Lock()

    def hook(self, event: str) -> Callable[[JobInfo], None]:
        def record(info: JobInfo) -> None:
            with self._lock:
                self.calls.append((event, info.id, info.status, info.attempt))
                self.infos.setdefault((event, info.id), []).append(info)

        return record

    def hooks(self) -> dict[str, Any]:
        events = ("on_enqueue", "on_start", "on_success", "on_failure", "on_retry")
        return {event: self.hook(event) for event in events}

    def of(self, job_id: uuid.UUID) -> list[tuple[str, JobStatus, int]]:
        with self._lock:
            return [(e, s, a) for e, i, s, a in self.calls if i == job_id]


class Works(Job[None]):
    NAME = "works"
    n: int = 0

    def run(self, state: None) -> None:
        pass


class AsyncWorks(Job[None]):
    NAME = "async_works"

    async def run(self, state: None) -> None:
        pass


class AlwaysFails(Job[None]):
    NAME = "always_fails"
    MAX_RETRIES = MaxRetries.count(1)
    # Long enough for the on_retry hook to read the job before its retry starts.
    BACKOFF = Backoff.fixed(1)

    def run(self, state: None) -> None:
        raise ValueError("no luck")


class AsyncAlwaysFails(Job[None]):
    NAME = "async_always_fails"
    MAX_RETRIES = MaxRetries.count(1)
    BACKOFF = Backoff.fixed(1)

    async def run(self, state: None) -> None:
        raise ValueError("no luck either")


class OldWorks(Job[None]):
    NAME = "versioned"
    VERSION = 1

    def run(self, state: None) -> None:
        pass


class NewWorks(Job[None]):
    NAME = "versioned"
    VERSION = 2
    MIN_SUPPORTED_VERSION = 2

    def run(self, state: None) -> None:
        pass


def all_jobs_config(seen: Seen, **kwargs: Any) -> WorkerConfig[None]:
    config: WorkerConfig[None] = WorkerConfig(**seen.hooks(), **kwargs)
    for cls in (Works, AsyncWorks, AlwaysFails, AsyncAlwaysFails, NewWorks):
        config.register(cls)
    return config


LIFE_OF_A_SUCCESS = [
    ("on_enqueue", JobStatus.AVAILABLE, 0),
    ("on_start", JobStatus.RUNNING, 1),
    ("on_success", JobStatus.COMPLETED, 1),
]
LIFE_OF_A_FAILURE = [
    ("on_enqueue", JobStatus.AVAILABLE, 0),
    ("on_start", JobStatus.RUNNING, 1),
    ("on_retry", JobStatus.RETRYABLE, 1),
    ("on_start", JobStatus.RUNNING, 2),
    ("on_failure", JobStatus.FAILED, 2),
]


def test_hooks_follow_sync_and_async_jobs_through_their_lives(storage: Storage) -> None:
    seen = Seen()
    # Queued before the worker starts, so on_enqueue sees each job still available.
    handle = create_server(storage, on_enqueue=seen.hook("on_enqueue"))
    ok, async_ok, bad, async_bad = handle.queue_many(
        [Works(), AsyncWorks(), AlwaysFails(), AsyncAlwaysFails()]
    )
    with all_jobs_config(seen).start(handle) as worker:
        through_worker = worker.queue(Works(1))
        worker.wait([ok, async_ok, bad, async_bad, through_worker], timeout=WAIT)
    # stop() waited for the hooks of the recorded outcomes: no polling needed.
    assert seen.of(ok) == LIFE_OF_A_SUCCESS
    assert seen.of(async_ok) == LIFE_OF_A_SUCCESS
    # Queued while the worker runs: it may be running, even done, when on_enqueue reads it,
    # so on_enqueue may come after on_start or on_success (the others keep their order).
    life = seen.of(through_worker)
    assert [e for e, _, _ in life if e != "on_enqueue"] == ["on_start", "on_success"], life
    assert [x for x in life if x[0] != "on_enqueue"] == LIFE_OF_A_SUCCESS[1:], life
    assert [e for e, _, _ in life].count("on_enqueue") == 1, life
    assert seen.of(bad) == LIFE_OF_A_FAILURE
    assert seen.of(async_bad) == LIFE_OF_A_FAILURE
    (retry,) = seen.infos[("on_retry", bad)]
    assert retry.last_error is not None
    assert (retry.last_error.type, retry.last_error.message) == ("ValueError", "no luck")
    (failure,) = seen.infos[("on_failure", async_bad)]
    assert failure.last_error is not None and failure.last_error.message == "no luck either"
    (success,) = seen.infos[("on_success", ok)]
    assert success.finished_at is not None and success.history[0].outcome == "completed"
    (start,) = seen.infos[("on_start", ok)]
    assert start.worker_id == worker.worker_id


def test_a_job_that_cannot_run_fires_on_failure_without_on_start(storage: Storage) -> None:
    seen = Seen()
    handle = create_server(storage)
    old = handle.queue(OldWorks())  # queued before the worker hooks this handle
    with all_jobs_config(seen).start(handle) as worker:
        worker.wait([old], timeout=WAIT)
    assert seen.of(old) == [("on_failure", JobStatus.FAILED, 1)]
    (info,) = seen.infos[("on_failure", old)]
    assert info.last_error is not None and info.last_error.type.endswith("JobVersionError")


def test_on_enqueue_on_a_producer_handle(storage: Storage) -> None:
    seen = Seen()
    handle = create_server(storage, on_enqueue=seen.hook("on_enqueue"))
    one = handle.queue(Works(1))
    many = handle.queue_many([Works(n) for n in range(2, 5)])
    later = handle.schedule(Works(5), after=timedelta(hours=1))
    handle.every(timedelta(hours=1), Works(6), name="hourly")
    now = handle.run_now("hourly")
    assert [i for _, i, _, _ in seen.calls] == [one, *many, later, now]
    assert [s for _, _, s, _ in seen.calls] == [JobStatus.AVAILABLE] * 4 + [
        JobStatus.SCHEDULED,
        JobStatus.AVAILABLE,
    ]
    assert [info.args for ((_, i), (info,)) in seen.infos.items()] == [
        {"n": n} for n in range(1, 7)
    ]
    assert handle.queue_many([]) == []
    assert len(seen.calls) == 6


def test_the_started_with_handle_is_hooked_only_while_the_worker_runs(storage: Storage) -> None:
    seen = Seen()
    handle = create_server(storage)
    before = handle.queue(Works(1))
    worker = WorkerConfig(on_enqueue=seen.hook("on_enqueue")).register(Works).start(handle)
    try:
        during = handle.queue(Works(2))
    finally:
        worker.stop(timeout=5)
    after = handle.queue(Works(3))
    assert [(e, i) for e, i, _, _ in seen.calls] == [("on_enqueue", during)]
    assert before != after


def failing(event: str) -> Callable[[JobInfo], None]:
    def hook(info: JobInfo) -> None:
        raise RuntimeError(f"{event} hook broke")

    return hook


def test_a_failing_hook_is_logged_and_never_changes_the_outcome(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="hauler.hooks")
    events = ("on_enqueue", "on_start", "on_success", "on_failure", "on_retry")
    config = WorkerConfig(**{event: failing(event) for event in events})
    config.register(Works).register(AsyncWorks).register(AlwaysFails)
    handle = create_server(storage)
    with config.start(handle) as worker:
        ok = handle.queue(Works())  # on_enqueue raised: the job is queued all the same
        async_ok = handle.queue(AsyncWorks())
        bad = handle.queue(AlwaysFails())
        infos = worker.wait([ok, async_ok, bad], timeout=WAIT)
    assert [i.status for i in infos] == [JobStatus.COMPLETED, JobStatus.COMPLETED, JobStatus.FAILED]
    assert [i.attempt for i in infos] == [1, 1, 2]
    records = [r for r in caplog.records if r.name == "hauler.hooks"]
    logged = sorted((r.hook, r.job_id) for r in records)  # type: ignore[attr-defined]
    assert logged == sorted(
        [
            *[("on_enqueue", str(i)) for i in (ok, async_ok, bad)],
            *[("on_start", str(i)) for i in (ok, async_ok, bad, bad)],
            ("on_success", str(ok)),
            ("on_success", str(async_ok)),
            ("on_retry", str(bad)),
            ("on_failure", str(bad)),
        ]
    )
    for r in records:
        assert r.exc_info is not None and "hook broke" in str(r.exc_info[1])
        assert r.job_id in r.getMessage()  # type: ignore[attr-defined]


class CancelMe(Job[threading.Event]):
    NAME = "cancel_me"

    def run(self, state: threading.Event, ctx: JobContext) -> None:
        state.set()
        wait_for(lambda: ctx.cancelled)
        # Returns normally: the job still ends cancelled, as the cancel was requested.


def test_a_cancelled_job_fires_neither_success_nor_failure(storage: Storage) -> None:
    seen = Seen()
    running = threading.Event()
    handle = create_server(storage)
    config = WorkerConfig(lambda: running, **seen.hooks()).register(CancelMe)
    with config.start(handle) as worker:
        job_id = handle.queue(CancelMe())
        assert running.wait(WAIT)
        assert handle.cancel(job_id) == "requested"
        (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.CANCELLED
    # on_enqueue runs in this thread once the job is stored: on_start may come first.
    assert sorted(e for e, _, _ in seen.of(job_id)) == ["on_enqueue", "on_start"]


async def async_hook(info: JobInfo) -> None:
    pass


class AsyncCallable:
    async def __call__(self, info: JobInfo) -> None:
        pass


@pytest.mark.parametrize(
    "event", ["on_enqueue", "on_start", "on_success", "on_failure", "on_retry"]
)
def test_hooks_must_be_plain_functions(event: str) -> None:
    for bad in (async_hook, AsyncCallable()):
        with pytest.raises(ConfigError, match=f"{event} must be a plain function, not async"):
            WorkerConfig(**{event: bad})
    with pytest.raises(ConfigError, match=f"{event} must be a function taking a JobInfo"):
        WorkerConfig(**{event: "print"})


def test_create_server_refuses_a_bad_on_enqueue() -> None:
    with pytest.raises(ConfigError, match="on_enqueue must be a plain function"):
        create_server("memory://", on_enqueue=async_hook)
    with pytest.raises(ConfigError, match="on_enqueue must be a function"):
        QueueHandle("memory://", on_enqueue=42)  # type: ignore[arg-type]


def test_a_hook_returning_a_coroutine_is_logged(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="hauler.hooks")
    handle = create_server(storage, on_enqueue=lambda info: async_hook(info))
    job_id = handle.queue(Works())
    (record,) = [r for r in caplog.records if r.name == "hauler.hooks"]
    assert str(job_id) in record.getMessage()
    assert "returned a coroutine" in record.getMessage()


def test_a_hook_may_stop_its_own_pool(storage: Storage) -> None:
    """stop() called from the hooks thread does not wait for that thread (no deadlock)."""
    handle = create_server(storage)
    workers: list[Any] = []
    stopped = threading.Event()

    def stop_on_success(info: JobInfo) -> None:
        workers[0].stop(timeout=5)
        stopped.set()

    worker = WorkerConfig(on_success=stop_on_success).register(Works).start(handle)
    workers.append(worker)
    try:
        job_id = handle.queue(Works())
        assert stopped.wait(WAIT)
        assert not worker.running
        assert handle.get(job_id).status is JobStatus.COMPLETED
    finally:
        worker.stop(timeout=5)
