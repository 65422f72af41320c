"""SQLite storage faults under a running worker: a database locked by another process, a
full filesystem, a read-only database file.

Each fault gives the caller of ``queue()`` a clear ``StorageError`` (for the lock, once
``busy_timeout`` has passed); the worker keeps running through it (its claims, heartbeats
and completions fail and are retried) and resumes on its own once the fault clears; every
job ``queue()`` accepted completes, each exactly once.

The filesystem faults need root: the full filesystem is a 2 MiB tmpfs mounted by the test,
and the read-only file is made immutable with ``chattr +i`` (writes refused even through
open descriptors, even for root). Where that is not possible the tests skip, saying why.
"""

from __future__ import annotations

import errno
import os
import shutil
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


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def immutable_files_refuse_writes(directory: Path) -> str | None:
    """Why ``chattr +i`` cannot fake a read-only file in ``directory``, or None if it can."""
    if shutil.which("chattr") is None:
        return "chattr is not installed"
    probe = directory / "probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT)
    try:
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
            return "this filesystem does not support chattr +i"
        try:
            os.write(fd, b"x")
        except PermissionError:
            return None
        return "this filesystem lets open descriptors write to immutable files"
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        os.close(fd)
        probe.unlink()


def test_read_only_database_file(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")
    why = immutable_files_refuse_writes(tmp_path)
    if why:
        pytest.skip(why)
    db = tmp_path / "jobs.db"
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    ran: list[int] = []
    with start(db, ran).start() as worker:
        first = worker.queue(Note(0))
        assert_completed_once(worker, [first])
        chattr("+i", *files)
        try:
            with pytest.raises(StorageError, match=str(db)):
                worker.queue(Note(99))
            time.sleep(0.5)  # the worker's claims fail meanwhile; it keeps running
        finally:
            chattr("-i", *files)
        after = [worker.queue(Note(n)) for n in range(1, 6)]
        assert_completed_once(worker, after)
    assert sorted(ran) == list(range(6))
