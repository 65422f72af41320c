"""Jobs and commands for tests/test_processes.py, run as separate processes.

Usage (each prints one JSON line on success):

    python process_jobs.py queue [DB] PATH      queue Touch(PATH), print its id, exit
    python process_jobs.py hang DB MARKER       queue Hang(MARKER), print its id, exit
    python process_jobs.py work [DB] JOB_ID     run a worker until JOB_ID is finished, then
                                                print its status and exit
    python process_jobs.py serve DB             run a worker that never polls (an hour
                                                between polls), print its pid once started,
                                                stop when stdin closes

DB is a SQLite file path or a storage URL (PostgreSQL). Without DB, the storage is
whatever ``create_server()`` / ``WorkerConfig()`` pick on their own: ``$HAULER_STORAGE``,
else ``hauler.db`` in the working directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hauler import Job, QueueHandle, WorkerConfig, create_server
from hauler.storage import SqliteStorage, Storage, from_url


class Touch(Job[None]):
    """Write the running process's pid to ``path``."""

    NAME = "touch"
    path: str

    def run(self, state: None) -> None:
        Path(self.path).write_text(str(os.getpid()))


class Hang(Job[None]):
    """First run: write the pid to ``marker`` and hang. Later runs: write ``marker.rerun``.

    Its short heartbeat interval makes the lease short (three intervals), so a killed
    worker's job is reclaimed quickly.
    """

    NAME = "hang"
    HEARTBEAT_INTERVAL = 200
    marker: str

    def run(self, state: None) -> None:
        marker = Path(self.marker)
        if marker.exists():
            Path(f"{self.marker}.rerun").write_text(str(os.getpid()))
            return
        marker.write_text(str(os.getpid()))
        time.sleep(60)  # the test kills this process meanwhile


def _storage(db: str | None) -> Storage | None:
    if db is None:
        return None
    if "://" in db:  # a storage URL (PostgreSQL)
        return from_url(db)
    return SqliteStorage(db, poll_interval=0.05)


def main(argv: list[str]) -> None:
    command, *args = argv
    db = args[0] if len(args) == 2 or command == "serve" else None
    storage = _storage(db)
    if command in ("queue", "hang"):
        handle: QueueHandle = create_server(storage)
        job = Touch(args[-1]) if command == "queue" else Hang(args[-1])
        print(json.dumps({"id": str(handle.queue(job))}), flush=True)
    elif command == "work":
        config = WorkerConfig(storage=storage, reclaim_interval=0.2)
        worker = config.register(Touch).register(Hang).start()
        (info,) = worker.wait([args[-1]], timeout=60)
        worker.stop(timeout=5)
        print(json.dumps({"status": info.status.value, "pid": os.getpid()}), flush=True)
    elif command == "serve":
        # Jobs queued by other processes reach it only through the storage's signal
        # (PostgreSQL LISTEN/NOTIFY, SQLite's watch on its -wal file): its poll is an hour.
        assert db is not None
        hour = 3600
        if "://" in db:
            slow: Storage = from_url(db.replace("poll_interval=0.05", f"poll_interval={hour}"))
        else:
            slow = SqliteStorage(db, poll_interval=hour)
        worker = WorkerConfig(storage=slow).register(Touch).start()
        print(json.dumps({"pid": os.getpid()}), flush=True)
        sys.stdin.read()
        worker.stop(timeout=5)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
