"""Job groups on every storage: queue_group, group(), cancel_group, the concurrency limit and
the on_complete callback, with real workers (see the ``storage`` fixture), and a group run
by two worker processes at once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

import pgserver as pg
from conftest import WAIT, StartWorker, wait_for
from hauler import (
    CancelCounts,
    ConfigError,
    GroupInfo,
    GroupNotFoundError,
    GroupStatus,
    Job,
    JobInfo,
    JobStatus,
    MaxRetries,
    QueueHandle,
    Unique,
    WorkerConfig,
    create_server,
    current_job_cancelled,
)
from hauler.storage import SqliteStorage, Storage, from_url

HELPER = Path(__file__).with_name("group_process.py")


@dataclass
class Seen:
    """What the jobs did: the members running now and at most, and the callbacks."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0
    most: int = 0
    ran: list[str] = field(default_factory=list)
    callbacks: list[str] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def enter(self, text: str) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.ran.append(text)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


class Part(Job[Seen]):
    """A member: counts itself running for a short while; fails when told to."""

    NAME = "part"
    MAX_RETRIES = MaxRetries.count(0)
    text: str = ""
    fail: bool = False

    def run(self, state: Seen) -> None:
        state.enter(self.text)
        try:
            time.sleep(0.02)
            if self.fail:
                raise ValueError(f"part {self.text} failed")
        finally:
            state.leave()


class OtherPart(Job[Seen]):
    """A member of another class, on another queue."""

    NAME = "other_part"
    QUEUE = "other"
    text: str = ""

    def run(self, state: Seen) -> None:
        state.enter(self.text)
        state.leave()


class Held(Job[Seen]):
    """A member that runs until its gate opens or its cancel is requested."""

    NAME = "held"
    HEARTBEAT_INTERVAL = 200
    text: str = ""

    def run(self, state: Seen) -> None:
        state.enter(self.text)
        state.started.set()
        try:
            deadline = time.monotonic() + WAIT
            while not state.gate.is_set() and not current_job_cancelled():
                if time.monotonic() > deadline:
                    raise TimeoutError("never let go")
                time.sleep(0.01)
        finally:
            state.leave()


class Loose(Job[Seen]):
    """An ordinary job, in no group."""

    NAME = "loose"
    text: str = ""

    def run(self, state: Seen) -> None:
        with state.lock:
            state.ran.append(self.text)


def _briefly(state: Seen, text: str) -> None:
    state.enter(text)
    try:
        time.sleep(0.02)
    finally:
        state.leave()


class Solo(Job[Seen]):
    """A member whose class has its own limit: one at a time."""

    NAME = "solo"
    SINGLETON = True
    text: str = ""

    def run(self, state: Seen) -> None:
        _briefly(state, self.text)


class Paired(Job[Seen]):
    """A member whose class has its own limit: two at a time."""

    NAME = "paired"
    CONCURRENCY = 2
    text: str = ""

    def run(self, state: Seen) -> None:
        _briefly(state, self.text)


class Once(Job[Seen]):
    """A unique job: never a group member."""

    NAME = "once"
    UNIQUE = Unique()

    def run(self, state: Seen) -> None:
        pass


class Report(Job[Seen]):
    """The groups' on_complete job."""

    NAME = "report"
    text: str = ""

    def run(self, state: Seen) -> None:
        with state.lock:
            state.callbacks.append(self.text)


def config(state: Seen) -> WorkerConfig[Seen]:
    c = WorkerConfig(lambda: state)
    for cls in (Part, OtherPart, Held, Loose, Report, Solo, Paired, Once):
        c.register(cls)
    return c


def finished(handle: QueueHandle, group_id: uuid.UUID) -> GroupInfo | None:
    info = handle.group(group_id)
    return info if info.finished_at is not None else None


def wait_group(handle: QueueHandle, group_id: uuid.UUID) -> GroupInfo:
    wait_for(lambda: finished(handle, group_id) is not None)
    return handle.group(group_id)


def reports(handle: QueueHandle) -> list[JobStatus]:
    return [j.status for j in handle.list(name="report")]


def test_a_group_runs_its_members_and_reports_on_them(
    storage: Storage, start_worker: StartWorker
) -> None:
    state = Seen()
    worker = start_worker(config(state))
    members = [Part(text=f"p{i}") for i in range(4)] + [OtherPart(text="o")]
    group_id = worker.queue_group("batch", members, on_complete=Report(text="batch"))
    info = wait_group(worker, group_id)
    assert info.id == group_id
    assert info.name == "batch"
    assert info.status is GroupStatus.DONE
    assert (info.total, info.done, info.failed, info.cancelled) == (5, 5, 0, 0)
    assert (info.running, info.pending, info.progress) == (0, 0, 100)
    assert info.concurrency is None
    assert info.on_complete == "report"
    assert info.finished_at is not None and info.finished_at >= info.created_at
    assert sorted(state.ran) == ["o", "p0", "p1", "p2", "p3"]

    wait_for(lambda: reports(worker) == [JobStatus.COMPLETED])
    assert state.callbacks == ["batch"]
    assert info.on_complete_job_id == worker.list(name="report").jobs[0].id
    page = worker.list(group=group_id)
    assert len(page) == 5 and all(j.group_id == group_id for j in page)
    assert worker.count(group=group_id, queue="other") == 1
    assert worker.get(info.on_complete_job_id).group_id is None


