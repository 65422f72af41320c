"""Runs the whole comparison inside the bench virtualenv: servers, every run, the report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

from benches.compare import report
from benches.compare.common import REPO
from benches.compare.peers import registry
from benches.compare.servers import Postgres, Redis, say


@dataclass(frozen=True)
class Sizes:
    """How big each workload is (``--quick`` or the full default)."""

    drain: int
    latency: int
    io: int
    rss: int
    rss_window: float
    wait_timeout: float
    run_timeout: float


FULL = Sizes(
    drain=20_000,
    latency=2_000,
    io=10_000,
    rss=100_000,
    rss_window=5.0,
    wait_timeout=600,
    run_timeout=900,
)
QUICK = Sizes(
    drain=2_000,
    latency=200,
    io=1_000,
    rss=10_000,
    rss_window=2.0,
    wait_timeout=120,
    run_timeout=240,
)
CONCURRENCY = 4
IO_CONCURRENCY = 50
RATE = 200.0

PACKAGES = [
    "hauler",
    "huey",
    "celery",
    "kombu",
    "rq",
    "dramatiq",
    "procrastinate",
    "arq",
    "taskiq",
    "taskiq-redis",
    "redis",
    "psycopg",
]


@dataclass
class Run:
    """One measurement: a peer, a workload, its numbers or why it failed."""

    peer: str
    workload: str
    status: str
    values: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


def kill_leftovers(run_dir: Path) -> None:
    """SIGKILL the worker sessions a run started, if any is still there."""
    sessions = run_dir / "worker-sessions"
    if not sessions.exists():
        return
    for line in sessions.read_text().split():
        pgid = int(line)
        try:
            env = psutil.Process(pgid).environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if env.get("BENCH_RECORD_DIR", "").startswith(str(run_dir)):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_one(
    peer: str, workload: str, argv: list[str], env: dict[str, str], base: Path, timeout: float
) -> Run:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{peer}.{workload}.", dir=base))
    cmd = [sys.executable, "-m", "benches.compare.one", peer, workload, *argv]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=dict(env, BENCH_RUN_DIR=str(run_dir)),
        stdout=subprocess.PIPE,
        stderr=(run_dir / "driver.log").open("wb"),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return Run(peer, workload, "FAILED", reason=f"no result within {timeout:.0f}s (killed)")
    finally:
        # On a timeout, or Ctrl-C in the harness (the run is in a session of its own).
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_leftovers(run_dir)
    seconds = time.monotonic() - start
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        log = (run_dir / "driver.log").read_text(errors="replace").strip().splitlines()
        tail = " | ".join(log[-4:])
        return Run(peer, workload, "FAILED", reason=f"exit {proc.returncode}: {tail}")
    status = result.pop("status", "FAILED")
    reason = result.pop("reason", "")
    if status == "ok":
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        reason += f" (logs: {run_dir})"
    return Run(peer, workload, status, result, reason, seconds)


def median(runs: list[Run]) -> Run:
    """One run's worth of numbers: the median of each over the repeats (FAILED if any failed)."""
    failed = [r for r in runs if r.status != "ok"]
    if failed:
        return failed[0]
    first = runs[0]
    values = {
        k: statistics.median(r.values[k] for r in runs)
        for k in first.values
        if all(isinstance(r.values.get(k), int | float) for r in runs)
    }
    seconds = sum(r.seconds for r in runs)
    return Run(first.peer, first.workload, "ok", values, "", seconds)


WORKLOADS = ("drain-batch", "drain-single", "latency", "io", "rss")


