"""Head to head with huey: enqueue and drain 20,000 no-op jobs, in one run.

    python benches/compare_huey.py [--jobs 20000] [--workers 4] [--repeat 3]

Pairs, each with the same total concurrency (``--workers`` threads):

* hauler ``MemoryStorage``              vs huey ``MemoryHuey``
* hauler ``SqliteStorage`` (NORMAL)     vs huey ``SqliteHuey`` (WAL, synchronous=NORMAL)

For each: the time to enqueue the jobs one call at a time (and, for hauler, with
``queue_many`` in batches of 1000 into a second, fresh storage), then the drain: start the
workers on the singly-queued jobs and wait until every job has run (hauler: and the storage
records every job as completed). huey runs its own ``Consumer`` in this process with
``worker_type="thread"`` (MemoryHuey can only be consumed in-process), no result store and
no periodic tasks. Every job appends its number to a list, and the run fails unless each
number appears exactly once. Each pair runs ``--repeat`` times, hauler and huey
alternating, and the table shows the median of each number.

huey is not a hauler dependency: ``pip install huey`` first. This is the seed of the full
comparison of issue 4 (``benches/compare/``); it does not run in CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import huey
    from huey import MemoryHuey, SqliteHuey
    from huey.storage import SqliteStorage as HueySqliteStorage
except ImportError:
    sys.exit(
        "benches/compare_huey.py needs huey, which hauler does not depend on.\n"
        "Install it into this environment with:  python -m pip install huey"
    )

from hauler import Job, QueueHandle, WorkerConfig, create_server
from hauler.storage import MemoryStorage, SqliteStorage, Storage

BATCH = 1000
TIMEOUT = 600.0


class Ran:
    """The numbers of the jobs that ran, in the order they ran (list.append is atomic)."""

    def __init__(self) -> None:
        self.numbers: list[int] = []

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while len(self.numbers) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.numbers)} of {n} jobs ran")
            time.sleep(0.0005)

    def check_exactly_once(self, n: int, who: str) -> None:
        if sorted(self.numbers) != list(range(n)):
            seen = len(self.numbers)
            distinct = len(set(self.numbers))
            raise AssertionError(f"{who}: {seen} runs of {distinct} distinct jobs, expected {n}")


class NoopJob(Job[Ran]):
    """A no-op hauler job that records that it ran."""

    NAME = "compare.noop"

    i: int

    def run(self, state: Ran) -> None:
        state.numbers.append(self.i)


@dataclass
class Result:
    """One system's numbers; rates in jobs per second."""

    system: str
    storage: str
    single: float
    batch: float | None
    drain: float


def median(results: list[Result]) -> Result:
    batches = [r.batch for r in results if r.batch is not None]
    return Result(
        results[0].system,
        results[0].storage,
        statistics.median(r.single for r in results),
        statistics.median(batches) if batches else None,
        statistics.median(r.drain for r in results),
    )


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- hauler -----------------------------------------------------------------------------


def wait_recorded(handle: QueueHandle, n: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while handle.counts().get("default", {}).get("completed", 0) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"hauler: not all completions recorded: {handle.counts()}")
        time.sleep(0.0005)


def run_hauler(label: str, open_storage: Callable[[], Storage], n: int, workers: int) -> Result:
    jobs = [NoopJob(i) for i in range(n)]

    with open_storage() as storage:
        handle = create_server(storage)
        batch_s = timed(
            lambda: [handle.queue_many(jobs[s : s + BATCH]) for s in range(0, n, BATCH)]
        )
        assert handle.counts() == {"default": {"available": n}}

    with open_storage() as storage:
        handle = create_server(storage)
        single_s = timed(lambda: [handle.queue(job) for job in jobs])
        assert handle.counts() == {"default": {"available": n}}

        ran = Ran()
        config = WorkerConfig(lambda: ran).register(NoopJob).set_worker_count("default", workers)
        start = time.perf_counter()
        worker = config.start(handle)
        ran.wait_for(n)
        wait_recorded(handle, n)
        drain_s = time.perf_counter() - start
        worker.stop(timeout=30)
        ran.check_exactly_once(n, f"hauler {label}")
        assert handle.counts() == {"default": {"completed": n}}, handle.counts()

    return Result("hauler", label, rate(n, single_s), rate(n, batch_s), rate(n, drain_s))


