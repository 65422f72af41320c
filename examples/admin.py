"""hauler admin API: cancel, retry, find and clean up jobs.

Run it with ``python examples/admin.py``. It creates ``hauler-admin.db`` in the current
directory (delete it whenever you like), runs a few export jobs on a worker pool, cancels a
waiting one and a running one, retries one that failed, finds jobs by the text of their
arguments, and deletes what is left: the calls a CLI or a dashboard makes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from hauler import (
    Job,
    JobStatus,
    MaxRetries,
    WorkerConfig,
    create_server,
    current_job_cancelled,
)
from hauler.storage import SqliteStorage


@dataclass
class AppState:
    """Shared by every job the pool runs."""

    attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Export(Job[AppState]):
    """Export ``rows`` rows of a report; the report ``broken`` fails on its first run."""

    NAME = "export"
    MAX_RETRIES = MaxRetries.count(0)  # a failure is final: an operator retries it
    HEARTBEAT_INTERVAL = 500

    report: str
    rows: int

    def run(self, state: AppState) -> None:
        """Write the rows one by one, stopping early if the job is cancelled."""
        with state.lock:
            n = state.attempts[self.report] = state.attempts.get(self.report, 0) + 1
        if self.report == "broken" and n == 1:
            raise RuntimeError("database timeout")
        for _ in range(self.rows):
            if current_job_cancelled():  # sync jobs stop cooperatively
                print(f"export {self.report!r} stopped early")
                return
            time.sleep(0.01)
        print(f"export {self.report!r}: {self.rows} rows")


def main() -> None:
    """Run the exports and manage them through the admin API."""
    storage = SqliteStorage("hauler-admin.db")
    handle = create_server(storage)
    worker = WorkerConfig(AppState).register(Export).set_worker_count("default", 2).start(handle)

    huge = handle.queue(Export(report="huge", rows=100_000))
    broken = handle.queue(Export(report="broken", rows=10))
    nightly = handle.schedule(Export(report="nightly", rows=10), after=timedelta(hours=1))

    (info,) = handle.wait([broken], timeout=30)
    assert info.last_error is not None
    print(f"broken: {info.status.value} ({info.last_error.message})")

    print("cancel nightly:", handle.cancel(nightly).value)  # waiting: cancelled at once
    while handle.get(huge).status is not JobStatus.RUNNING:
        time.sleep(0.01)
    print("cancel huge:", handle.cancel(huge).value)  # running: asked to stop
    (info,) = handle.wait([huge], timeout=30)
    print(f"huge: {info.status.value}")

    print("retry broken:", handle.retry(broken))
    (info,) = handle.wait([broken], timeout=30)
    outcomes = ", ".join(a.outcome for a in info.history)
    print(f"broken: {info.status.value}; history: {outcomes}")

    print("cancelled jobs:", handle.count(status="cancelled"))
    print("found by text:", [j.args["report"] for j in handle.list(args_contains="night")])
    print("deleted cancelled:", handle.delete_many(status="cancelled"))
    print("pruned completed:", handle.prune(older_than=timedelta(0)))
    print("left:", handle.count())
    worker.stop(timeout=5)


if __name__ == "__main__":
    main()
