"""What the benchmarks share: the no-op job, its counting state, pools and storages."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

from hauler import Job, QueueHandle, Worker, WorkerConfig
from hauler.storage import MemoryStorage, SqliteStorage, Storage

# Total concurrency of every benchmark worker pool.
WORKERS = 4


class Tally:
    """Worker state: counts the jobs run and signals when ``target`` have run."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.runs = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.runs += 1
            if self.runs >= self.target:
                self.done.set()


class Noop(Job[Tally]):
    """A job that does nothing but count itself."""

    NAME = "bench.noop"

    i: int

    def run(self, state: Tally) -> None:
        state.hit()


def scale(benchmark: Any, full: int, smoke: int) -> int:
    """``full`` when benchmarking, ``smoke`` under ``--benchmark-disable``."""
    return smoke if benchmark.disabled else full


class Storages:
    """Opens storages by kind and closes every one at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._seq = itertools.count()
        self._open: list[Storage] = []

    def open(self, kind: str) -> Storage:
        storage: Storage
        if kind == "memory":
            storage = MemoryStorage()
        elif kind == "sqlite":
            storage = SqliteStorage(self._tmp / f"bench-{next(self._seq)}.db")
        elif kind == "sqlite-full":
            storage = SqliteStorage(self._tmp / f"bench-{next(self._seq)}.db", synchronous="full")
        else:
            raise ValueError(f"unknown storage kind {kind!r}")
        self._open.append(storage)
        return storage

    def close_all(self) -> None:
        for storage in self._open:
            if not storage.closed:
                storage.close()
        self._open.clear()


class Pool:
    """A started worker pool on a fresh storage, ready to drain ``n`` Noop jobs."""

    def __init__(self, storage: Storage, n: int) -> None:
        self.storage = storage
        self.tally = Tally(n)
        self.worker: Worker = (
            WorkerConfig(lambda: self.tally, storage=storage)
            .register(Noop)
            .set_worker_count("default", WORKERS)
            .start()
        )

    def stop(self) -> None:
        if self.worker.running:
            self.worker.stop(timeout=10)


def wait_completed(handle: QueueHandle, tally: Tally, n: int, timeout: float = 120.0) -> None:
    """Block until ``n`` jobs have run and the storage records all ``n`` as completed."""
    if not tally.done.wait(timeout):
        raise TimeoutError(f"only {tally.runs} of {n} jobs ran within {timeout}s")
    deadline = time.monotonic() + timeout
    while True:
        counts = handle.counts().get("default", {})
        if counts.get("completed", 0) == n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not all recorded as completed: {counts}")
        time.sleep(0.0005)


def jobs_per_s(benchmark: Any, jobs_per_round: int) -> None:
    """Record the mean throughput of the rounds in ``benchmark.extra_info``."""
    if benchmark.disabled or benchmark.stats is None:
        return
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["jobs_per_s"] = round(jobs_per_round / mean)