def plan(
    keys: list[str], batch: dict[str, bool], sizes: Sizes, workloads: Sequence[str] = WORKLOADS
) -> list[tuple[str, str, list[str]]]:
    """(peer, workload, arguments) in run order: each workload across all peers in turn.

    A peer without batch enqueue has no batch drain (n/a in the report).
    """
    t = ["--timeout", str(sizes.wait_timeout)]
    c = ["--concurrency", str(CONCURRENCY)]
    steps = []
    for workload, args in [
        ("drain-batch", ["--n", str(sizes.drain), *c]),
        ("drain-single", ["--n", str(sizes.drain), *c]),
        ("latency", ["--n", str(sizes.latency), *c, "--rate", str(RATE)]),
        ("io", ["--n", str(sizes.io), "--concurrency", str(IO_CONCURRENCY)]),
        ("rss", ["--n", str(sizes.rss), *c, "--window", str(sizes.rss_window)]),
    ]:
        if workload not in workloads:
            continue
        for key in keys:
            if workload != "drain-batch" or batch[key]:
                steps.append((key, workload, [*args, *t]))
    return steps


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "rust", "python"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return head + (" + uncommitted engine changes" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.compare")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    parser.add_argument("--only", default="", help="comma-separated peer keys (default: all)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run everything N times; report the medians"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument("--note", default="", help="a line put on top of the report")
    parser.add_argument(
        "--out",
        type=Path,
        help="where the report goes (default benches/results; .hauler-bench/results with --quick)",
    )
    parser.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.out is None:
        args.out = REPO / (".hauler-bench/results" if args.quick else "benches/results")
    keys = registry.KEYS if not args.only else args.only.split(",")
    for key in keys:
        if key not in registry.KEYS:
            parser.error(f"unknown peer {key!r}; known: {', '.join(registry.KEYS)}")
    workloads = args.workloads.split(",")
    for workload in workloads:
        if workload not in WORKLOADS:
            parser.error(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")

    settings: report.Settings = {}
    for key in keys:
        try:
            cls = registry.load(key)
            settings[key] = (cls.library, cls.store, cls.settings, cls.has_batch)
        except Exception as e:  # reported as the peer's settings line
            settings[key] = (key, "?", f"could not import: {e}", False)

    started = datetime.now(UTC)
    load_before = os.getloadavg()
    redis, pg = Redis(), Postgres()
    base = Path(tempfile.mkdtemp(prefix="hauler-bench."))
    runs: list[Run] = []
    try:
        redis.start()
        pg.start()
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            BENCH_REDIS_URL=redis.url,
            BENCH_PG_DSN=pg.dsn,
        )
        steps = plan(keys, {k: v[3] for k, v in settings.items()}, sizes, workloads)
        done: dict[tuple[str, str], list[Run]] = {}
        total = len(steps) * args.repeat
        for r in range(args.repeat):
            for n, (key, workload, wargs) in enumerate(steps, 1 + r * len(steps)):
                say(f"[{n}/{total}] {key} {workload}")
                run = run_one(key, workload, wargs, env, base, sizes.run_timeout)
                shown = run.reason if run.status != "ok" else json.dumps(run.values)
                say(f"    {run.status} in {run.seconds:.0f}s: {shown}")
                done.setdefault((key, workload), []).append(run)
        runs = [median(group) for group in done.values()]
    finally:
        redis.stop()
        pg.stop()
        if all(r.status == "ok" for r in runs):
            shutil.rmtree(base, ignore_errors=True)

    finished = datetime.now(UTC)
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "minutes": round((finished - started).total_seconds() / 60, 1),
        "mode": "quick" if args.quick else "full",
        "repeat": args.repeat,
        "note": args.note,
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.platform()}",
        "load": f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1-min load average)",
        "python": platform.python_version(),
        "hauler_commit": git_commit(),
        "versions": {p: package_version(p) for p in PACKAGES},
        "redis": redis.version,
        "postgres": pg.version,
        "sizes": sizes.__dict__,
        "concurrency": CONCURRENCY,
        "io_concurrency": IO_CONCURRENCY,
        "rate": RATE,
    }
    stem = f"compare-{started:%Y-%m-%d}" + ("-quick" if args.quick else "")
    paths = report.write(args.out, stem, meta, settings, runs)
    print(report.summary(settings, runs))
    for path in paths:
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    failed = [r for r in runs if r.status != "ok"]
    if failed:
        print(f"{len(failed)} run(s) FAILED: see the report", file=sys.stderr)
