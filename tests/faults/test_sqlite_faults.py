"""SQLite storage faults under a running worker: a database locked by another process, and
a full filesystem.

Each fault gives the caller of ``queue()`` a clear ``StorageError`` (for the lock, once
``busy_timeout`` has passed); the worker keeps running through it (its claims, heartbeats
and completions fail and are retried) and resumes on its own once the fault clears; every
job ``queue()`` accepted completes, each exactly once. The full filesystem is a 2 MiB
tmpfs mounted by the test: it needs root, and skips (saying why) where it cannot mount.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hauler import Job, JobStatus, QueueHandle, StorageError, WorkerConfig
from hauler.storage import SqliteStorage

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX locks, Linux mounts")


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


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, mounted for the test (skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


def test_full_filesystem(small_fs: Path) -> None:
    db = small_fs / "jobs.db"
    ran: list[int] = []
    with start(db, ran).start() as worker:
        before = [worker.queue(Note(n, seconds=0.05)) for n in range(10)]
        filler = small_fs / "filler"
        try:
            fill(filler)
            # A payload that needs new pages: refused, clearly.
            with pytest.raises(StorageError, match="full"):
                worker.queue(Note(99, pad="x" * 300_000))
            time.sleep(0.5)  # the worker runs on (or retries) while the disk is full
        finally:
            filler.unlink()
        after = [worker.queue(Note(n)) for n in range(10, 12)]
        assert_completed_once(worker, before + after)
    assert sorted(ran) == list(range(12))
