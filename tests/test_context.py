"""The job context: ``run(self, state, ctx)`` on every storage (see the ``storage`` fixture)."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass, field
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
    WorkerConfig,
    current_job_cancelled,
)


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
