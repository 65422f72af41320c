"""Fixtures of the pytest-benchmark suite.

Run the benchmarks with ``make bench`` (``pytest benches --benchmark-only``); CI runs
``pytest benches --benchmark-disable`` as a smoke test, where every benchmark body runs
once at a small size (see :func:`benches._support.scale`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benches._support import Pool, Storages, pg_dsn


@pytest.fixture(autouse=True)
def _postgres_server(request: pytest.FixtureRequest) -> None:
    """Skip or fail a ``kind="postgres"`` benchmark before it starts when there is no server."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("kind") == "postgres":
        pg_dsn()


@pytest.fixture
def storages(tmp_path: Path) -> Iterator[Storages]:
    """Open storages by kind; every one is closed when the test ends."""
    opened = Storages(tmp_path)
    yield opened
    opened.close_all()


@pytest.fixture
def pools(storages: Storages) -> Iterator[Callable[[str, int], Pool]]:
    """``pools(kind, n)``: a started pool on a fresh storage; all stopped at test end."""
    started: list[Pool] = []

    def start(kind: str, n: int) -> Pool:
        pool = Pool(storages.open(kind), n)
        started.append(pool)
        return pool

    yield start
    for pool in started:
        pool.stop()
