"""A worker process for the fault tests: started, killed, stopped and resumed by them.

Usage::

    python fault_worker.py DB [--threads N] [--stop-timeout S] [--no-sigterm]
    python fault_worker.py DB --enqueue LOG N    (queue N Step jobs in one batch, then exit)

DB is a SQLite file path, or a PostgreSQL URL (``postgresql://...?schema=...``) opened with
``hauler.storage.from_url``. It runs one worker pool on it with every job class below registered,
prints ``ready <worker_id>`` once the pool runs, then blocks in ``worker.join()``. SIGTERM
ends it the way hauler handles it: ``SystemExit`` out of ``join()``, the pool drained at
exit, status 143.

Every job writes what it does to the log file it is given, one line per event
(``<event> <n> <pid>``), with a single ``write`` on an ``O_APPEND`` descriptor: a line is
written whole or not at all, whatever kills the process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from hauler import Backoff, Job, MaxRetries, WorkerConfig, create_server
from hauler.storage import SqliteStorage, Storage, from_url


def log_event(log: str, event: str, n: int) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {n} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


class Step(Job[None]):
    """Log ``start``, work for ``seconds``, log ``end``. A short lease (0.75 s), so a killed
    worker's job is reclaimed quickly; retried for as long as it takes."""

    NAME = "step"
    HEARTBEAT_INTERVAL = 250
    MAX_RETRIES = MaxRetries.infinite()
    log: str
    n: int
    seconds: float

    def run(self, state: None) -> None:
        log_event(self.log, "start", self.n)
        time.sleep(self.seconds)
        log_event(self.log, "end", self.n)


class Flaky(Job[None]):
    """Log ``start``; the first run (no file ``marker`` yet) creates it and raises, later
    runs log ``end``. Retried at once, with the same short lease as :class:`Step`."""

    NAME = "flaky"
    HEARTBEAT_INTERVAL = 250
    MAX_RETRIES = MaxRetries.count(3)
    BACKOFF = Backoff.fixed(0)
    log: str
    n: int
    marker: str

    def run(self, state: None) -> None:
        log_event(self.log, "start", self.n)
        marker = Path(self.marker)
        if not marker.exists():
            marker.touch()
            raise RuntimeError("first attempt fails")
        log_event(self.log, "end", self.n)


class Hold(Job[None]):
    """Log ``start``, then wait until the file ``hold`` exists (up to 60 s), log ``end``.

    The default heartbeat (5 s, so a 15 s lease): a job handed over faster than that was
    released, not reclaimed after its lease expired.
    """

    NAME = "hold"
    log: str
    n: int
    hold: str

    def run(self, state: None) -> None:
        log_event(self.log, "start", self.n)
        deadline = time.monotonic() + 60
        while not Path(self.hold).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        log_event(self.log, "end", self.n)


def open_storage(db: str, *, poll_interval: float = 0.05) -> Storage:
    """DB as a storage: a URL (its own poll_interval), or a SQLite file path."""
    return from_url(db) if "://" in db else SqliteStorage(db, poll_interval=poll_interval)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--stop-timeout", type=float, default=30.0)
    parser.add_argument("--no-sigterm", action="store_true")
    parser.add_argument("--enqueue", nargs=2, metavar=("LOG", "N"))
    args = parser.parse_args()
    if args.enqueue:
        log, count = args.enqueue
        handle = create_server(open_storage(args.db))
        ids = handle.queue_many(Step(log, n, 0.05) for n in range(int(count)))
        print(" ".join(str(i) for i in ids), flush=True)
        return
    config = WorkerConfig(
        storage=open_storage(args.db),
        reclaim_interval=0.1,
        stop_timeout=args.stop_timeout,
        handle_sigterm=not args.no_sigterm,
    )
    config.register(Step).register(Flaky).register(Hold)
    worker = config.set_worker_count("default", args.threads).start()
    print(f"ready {worker.worker_id}", flush=True)
    worker.join()


if __name__ == "__main__":
    sys.exit(main())
