"""hauler unique jobs and limits: UNIQUE, SINGLETON, CONCURRENCY and RATE_LIMIT.

Run it with ``python examples/unique.py``. It creates ``hauler-unique.db`` in the current
directory (delete it whenever you like). Every limit is kept by the storage, so it holds
however many worker processes share the file (or a PostgreSQL database).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from hauler import Job, Unique, WorkerConfig, create_server
from hauler.storage import SqliteStorage


@dataclass
class Stats:
    """Counts how many thumbnails run at once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0
    most: int = 0


class SyncAccount(Job[Stats]):
    """Queued on every change to an account; one sync per account is enough."""

    NAME = "sync_account"
    UNIQUE = Unique(by=("args",))  # equal while one waits or runs
    SINGLETON = True  # and never two syncs at once, on any worker
    account_id: int

    def run(self, state: Stats) -> None:
        time.sleep(0.02)


class Thumbnail(Job[Stats]):
    """CPU-heavy: at most two at once across all workers, at most 50 started a second."""

    NAME = "thumbnail"
    CONCURRENCY = 2
    RATE_LIMIT = "50/s"
    image: str

    def run(self, state: Stats) -> None:
        with state.lock:
            state.running += 1
            state.most = max(state.most, state.running)
        time.sleep(0.02)
        with state.lock:
            state.running -= 1


storage = SqliteStorage("hauler-unique.db")
handle = create_server(storage)
first = handle.queue(SyncAccount(7))
again = handle.queue(SyncAccount(7))
print(f"SyncAccount(7): stored={first.inserted}")
print(f"SyncAccount(7) again: duplicate={again.duplicate}, same job: {again == first}")
ids = [first, handle.queue(SyncAccount(8))]
ids += handle.queue_many([Thumbnail(f"img{i}.png") for i in range(6)])

stats = Stats()
config = WorkerConfig(lambda: stats, storage=storage).register(SyncAccount).register(Thumbnail)
with config.set_worker_count("default", 8).start() as worker:
    infos = worker.wait(ids, timeout=30)
print("all completed:", all(i.status == "completed" for i in infos))
syncs = sorted((i.started_at, i.finished_at) for i in infos[:2])
print("syncs overlapped:", syncs[0][1] > syncs[1][0])
print("never more than two thumbnails at once:", 1 <= stats.most <= 2)
