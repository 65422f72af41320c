"""hauler quick start: queue jobs into a SQLite file and watch a worker pool run them.

Run it with ``python examples/quickstart.py``. It creates ``hauler-quickstart.db`` in the
current directory (delete it whenever you like), queues a batch of jobs, one of which fails
once and is retried with backoff, runs them on a pool of 4 threads, and prints what happened.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta

from hauler import DEFAULT_QUEUE, Backoff, Job, MaxRetries, WorkerConfig, create_server
from hauler.storage import SqliteStorage


@dataclass
class AppState:
    """Shared by every job the pool runs: made once by the state factory."""

    app_name: str
    sent: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class SendEmail(Job[AppState]):
    """Pretend to send an email; the address ``flaky@...`` fails on its first attempt."""

    NAME = "send_email"
    QUEUE = DEFAULT_QUEUE
    MAX_RETRIES = MaxRetries.count(3)
    BACKOFF = Backoff.fixed(0.2)

    to: str
    subject: str

    def run(self, state: AppState) -> None:
        """Send the email (record it in the shared state)."""
        with state.lock:
            if self.to.startswith("flaky@") and self.to not in state.sent:
                state.sent.append(self.to)
                raise ConnectionError(f"SMTP server hung up while sending to {self.to}")
            state.sent.append(self.to)
        print(f"[{state.app_name}] sent {self.subject!r} to {self.to}")


def main() -> None:
    """Queue jobs on SQLite, run them, report."""
    storage = SqliteStorage("hauler-quickstart.db")
    queue_handle = create_server(storage)
    worker = (
        WorkerConfig(lambda: AppState("quickstart"))
        .register(SendEmail)
        .set_worker_count(DEFAULT_QUEUE, 4)
        .start(queue_handle)
    )
    ids = queue_handle.queue_many(
        SendEmail(to=f"user{i}@example.com", subject=f"welcome #{i}") for i in range(8)
    )
    ids.append(queue_handle.queue(SendEmail(to="flaky@example.com", subject="retried")))
    ids.append(
        queue_handle.schedule(
            SendEmail(to="later@example.com", subject="scheduled"), after=timedelta(seconds=0.5)
        )
    )
    print(f"queued {len(ids)} jobs into {storage.path}")

    for info in queue_handle.wait(ids, timeout=30):
        errors = [a.error.message for a in info.history if a.error is not None]
        note = f" (after a failed attempt: {errors[0]})" if errors else ""
        print(f"{info.id}  {info.status.value:<9} attempts={info.attempt}  {info.args['to']}{note}")

    worker.stop(timeout=5)
    print("counts:", queue_handle.counts())


if __name__ == "__main__":
    main()
