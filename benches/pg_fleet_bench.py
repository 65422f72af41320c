"""PostgreSQL with several worker processes: drain N no-op jobs with 1 and 3 processes.

    python benches/pg_fleet_bench.py [--dsn DSN] [--jobs 20000] [--threads 4]
                                     [--processes 1,3] [--repeat 3] [--no-peer]

The server is ``--dsn``, else ``$HAULER_TEST_POSTGRES_DSN`` (``eval "$(bash
.ci/postgres.sh start)"`` starts a throwaway one). Each run, for each K in ``--processes``:

1. Queue N no-op jobs with ``queue_many`` in batches of 1000 into a fresh schema (hauler's
   migrations create it on first use); the time of that is the batch enqueue rate.
2. Start K worker processes (``spawn``), each a ``WorkerConfig`` with ``--threads`` worker
   threads on the one queue and its own ``PostgresStorage`` (default pool of 10
   connections, LISTEN/NOTIFY on). A process opens its storage, then waits for the
   go-ahead, so interpreter start-up and connecting are not timed.
3. Time from the go-ahead until no job is left that is not ``completed`` (polled every
   20 ms with psycopg), then stop the processes.
4. Check every job completed exactly once: N jobs all ``completed``, exactly one attempt
   per job in hauler's history table (``attempts``), all of them ``completed``, and the
   processes' own counts of runs add up to N.

The peer is procrastinate (if installed: ``python -m pip install procrastinate``; hauler
does not depend on it), on the same server in a database of its own created for each run
(``CREATE DATABASE``, its schema applied, dropped afterwards): the same N jobs queued with
``batch_defer`` in batches of 1000, then K processes each running
``run_worker_async(concurrency=--threads, wait=False)``, so the total concurrency is the
same. Its task is a plain (sync) function, like hauler's job, which procrastinate runs in
a thread. Check: N jobs ``succeeded``, one ``started`` event each, runs add up to N.

Each K runs ``--repeat`` times, hauler and procrastinate alternating; the table shows
medians. Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from hauler import Job, WorkerConfig, create_server
from hauler.storage import PostgresStorage

try:
    import procrastinate
except ImportError:
    procrastinate = None  # type: ignore[assignment]

BATCH = 1000
POLL = 0.02
TIMEOUT = 900.0
DSN_VAR = "HAULER_TEST_POSTGRES_DSN"


class Runs:
    """A worker process's count of the jobs it ran."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.n += 1


class FleetNoop(Job[Runs]):
    """A no-op hauler job that counts its run."""

    NAME = "fleet.noop"

    i: int

    def run(self, state: Runs) -> None:
        state.hit()


@dataclass
class Result:
    """One drain; rates in jobs per second."""

    system: str
    processes: int
    enqueue: float
    drain: float


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def wait_drained(dsn: str, query: str, n: int, who: str) -> None:
    """Poll ``query`` (true once every job is done) until it holds."""
    deadline = time.monotonic() + TIMEOUT
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(query).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{who}: {n} jobs not all done within {TIMEOUT}s")
            time.sleep(POLL)


def status_counts(dsn: str, query: sql.SQL | sql.Composed) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {str(s): int(c) for s, c in conn.execute(query).fetchall()}


def check(who: str, n: int, ran: int, statuses: dict[str, int], expected: dict[str, int]) -> None:
    if ran != n:
        raise AssertionError(f"{who}: the workers ran {ran} jobs, expected {n}")
    if statuses != expected:
        raise AssertionError(f"{who}: job statuses {statuses}, expected {expected}")


