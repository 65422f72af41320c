"""Crash storm: worker processes SIGKILLed at random while they work through a backlog.

Four worker processes share one SQLite file (or one PostgreSQL schema); a chaos loop kills
a random one every 0.5-2 s with SIGKILL and starts a new one. Every job logs ``start`` when
it begins, so a job that ran twice shows two ``start`` lines. At the end:

- every job is ``completed`` in storage, exactly one attempt completed it, none is left
  ``running``, none ever ``failed``;
- every job logged ``start`` at least once and ``end`` in the worker that completed it;
- every extra run is explained by a kill: it ran in a process the test killed, and the
  job's history has a ``lease_expired`` attempt for that process; no lease was ever lost
  by a process that was alive (a lease that expires under load would show up here).

The CI form runs 1,500 jobs for about 15 s. ``HAULER_SOAK=1`` runs the long form
(``HAULER_SOAK_JOBS``, default 20,000 jobs; ``HAULER_SOAK_SECONDS`` of chaos, default 600).
``HAULER_CHAOS_SEED`` replays a run's kill schedule.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from faults.fault_worker import Step
from faults.helpers import BACKENDS, Log, Processes, pid_of, pids_of, wait_until
from hauler import JobStatus, QueueHandle

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")

WORKERS = 4
THREADS = 4


def storm(
    handle: QueueHandle,
    procs: Processes,
    log: Log,
    *,
    jobs: int,
    job_seconds: float,
    chaos_seconds: float,
    drain_timeout: float,
) -> dict[str, float]:
    seed = int(os.environ.get("HAULER_CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    started = time.monotonic()
    ids = handle.queue_many(Step(str(log.path), n, job_seconds) for n in range(jobs))
    by_n = dict(enumerate(ids))

    def completed() -> int:
        return handle.counts().get("default", {}).get("completed", 0)

    alive = [procs.start("--threads", str(THREADS)) for _ in range(WORKERS)]
    killed: set[int] = set()
    chaos_end = started + chaos_seconds
    while time.monotonic() < chaos_end and completed() < jobs:
        time.sleep(rng.uniform(0.5, 2.0))
        victim = alive.pop(rng.randrange(len(alive)))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        killed.add(victim.pid)
        alive.append(procs.start("--threads", str(THREADS)))
    chaos_done = time.monotonic()
    # The survivors finish the backlog, including the jobs of the last killed workers.
    wait_until(lambda: completed() == jobs, timeout=drain_timeout, what=f"{jobs} completed jobs")
    elapsed = time.monotonic() - started
    for proc in alive:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    counts = handle.counts()
    assert counts == {"default": {"completed": jobs}}, counts  # nothing running or failed
    starts = log.events()["start"]
    ends = log.events()["end"]
    duplicates = 0
    lease_expired = 0
    for n, job_id in by_n.items():
        info = handle.get(job_id)
        assert info.status is JobStatus.COMPLETED
        (winner,) = pids_of(info.history, "completed")
        lost = pids_of(info.history, "lease_expired")
        assert not pids_of(info.history, "failed"), info.history
        assert len(info.history) == len(lost) + 1 == info.attempt, info.history
        # Every lease that expired was held by a process the test killed.
        assert set(lost) <= killed, (n, lost, killed)
        # Each run logged its start: the completing one once, every other one in a
        # process that was killed while holding the job.
        runs = Counter(starts.get(n, []))
        assert runs[winner] >= 1, (n, winner, starts.get(n))
        runs[winner] -= 1
        assert runs <= Counter(lost), (n, dict(runs), lost)
        assert winner in ends.get(n, []), (n, winner, ends.get(n))
        duplicates += len(starts[n]) - 1
        lease_expired += len(lost)
    report = {
        "seed": seed,
        "jobs": jobs,
        "kills": len(killed),
        "duplicate_runs": duplicates,
        "lease_expired_attempts": lease_expired,
        "chaos_seconds": round(chaos_done - started, 1),
        "total_seconds": round(elapsed, 1),
    }
    print("crash storm:", report)
    assert killed, "the chaos loop never killed anything: make the backlog longer"
    return report


@pytest.mark.parametrize("backend", BACKENDS)
def test_crash_storm(handle: QueueHandle, procs: Processes, log: Log) -> None:
    storm(handle, procs, log, jobs=1500, job_seconds=0.12, chaos_seconds=20, drain_timeout=45)


@pytest.mark.skipif(not os.environ.get("HAULER_SOAK"), reason="soak: set HAULER_SOAK=1")
@pytest.mark.timeout(3600)
def test_crash_storm_soak(handle: QueueHandle, procs: Processes, log: Log) -> None:
    jobs = int(os.environ.get("HAULER_SOAK_JOBS", "20000"))
    seconds = float(os.environ.get("HAULER_SOAK_SECONDS", "600"))
    storm(handle, procs, log, jobs=jobs, job_seconds=0.05, chaos_seconds=seconds, drain_timeout=300)


def test_worker_process_helper_reports_ready(procs: Processes) -> None:
    """The fault worker starts, says so, and names its pid in its worker id."""
    proc = procs.start_ready("--threads", "1")
    assert proc.poll() is None
    proc.kill()
    proc.wait(timeout=30)
    assert isinstance(proc, subprocess.Popen)


def test_pid_of_parses_worker_ids() -> None:
    assert pid_of("host:1234:abcd1234") == 1234
    assert pid_of("a:b:c:42:ffff0000") == 42