def test_progress_and_failures(storage: Storage, start_worker: StartWorker) -> None:
    state = Seen()
    handle = create_server(storage)
    group_id = handle.queue_group(
        "mixed", [Part(text="a"), Part(text="b", fail=True), Part(text="c"), Part(text="d")]
    )
    info = handle.group(group_id)
    assert (info.status, info.total, info.pending, info.progress) == (
        GroupStatus.IN_PROGRESS,
        4,
        4,
        0,
    )
    assert info.finished_at is None and info.on_complete is None
    start_worker(config(state))
    info = wait_group(handle, group_id)
    assert info.status is GroupStatus.DONE_WITH_ERRORS
    assert (info.done, info.failed, info.progress) == (3, 1, 100)
    assert info.on_complete_job_id is None


def test_concurrency_holds_members_back_but_not_other_jobs(
    storage: Storage, start_worker: StartWorker
) -> None:
    state = Seen()
    worker = start_worker(config(state))
    held = worker.queue_group("one at a time", [Held(text="h1"), Held(text="h2")], concurrency=1)
    assert state.started.wait(WAIT)
    # The second member waits (no attempt spent) while other jobs run.
    loose = worker.queue(Loose(text="loose"))
    (info,) = worker.wait([loose], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED
    group = worker.group(held)
    assert (group.running, group.pending) == (1, 1)
    (waiting,) = worker.list(group=held, status="available")
    assert waiting.attempt == 0
    state.gate.set()
    assert wait_group(worker, held).status is GroupStatus.DONE
    assert state.most == 1

    state.most = 0
    parts = worker.queue_group("pairs", [Part(text=str(i)) for i in range(10)], concurrency=2)
    assert wait_group(worker, parts).done == 10
    assert 1 <= state.most <= 2


def test_cancel_group_cancels_the_rest_and_runs_the_callback_once(
    storage: Storage, start_worker: StartWorker
) -> None:
    state = Seen()
    worker = start_worker(config(state))
    group_id = worker.queue_group(
        "cancel me",
        [Held(text="running"), Held(text="waiting1"), Held(text="waiting2")],
        concurrency=1,
        on_complete=Report(text="after cancel"),
    )
    assert state.started.wait(WAIT)
    assert worker.cancel_group(group_id) == CancelCounts(cancelled=2, requested=1)
    info = wait_group(worker, group_id)
    assert info.status is GroupStatus.CANCELLED
    assert info.cancelled == 3 and info.progress == 100
    assert state.ran == ["running"]
    wait_for(lambda: reports(worker) == [JobStatus.COMPLETED])
    assert state.callbacks == ["after cancel"]
    # Cancelling again changes nothing and queues nothing.
    assert worker.cancel_group(group_id) == CancelCounts(cancelled=0, requested=0)
    assert len(reports(worker)) == 1


def test_a_retried_member_reopens_the_group_but_the_callback_runs_once(
    storage: Storage, start_worker: StartWorker
) -> None:
    state = Seen()
    worker = start_worker(config(state))
    group_id = worker.queue_group(
        "retry", [Part(text="ok"), Part(text="bad", fail=True)], on_complete=Report(text="r")
    )
    assert wait_group(worker, group_id).status is GroupStatus.DONE_WITH_ERRORS
    (bad,) = worker.list(group=group_id, status="failed")
    wait_for(lambda: reports(worker) == [JobStatus.COMPLETED])
    assert worker.retry(bad.id) is True
    assert worker.group(group_id).status in (GroupStatus.IN_PROGRESS, GroupStatus.DONE_WITH_ERRORS)
    wait_for(lambda: len([j for j in worker.list(group=group_id) if j.history]) == 2)
    wait_for(lambda: worker.get(bad.id).status is JobStatus.FAILED)
    assert wait_group(worker, group_id).status is GroupStatus.DONE_WITH_ERRORS
    assert state.callbacks == ["r"]
    assert len(reports(worker)) == 1


def test_unknown_groups_and_bad_input(handle: QueueHandle) -> None:
    with pytest.raises(GroupNotFoundError, match="no job group with id"):
        handle.group(uuid.uuid4())
    with pytest.raises(GroupNotFoundError):
        handle.cancel_group(str(uuid.uuid4()))
    with pytest.raises(ConfigError, match="invalid group id"):
        handle.group("not-a-uuid")
    with pytest.raises(ConfigError, match="invalid group id"):
        handle.list(group="nope")
    with pytest.raises(ConfigError, match="at least one job"):
        handle.queue_group("empty", [])
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ConfigError, match="concurrency"):
            handle.queue_group("g", [Part()], concurrency=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="group name"):
        handle.queue_group("", [Part()])
    with pytest.raises(ConfigError, match="Job instance"):
        handle.queue_group("g", [Part(), "not a job"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="Job instance"):
        handle.queue_group("g", [Part()], on_complete=Report)  # type: ignore[arg-type]
    assert handle.count() == 0, "nothing stored by a refused group"


def test_a_group_limit_refuses_members_with_limits_of_their_own(handle: QueueHandle) -> None:
    # A job holds one concurrency limit: the group's, or its class's, never both.
    for member in (Solo(text="s"), Paired(text="p")):
        with pytest.raises(ConfigError, match="SINGLETON or CONCURRENCY"):
            handle.queue_group("limited", [Part(), member], concurrency=2)
    # Unique jobs are never members: a duplicate would be another group's job, or none's.
    for concurrency in (None, 1):
        with pytest.raises(ConfigError, match="UNIQUE"):
            handle.queue_group("unique", [Part(), Once()], concurrency=concurrency)
    assert handle.count() == 0, "nothing stored by a refused group"
    assert handle.queue(Once()).inserted, "the refused member's key was not taken"


def test_members_keep_their_own_limits_in_a_group_without_one(
    storage: Storage, start_worker: StartWorker
) -> None:
    state = Seen()
    worker = start_worker(config(state))
    solos = worker.queue_group("solos", [Solo(text=str(i)) for i in range(4)])
    assert wait_group(worker, solos).done == 4
    assert state.most == 1, "SINGLETON held inside the group"
    state.most = 0
    pairs = worker.queue_group("pairs", [Paired(text=str(i)) for i in range(6)])
    assert wait_group(worker, pairs).done == 6
    assert 1 <= state.most <= 2, "CONCURRENCY held inside the group"


def test_members_are_enqueued_jobs_for_on_enqueue_hooks(storage: Storage) -> None:
    seen: list[JobInfo] = []
    handle = create_server(storage, on_enqueue=seen.append)
    group_id = handle.queue_group("hooked", [Part(text="a"), OtherPart(text="b")])
    assert sorted(info.name for info in seen) == ["other_part", "part"]
    assert all(info.group_id == group_id for info in seen)


def test_deleting_the_members_deletes_the_group(storage: Storage, handle: QueueHandle) -> None:
    group_id = handle.queue_group("gone", [Part(text="a"), Part(text="b")])
    assert handle.cancel_group(group_id) == CancelCounts(cancelled=2, requested=0)
    assert handle.prune(older_than=timedelta(0), states=["cancelled"]) == 2
    with pytest.raises(GroupNotFoundError):
        handle.group(group_id)
    other = handle.queue_group("kept", [Part(text="c"), Part(text="d")])
    assert handle.delete_many(group=other, status="available") == 2
    with pytest.raises(GroupNotFoundError):
        handle.group(other)


def test_async_twins(handle: QueueHandle) -> None:

    async def main() -> None:
        group_id = await handle.aqueue_group("async", (Part(text=str(i)) for i in range(3)))
        info = await handle.agroup(group_id)
        assert info.total == 3
        assert await handle.acancel_group(group_id) == CancelCounts(cancelled=3, requested=0)
        assert (await handle.agroup(group_id)).status is GroupStatus.CANCELLED

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# Two worker processes


@pytest.fixture(params=["sqlite", "postgres"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """What the worker processes share: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
        return
    schema = pg.fresh_schema()
    yield f"{pg.dsn()}?schema={schema}&poll_interval=0.05"
    pg.drop_schema(schema)


def most_overlapping(lines: list[str]) -> int:
    """The most members between their start and end lines at any moment."""
    events = []
    for line in lines:
        kind, _n, ns, _pid = line.split()
        if kind in ("start", "end"):
            events.append((int(ns), 1 if kind == "start" else -1))
    running = most = 0
    for _ns, delta in sorted(events):
        running += delta
        most = max(most, running)
    return most


def test_two_worker_processes_hold_the_limit_and_call_back_once(
    tmp_path: Path, shared_db: str
) -> None:
    sys.path.insert(0, str(HELPER.parent))
    from group_process import Finished, Member

    log, stop = tmp_path / "log.txt", tmp_path / "stop"
    storage = from_url(shared_db) if "://" in shared_db else SqliteStorage(shared_db)
    handle = create_server(storage)
    try:
        group_id = handle.queue_group(
            "two processes",
            [Member(log=str(log), n=i) for i in range(8)],
            concurrency=2,
            on_complete=Finished(log=str(log)),
        )
        procs = [
            subprocess.Popen(
                [sys.executable, str(HELPER), shared_db, str(log), str(stop)],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            wait_for(lambda: "finished" in log.read_text() if log.exists() else False)
            info = handle.group(group_id)
        finally:
            stop.touch()
            for p in procs:
                _out, err = p.communicate(timeout=60)
                assert p.returncode == 0, err
        lines = log.read_text().splitlines()
        assert info.status is GroupStatus.DONE and info.done == 8
        assert sum(line.startswith("start") for line in lines) == 8
        assert sum(line.startswith("finished") for line in lines) == 1
        assert most_overlapping(lines) == 2, lines
        assert [j.status for j in handle.list(name="group_finished")] == [JobStatus.COMPLETED]
    finally:
        handle.close()
