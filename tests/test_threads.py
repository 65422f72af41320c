"""Sync jobs run on long-lived pool threads: per-thread state lasts from job to job."""

import threading
from typing import ClassVar

from hauler import DEFAULT_QUEUE, Job, WorkerConfig
from hauler.storage import MemoryStorage


class CountOnThread(Job[None]):
    NAME = "count_on_thread"
    local: ClassVar[threading.local] = threading.local()
    seen: ClassVar[list[tuple[int, int]]] = []

    def run(self, state: None) -> None:
        self.local.n = getattr(self.local, "n", 0) + 1
        self.seen.append((threading.get_ident(), self.local.n))


def test_thread_locals_survive_between_jobs_on_one_thread() -> None:
    config = WorkerConfig(storage=MemoryStorage()).register(CountOnThread)
    with config.set_worker_count(DEFAULT_QUEUE, 1).start() as worker:
        ids = [worker.queue(CountOnThread()) for _ in range(20)]
        worker.wait(ids, timeout=30)
    threads = {ident for ident, _ in CountOnThread.seen}
    assert len(threads) == 1
    assert [n for _, n in CountOnThread.seen] == list(range(1, 21))
