"""A worker process for tests/test_cron.py: registers an every-second cron entry.

Usage: python cron_process.py DB UNTIL

Runs a worker on DB (a SQLite file path or a storage URL) with the cron entry ``tick``
(``* * * * * *``) until the Unix time UNTIL, then stops and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time

from hauler import Job, WorkerConfig
from hauler.storage import SqliteStorage, Storage, from_url


class Tick(Job[None]):
    """Does nothing: the test counts the jobs the ticks stored."""

    NAME = "tick"

    def run(self, state: None) -> None:
        pass


def main(db: str, until: float) -> None:
    storage: Storage = from_url(db) if "://" in db else SqliteStorage(db, poll_interval=0.05)
    worker = WorkerConfig(storage=storage).cron("* * * * * *", Tick, name="tick").start()
    time.sleep(max(0.0, until - time.time()))
    worker.stop(timeout=5)
    print(json.dumps({"pid": os.getpid()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
