"""A worker process for tests/test_groups.py: runs group members and the group's callback.

Usage: python group_process.py DB LOG STOP

Runs a worker (4 slots) on DB (a SQLite file path or a storage URL) with ``Member`` and
``Finished`` registered, until the file STOP exists; then stops and prints one JSON line.
Members append ``start``/``end`` lines with a timestamp to LOG; ``Finished`` appends one
``finished`` line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hauler import Job, WorkerConfig
from hauler.storage import SqliteStorage, Storage, from_url


def append(log: str, line: str) -> None:
    """Append one line to ``log`` in a single write (O_APPEND: lines never interleave)."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class Member(Job[None]):
    """Records when it starts and ends, working for a short while in between."""

    NAME = "group_member"
    log: str
    n: int

    def run(self, state: None) -> None:
        append(self.log, f"start {self.n} {time.time_ns()} {os.getpid()}")
        time.sleep(0.15)
        append(self.log, f"end {self.n} {time.time_ns()} {os.getpid()}")


class Finished(Job[None]):
    """The group's on_complete job: records that it ran."""

    NAME = "group_finished"
    log: str

    def run(self, state: None) -> None:
        append(self.log, f"finished 0 {time.time_ns()} {os.getpid()}")


def main(db: str, stop: str) -> None:
    storage: Storage = from_url(db) if "://" in db else SqliteStorage(db, poll_interval=0.05)
    config = WorkerConfig(storage=storage).register(Member).register(Finished)
    worker = config.set_worker_count("default", 4).start()
    deadline = time.monotonic() + 60
    while not Path(stop).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop(timeout=5)
    print(json.dumps({"pid": os.getpid()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[3])
