"""SQLite storage faults under a running worker: a database locked by another process.

The fault gives the caller of ``queue()`` a clear ``StorageError`` once ``busy_timeout``
has passed; the worker keeps running through it (its claims, heartbeats and completions
fail and are retried) and resumes on its own once the lock is gone; every job ``queue()``
accepted completes, each exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hauler import Job, JobStatus, QueueHandle, StorageError, WorkerConfig
from hauler.storage import SqliteStorage

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file locks")


class Note(Job[list[int]]):
    """Record ``n``; ``pad`` makes the payload as big as a test needs.

    A 6 s lease, longer than any fault here lasts: a worker cut off from its storage for
    longer than a lease may see its jobs reclaimed and run again (at-least-once); these
    test shows that a shorter fault costs nothing, not even a second run.
    """

    NAME = "note"
    HEARTBEAT_INTERVAL = 2000
    n: int
    pad: str = ""
    seconds: float = 0.0

    def run(self, state: list[int]) -> None:
        time.sleep(self.seconds)
        state.append(self.n)


def start(db: Path, ran: list[int], **storage_options: float) -> WorkerConfig[list[int]]:
    storage = SqliteStorage(db, poll_interval=0.02, **storage_options)  # type: ignore[arg-type]
    return WorkerConfig(lambda: ran, storage=storage, reclaim_interval=0.1).register(Note)


def assert_completed_once(handle: QueueHandle, ids: list[uuid.UUID]) -> None:
    for info in handle.wait(ids, timeout=30):
        assert info.status is JobStatus.COMPLETED, info
        outcomes = [a.outcome for a in info.history]
        assert outcomes.count("completed") == 1, outcomes


def test_locked_database_waits_busy_timeout_then_fails_and_the_worker_resumes(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.db"
    ran: list[int] = []
    with start(db, ran, busy_timeout=0.5).start() as worker:
        before = [worker.queue(Note(n, seconds=0.05)) for n in range(5)]
        locker = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(db), "2.5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
            t = time.monotonic()
            with pytest.raises(StorageError, match="locked by another connection"):
                worker.queue(Note(99))
            assert 0.4 < time.monotonic() - t < 2.0  # it waited busy_timeout, not forever
            assert locker.wait(timeout=30) == 0
        finally:
            locker.kill()
            locker.communicate()  # closes its stdout pipe
        after = [worker.queue(Note(n)) for n in range(5, 10)]
        assert_completed_once(worker, before + after)
    assert sorted(ran) == list(range(10))


# Holds SQLite's write lock (BEGIN EXCLUSIVE) for argv[2] seconds, in another process.
_LOCKER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""
