"""A million jobs queued in one SQLite file: does claiming stay as fast, and memory flat?

Not a pytest benchmark (it takes minutes): run it by hand::

    .venv/bin/python benches/million.py                 # 1,000,000 jobs
    .venv/bin/python benches/million.py --jobs 200000   # a quicker look

It fills one SQLite file with no-op jobs, 10,000 per ``queue_many``, and at each checkpoint
(0, 100k, 500k and 1M jobs waiting, by default) runs a worker pool in this process for a
few seconds, which drains part of the backlog. It reports, per checkpoint:

- **drain/s**: backlog jobs run per second by 4 worker slots (each one claimed from the
  big queue, run, and completed in a batch);
- **claim p50/p99**: ``started_at - created_at`` of probe jobs queued one at a time during
  the drain, with a priority above the backlog's, so each is the next job claimed: the
  time from ``queue()`` to the claim that took it, with the whole backlog in the claim
  index;
- **RSS** of this process (producer and worker pool) once the pool has stopped, and the
  size of the database files;
- **insert/s**: jobs stored per second while filling up to the checkpoint.

Flat means the numbers with 1M waiting are within noise of those with none (the machine
may be shared: compare ratios, and run it twice).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from hauler import Job, QueueHandle, WorkerConfig, create_server
from hauler.storage import SqliteStorage

BATCH = 10_000


class Tally:
    """Counts the backlog jobs run."""

    def __init__(self) -> None:
        self.runs = 0
        self.lock = threading.Lock()

    def hit(self) -> None:
        with self.lock:
            self.runs += 1


class Backlog(Job[Tally]):
    """A no-op job of the backlog."""

    NAME = "million.backlog"
    i: int

    def run(self, state: Tally) -> None:
        state.hit()


class Probe(Job[Tally]):
    """Claimed before any backlog job (a higher priority): its wait is the claim latency."""

    NAME = "million.probe"
    PRIORITY = 10
    i: int

    def run(self, state: Tally) -> None:
        pass


def rss_mib() -> float:
    """This process's resident set size, in MiB (Linux; NaN elsewhere)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return float("nan")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def measure(handle: QueueHandle, *, seconds: float, probes: int) -> dict[str, float]:
    """Run a pool for ``seconds`` over the backlog, with ``probes`` probes queued meanwhile."""
    tally = Tally()
    config = WorkerConfig(lambda: tally).register(Backlog).register(Probe)
    worker = config.set_worker_count("default", 4).start(handle)
    start = time.monotonic()
    ids: list[uuid.UUID] = []
    gap = seconds / (probes + 1)
    for i in range(probes):
        time.sleep(gap)
        ids.append(handle.queue(Probe(i)))
    time.sleep(max(0.0, seconds - (time.monotonic() - start)))
    infos = handle.wait(ids, timeout=60)
    drained = tally.runs
    took = time.monotonic() - start
    worker.stop()
    waits = [
        (info.started_at - info.created_at).total_seconds() * 1000
        for info in infos
        if info.started_at is not None
    ]
    return {
        "drain_per_s": drained / took,
        "drained": drained,
        "claim_p50_ms": statistics.median(waits),
        "claim_p99_ms": percentile(waits, 99),
        "rss_mib": rss_mib(),
    }


def main() -> None:
    """Fill, measure at each checkpoint, print a table and the ratios last/first."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs queued in the end")
    parser.add_argument("--seconds", type=float, default=5.0, help="pool run per checkpoint")
    parser.add_argument("--probes", type=int, default=200, help="probe jobs per checkpoint")
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes")
    args = parser.parse_args()
    checkpoints = sorted({0, args.jobs // 10, args.jobs // 2, args.jobs})

    rows: list[tuple[int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = Path(tmp) / "million.db"
        handle = create_server(SqliteStorage(db))
        print(f"database: {db}; RSS at start {rss_mib():.0f} MiB", flush=True)
        print(
            f"{'waiting':>9} {'insert/s':>9} {'drain/s':>8} {'claim p50':>10} "
            f"{'claim p99':>10} {'RSS MiB':>8} {'db MiB':>7}",
            flush=True,
        )
        waiting = 0
        n = 0
        for target in checkpoints:
            t = time.monotonic()
            added = 0
            while waiting < target:
                size = min(BATCH, target - waiting)
                handle.queue_many(Backlog(n + i) for i in range(size))
                n += size
                waiting += size
                added += size
            insert = added / (time.monotonic() - t) if added else float("nan")
            m = measure(handle, seconds=args.seconds, probes=args.probes)
            size_mib = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
            rows.append((waiting, m))
            print(
                f"{waiting:>9} {insert:>9.0f} {m['drain_per_s']:>8.0f} "
                f"{m['claim_p50_ms']:>8.2f}ms {m['claim_p99_ms']:>8.2f}ms "
                f"{m['rss_mib']:>8.0f} {size_mib:>7.0f}",
                flush=True,
            )
            waiting -= int(m["drained"])
        handle.close()
    (w0, first), (wn, last) = rows[0], rows[-1]
    # With nothing waiting there is nothing to drain: the drain rate compares from the
    # first checkpoint with a backlog.
    wd, drained = next(((w, m) for w, m in rows if m["drain_per_s"] > 0), rows[-1])
    print(
        f"\nfrom {w0} to {wn} jobs waiting: "
        f"claim p50 x{last['claim_p50_ms'] / first['claim_p50_ms']:.2f}, "
        f"p99 x{last['claim_p99_ms'] / first['claim_p99_ms']:.2f}, "
        f"RSS {first['rss_mib']:.0f} -> {last['rss_mib']:.0f} MiB; "
        f"from {wd} to {wn}: drain rate x{last['drain_per_s'] / drained['drain_per_s']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
