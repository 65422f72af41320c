"""Run one workload on one peer and print its numbers as one JSON line (the last line).

    python -m benches.compare.one PEER WORKLOAD --n N --concurrency C [--rate R]

The harness (``python -m benches.compare``) runs this in a subprocess per measurement, with
a timeout, so that a peer that hangs or crashes is reported as failed and the others go on.
It needs ``BENCH_REDIS_URL`` and ``BENCH_PG_DSN`` (servers the harness started) and
``BENCH_RUN_DIR`` (an empty directory for this run's files).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import psutil

from benches.compare import record
from benches.compare.common import NOOP, SLEEP, Ctx, Failed, Peer
from benches.compare.peers import registry

WORKLOADS = ("drain-batch", "drain-single", "latency", "io", "rss")


def wait_records(peer: Peer, target: int, timeout: float, what: str) -> None:
    """Wait until ``target`` records exist, checking that the workers are still alive."""
    deadline = time.monotonic() + timeout
    directory = peer.ctx.record_dir
    last_check = 0.0
    while (seen := record.count(directory)) < target:
        now = time.monotonic()
        if now > deadline:
            raise Failed(f"only {seen} of {target} {what} ran within {timeout:.0f}s")
        if now - last_check > 0.5:
            peer.check_alive()
            last_check = now
        time.sleep(0.005)


def exactly_once(records: list[tuple[int, int]], n: int) -> None:
    ids = [i for i, _ in records if i >= 0]
    if len(ids) == n and sorted(ids) == list(range(n)):
        return
    distinct = set(ids)
    missing = n - len(distinct & set(range(n)))
    raise Failed(
        f"not exactly once: {len(ids)} runs, {len(distinct)} distinct, {missing} missing, "
        f"{len(ids) - len(distinct)} duplicated"
    )


def span_rate(records: list[tuple[int, int]]) -> float:
    """Jobs per second from the first job's start to the last one's."""
    times = [t for i, t in records if i >= 0]
    span = (max(times) - min(times)) / 1e9
    return (len(times) - 1) / span if span > 0 else float("inf")


def drain(peer: Peer, n: int, concurrency: int, batch: bool, timeout: float) -> dict[str, Any]:
    peer.reset()
    start = time.perf_counter()
    peer.enqueue(range(n), batch=batch, kind=NOOP)
    enqueue_s = time.perf_counter() - start
    started = time.perf_counter()
    peer.start(concurrency, NOOP)
    wait_records(peer, n, timeout, "jobs")
    wall_s = time.perf_counter() - started
    # Let duplicates (a job run twice) show up before checking.
    time.sleep(0.2)
    peer.stop()
    records = record.read(peer.ctx.record_dir)
    exactly_once(records, n)
    peer.verify(n)
    return {
        "enqueue_per_s": n / enqueue_s,
        "drain_per_s": span_rate(records),
        "wall_per_s": n / wall_s,
        # Queue from Python, then run: the whole time, worker start included.
        "e2e_per_s": n / (enqueue_s + wall_s),
    }


def warm_up(peer: Peer, concurrency: int, timeout: float) -> int:
    """Queue one job per worker slot (numbered below zero) and wait until they have run."""
    k = max(1, min(concurrency, 8))
    peer.enqueue(range(-k, 0), batch=False, kind=NOOP)
    wait_records(peer, k, timeout, "warm-up jobs")
    time.sleep(0.5)
    return k


def latency(peer: Peer, n: int, concurrency: int, rate: float, timeout: float) -> dict[str, Any]:
    peer.reset()
    peer.start(concurrency, NOOP)
    k = warm_up(peer, concurrency, timeout)
    queued_at = [0] * n
    start = time.monotonic()
    for j in range(n):
        due = start + j / rate
        while (delay := due - time.monotonic()) > 0:
            time.sleep(delay)
        queued_at[j] = time.monotonic_ns()
        peer.enqueue((j,), batch=False, kind=NOOP)
    sent_s = time.monotonic() - start
    wait_records(peer, n + k, timeout, "timed jobs")
    time.sleep(0.2)
    peer.stop()
    records = record.read(peer.ctx.record_dir)
    exactly_once(records, n)
    lat = sorted((t - queued_at[i]) / 1e6 for i, t in records if i >= 0)
    return {
        "offered_per_s": n / sent_s,
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "max_ms": lat[-1],
    }


def io(peer: Peer, n: int, concurrency: int, timeout: float) -> dict[str, Any]:
    peer.reset()
    peer.enqueue(range(n), batch=peer.has_batch, kind=SLEEP)
    started = time.perf_counter()
    peer.start(concurrency, SLEEP)
    wait_records(peer, n, timeout, "jobs")
    wall_s = time.perf_counter() - started
    time.sleep(0.2)
    peer.stop()
    records = record.read(peer.ctx.record_dir)
    exactly_once(records, n)
    return {"drain_per_s": span_rate(records), "wall_per_s": n / wall_s}


def tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def rss(peer: Peer, n: int, concurrency: int, window: float, timeout: float) -> dict[str, Any]:
    """Peak RSS of the worker processes while they work on ``n`` queued jobs.

    Sampled every 20 ms from the worker start until ``window`` seconds after the first job
    ran (or all ran). hauler's pool runs in this process, which then holds the queue too
    (MemoryStorage) -- that is the point of the measurement.
    """
    peer.reset()
    peer.enqueue(range(n), batch=peer.has_batch, kind=NOOP)
    peak = 0
    idle = tree_rss(peer.worker_pids()) if peer.worker_pids() == [os.getpid()] else 0
    peer.start(concurrency, NOOP)
    deadline = time.monotonic() + timeout
    first: float | None = None
    last_check = 0.0
    while True:
        peak = max(peak, tree_rss(peer.worker_pids()))
        now = time.monotonic()
        seen = record.count(peer.ctx.record_dir)
        if seen and first is None:
            first = now
        if seen >= n or (first is not None and now - first > window):
            break
        if now > deadline:
            raise Failed(f"only {seen} of {n} jobs ran within {timeout:.0f}s")
        if now - last_check > 0.5:
            peer.check_alive()
            last_check = now
        time.sleep(0.02)
    peer.stop()
    out: dict[str, Any] = {"peak_rss_mb": peak / 2**20, "ran": record.count(peer.ctx.record_dir)}
    if idle:
        out["before_start_mb"] = idle / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=sorted(registry.PEERS))
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--rate", type=float, default=200.0, help="latency: jobs per second")
    parser.add_argument("--window", type=float, default=5.0, help="rss: seconds to sample")
    parser.add_argument("--timeout", type=float, default=300.0, help="each wait, seconds")
    args = parser.parse_args()

    run_dir = Path(os.environ["BENCH_RUN_DIR"])
    record_dir = run_dir / "records"
    record_dir.mkdir(parents=True, exist_ok=True)
    os.environ[record.DIR_VAR] = str(record_dir)
    ctx = Ctx(
        redis_url=os.environ["BENCH_REDIS_URL"],
        pg_dsn=os.environ["BENCH_PG_DSN"],
        run_dir=run_dir,
        record_dir=record_dir,
    )
    peer = registry.PEERS[args.peer](ctx)
    result: dict[str, Any]
    try:
        if args.workload in ("drain-batch", "drain-single"):
            batch = args.workload == "drain-batch"
            result = drain(peer, args.n, args.concurrency, batch, args.timeout)
        elif args.workload == "latency":
            result = latency(peer, args.n, args.concurrency, args.rate, args.timeout)
        elif args.workload == "io":
            result = io(peer, args.n, args.concurrency, args.timeout)
        else:
            result = rss(peer, args.n, args.concurrency, args.window, args.timeout)
        result["status"] = "ok"
    except Failed as e:
        result = {"status": "FAILED", "reason": str(e)}
    except Exception as e:  # a peer's own error: report it, do not hide it
        traceback.print_exc()
        result = {"status": "FAILED", "reason": f"{type(e).__name__}: {e}"}
    finally:
        try:
            peer.close()
        except Exception:
            traceback.print_exc()
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    # Worker-pool threads of some libraries keep the interpreter alive: leave now.
    os._exit(0)


if __name__ == "__main__":
    main()
