"""The engine end to end, run against every storage (see the ``storage`` fixture).

Waits are bounded by ``WAIT`` and assertions on time only ever check lower bounds tightly:
upper bounds are seconds wide, so a loaded machine does not fail the suite.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import WAIT, Gates, StartWorker, wait_for
from hauler import (
    DEFAULT_QUEUE,
    Backoff,
    ConfigError,
    Job,
    JobNotFoundError,
    JobStatus,
    MaxRetries,
    QueueHandle,
    Worker,
    WorkerConfig,
    create_server,
)
from hauler.storage import Storage

# A tolerance for comparing engine timestamps (microseconds) with computed instants.
EPSILON = timedelta(milliseconds=2)


@dataclass
class Tracker:
    """Shared state for jobs: what ran, in what order, how many at once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ran: list[Any] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event | None = None
    barrier: threading.Barrier | None = None

    def record(self, item: Any) -> None:
        with self.lock:
            self.ran.append(item)

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.started.set()

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


def statuses(infos: list[Any]) -> list[JobStatus]:
    return [i.status for i in infos]


# ---------------------------------------------------------------------------------------
# The background-jobs crate's README example, ported.


@dataclass
class MyState:
    app_name: str
    seen: list[tuple[str, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MyJob(Job[MyState]):
    NAME = "MyJob"
    QUEUE = DEFAULT_QUEUE
    MAX_RETRIES = MaxRetries.count(1)

    some_usize: int
    other_usize: int

    def run(self, state: MyState) -> None:
        with state.lock:
            state.seen.append((state.app_name, self.some_usize, self.other_usize))


def test_background_jobs_readme_example(start_worker: StartWorker) -> None:
    state = MyState("My App")
    queue_handle = start_worker(
        WorkerConfig(lambda: state).register(MyJob).set_worker_count(DEFAULT_QUEUE, 16)
    )
    ids = [
        queue_handle.queue(MyJob(1, 2)),
        queue_handle.queue(MyJob(3, 4)),
        queue_handle.queue(MyJob(5, 6)),
        queue_handle.schedule(MyJob(7, 8), after=timedelta(milliseconds=300)),
    ]
    infos = queue_handle.wait(ids, timeout=WAIT)
    assert statuses(infos) == [JobStatus.COMPLETED] * 4
    assert sorted(state.seen) == [
        ("My App", 1, 2),
        ("My App", 3, 4),
        ("My App", 5, 6),
        ("My App", 7, 8),
    ]
    assert [i.args for i in infos] == [
        {"some_usize": 1, "other_usize": 2},
        {"some_usize": 3, "other_usize": 4},
        {"some_usize": 5, "other_usize": 6},
        {"some_usize": 7, "other_usize": 8},
    ]
    assert all(i.max_retries == 1 and i.attempt == 1 for i in infos)


def test_producer_handle_and_worker_share_a_storage(
    storage: Storage, start_worker: StartWorker
) -> None:
    """The web-app way in: create_server() only enqueues; a worker elsewhere runs."""
    state = MyState("producer")
    producer = create_server(storage)
    job_id = producer.queue(MyJob(some_usize=1, other_usize=2))
    assert producer.get(job_id).status is JobStatus.AVAILABLE
    start_worker(WorkerConfig(lambda: state).register(MyJob))
    (info,) = producer.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    assert state.seen == [("producer", 1, 2)]


# ---------------------------------------------------------------------------------------
# Sync and async jobs.


class SyncJob(Job[Tracker]):
    NAME = "sync_job"
    n: int

    def run(self, state: Tracker) -> None:
        state.record(("sync", self.n, threading.current_thread() is threading.main_thread()))


class AsyncJob(Job[Tracker]):
    NAME = "async_job"
    n: int

    async def run(self, state: Tracker) -> None:
        await asyncio.sleep(0.01)
        asyncio.get_running_loop()  # raises unless run on an event loop
        state.record(("async", self.n, threading.current_thread() is threading.main_thread()))


def test_sync_and_async_jobs_run_in_one_pool(start_worker: StartWorker) -> None:
    state = Tracker()
    worker = start_worker(WorkerConfig(lambda: state).register(SyncJob).register(AsyncJob))
    ids = worker.queue_many([SyncJob(n) for n in range(5)] + [AsyncJob(n) for n in range(5)])
    infos = worker.wait(ids, timeout=WAIT)
    assert statuses(infos) == [JobStatus.COMPLETED] * 10
    # Neither kind runs on the caller's (main) thread.
    assert sorted(state.ran) == sorted(
        [("sync", n, False) for n in range(5)] + [("async", n, False) for n in range(5)]
    )


class AsyncQuick(Job[Tracker]):
    NAME = "async_quick"
    n: int

    async def run(self, state: Tracker) -> None:
        await asyncio.sleep(0)
        asyncio.get_running_loop()  # raises unless run on an event loop
        state.record(("async", self.n, threading.current_thread() is threading.main_thread()))


def test_short_sync_and_async_jobs_mixed_in_one_queue(start_worker: StartWorker) -> None:
    # Short jobs are prefetched, and a sync worker thread that finishes one takes the next
    # prefetched job itself: never an async one, which must run on the event loop.
    state = Tracker()
    worker = start_worker(
        WorkerConfig(lambda: state)
        .register(SyncJob)
        .register(AsyncQuick)
        .set_worker_count(DEFAULT_QUEUE, 2)
    )
    warm = worker.queue_many([SyncJob(n) for n in range(-50, 0)])
    worker.wait(warm, timeout=WAIT)
    jobs: list[Job[Tracker]] = [AsyncQuick(n) if n % 5 == 4 else SyncJob(n) for n in range(500)]
    infos = worker.wait(worker.queue_many(jobs), timeout=WAIT)
    assert statuses(infos) == [JobStatus.COMPLETED] * 500
    assert sorted(state.ran) == sorted(
        [("sync", n, False) for n in range(-50, 0)]
        + [("async" if n % 5 == 4 else "sync", n, False) for n in range(500)]
    )


# ---------------------------------------------------------------------------------------
# Retries, backoff and MAX_RETRIES.


class DiskFullError(Exception):
    pass


def always_failing(backoff: Backoff, retries: int, *, is_async: bool = False) -> type[Job[Any]]:
    """A job class that raises DiskFullError on every attempt."""

    class AlwaysFails(Job[None]):
        NAME = "always_fails"
        MAX_RETRIES = MaxRetries.count(retries)
        BACKOFF = backoff

        def run(self, state: None) -> None:
            raise DiskFullError("no space left on /var/spool")

    class AlwaysFailsAsync(Job[None]):
        NAME = "always_fails"
        MAX_RETRIES = MaxRetries.count(retries)
        BACKOFF = backoff

        async def run(self, state: None) -> None:
            await asyncio.sleep(0)
            raise DiskFullError("no space left on /var/spool")

    return AlwaysFailsAsync if is_async else AlwaysFails


@pytest.mark.parametrize(
    ("backoff", "retries"),
    [
        pytest.param(Backoff.fixed(0.2), 2, id="fixed"),
        pytest.param(Backoff.linear(0.15), 3, id="linear"),
        pytest.param(Backoff.exponential(1.2), 2, id="exponential"),
    ],
)
def test_retries_follow_backoff_then_fail(
    start_worker: StartWorker, backoff: Backoff, retries: int
) -> None:
    cls = always_failing(backoff, retries)
    worker = start_worker(WorkerConfig().register(cls))
    (info,) = worker.wait([worker.queue(cls())], timeout=WAIT + 5)

    assert info.status is JobStatus.FAILED
    assert info.attempt == 1 + retries
    assert info.max_retries == retries
    assert len(info.history) == 1 + retries
    assert [a.attempt for a in info.history] == list(range(1, retries + 2))
    assert {a.outcome for a in info.history} == {"failed"}
    assert info.finished_at is not None
    starts = [a.started_at for a in info.history]
    for k in range(1, retries + 1):
        gap = starts[k] - starts[k - 1]
        delay = timedelta(seconds=backoff.delay(k))
        assert gap >= delay - EPSILON, f"retry {k} started {gap} after the previous attempt"
        assert gap < delay + timedelta(seconds=5)


def test_backoff_cap_applies(start_worker: StartWorker) -> None:
    # Uncapped, the retries would wait 3 s and then 9 s.
    backoff = Backoff.exponential(3, max_delay=0.2)
    cls = always_failing(backoff, 2)
    worker = start_worker(WorkerConfig().register(cls))
    (info,) = worker.wait([worker.queue(cls())], timeout=WAIT)
    assert info.status is JobStatus.FAILED
    starts = [a.started_at for a in info.history]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 2
    for gap in gaps:
        assert timedelta(seconds=0.2) - EPSILON <= gap < timedelta(seconds=2.5)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_error_recorded_in_last_error_and_history(
    start_worker: StartWorker, is_async: bool
) -> None:
    cls = always_failing(Backoff.fixed(0), 1, is_async=is_async)
    worker = start_worker(WorkerConfig().register(cls))
    (info,) = worker.wait([worker.queue(cls())], timeout=WAIT)
    assert info.status is JobStatus.FAILED
    assert info.attempt == 2
    error = info.last_error
    assert error is not None
    assert error.type == f"{__name__}.DiskFullError"
    assert error.message == "no space left on /var/spool"
    assert error.traceback is not None
    assert "Traceback (most recent call last)" in error.traceback
    assert "in run" in error.traceback
    assert "DiskFullError: no space left on /var/spool" in error.traceback
    assert [a.error for a in info.history] == [error, error]


def test_max_retries_zero_means_one_attempt(start_worker: StartWorker) -> None:
    cls = always_failing(Backoff.fixed(0), 0)
    worker = start_worker(WorkerConfig().register(cls))
    job_id = worker.queue(cls())
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.FAILED
    assert info.attempt == 1
    assert len(info.history) == 1
    time.sleep(0.2)  # a wrongly scheduled retry would have run by now
    assert worker.get(job_id).attempt == 1


class Flaky(Job[Tracker]):
    """Fails its first two attempts, then succeeds."""

    NAME = "flaky"
    MAX_RETRIES = MaxRetries.infinite()
    BACKOFF = Backoff.fixed(0.05)

    def run(self, state: Tracker) -> None:
        state.record("attempt")
        if len(state.ran) < 3:
            raise ConnectionError(f"attempt {len(state.ran)} lost the connection")


def test_job_that_fails_then_succeeds_completes(start_worker: StartWorker) -> None:
    state = Tracker()
    worker = start_worker(WorkerConfig(lambda: state).register(Flaky))
    (info,) = worker.wait([worker.queue(Flaky())], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    assert info.attempt == 3
    assert info.max_retries is None
    assert [a.outcome for a in info.history] == ["failed", "failed", "completed"]
    assert info.history[2].error is None
    assert info.last_error is not None
    assert info.last_error.type == "ConnectionError"
    assert info.last_error.message == "attempt 2 lost the connection"


# ---------------------------------------------------------------------------------------
# Scheduled jobs.


class Stamp(Job[Tracker]):
    NAME = "stamp"
    tag: str

    def run(self, state: Tracker) -> None:
        state.record((self.tag, datetime.now(UTC)))


@pytest.mark.parametrize("how", ["at", "after"])
def test_scheduled_job_runs_on_time_not_early(start_worker: StartWorker, how: str) -> None:
    state = Tracker()
    worker = start_worker(WorkerConfig(lambda: state).register(Stamp))
    delay = timedelta(milliseconds=600)
    before = datetime.now(UTC)
    if how == "at":
        job_id = worker.schedule(Stamp(how), at=before + delay)
    else:
        job_id = worker.schedule(Stamp(how), after=delay)
    earliest = before + delay
    info = worker.get(job_id)
    assert info.status is JobStatus.SCHEDULED
    assert info.run_at >= earliest - EPSILON
    time.sleep(0.2)
    info = worker.get(job_id)
    assert (info.status, info.attempt, state.ran) == (JobStatus.SCHEDULED, 0, [])

    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    assert info.started_at is not None
    assert info.started_at >= earliest - EPSILON
    assert info.started_at - earliest < timedelta(seconds=3)
    ((tag, ran_at),) = state.ran
    assert tag == how
    assert ran_at >= earliest - EPSILON


def test_schedule_in_the_past_runs_now(start_worker: StartWorker) -> None:
    state = Tracker()
    worker = start_worker(WorkerConfig(lambda: state).register(Stamp))
    job_id = worker.schedule(Stamp("past"), at=datetime.now(UTC) - timedelta(hours=1))
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED


def test_job_for_later_is_stored_scheduled(handle: QueueHandle) -> None:
    """A job scheduled for later is not claimable now, so it is stored as scheduled."""
    later = handle.schedule(Stamp("later"), after=timedelta(hours=1))
    now = handle.queue(Stamp("now"))
    assert handle.get(later).status is JobStatus.SCHEDULED
    assert handle.get(now).status is JobStatus.AVAILABLE
    assert handle.counts() == {DEFAULT_QUEUE: {"scheduled": 1, "available": 1}}


# ---------------------------------------------------------------------------------------
# The shared state.


@dataclass
class AppState:
    visits: list[AppState]
    lock: threading.Lock = field(default_factory=threading.Lock)


class Visit(Job[AppState]):
    NAME = "visit"

    def run(self, state: AppState) -> None:
        with state.lock:
            state.visits.append(state)


class AsyncVisit(Job[AppState]):
    NAME = "async_visit"

    async def run(self, state: AppState) -> None:
        with state.lock:
            state.visits.append(state)


def test_state_factory_called_once_and_shared(start_worker: StartWorker) -> None:
    visits: list[AppState] = []
    made: list[AppState] = []

    def factory() -> AppState:
        state = AppState(visits)
        made.append(state)
        return state

    config = WorkerConfig(factory).register(Visit).register(AsyncVisit)
    assert made == []
    worker = start_worker(config)
    assert len(made) == 1
    ids = worker.queue_many([Visit() for _ in range(10)] + [AsyncVisit() for _ in range(10)])
    assert statuses(worker.wait(ids, timeout=WAIT)) == [JobStatus.COMPLETED] * 20
    assert len(made) == 1
    assert len(visits) == 20
    assert all(v is made[0] for v in visits)


class NoState(Job[None]):
    NAME = "no_state"

    def run(self, state: None) -> None:
        if state is not None:
            raise AssertionError(f"expected no state, got {state!r}")


def test_no_state_factory_passes_none(start_worker: StartWorker) -> None:
    worker = start_worker(WorkerConfig().register(NoState))
    (info,) = worker.wait([worker.queue(NoState())], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED


# ---------------------------------------------------------------------------------------
# Queues and worker counts.


@dataclass
class QueuesState:
    serial: Tracker
    parallel: Tracker


class SerialJob(Job[QueuesState]):
    NAME = "serial_job"
    QUEUE = "serial"
    MAX_RETRIES = MaxRetries.count(0)

    def run(self, state: QueuesState) -> None:
        t = state.serial
        t.enter()
        try:
            assert t.gate is not None
            if not t.gate.wait(WAIT):
                raise TimeoutError("gate never opened")
        finally:
            t.leave()


class ParallelJob(Job[QueuesState]):
    NAME = "parallel_job"
    QUEUE = "parallel"
    MAX_RETRIES = MaxRetries.count(0)

    def run(self, state: QueuesState) -> None:
        t = state.parallel
        t.enter()
        try:
            assert t.barrier is not None
            t.barrier.wait()  # breaks (and the job fails) unless 3 jobs run at once
        finally:
            t.leave()


def test_queues_have_their_own_worker_counts(start_worker: StartWorker, gate: Gates) -> None:
    state = QueuesState(
        serial=Tracker(gate=gate()),
        parallel=Tracker(barrier=threading.Barrier(3, timeout=WAIT)),
    )
    worker = start_worker(
        WorkerConfig(lambda: state)
        .register(SerialJob)
        .register(ParallelJob)
        .set_worker_count("serial", 1)
        .set_worker_count("parallel", 3)
    )
    serial_ids = worker.queue_many([SerialJob() for _ in range(3)])
    assert state.serial.started.wait(WAIT)

    # While the one serial worker is blocked, the parallel queue runs 3 at a time.
    parallel_ids = worker.queue_many([ParallelJob() for _ in range(6)])
    infos = worker.wait(parallel_ids, timeout=WAIT)
    assert statuses(infos) == [JobStatus.COMPLETED] * 6
    assert state.parallel.most_at_once == 3

    # ...and the other serial jobs wait their turn.
    assert worker.counts()["serial"] == {"running": 1, "available": 2}
    assert state.serial.gate is not None
    state.serial.gate.set()
    infos = worker.wait(serial_ids, timeout=WAIT)
    assert statuses(infos) == [JobStatus.COMPLETED] * 3
    assert state.serial.most_at_once == 1


class Wide(Job[Tracker]):
    NAME = "wide"
    QUEUE = "wide"
    MAX_RETRIES = MaxRetries.count(0)

    def run(self, state: Tracker) -> None:
        state.enter()
        try:
            assert state.barrier is not None
            state.barrier.wait()
        finally:
            state.leave()


def test_default_worker_count_is_four(start_worker: StartWorker) -> None:
    state = Tracker(barrier=threading.Barrier(4, timeout=WAIT))
    worker = start_worker(WorkerConfig(lambda: state).register(Wide))
    infos = worker.wait(worker.queue_many([Wide() for _ in range(8)]), timeout=WAIT)
    assert statuses(infos) == [JobStatus.COMPLETED] * 8
    assert state.most_at_once == 4


class Registered(Job[Tracker]):
    NAME = "registered"

    def run(self, state: Tracker) -> None:
        state.record("registered")


class NotRegistered(Job[Tracker]):
    NAME = "not_registered"

    def run(self, state: Tracker) -> None:
        state.record("not_registered")


def test_worker_never_claims_unregistered_names(start_worker: StartWorker) -> None:
    state = Tracker()
    worker = start_worker(WorkerConfig(lambda: state).register(Registered))
    stranger = worker.queue(NotRegistered())
    known = worker.queue_many([Registered() for _ in range(3)])
    assert statuses(worker.wait(known, timeout=WAIT)) == [JobStatus.COMPLETED] * 3
    time.sleep(0.2)  # give a wrong claim time to happen
    info = worker.get(stranger)
    assert (info.status, info.attempt, info.history) == (JobStatus.AVAILABLE, 0, [])
    assert state.ran == ["registered"] * 3

    # A worker that knows the name runs it.
    other = Tracker()
    start_worker(WorkerConfig(lambda: other).register(NotRegistered))
    (info,) = worker.wait([stranger], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    assert other.ran == ["not_registered"]


def prioritized(priority: int) -> type[Job[Tracker]]:
    class Prioritized(Job[Tracker]):
        NAME = f"priority_{priority}"
        PRIORITY = priority
        tag: str

        def run(self, state: Tracker) -> None:
            state.record(self.tag)

    return Prioritized


def test_higher_priority_runs_first(storage: Storage, start_worker: StartWorker) -> None:
    low, mid, high = prioritized(-5), prioritized(0), prioritized(10)
    producer = create_server(storage)
    ids = [
        producer.queue(low("low")),
        producer.queue(mid("mid-1")),
        producer.queue(high("high-1")),
        producer.queue(mid("mid-2")),
        producer.queue(high("high-2")),
    ]
    assert [producer.get(i).priority for i in ids] == [-5, 0, 10, 0, 10]
    state = Tracker()
    config = WorkerConfig(lambda: state).register(low).register(mid).register(high)
    worker = start_worker(config.set_worker_count(DEFAULT_QUEUE, 1))
    worker.wait(ids, timeout=WAIT)
    assert state.ran == ["high-1", "high-2", "mid-1", "mid-2", "low"]


# ---------------------------------------------------------------------------------------
# Timeouts.


class SlowSync(Job[Tracker]):
    NAME = "slow_sync"
    TIMEOUT = 0.2
    MAX_RETRIES = MaxRetries.count(1)
    BACKOFF = Backoff.fixed(0)

    def run(self, state: Tracker) -> None:
        state.record("started")
        assert state.gate is not None
        state.gate.wait(WAIT)
        state.record("finished late")


class SlowAsync(Job[Tracker]):
    NAME = "slow_async"
    TIMEOUT = 0.2
    MAX_RETRIES = MaxRetries.count(1)
    BACKOFF = Backoff.fixed(0)

    async def run(self, state: Tracker) -> None:
        state.record("started")
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            state.record("cancelled")
            raise


@pytest.mark.parametrize("cls", [SlowSync, SlowAsync], ids=["sync", "async"])
def test_timeout_is_a_failed_attempt(
    start_worker: StartWorker, gate: Gates, cls: type[Job[Tracker]]
) -> None:
    state = Tracker(gate=gate())
    worker = start_worker(WorkerConfig(lambda: state).register(cls))
    job_id = worker.queue(cls())
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.FAILED
    assert info.attempt == 2
    assert info.timeout == 0.2
    assert [a.outcome for a in info.history] == ["failed", "failed"]
    for attempt in info.history:
        assert attempt.error is not None
        assert attempt.error.type == "Timeout"
        assert attempt.finished_at - attempt.started_at >= timedelta(seconds=0.2) - EPSILON
    assert info.last_error == info.history[-1].error

    if cls is SlowAsync:
        wait_for(lambda: state.ran.count("cancelled") == 2)
    else:
        # The late result of a sync attempt is ignored: the job stays failed.
        assert state.gate is not None
        state.gate.set()
        wait_for(lambda: state.ran.count("finished late") == 2)
        time.sleep(0.1)
        info = worker.get(job_id)
        assert (info.status, info.attempt) == (JobStatus.FAILED, 2)


# ---------------------------------------------------------------------------------------
# Stopping: drain, release, context manager, join.


class Blocking(Job[Tracker]):
    """Blocks until the state's gate opens (sync)."""

    NAME = "blocking"

    def run(self, state: Tracker) -> None:
        state.enter()
        try:
            assert state.gate is not None
            if not state.gate.wait(WAIT):
                raise TimeoutError("gate never opened")
            state.record("done")
        finally:
            state.leave()


class AsyncBlocking(Job[Tracker]):
    """Blocks until the state's gate opens (async)."""

    NAME = "blocking"

    async def run(self, state: Tracker) -> None:
        state.enter()
        try:
            assert state.gate is not None
            gate = state.gate
            deadline = time.monotonic() + WAIT
            while not gate.is_set():
                if time.monotonic() > deadline:
                    raise TimeoutError("gate never opened")
                await asyncio.sleep(0.01)
            state.record("done")
        finally:
            state.leave()


BLOCKING = pytest.mark.parametrize("cls", [Blocking, AsyncBlocking], ids=["sync", "async"])


@BLOCKING
def test_stop_drains_running_jobs(
    start_worker: StartWorker, gate: Gates, cls: type[Job[Tracker]]
) -> None:
    state = Tracker(gate=gate())
    worker = start_worker(WorkerConfig(lambda: state).register(cls))
    job_id = worker.queue(cls())
    assert state.started.wait(WAIT)
    assert worker.in_flight == 1
    assert state.gate is not None
    opener = threading.Timer(0.3, state.gate.set)
    opener.start()
    worker.stop(timeout=WAIT)  # returns once the running job finished
    opener.join()
    assert not worker.running
    info = worker.get(job_id)
    assert (info.status, info.attempt) == (JobStatus.COMPLETED, 1)
    assert state.ran == ["done"]

    # A stopped worker claims nothing more; it is still a queue handle.
    late = worker.queue(cls())
    time.sleep(0.2)
    assert worker.get(late).status is JobStatus.AVAILABLE


@BLOCKING
def test_stop_past_timeout_releases_jobs_to_another_worker(
    start_worker: StartWorker, gate: Gates, cls: type[Job[Tracker]]
) -> None:
    stuck = Tracker(gate=gate())
    first = start_worker(WorkerConfig(lambda: stuck).register(cls))
    job_id = first.queue(cls())
    assert stuck.started.wait(WAIT)
    first.stop(timeout=0.2)
    assert not first.running
    info = first.get(job_id)
    assert info.status is JobStatus.AVAILABLE
    assert info.attempt == 0  # a released attempt is not counted
    assert info.worker_id is None
    assert [a.outcome for a in info.history] == ["released"]
    assert info.history[0].worker_id == first.worker_id

    free = Tracker(gate=gate())
    assert free.gate is not None
    free.gate.set()
    second = start_worker(WorkerConfig(lambda: free).register(cls))
    (info,) = second.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    assert info.attempt == 1
    assert [a.outcome for a in info.history] == ["released", "completed"]
    assert info.history[1].worker_id == second.worker_id
    assert free.ran == ["done"]
    assert stuck.ran == []


def test_worker_is_a_context_manager(start_worker: StartWorker) -> None:
    state = Tracker()
    with start_worker(WorkerConfig(lambda: state).register(Registered)) as worker:
        assert isinstance(worker, Worker)
        assert worker.running
        ids = worker.queue_many([Registered() for _ in range(3)])
        worker.wait(ids, timeout=WAIT)
    assert not worker.running
    assert worker.join(timeout=0)

    other = start_worker(WorkerConfig(lambda: state).register(Registered))
    with pytest.raises(RuntimeError, match="boom"), other:
        raise RuntimeError("boom")
    assert not other.running


def test_join_returns_when_stopped(start_worker: StartWorker) -> None:
    worker = start_worker(WorkerConfig().register(NoState))
    assert worker.join(timeout=0.05) is False
    joined: list[bool] = []
    joiner = threading.Thread(target=lambda: joined.append(worker.join()))
    joiner.start()
    worker.stop(timeout=1)
    joiner.join(WAIT)
    assert joined == [True]
    worker.stop(timeout=1)  # idempotent


# ---------------------------------------------------------------------------------------
# Inspecting jobs: get, list, counts.


class Report(Job[None]):
    NAME = "report"
    QUEUE = "reports"
    MAX_RETRIES = MaxRetries.count(2)
    TIMEOUT = 30.0
    PRIORITY = 3
    VERSION = 2

    day: str
    pages: int = 1

    def run(self, state: None) -> None:
        pass


def test_get_describes_a_job(storage: Storage, start_worker: StartWorker) -> None:
    producer = create_server(storage)
    before = datetime.now(UTC)
    job_id = producer.queue(Report("2024-05-01", pages=7))
    assert isinstance(job_id, uuid.UUID)
    assert job_id.version == 7
    info = producer.get(job_id)
    assert info.id == job_id
    assert producer.get(str(job_id)) == info
    assert (info.name, info.queue, info.args) == (
        "report",
        "reports",
        {"day": "2024-05-01", "pages": 7},
    )
    assert (info.status, info.attempt, info.max_retries, info.priority) == (
        JobStatus.AVAILABLE,
        0,
        2,
        3,
    )
    assert (info.timeout, info.version) == (30.0, 2)
    assert before - EPSILON <= info.created_at <= datetime.now(UTC) + EPSILON
    assert info.created_at.tzinfo is not None
    assert info.run_at >= info.created_at - EPSILON
    assert (info.started_at, info.finished_at, info.last_error, info.history) == (
        None,
        None,
        None,
        [],
    )
    assert (info.worker_id, info.lease_expires_at) == (None, None)
    assert Report(**info.args) == Report("2024-05-01", pages=7)

    worker = start_worker(WorkerConfig().register(Report))
    (done,) = producer.wait([job_id], timeout=WAIT)
    assert (done.status, done.attempt) == (JobStatus.COMPLETED, 1)
    assert done.started_at is not None and done.finished_at is not None
    assert info.created_at <= done.started_at <= done.finished_at
    assert done.last_error is None
    (attempt,) = done.history
    assert (attempt.attempt, attempt.outcome, attempt.error) == (1, "completed", None)
    assert attempt.worker_id == worker.worker_id
    assert attempt.started_at == done.started_at
    # Finished jobs are kept.
    assert producer.get(job_id) == done


def test_get_unknown_or_malformed_id(handle: QueueHandle) -> None:
    with pytest.raises(JobNotFoundError):
        handle.get(uuid.uuid4())
    with pytest.raises(ConfigError, match="expected a UUID"):
        handle.get("not-a-uuid")


def test_list_filters_and_pages(handle: QueueHandle) -> None:
    reports = handle.queue_many([Report(f"day-{i}") for i in range(5)])
    stamps = handle.queue_many([Stamp(f"s{i}") for i in range(3)])
    later = handle.schedule(Stamp("later"), after=timedelta(hours=1))

    everything = handle.list()
    assert [j.id for j in everything] == [later, *reversed(stamps), *reversed(reports)]
    assert everything.next_cursor is None

    assert [j.id for j in handle.list(name="report")] == list(reversed(reports))
    assert [j.id for j in handle.list(queue="reports")] == list(reversed(reports))
    assert [j.id for j in handle.list(queue=DEFAULT_QUEUE)] == [later, *reversed(stamps)]
    assert [j.id for j in handle.list(status="scheduled")] == [later]
    assert [j.id for j in handle.list(status=JobStatus.SCHEDULED, name="report")] == []
    assert len(handle.list(status=["available", JobStatus.SCHEDULED])) == 9
    assert len(handle.list(status="completed")) == 0
    assert [j.id for j in handle.list(name="stamp", status="available")] == list(reversed(stamps))

    pages = []
    cursor = None
    while True:
        page = handle.list(name="report", limit=2, cursor=cursor)
        pages.append([j.id for j in page])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [
        [reports[4], reports[3]],
        [reports[2], reports[1]],
        [reports[0]],
    ]


def test_counts_per_queue_and_status(storage: Storage, start_worker: StartWorker) -> None:
    producer = create_server(storage)
    assert producer.counts() == {}
    producer.queue_many([Report(f"d{i}") for i in range(3)])
    producer.schedule(Stamp("later"), after=timedelta(hours=1))
    producer.queue(Stamp("now"))
    assert producer.counts() == {
        "reports": {"available": 3},
        DEFAULT_QUEUE: {"available": 1, "scheduled": 1},
    }
    worker = start_worker(WorkerConfig().register(Report))
    worker.wait([j.id for j in producer.list(name="report")], timeout=WAIT)
    assert producer.counts() == {
        "reports": {"completed": 3},
        DEFAULT_QUEUE: {"available": 1, "scheduled": 1},
    }


def test_queue_many_stores_all_in_order(handle: QueueHandle) -> None:
    ids = handle.queue_many(Report(f"d{i}", pages=i) for i in range(50))
    assert len(set(ids)) == 50
    assert ids == sorted(ids)  # time-ordered
    assert [handle.get(i).args["pages"] for i in ids] == list(range(50))
    assert handle.counts() == {"reports": {"available": 50}}
    assert handle.queue_many([]) == []


# ---------------------------------------------------------------------------------------
# Async twins.


def test_async_twins_inside_asyncio_run(storage: Storage, start_worker: StartWorker) -> None:
    state = Tracker()
    worker = start_worker(WorkerConfig(lambda: state).register(Stamp))
    producer = create_server(storage)

    async def main() -> list[Any]:
        first = await producer.aqueue(Stamp("aqueue"))
        many = await producer.aqueue_many([Stamp("m1"), Stamp("m2")])
        later = await producer.aschedule(Stamp("aschedule"), after=timedelta(milliseconds=200))
        at = await producer.aschedule(
            Stamp("at"), at=datetime.now(UTC) + timedelta(milliseconds=100)
        )
        ids = [first, *many, later, at]
        infos = []
        for job_id in ids:
            while (info := await producer.aget(job_id)).status is not JobStatus.COMPLETED:
                await asyncio.sleep(0.02)
            infos.append(info)
        page = await producer.alist(name="stamp", status="completed")
        counts = await producer.acounts()
        return [ids, infos, page, counts]

    ids, infos, page, counts = asyncio.run(main())
    assert [i.id for i in infos] == ids
    assert sorted(tag for tag, _ in state.ran) == ["aqueue", "aschedule", "at", "m1", "m2"]
    assert {j.id for j in page} == set(ids)
    assert counts == {DEFAULT_QUEUE: {"completed": 5}}
    assert worker.running
