"""Fixtures for the fault tests: the shared SQLite file, the event log, the processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.helpers import Log, Processes
from hauler import QueueHandle, create_server
from hauler.storage import SqliteStorage


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def log(tmp_path: Path) -> Log:
    return Log(tmp_path / "events.log")


@pytest.fixture
def handle(db: Path) -> Iterator[QueueHandle]:
    """The test's own queue handle on the shared file."""
    h = create_server(SqliteStorage(db, poll_interval=0.05))
    yield h
    h.close()


@pytest.fixture
def procs(db: Path) -> Iterator[Processes]:
    p = Processes(db)
    yield p
    p.kill_all()