# -- huey -------------------------------------------------------------------------------


class NormalSqliteStorage(HueySqliteStorage):
    """huey's SQLite storage with ``synchronous=NORMAL``, the durability hauler's default has.

    huey's ``fsync`` option only offers FULL (True) or OFF (False); left unset, SQLite's
    compiled default applies (FULL in most builds).
    """

    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


def run_huey(label: str, make: Callable[[], Any], n: int, workers: int) -> Result:
    app = make()
    ran = Ran()

    @app.task(name="compare.noop")
    def noop(i: int) -> None:
        ran.numbers.append(i)

    single_s = timed(lambda: [noop(i) for i in range(n)])
    assert app.pending_count() == n, app.pending_count()

    consumer = app.create_consumer(
        workers=workers, worker_type="thread", periodic=False, check_worker_health=False
    )
    # Consumer.start() installs signal handlers for a consumer process; put ours back.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    start = time.perf_counter()
    consumer.start()
    try:
        ran.wait_for(n)
        drain_s = time.perf_counter() - start
    finally:
        consumer.stop(graceful=True)
        for s, h in handlers.items():
            signal.signal(s, h)
    ran.check_exactly_once(n, f"huey {label}")
    assert app.pending_count() == 0, app.pending_count()
    return Result("huey", label, rate(n, single_s), None, rate(n, drain_s))


# -- report -----------------------------------------------------------------------------


def fmt_rate(r: float | None) -> str:
    return "n/a" if r is None else f"{r:,.0f}"


def table(pairs: list[tuple[Result, Result]]) -> str:
    lines = [
        "| system | storage | enqueue single (jobs/s) | enqueue batch (jobs/s) "
        "| drain (jobs/s) | drain ÷ hauler | enqueue single ÷ hauler |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for base, peer in pairs:
        for r in (base, peer):
            lines.append(
                f"| {r.system} | {r.storage} | {fmt_rate(r.single)} | {fmt_rate(r.batch)} "
                f"| {fmt_rate(r.drain)} | {r.drain / base.drain:.2f}x "
                f"| {r.single / base.single:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--workers", type=int, default=4, help="worker threads per system")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system (median shown)")
    args = parser.parse_args()
    n, workers, repeat = args.jobs, args.workers, args.repeat

    from importlib.metadata import version

    print(
        f"# hauler vs huey: {n:,} no-op jobs, {workers} worker threads each, "
        f"median of {repeat} runs\n\n"
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"hauler {version('hauler')}, huey {huey.__version__}, "
        f"Python's sqlite3 {sqlite3.sqlite_version}\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="hauler-vs-huey-") as tmp:
        files = iter(range(1_000_000))

        def db() -> Path:
            return Path(tmp) / f"{next(files)}.db"

        pairs = []
        for label, hauler_storage, huey_app in [
            ("memory", MemoryStorage, lambda: MemoryHuey("compare", results=False)),
            (
                "sqlite NORMAL",
                lambda: SqliteStorage(db()),
                lambda: SqliteHuey(
                    "compare",
                    filename=str(db()),
                    results=False,
                    storage_class=NormalSqliteStorage,
                ),
            ),
        ]:
            hs, ps = [], []
            for i in range(repeat):
                print(f"{label}: run {i + 1} of {repeat}", file=sys.stderr, flush=True)
                hs.append(run_hauler(label, hauler_storage, n, workers))
                ps.append(run_huey(label, huey_app, n, workers))
            pairs.append((median(hs), median(ps)))

    print(table(pairs))
    print()
    for base, peer in pairs:
        print(
            f"{base.storage}: hauler drains {base.drain / peer.drain:.1f}x huey's rate, "
            f"enqueues one at a time {base.single / peer.single:.1f}x"
        )


if __name__ == "__main__":
    main()
