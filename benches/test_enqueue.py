"""Enqueue cost: one job per call, and 1000 jobs in one ``queue_many`` transaction."""

from __future__ import annotations

from typing import Any

import pytest

from benches._support import Noop, Storages, jobs_per_s
from hauler import create_server

BATCH = 1000

# Every place a job can be stored: in memory, SQLite with each durability setting, and
# PostgreSQL (a fresh schema for each benchmark, dropped when it ends).
KINDS = ["memory", "sqlite", "sqlite-full", "postgres"]


@pytest.mark.parametrize("kind", KINDS)
def test_queue_single(benchmark: Any, storages: Storages, kind: str) -> None:
    handle = create_server(storages.open(kind))
    job = Noop(0)
    benchmark(handle.queue, job)
    jobs_per_s(benchmark, 1)
    assert handle.counts()["default"]["available"] >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_queue_many(benchmark: Any, storages: Storages, kind: str) -> None:
    handle = create_server(storages.open(kind))
    jobs = [Noop(i) for i in range(BATCH)]
    ids = benchmark(handle.queue_many, jobs)
    jobs_per_s(benchmark, BATCH)
    assert len(set(ids)) == BATCH
    assert handle.counts()["default"]["available"] % BATCH == 0
