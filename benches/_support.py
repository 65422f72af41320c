"""What the benchmarks share: the no-op job, its counting state, pools and storages."""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from hauler import Job, QueueHandle, Worker, WorkerConfig
from hauler.storage import MemoryStorage, PostgresStorage, SqliteStorage, Storage

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


# The PostgreSQL server, as in the tests (tests/pgserver.py): `.ci/postgres.sh start` prints
# the DSN; the PostgreSQL benchmarks are skipped only when HAULER_TEST_POSTGRES=skip is set.
PG_DSN_VAR = "HAULER_TEST_POSTGRES_DSN"


def pg_dsn() -> str:
    """The benchmark server's DSN; skip or fail the calling test when there is none."""
    value = os.environ.get(PG_DSN_VAR)
    if value:
        return value
    if os.environ.get("HAULER_TEST_POSTGRES") == "skip":
        pytest.skip("PostgreSQL benchmarks skipped: HAULER_TEST_POSTGRES=skip")
    pytest.fail(
        f"{PG_DSN_VAR} is not set. Start a throwaway server with "
        '`eval "$(bash .ci/postgres.sh start)"`, '
        "or set HAULER_TEST_POSTGRES=skip to skip the PostgreSQL benchmarks."
    )


def pg_drop_schema(dsn: str, schema: str) -> None:
    """Drop a benchmark schema and everything in it."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def scale(benchmark: Any, full: int, smoke: int) -> int:
    """``full`` when benchmarking, ``smoke`` under ``--benchmark-disable``."""
    return smoke if benchmark.disabled else full


class Storages:
    """Opens storages by kind and closes every one at the end of the test.

    Each PostgreSQL storage gets a schema of its own (created on open by hauler's
    migrations), dropped when the test ends.
    """

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._seq = itertools.count()
        self._open: list[Storage] = []
        self._schemas: list[tuple[str, str]] = []  # (dsn, schema) to drop at the end

    def open(self, kind: str) -> Storage:
        storage: Storage
        if kind == "memory":
            storage = MemoryStorage()
        elif kind == "sqlite":
            storage = SqliteStorage(self._tmp / f"bench-{next(self._seq)}.db")
        elif kind == "sqlite-full":
            storage = SqliteStorage(self._tmp / f"bench-{next(self._seq)}.db", synchronous="full")
        elif kind == "postgres":
            dsn, schema = pg_dsn(), f"bench_{uuid.uuid4().hex[:16]}"
            self._schemas.append((dsn, schema))
            storage = PostgresStorage(dsn, schema=schema)
        else:
            raise ValueError(f"unknown storage kind {kind!r}")
        self._open.append(storage)
        return storage

    def close_all(self) -> None:
        for storage in self._open:
            if not storage.closed:
                storage.close()
        self._open.clear()
        for dsn, schema in self._schemas:
            pg_drop_schema(dsn, schema)
        self._schemas.clear()


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
