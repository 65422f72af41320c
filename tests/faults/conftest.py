"""Fixtures for the fault tests: the shared storage, the event log, the processes.

``db`` is what the processes share: a SQLite file by default. A module that also runs on
PostgreSQL parametrizes ``backend`` (``pytest.mark.parametrize("backend", helpers.BACKENDS)``);
``db`` is then a fresh schema's URL on the test server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import pgserver as pg
from faults.helpers import Log, Processes
from hauler import QueueHandle, create_server
from hauler.storage import SqliteStorage, from_url


@pytest.fixture
def backend() -> str:
    """The storage the processes share; modules parametrize it to run on PostgreSQL too."""
    return "sqlite"


@pytest.fixture
def db(backend: str, tmp_path: Path) -> Iterator[str]:
    """A SQLite file path, or the URL of a fresh schema on the test PostgreSQL."""
    if backend == "sqlite":
        yield str(tmp_path / "jobs.db")
        return
    schema = pg.fresh_schema()
    yield f"{pg.dsn()}?schema={schema}&poll_interval=0.05"
    pg.drop_schema(schema)


@pytest.fixture
def log(tmp_path: Path) -> Log:
    return Log(tmp_path / "events.log")


@pytest.fixture
def handle(db: str) -> Iterator[QueueHandle]:
    """The test's own queue handle on the shared storage."""
    h = create_server(from_url(db) if "://" in db else SqliteStorage(db, poll_interval=0.05))
    yield h
    h.close()


@pytest.fixture
def procs(db: str) -> Iterator[Processes]:
    p = Processes(db)
    yield p
    p.kill_all()
