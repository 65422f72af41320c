"""A storage unreachable for longer than a lease, with jobs running through it.

A worker pool cut off from its storage cannot extend its leases, so in storage they run
out. When the storage returns, the pool's own reclaim task must not take back the jobs the
pool is still running: it reclaims only leases that ended before the earliest one the pool
holds, and its heartbeats extend its own as soon as they get through. So each job completes
once, with a single attempt in its history, however long the outage was. (Another process's
worker could reclaim them meanwhile; at-least-once allows that, and the crash-storm and
fencing tests show what then happens.)

Also: ``Worker.stop()`` on a storage that keeps failing gives up in bounded time, and what
it could not write is not lost once the storage is back.

The storages: a SQLite file locked by another process (``BEGIN EXCLUSIVE``) and a
PostgreSQL server of the test's own, stopped (``pg_ctl stop``) and started again.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pgserver as pg
from conftest import wait_for
from hauler import Job, JobStatus, QueueHandle, StorageError, WorkerConfig
from hauler.storage import PostgresStorage, SqliteStorage, Storage

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX locks, pg_ctl")


class Long(Job[list[int]]):
    """Work for ``seconds``, then record ``n``. A 0.6 s lease (heartbeat every 200 ms)."""

    NAME = "long"
    HEARTBEAT_INTERVAL = 200
    n: int
    seconds: float

    def run(self, state: list[int]) -> None:
        time.sleep(self.seconds)
        state.append(self.n)


# Holds SQLite's write lock (BEGIN EXCLUSIVE) for argv[2] seconds, in another process.
_LOCKER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""


class Outage:
    """Make one storage unreachable (``begin``) and reachable again (``end``)."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.db = tmp_path / "jobs.db"
        self.server: pg.PrivateServer | None = None
        self.locker: subprocess.Popen[str] | None = None
        self.opened: list[Storage] = []
        if backend == "postgres":
            self.server = pg.PrivateServer()

    def storage(self) -> Storage:
        """A new storage on it (closed by :meth:`close`)."""
        s: Storage
        if self.server is not None:
            s = PostgresStorage(self.server.dsn, poll_interval=0.05)
        else:
            s = SqliteStorage(self.db, poll_interval=0.02, busy_timeout=0.2)
        self.opened.append(s)
        return s

    def begin(self, seconds: float) -> None:
        """Cut the storage off; for SQLite, the lock lifts by itself after ``seconds``."""
        if self.server is not None:
            self.server.stop()
            return
        self.locker = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(self.db), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.locker.stdout is not None and self.locker.stdout.readline() == "locked\n"

    def end(self) -> None:
        """Make the storage reachable again (a SQLite lock still held is let go)."""
        if self.server is not None:
            self.server.start()
        elif self.locker is not None:
            self.locker.kill()  # the lock goes with the process
            self.locker.communicate()
            self.locker = None

    def close(self) -> None:
        for s in self.opened:
            s.close()
        if self.locker is not None:
            self.locker.kill()
            self.locker.communicate()
        if self.server is not None:
            self.server.destroy()


@pytest.fixture(params=["sqlite", "postgres"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    o = Outage(request.param, tmp_path)
    yield o
    o.close()


def statuses(handle: QueueHandle, ids: list[uuid.UUID]) -> set[JobStatus]:
    return {handle.get(i).status for i in ids}


def test_own_running_jobs_are_not_reclaimed_after_an_outage_longer_than_a_lease(
    outage: Outage,
) -> None:
    ran: list[int] = []
    config = WorkerConfig(lambda: ran, storage=outage.storage(), reclaim_interval=0.05)
    config.register(Long).set_worker_count("default", 4)
    with config.start() as worker:
        ids = [worker.queue(Long(n, 3.0)) for n in range(4)]
        wait_for(lambda: statuses(worker, ids) == {JobStatus.RUNNING}, timeout=30)
        outage.begin(60)
        time.sleep(2.0)  # more than three leases (0.6 s)
        outage.end()
        infos = worker.wait(ids, timeout=60)
    for info in infos:
        assert info.status is JobStatus.COMPLETED, info
        assert [a.outcome for a in info.history] == ["completed"], info.history
        assert info.attempt == 1
    assert sorted(ran) == [0, 1, 2, 3]  # each ran once


def catch(call: Callable[[], object], raised: list[BaseException]) -> None:
    try:
        call()
    except BaseException as e:
        raised.append(e)


#: How long ``stop()`` may take past its timeout writing the last outcomes (the engine's
#: ``STOP_FLUSH_GRACE``), plus room for a loaded machine.
FLUSH_GRACE = 5.0
SLACK = 4.0


def test_stop_gives_up_in_bounded_time_on_a_failing_storage_and_nothing_is_lost(
    outage: Outage,
) -> None:
    """The storage goes away with one job finishing and one still running: ``stop()`` can
    neither write the first's outcome nor release the second. It raises ``StorageError``
    instead of waiting for the storage, within its timeout plus the grace for the last
    writes. Once the storage is back, another worker runs both jobs again when their
    leases expire (at-least-once): nothing is lost."""
    ran: list[int] = []
    config = WorkerConfig(
        lambda: ran, storage=outage.storage(), reclaim_interval=0.05, stop_timeout=1.0
    )
    worker = config.register(Long).start()
    ids = [worker.queue(Long(0, 0.5)), worker.queue(Long(1, 3.0))]
    wait_for(lambda: statuses(worker, ids) == {JobStatus.RUNNING}, timeout=30)
    outage.begin(60)  # for longer than stop() could ever wait
    # In a thread, so a stop() that never gives up fails the test instead of hanging it.
    raised: list[BaseException] = []
    stopping = threading.Thread(target=lambda: catch(worker.stop, raised), daemon=True)
    stopping.start()
    stopping.join(1.0 + FLUSH_GRACE + SLACK)
    alive = stopping.is_alive()
    outage.end()
    assert not alive, "stop() did not give up on the failing storage"
    stopping.join()
    assert len(raised) == 1 and isinstance(raised[0], StorageError), raised

    ran.clear()
    again = WorkerConfig(lambda: ran, storage=outage.storage(), reclaim_interval=0.05)
    with again.register(Long).start() as other:
        infos = other.wait(ids, timeout=60)
    for info in infos:
        assert info.status is JobStatus.COMPLETED, info
        outcomes = [a.outcome for a in info.history]
        assert outcomes == ["lease_expired", "completed"], outcomes
    assert sorted(ran) == [0, 1]
