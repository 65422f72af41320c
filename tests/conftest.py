"""Fixtures shared by the engine tests.

``storage`` runs a test once per storage (in memory, and a real SQLite file), the way
dramatiq's conftest parametrizes its brokers. ``start_worker`` starts worker pools on it
and always stops them, even when the test fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pgserver as pg
from hauler import QueueHandle, Worker, WorkerConfig, create_server
from hauler.storage import ENV_VAR, MemoryStorage, PostgresStorage, SqliteStorage, Storage

StartWorker = Callable[[WorkerConfig[Any]], Worker]

#: How long a test waits for jobs that should finish: generous, for a loaded 2-core machine.
WAIT = 15.0


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh working directory (for relative database paths) and no HAULER_STORAGE."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)


def _open(kind: str, tmp_path: Path) -> Storage:
    # Short poll intervals: jobs made ready by a retry or a reclaim are found quickly.
    if kind == "memory":
        return MemoryStorage()
    if kind == "sqlite":
        return SqliteStorage(tmp_path / "jobs.db", poll_interval=0.02)
    return PostgresStorage(pg.dsn(), schema=pg.fresh_schema(), pool_size=4, poll_interval=0.02)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Each storage in turn: memory, a SQLite file in tmp_path, a fresh PostgreSQL schema."""
    s = _open(request.param, tmp_path)
    yield s
    s.close()
    if isinstance(s, PostgresStorage):
        pg.drop_schema(s.schema)


@pytest.fixture
def handle(storage: Storage) -> QueueHandle:
    """A producer-side queue handle on ``storage``."""
    return create_server(storage)


class Gates:
    """Makes events for jobs to block on, and opens them all when the test ends."""

    def __init__(self) -> None:
        self._events: list[threading.Event] = []

    def __call__(self) -> threading.Event:
        event = threading.Event()
        self._events.append(event)
        return event

    def open_all(self) -> None:
        for event in self._events:
            event.set()


@pytest.fixture
def gate() -> Iterator[Gates]:
    """``gate()`` makes an event for a job to wait on; every one is set after the test."""
    gates = Gates()
    yield gates
    gates.open_all()


@pytest.fixture
def start_worker(storage: Storage, gate: Gates) -> Iterator[StartWorker]:
    """Start a worker pool on ``storage`` from a WorkerConfig; every pool is stopped after.

    Example: ``worker = start_worker(WorkerConfig().register(MyJob))``. Jobs still waiting
    on a ``gate()`` event are let go first, so stopping never waits on a blocked job.
    """
    workers: list[Worker] = []

    def start(config: WorkerConfig[Any]) -> Worker:
        worker = config.start(create_server(storage))
        workers.append(worker)
        return worker

    yield start
    gate.open_all()
    for worker in reversed(workers):
        worker.stop(timeout=5)


def wait_for(predicate: Callable[[], object], *, timeout: float = WAIT) -> None:
    """Poll ``predicate`` until it is true; fail the test if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)