class Fleet:
    """K worker processes that report ready, wait for go, and report their run counts."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], k: int) -> None:
        ctx = mp.get_context("spawn")
        self.ready = ctx.Queue()
        self.results = ctx.Queue()
        self.go = ctx.Event()
        self.stop = ctx.Event()
        self.procs = [
            ctx.Process(
                target=target,
                args=(*args, self.ready, self.go, self.stop, self.results),
                daemon=True,
            )
            for _ in range(k)
        ]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            self.ready.get(timeout=120)

    def finish(self) -> int:
        """Stop the processes; the total of the jobs they ran."""
        self.stop.set()
        total = sum(int(self.results.get(timeout=120)) for _ in self.procs)
        for p in self.procs:
            p.join(timeout=60)
            if p.exitcode != 0:
                raise RuntimeError(f"worker process exited with {p.exitcode}")
        return total


# -- hauler -----------------------------------------------------------------------------


def hauler_process(
    dsn: str, schema: str, threads: int, ready: Any, go: Event, stop: Event, results: Any
) -> None:
    runs = Runs()
    storage = PostgresStorage(dsn, schema=schema)
    config = (
        WorkerConfig(lambda: runs, storage=storage, handle_sigterm=False)
        .register(FleetNoop)
        .set_worker_count("default", threads)
    )
    ready.put(os.getpid())
    go.wait()
    worker = config.start()
    stop.wait()
    worker.stop(timeout=60)
    storage.close()
    results.put(runs.n)


def run_hauler(dsn: str, n: int, k: int, threads: int) -> Result:
    schema = f"fleet_{uuid.uuid4().hex[:16]}"
    ident = sql.Identifier(schema)
    try:
        jobs = [FleetNoop(i) for i in range(n)]
        with PostgresStorage(dsn, schema=schema) as storage:
            handle = create_server(storage)
            start = time.perf_counter()
            for s in range(0, n, BATCH):
                handle.queue_many(jobs[s : s + BATCH])
            enqueue_s = time.perf_counter() - start
        assert status_counts(
            dsn, sql.SQL("SELECT status, count(*) FROM {}.jobs GROUP BY 1").format(ident)
        ) == {"available": n}

        fleet = Fleet(hauler_process, (dsn, schema, threads), k)
        start = time.perf_counter()
        fleet.go.set()
        done = sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {}.jobs WHERE status <> 'completed')")
        wait_drained(dsn, done.format(ident).as_string(), n, "hauler")
        drain_s = time.perf_counter() - start
        ran = fleet.finish()

        statuses = status_counts(
            dsn, sql.SQL("SELECT status, count(*) FROM {}.jobs GROUP BY 1").format(ident)
        )
        check("hauler", n, ran, statuses, {"completed": n})
        history = status_counts(
            dsn,
            sql.SQL(
                "SELECT outcome, count(DISTINCT job_id) FROM {}.attempts GROUP BY 1 "
                "UNION ALL SELECT 'attempts', count(*) FROM {}.attempts"
            ).format(ident, ident),
        )
        if history != {"completed": n, "attempts": n}:
            raise AssertionError(f"hauler: attempt history {history}, expected one each of {n}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
    return Result("hauler", k, rate(n, enqueue_s), rate(n, drain_s))


# -- procrastinate ----------------------------------------------------------------------


def procrastinate_app(dsn: str, runs: Runs) -> Any:
    assert procrastinate is not None
    # It warns that an app built in a __main__ module is hard for its CLI to import; this
    # script never uses the CLI.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="fleet.noop", queue="default")
    def noop(i: int) -> None:
        runs.hit()

    return app


def procrastinate_process(
    dsn: str, threads: int, ready: Any, go: Event, stop: Event, results: Any
) -> None:
    runs = Runs()
    app = procrastinate_app(dsn, runs)

    async def main() -> None:
        async with app.open_async():
            ready.put(os.getpid())
            await asyncio.to_thread(go.wait)
            await app.run_worker_async(
                queues=["default"],
                concurrency=threads,
                wait=False,
                install_signal_handlers=False,
            )

    asyncio.run(main())
    stop.wait()
    results.put(runs.n)


def run_procrastinate(dsn: str, n: int, k: int, threads: int) -> Result:
    database = f"fleet_procrastinate_{uuid.uuid4().hex[:12]}"
    ident = sql.Identifier(database)
    db_dsn = make_conninfo(dsn, dbname=database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        app = procrastinate_app(db_dsn, Runs())
        with app.open():
            app.schema_manager.apply_schema()
            task = app.tasks["fleet.noop"]
            start = time.perf_counter()
            for s in range(0, n, BATCH):
                task.batch_defer(*({"i": i} for i in range(s, min(n, s + BATCH))))
            enqueue_s = time.perf_counter() - start
        jobs_by_status = "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1"
        assert status_counts(db_dsn, sql.SQL(jobs_by_status)) == {"todo": n}

        fleet = Fleet(procrastinate_process, (db_dsn, threads), k)
        start = time.perf_counter()
        fleet.go.set()
        done = "SELECT NOT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status <> 'succeeded')"
        wait_drained(db_dsn, done, n, "procrastinate")
        drain_s = time.perf_counter() - start
        ran = fleet.finish()

        check(
            "procrastinate",
            n,
            ran,
            status_counts(db_dsn, sql.SQL(jobs_by_status)),
            {"succeeded": n},
        )
        started = status_counts(
            db_dsn,
            sql.SQL(
                "SELECT 'events', count(*) FROM procrastinate_events WHERE type = 'started' "
                "UNION ALL SELECT 'jobs', count(DISTINCT job_id) FROM procrastinate_events "
                "WHERE type = 'started'"
            ),
        )
        if started != {"events": n, "jobs": n}:
            raise AssertionError(f"procrastinate: started events {started}, expected {n} each")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
    return Result("procrastinate", k, rate(n, enqueue_s), rate(n, drain_s))


# -- report -----------------------------------------------------------------------------


def median(results: list[Result]) -> Result:
    return Result(
        results[0].system,
        results[0].processes,
        statistics.median(r.enqueue for r in results),
        statistics.median(r.drain for r in results),
    )


def table(rows: list[Result], threads: int) -> str:
    base = {r.processes: r for r in rows if r.system == "hauler"}
    one = {r.system: r for r in rows if r.processes == 1}
    lines = [
        "| system | worker processes | total concurrency | batch enqueue (jobs/s) "
        "| drain (jobs/s) | drain vs 1 process | drain ÷ hauler |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        scaling = r.drain / one[r.system].drain if r.system in one else float("nan")
        lines.append(
            f"| {r.system} | {r.processes} | {r.processes * threads} | {r.enqueue:,.0f} "
            f"| {r.drain:,.0f} | {scaling:.2f}x | {r.drain / base[r.processes].drain:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get(DSN_VAR), help=f"default ${DSN_VAR}")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--threads", type=int, default=4, help="worker threads per process")
    parser.add_argument("--processes", default="1,3", help="worker process counts to run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per number (median shown)")
    parser.add_argument("--no-peer", action="store_true", help="skip procrastinate")
    args = parser.parse_args()
    if not args.dsn:
        sys.exit(f'no server: pass --dsn or set {DSN_VAR} (eval "$(bash .ci/postgres.sh start)")')
    n, threads, repeat = args.jobs, args.threads, args.repeat
    ks = [int(k) for k in args.processes.split(",")]
    peer = procrastinate is not None and not args.no_peer
    if procrastinate is None and not args.no_peer:
        print(
            "procrastinate is not installed (python -m pip install procrastinate): hauler only",
            file=sys.stderr,
        )

    from importlib.metadata import version

    with psycopg.connect(args.dsn) as conn:
        server = conn.execute("SHOW server_version").fetchone()
    peer_version = f", procrastinate {version('procrastinate')}" if peer else ""
    print(
        f"# hauler on PostgreSQL, several worker processes: {n:,} no-op jobs, "
        f"{threads} worker threads per process, median of {repeat} runs\n\n"
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"PostgreSQL {server[0] if server else '?'} on the same machine, "
        f"hauler {version('hauler')}{peer_version}\n",
        flush=True,
    )
    rows: list[Result] = []
    for k in ks:
        hs, ps = [], []
        for i in range(repeat):
            print(f"{k} process(es): run {i + 1} of {repeat}", file=sys.stderr, flush=True)
            hs.append(run_hauler(args.dsn, n, k, threads))
            print(f"  hauler {hs[-1]}", file=sys.stderr, flush=True)
            if peer:
                ps.append(run_procrastinate(args.dsn, n, k, threads))
                print(f"  procrastinate {ps[-1]}", file=sys.stderr, flush=True)
        rows.append(median(hs))
        if ps:
            rows.append(median(ps))
    rows.sort(key=lambda r: (r.system != "hauler", r.system, r.processes))
    print(table(rows, threads))
    if peer:
        print()
        for k in ks:
            h, p = (
                next(r for r in rows if r.system == s and r.processes == k)
                for s in ("hauler", "procrastinate")
            )
            print(
                f"{k} process(es): hauler drains {h.drain / p.drain:.1f}x procrastinate's rate; "
                f"batch enqueue {h.enqueue / p.enqueue:.1f}x"
            )


if __name__ == "__main__":
    main()
