"""End to end: queue N no-op jobs into a running worker pool and wait until all completed.

Each round gets a fresh storage and a started pool (not timed); the timed part queues the
jobs in batches of ``CHUNK`` (the workers start on the first batch while the rest are being
queued) and waits until the storage records every job as completed. Each job counts its
run, so a round also checks that every job ran exactly once.

PostgreSQL runs here in one process (the pool's threads and the producer share it); the
multi-process picture, 1 and 3 worker processes, is ``benches/pg_fleet_bench.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benches._support import WORKERS, Noop, Pool, jobs_per_s, scale, wait_completed

CHUNK = 1000

# (jobs per round, rounds) when benchmarking; the smoke run (--benchmark-disable) does one
# round of SMOKE_JOBS.
SIZES = {"memory": (20_000, 5), "sqlite": (10_000, 3), "postgres": (10_000, 3)}
SMOKE_JOBS = 200


@pytest.mark.parametrize("kind", list(SIZES))
def test_throughput(benchmark: Any, pools: Callable[[str, int], Pool], kind: str) -> None:
    full, rounds = SIZES[kind]
    n = scale(benchmark, full, SMOKE_JOBS)
    jobs = [Noop(i) for i in range(n)]

    def setup() -> tuple[tuple[Pool], dict[str, Any]]:
        return (pools(kind, n),), {}

    def drain(pool: Pool) -> Pool:
        for start in range(0, n, CHUNK):
            pool.worker.queue_many(jobs[start : start + CHUNK])
        wait_completed(pool.worker, pool.tally, n)
        return pool

    def teardown(pool: Pool) -> None:
        pool.stop()

    pool = benchmark.pedantic(drain, setup=setup, teardown=teardown, rounds=rounds)
    pool.stop()
    assert pool.tally.runs == n, "a job ran more than once"
    assert pool.worker.counts() == {"default": {"completed": n}}
    benchmark.extra_info.update(jobs=n, workers=WORKERS, storage=kind)
    jobs_per_s(benchmark, n)
