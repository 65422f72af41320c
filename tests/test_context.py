"""The job context: ``run(self, state, ctx)`` on every storage (see the ``storage`` fixture)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from conftest import WAIT, StartWorker
from hauler import (
    Backoff,
    CancelResult,
    ConfigError,
    Job,
    JobContext,
    JobStatus,
    MaxRetries,
    SerializationError,
    Snooze,
    WorkerConfig,
    create_server,
    current_job_cancelled,
)
from hauler.job import MAX_SNOOZE
from hauler.storage import Storage


@dataclass
class Seen:
    lock: threading.Lock = field(default_factory=threading.Lock)
    contexts: list[JobContext] = field(default_factory=list)
    flags: list[tuple[bool, bool]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def record(self, ctx: JobContext) -> None:
        with self.lock:
            self.contexts.append(ctx)


class FailsOnce(Job[Seen]):
    NAME = "ctx_fails_once"
    QUEUE = "ctx"
    MAX_RETRIES = MaxRetries.count(1)
    BACKOFF = Backoff.fixed(0.01)

    def run(self, state: Seen, ctx: JobContext) -> None:
        state.record(ctx)
        ctx.logger.info("attempt %d", ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")


class AsyncCtx(Job[Seen]):
    NAME = "ctx_async"

    async def run(self, state: Seen, ctx: JobContext) -> None:
        await asyncio.sleep(0)
        state.record(ctx)


class DefaultCtx(Job[Seen]):
    NAME = "ctx_default"

    def run(self, state: Seen, ctx: JobContext | None = None) -> None:
        assert ctx is not None
        state.record(ctx)


class Classic(Job[Seen]):
    NAME = "ctx_classic"

    def run(self, state: Seen) -> None:
        with state.lock:
            state.flags.append((False, False))


class WaitsForCancel(Job[Seen]):
    NAME = "ctx_waits_for_cancel"

    def run(self, state: Seen, ctx: JobContext) -> None:
        state.flags.append((ctx.cancelled, current_job_cancelled()))
        state.started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.01)
        state.flags.append((ctx.cancelled, current_job_cancelled()))


def config(state: Seen, *jobs: type[Job[Seen]]) -> WorkerConfig[Seen]:
    cfg = WorkerConfig(lambda: state)
    for job in jobs:
        cfg.register(job)
    return cfg


def test_sync_run_gets_its_id_attempt_name_queue_and_a_stamping_logger(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hauler.job")
    state = Seen()
    worker = start_worker(config(state, FailsOnce))
    job_id = worker.queue(FailsOnce())
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    assert [(c.job_id, c.attempt, c.name, c.queue) for c in state.contexts] == [
        (job_id, 1, "ctx_fails_once", "ctx"),
        (job_id, 2, "ctx_fails_once", "ctx"),
    ]
    records = [r for r in caplog.records if r.name == "hauler.job.ctx_fails_once"]
    assert [r.getMessage() for r in records] == [
        f"[ctx_fails_once {job_id} attempt 1] attempt 1",
        f"[ctx_fails_once {job_id} attempt 2] attempt 2",
    ]
    assert [(r.job_id, r.job_name, r.job_attempt) for r in records] == [  # type: ignore[attr-defined]
        (str(job_id), "ctx_fails_once", 1),
        (str(job_id), "ctx_fails_once", 2),
    ]


def test_async_run_and_a_ctx_with_a_default_get_one_too(start_worker: StartWorker) -> None:
    state = Seen()
    worker = start_worker(config(state, AsyncCtx, DefaultCtx, Classic))
    ids = [worker.queue(AsyncCtx()), worker.queue(DefaultCtx()), worker.queue(Classic())]
    infos = worker.wait(ids, timeout=WAIT)
    assert [i.status for i in infos] == [JobStatus.COMPLETED] * 3
    assert sorted((c.name, c.attempt) for c in state.contexts) == [
        ("ctx_async", 1),
        ("ctx_default", 1),
    ]
    assert {c.job_id for c in state.contexts} == set(ids[:2])
    assert state.flags == [(False, False)], "a two-argument run is called as before"


def test_ctx_cancelled_agrees_with_current_job_cancelled(start_worker: StartWorker) -> None:
    state = Seen()
    worker = start_worker(config(state, WaitsForCancel))
    job_id = worker.queue(WaitsForCancel())
    assert state.started.wait(WAIT)
    assert worker.cancel(job_id) is CancelResult.REQUESTED
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.CANCELLED
    assert state.flags == [(False, False), (True, True)]


def test_logger_keeps_the_callers_extra_fields(caplog: pytest.LogCaptureFixture) -> None:
    job_id = uuid.uuid4()
    ctx = JobContext(job_id=job_id, attempt=3, name="n", queue="q", cancel=None)
    with caplog.at_level(logging.INFO, logger="hauler.job"):
        ctx.logger.warning("hello %s", "x", extra={"order": 7})
    (record,) = caplog.records
    assert record.getMessage() == f"[n {job_id} attempt 3] hello x"
    assert (record.order, record.job_id, record.job_attempt) == (7, str(job_id), 3)  # type: ignore[attr-defined]
    assert record.levelno == logging.WARNING
    assert ctx.cancelled is False
    assert repr(ctx) == f"JobContext(job_id={job_id}, name='n', queue='q', attempt=3)"


def test_a_run_that_takes_neither_signature_is_a_config_error() -> None:
    class KeywordOnly(Job[None]):
        NAME = "ctx_kw_only"

        def run(self, state: None, *, ctx: Any) -> None:
            pass

    class TooMany(Job[None]):
        NAME = "ctx_too_many"

        def run(self, state: None, ctx: Any, extra: Any) -> None:
            pass

    class NoState(Job[None]):
        NAME = "ctx_no_state"

        def run(self) -> None:  # type: ignore[override]
            pass

    for cls in (KeywordOnly, TooMany, NoState):
        with pytest.raises(ConfigError, match=r"run must take \(self, state\) or"):
            WorkerConfig[None]().register(cls)


# ---------------------------------------------------------------------------------------
# Snooze: run again later without counting an attempt.


@dataclass
class Runs:
    lock: threading.Lock = field(default_factory=threading.Lock)
    times: list[float] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)

    def record(self, attempt: int) -> int:
        with self.lock:
            self.times.append(time.monotonic())
            self.attempts.append(attempt)
            return len(self.times)


class SnoozesTwice(Job[Runs]):
    """Raises a snooze twice, then completes; it has no retries to spare."""

    NAME = "snoozes_twice"
    MAX_RETRIES = MaxRetries.count(0)

    def run(self, state: Runs, ctx: JobContext) -> None:
        if state.record(ctx.attempt) <= 2:
            raise self.snooze(timedelta(milliseconds=100))


class AsyncReturnsSnooze(Job[Runs]):
    NAME = "async_returns_snooze"
    MAX_RETRIES = MaxRetries.count(0)

    async def run(self, state: Runs, ctx: JobContext) -> Snooze | None:
        await asyncio.sleep(0)
        if state.record(ctx.attempt) == 1:
            return self.snooze(timedelta(0))
        return None


class SnoozesBadly(Job[Runs]):
    NAME = "snoozes_badly"
    MAX_RETRIES = MaxRetries.count(0)

    def run(self, state: Runs) -> None:
        raise self.snooze(timedelta(days=400))


def runs_config(state: Runs, *jobs: type[Job[Runs]]) -> WorkerConfig[Runs]:
    cfg = WorkerConfig(lambda: state)
    for job in jobs:
        cfg.register(job)
    return cfg


def test_a_snoozed_job_runs_again_later_without_counting_attempts(
    start_worker: StartWorker,
) -> None:
    state = Runs()
    worker = start_worker(runs_config(state, SnoozesTwice))
    job_id = worker.queue(SnoozesTwice())
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED, info.last_error
    assert info.attempt == 1
    assert state.attempts == [1, 1, 1]
    assert [(a.attempt, a.outcome, a.error) for a in info.history] == [
        (1, "snoozed", None),
        (1, "snoozed", None),
        (1, "completed", None),
    ]
    assert info.last_error is None
    gaps = [b - a for a, b in itertools.pairwise(state.times)]
    assert all(gap >= 0.09 for gap in gaps), gaps


def test_an_async_job_may_return_the_snooze(start_worker: StartWorker) -> None:
    state = Runs()
    worker = start_worker(runs_config(state, AsyncReturnsSnooze))
    job_id = worker.queue(AsyncReturnsSnooze())
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    assert [(a.attempt, a.outcome) for a in info.history] == [(1, "snoozed"), (1, "completed")]


def test_a_bad_snooze_delay_fails_the_job(start_worker: StartWorker) -> None:
    state = Runs()
    worker = start_worker(runs_config(state, SnoozesBadly))
    job_id = worker.queue(SnoozesBadly())
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.FAILED
    assert info.last_error is not None
    assert info.last_error.type == "hauler.errors.ConfigError"
    assert "snooze delay must be from 0 to 365 days" in info.last_error.message


@pytest.mark.parametrize("delay", [timedelta(seconds=-1), MAX_SNOOZE + timedelta(1), 5, None])
def test_snooze_takes_a_timedelta_in_range(delay: Any) -> None:
    with pytest.raises(ConfigError, match="snooze delay must be"):
        Snooze(delay)


def test_snooze_rounds_up_to_milliseconds() -> None:
    assert Snooze(timedelta(microseconds=1)).delay_ms == 1
    assert Snooze(timedelta(seconds=2)).delay_ms == 2000
    assert Snooze(timedelta(0)).delay_ms == 0


# ---------------------------------------------------------------------------------------
# Progress and state: saved at once, shown by get(), state kept across retries.


@dataclass
class Steps:
    lock: threading.Lock = field(default_factory=threading.Lock)
    saved: threading.Event = field(default_factory=threading.Event)
    go_on: threading.Event = field(default_factory=threading.Event)
    resumed_from: list[dict[str, Any]] = field(default_factory=list)


class Reports(Job[Steps]):
    NAME = "ctx_reports"

    def run(self, state: Steps, ctx: JobContext) -> None:
        ctx.set_progress(40, message="page 4 of 10")
        ctx.set_state({"page": 4, "seen": ["a", "é"]})
        state.saved.set()
        assert state.go_on.wait(WAIT)
        ctx.set_progress(100.0)


class AsyncReports(Job[Steps]):
    NAME = "ctx_async_reports"

    async def run(self, state: Steps, ctx: JobContext) -> None:
        ctx.set_progress(7.9, message="async")
        ctx.set_state({"n": 1})
        await asyncio.sleep(0)


class Resumes(Job[Steps]):
    NAME = "ctx_resumes"
    MAX_RETRIES = MaxRetries.count(1)
    BACKOFF = Backoff.fixed(0.01)

    def run(self, state: Steps, ctx: JobContext) -> None:
        with state.lock:
            state.resumed_from.append(ctx.get_state())
        ctx.set_state({"done": ctx.get_state().get("done", 0) + 5})
        if ctx.attempt == 1:
            raise RuntimeError("stopped half way")


def test_progress_and_state_are_seen_by_another_handle_while_the_job_runs(
    start_worker: StartWorker, storage: Storage
) -> None:
    steps = Steps()
    worker = start_worker(WorkerConfig(lambda: steps).register(Reports))
    job_id = worker.queue(Reports())
    assert steps.saved.wait(WAIT)
    other = create_server(storage)
    running = other.get(job_id)
    assert running.status is JobStatus.RUNNING
    assert (running.progress, running.progress_message) == (40, "page 4 of 10")
    assert running.state == {"page": 4, "seen": ["a", "é"]}
    steps.go_on.set()
    (done,) = worker.wait([job_id], timeout=WAIT)
    assert done.status is JobStatus.COMPLETED
    assert (done.progress, done.progress_message) == (100, None), "no message clears it"
    assert done.state == {"page": 4, "seen": ["a", "é"]}, "kept after the job ends"


def test_an_async_job_saves_progress_and_state(start_worker: StartWorker) -> None:
    worker = start_worker(WorkerConfig(Steps).register(AsyncReports))
    job_id = worker.queue(AsyncReports())
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    assert (info.progress, info.progress_message, info.state) == (7, "async", {"n": 1})


def test_a_retried_job_resumes_from_the_state_its_failed_attempt_saved(
    start_worker: StartWorker,
) -> None:
    steps = Steps()
    worker = start_worker(WorkerConfig(lambda: steps).register(Resumes))
    job_id = worker.queue(Resumes())
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    assert info.attempt == 2
    assert steps.resumed_from == [{}, {"done": 5}]
    assert info.state == {"done": 10}
    never = worker.queue(Classic())
    assert worker.get(never).state is None and worker.get(never).progress is None


def test_progress_and_state_are_checked() -> None:
    ctx = JobContext(
        job_id=uuid.uuid4(), attempt=1, name="n", queue="q", cancel=None, max_payload_bytes=20
    )
    for bad in (-1, 101, 100.5, float("nan"), True, "50", None):
        with pytest.raises(ConfigError, match="progress must be a number from 0 to 100"):
            ctx.set_progress(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="progress message must be a str or None"):
        ctx.set_progress(5, message=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="NUL"):
        ctx.set_progress(5, message="a\x00b")
    with pytest.raises(ConfigError, match="lone surrogate"):
        ctx.set_progress(5, message="a\ud800")
    ctx.set_progress(0)
    ctx.set_progress(100, message="done")
    assert ctx.get_state() == {}
    for bad_state, match in [
        ([1], "must be a dict, got list"),
        ({"s": {1, 2}}, "is not JSON"),
        ({"f": float("nan")}, "is not JSON"),
        ({1: "x"}, "must have str keys"),
        ({"s": "\ud800"}, "lone surrogate"),
        ({"long": "x" * 20}, r"takes 31 bytes as JSON, more than max_payload_bytes \(20\)"),
    ]:
        with pytest.raises(SerializationError, match=match):
            ctx.set_state(bad_state)  # type: ignore[arg-type]
    assert ctx.get_state() == {}, "a refused state changes nothing"
    ctx.set_state({"a": [1]})
    got = ctx.get_state()
    got["a"].append(2)
    assert ctx.get_state() == {"a": [1]}, "get_state returns a copy"
