"""A worker process for tests/test_postgres.py: one "host" of a fleet sharing PostgreSQL.

    python pg_fleet.py URL LOG [stay]

Runs a pool of 4 threads for ``Append`` jobs, prints ``ready`` once started, and exits
(stopping cleanly) when no job is left pending or running for a second; with ``stay``, it
runs until killed.
"""

from __future__ import annotations

import os
import sys
import time

from hauler import Job, WorkerConfig
from hauler.storage import from_url


class Append(Job[str]):
    """Append ``n`` to the log file (the state) with one O_APPEND write."""

    NAME = "fleet_append"
    HEARTBEAT_INTERVAL = 300  # lease 0.9 s: a killed host's jobs come back quickly
    n: int

    def run(self, state: str) -> None:
        fd = os.open(state, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{self.n}\n".encode())
        finally:
            os.close(fd)


def pending(counts: dict[str, dict[str, int]]) -> int:
    busy = ("scheduled", "available", "running", "retryable")
    return sum(n for per in counts.values() for status, n in per.items() if status in busy)


def main(url: str, log: str, mode: str = "") -> None:
    config = WorkerConfig(lambda: log, storage=from_url(url), reclaim_interval=0.2)
    worker = config.register(Append).start()
    print("ready", flush=True)
    if mode == "stay":
        worker.join()
        return
    idle_since = None
    while True:
        time.sleep(0.2)
        if pending(worker.counts()) == 0:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 1.0:
                break
        else:
            idle_since = None
    worker.stop(timeout=10)


if __name__ == "__main__":
    main(*sys.argv[1:])
