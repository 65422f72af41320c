"""Soak: a steady stream of jobs for many minutes while worker processes are SIGKILLed.

Not part of the test suite (CI runs the bounded crash storm): run it by hand, e.g. for 30
minutes on a SQLite file::

    .venv/bin/python tests/faults/soak.py --minutes 30

or on PostgreSQL (a schema of its own is created and dropped)::

    .venv/bin/python tests/faults/soak.py --minutes 30 --postgres "$HAULER_TEST_POSTGRES_DSN"

It starts ``--workers`` worker processes (tests/faults/fault_worker.py, ``--threads`` slots
each, a 0.75 s lease) plus one more that is never killed (the *survivor*, whose RSS over
the whole run shows whether a long-lived worker grows), queues ``--rate`` jobs a second
(each logs ``start``/``end`` and sleeps ``--job-seconds``), and every 3 to 10 s SIGKILLs a
random one of the others and starts a replacement. Every ``--report-every`` seconds it
prints the throughput of the last interval, the backlog, the survivor's RSS and the
largest RSS among the others, and this (producer) process's RSS.

At the end it stops queueing, lets the workers drain the backlog, and checks every job it
queued: ``lost`` (not completed in storage, or no ``end`` logged by the process that
completed it) must be 0; ``duplicate runs`` (extra ``start`` lines) are expected only for
jobs whose earlier attempt was in a killed process (``lease_expired`` in their history);
``unexplained`` duplicates (any other) must be 0. Exit status 1 if either is not 0.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests directory

from faults.fault_worker import Step
from faults.helpers import Log, Processes, pid_of
from hauler import JobStatus, QueueHandle, create_server
from hauler.storage import SqliteStorage, Storage, from_url


def rss_mib(pid: int) -> float:
    """The resident set size of process ``pid`` in MiB (NaN if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> int:
    """Run the soak; 0 if nothing was lost and every duplicate run is explained by a kill."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long to queue and kill")
    p.add_argument("--rate", type=float, default=40.0, help="jobs queued per second")
    p.add_argument("--workers", type=int, default=3, help="worker processes that get killed")
    p.add_argument("--threads", type=int, default=4, help="slots per worker process")
    p.add_argument("--job-seconds", type=float, default=0.2, help="how long each job runs")
    p.add_argument("--report-every", type=float, default=30.0, help="seconds between reports")
    p.add_argument("--postgres", metavar="DSN", help="run on PostgreSQL instead of SQLite")
    p.add_argument("--seed", type=int, default=None, help="replay a run's kill schedule")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)

    with tempfile.TemporaryDirectory(prefix="hauler-soak.") as tmp:
        schema = None
        if args.postgres:
            schema = f"soak_{uuid.uuid4().hex[:12]}"
            sep = "&" if "?" in args.postgres else "?"
            db = f"{args.postgres}{sep}schema={schema}&poll_interval=0.05"
            storage: Storage = from_url(db)
        else:
            db = str(Path(tmp) / "soak.db")
            storage = SqliteStorage(db, poll_interval=0.05)
        handle = create_server(storage)
        log = Log(Path(tmp) / "events.log")
        procs = Processes(db)
        try:
            return soak(args, rng, seed, handle, procs, log)
        finally:
            procs.kill_all()
            handle.close()
            if schema is not None:
                import psycopg

                with psycopg.connect(args.postgres, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def soak(
    args: argparse.Namespace,
    rng: random.Random,
    seed: int,
    handle: QueueHandle,
    procs: Processes,
    log: Log,
) -> int:
    """The run itself; see the module docstring."""
    threads = ("--threads", str(args.threads))
    survivor = procs.start(*threads)
    others = [procs.start(*threads) for _ in range(args.workers)]
    killed: set[int] = set()
    ids: dict[int, uuid.UUID] = {}

    def completed() -> int:
        return handle.counts().get("default", {}).get("completed", 0)

    print(
        f"soak: {args.minutes} min, {args.rate:g} jobs/s, {args.workers}+1 workers x "
        f"{args.threads} slots, seed {seed}",
        flush=True,
    )
    print(
        f"{'t (s)':>7} {'queued':>8} {'done':>8} {'jobs/s':>7} {'backlog':>8} {'kills':>6} "
        f"{'survivor RSS':>13} {'max other RSS':>14} {'producer RSS':>13}",
        flush=True,
    )
    start = time.monotonic()
    end = start + args.minutes * 60
    next_kill = start + rng.uniform(3, 10)
    next_report = start + args.report_every
    last_done, last_t = 0, start
    n = 0
    tick = 0.1
    while (now := time.monotonic()) < end:
        due = int((now - start) * args.rate) - n
        if due > 0:
            batch = handle.queue_many(
                Step(str(log.path), n + i, args.job_seconds) for i in range(due)
            )
            ids.update(zip(range(n, n + due), batch, strict=True))
            n += due
        if now >= next_kill:
            victim = others.pop(rng.randrange(len(others)))
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
            killed.add(victim.pid)
            others.append(procs.start(*threads))
            next_kill = now + rng.uniform(3, 10)
        if now >= next_report:
            done = completed()
            rate = (done - last_done) / (now - last_t)
            last_done, last_t = done, now
            print(
                f"{now - start:>7.0f} {n:>8} {done:>8} {rate:>7.1f} {n - done:>8} "
                f"{len(killed):>6} {rss_mib(survivor.pid):>10.1f}MiB "
                f"{max(rss_mib(o.pid) for o in others):>11.1f}MiB "
                f"{rss_mib(os.getpid()):>10.1f}MiB",
                flush=True,
            )
            next_report = now + args.report_every
        time.sleep(tick)

    # Drain: no more kills or jobs; the workers finish what is queued.
    drain_deadline = time.monotonic() + 300
    while completed() < n and time.monotonic() < drain_deadline:
        time.sleep(0.5)
    elapsed = time.monotonic() - start
    for proc in [survivor, *others]:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    events = log.events()
    starts, ends = events["start"], events["end"]
    lost = 0
    duplicates = 0
    unexplained = 0
    lease_expired = 0
    statuses: Counter[str] = Counter()
    for k, job_id in ids.items():
        info = handle.get(job_id)
        statuses[info.status.value] += 1
        runs = len(starts.get(k, []))
        duplicates += max(0, runs - 1)
        winners = [pid_of(a.worker_id) for a in info.history if a.outcome == "completed"]
        lease_expired += sum(a.outcome == "lease_expired" for a in info.history)
        if info.status is not JobStatus.COMPLETED or len(winners) != 1:
            lost += 1
            continue
        if winners[0] not in ends.get(k, []):
            lost += 1
            continue
        # Every run but the completing one must have been in a process the test killed.
        others_runs = Counter(starts.get(k, []))
        others_runs[winners[0]] -= 1
        if any(pid not in killed for pid in +others_runs):
            unexplained += sum((+others_runs).values())
    print(
        f"\nsoak done in {elapsed:.0f}s: queued {n}, statuses {dict(statuses)}, "
        f"kills {len(killed)}, lost {lost}, duplicate runs {duplicates} "
        f"(unexplained by a kill: {unexplained}), lease_expired attempts {lease_expired}, "
        f"average {n / elapsed:.1f} jobs/s, seed {seed}",
        flush=True,
    )
    return 1 if lost or unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
