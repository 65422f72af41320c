"""Jobs and commands for tests/test_unique.py and tests/test_limits.py, run as processes.

Usage (each prints one JSON line on success):

    python limits_process.py queue DB GO KEY     wait for file GO, queue Once(KEY), print
                                                 {"id", "duplicate"}
    python limits_process.py work DB GO N        wait for file GO, run a worker (4 threads)
                                                 until N jobs are completed

DB is a SQLite file path or a storage URL (PostgreSQL). Each process writes GO.<pid> once
it is ready; the test then creates GO, so every process starts at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hauler import Job, JobStatus, Unique, WorkerConfig, create_server
from hauler.storage import SqliteStorage, Storage, from_url


class Once(Job[None]):
    """A unique job (by its fields)."""

    NAME = "once"
    UNIQUE = Unique()
    key: str

    def run(self, state: None) -> None:
        pass


class Span(Job[None]):
    """A singleton: append ``start end pid`` (ns) to ``log`` around a short sleep."""

    NAME = "span"
    SINGLETON = True
    log: str

    def run(self, state: None) -> None:
        record(self.log)


class Pair(Job[None]):
    """At most two at once: append ``start end pid`` to ``log`` around a short sleep."""

    NAME = "pair"
    CONCURRENCY = 2
    log: str

    def run(self, state: None) -> None:
        record(self.log)


def record(log: str) -> None:
    start = time.time_ns()
    time.sleep(0.03)
    end = time.time_ns()
    with Path(log).open("a") as f:
        f.write(f"{start} {end} {os.getpid()}\n")


def _storage(db: str) -> Storage:
    if "://" in db:
        return from_url(db)
    return SqliteStorage(db, poll_interval=0.02)


def _ready_then_wait(go: str) -> None:
    Path(f"{go}.{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{go} never appeared")
        time.sleep(0.001)


def main(argv: list[str]) -> None:
    command, db, go, arg = argv
    storage = _storage(db)
    if command == "queue":
        handle = create_server(storage)
        _ready_then_wait(go)
        job_id = handle.queue(Once(arg))
        print(json.dumps({"id": str(job_id), "duplicate": job_id.duplicate}), flush=True)
    elif command == "work":
        config = WorkerConfig(storage=storage).register(Span).register(Pair)
        worker = config.set_worker_count("default", 4).start()
        _ready_then_wait(go)
        deadline = time.monotonic() + 60
        while worker.count(status=JobStatus.COMPLETED) < int(arg):
            if time.monotonic() > deadline:
                raise SystemExit("the jobs did not finish in time")
            time.sleep(0.05)
        worker.stop(timeout=5)
        print(json.dumps({"pid": os.getpid()}), flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
