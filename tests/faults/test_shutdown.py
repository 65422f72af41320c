"""Graceful shutdown: SIGTERM drains a worker process within its stop timeout.

- Jobs in flight when SIGTERM arrives finish in that worker; nothing new is claimed; the
  process exits with status 143.
- Jobs still running when the stop timeout passes are released: another worker starts
  them at once (their lease, 15 s, is far from expiring), and the terminated process exits
  without waiting for them.
- A process that no longer runs a pool, or that has its own SIGTERM handler, or that
  opted out, is left alone: SIGTERM does what it did before.
- Ctrl-C while ``stop()`` drains does not abandon the stop: it completes in the background
  and interpreter exit waits for it.
- A stop that begins while a claim is in flight leaves none of the claimed jobs
  ``running`` (on every storage).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from faults.fault_worker import Hold, Step
from faults.helpers import Log, Processes, pid_of, wait_until
from hauler import Job, JobStatus, QueueHandle, WorkerConfig, create_server
from hauler.storage import Storage

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")


def exit_status(proc: subprocess.Popen[str], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker process still running {timeout}s after SIGTERM")


def test_sigterm_drains_jobs_in_flight(handle: QueueHandle, procs: Processes, log: Log) -> None:
    a = procs.start_ready("--threads", "2", "--stop-timeout", "10")
    ids = handle.queue_many(Step(str(log.path), n, 1.0) for n in range(4))
    wait_until(
        lambda: sum(len(p) for p in log.events()["start"].values()) == 2,
        timeout=15,
        what="A to start two jobs",
    )
    a.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert exit_status(a, timeout=10) == 143
    assert time.monotonic() - sent < 5  # the two 1 s jobs, not the 10 s timeout

    infos = [handle.get(i) for i in ids]
    ran = [i for i in infos if i.status is JobStatus.COMPLETED]
    waiting = [i for i in infos if i.status is JobStatus.AVAILABLE]
    assert (len(ran), len(waiting)) == (2, 2), [i.status for i in infos]
    for info in ran:  # finished by A, in its first attempt
        (attempt,) = info.history
        assert (attempt.outcome, pid_of(attempt.worker_id)) == ("completed", a.pid)
    for info in waiting:  # never claimed after SIGTERM
        assert (info.attempt, info.history) == (0, [])


def test_sigterm_past_the_timeout_releases_jobs_to_another_worker(
    handle: QueueHandle, procs: Processes, log: Log, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    a = procs.start_ready("--threads", "1", "--stop-timeout", "0.5")
    job_id = handle.queue(Hold(str(log.path), 1, str(hold)))
    wait_until(lambda: log.pids("start", 1) == [a.pid], timeout=15, what="A to start the job")
    b = procs.start_ready("--threads", "1")

    a.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    wait_until(lambda: len(log.pids("start", 1)) == 2, timeout=10, what="B to take the job")
    handed_over = time.monotonic() - sent
    assert log.pids("start", 1) == [a.pid, b.pid]
    # Released at the 0.5 s stop timeout, picked up at B's next poll: far inside the 15 s
    # lease that a killed worker's job would wait out.
    assert handed_over < 5, handed_over
    # A does not wait for the released sync job, which is still holding in its thread.
    assert exit_status(a, timeout=5) == 143
    assert log.pids("end", 1) == []

    hold.touch()
    wait_until(
        lambda: handle.get(job_id).status is JobStatus.COMPLETED, timeout=15, what="B to finish"
    )
    info = handle.get(job_id)
    released, completed = info.history
    assert (released.outcome, pid_of(released.worker_id)) == ("released", a.pid)
    assert (completed.outcome, pid_of(completed.worker_id)) == ("completed", b.pid)
    assert info.attempt == 1  # a released attempt is not counted
    assert log.pids("end", 1) == [b.pid]


SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    from hauler import Job, WorkerConfig
    from hauler.storage import MemoryStorage

    class Noop(Job[None]):
        NAME = "noop"

        def run(self, state: None) -> None:
            pass

    mode = sys.argv[1]
    if mode == "own-handler":
        signal.signal(signal.SIGTERM, lambda s, f: print("own handler", flush=True))
    worker = WorkerConfig(
        storage=MemoryStorage(), handle_sigterm=(mode != "opt-out")
    ).register(Noop).start()
    if mode == "stopped":
        worker.stop()
    print("ready", flush=True)
    # Short sleeps: a signal that lands between CPython releasing the GIL and entering
    # one long sleep() is handled only when that sleep ends (more likely right after
    # start, while the pool's threads take the GIL once each).
    end = time.monotonic() + (3 if mode == "own-handler" else 30)
    while time.monotonic() < end:
        time.sleep(0.05)
    print("slept", flush=True)
    """
)


@pytest.mark.parametrize(
    ("mode", "status", "last_line"),
    [
        ("stopped", -signal.SIGTERM, "ready"),  # no pool runs: plain SIGTERM
        ("opt-out", -signal.SIGTERM, "ready"),
        ("own-handler", 0, "slept"),  # the application's handler ran, not hauler's
        ("running", 143, "ready"),  # hauler's: drained, SystemExit(143)
    ],
)
def test_sigterm_handler_is_installed_only_when_it_should(
    tmp_path: Path, mode: str, status: int, last_line: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.communicate()  # reap it and close its pipe, even when the test failed
    assert proc.returncode == status
    assert (["ready", *out.splitlines()])[-1] == last_line


INTERRUPTED_STOP = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from hauler import Job, WorkerConfig, create_server
    from hauler.storage import SqliteStorage

    class Slow(Job[None]):
        NAME = "slow"

        def run(self, state: None) -> None:
            time.sleep(4)

    storage = SqliteStorage("jobs.db")
    worker = WorkerConfig(storage=storage).register(Slow).start()
    job_id = worker.queue(Slow())
    while worker.in_flight == 0:
        time.sleep(0.01)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        worker.stop(timeout=1.0)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    # The stop goes on: at its timeout the job is handed back, well before it returns.
    deadline = time.monotonic() + 10
    while create_server(storage).get(job_id).status.value != "available":
        assert time.monotonic() < deadline, "the interrupted stop never released the job"
        time.sleep(0.02)
    print("released", flush=True)
    """
)


def test_interrupted_stop_still_releases(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_STOP],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["interrupted", "released"]


class Quick(Job[None]):
    NAME = "quick"

    def run(self, state: None) -> None:
        time.sleep(0.01)


def test_stop_right_after_start_leaves_no_job_running(storage: Storage) -> None:
    """A stop that begins while the pool's first claim is in flight: the claim still
    commits (the storage call is not cancelled), so the pool must hand those jobs back (or
    run them) before it stops. Nothing may stay ``running`` with no pool behind it, which
    would hold the job until its lease expired (15 s here)."""
    handle = create_server(storage)
    handle.queue_many(Quick() for _ in range(2000))
    config = WorkerConfig(storage=storage).register(Quick).set_worker_count("default", 8)
    for _ in range(20):
        config.start(handle).stop(timeout=5)
        assert handle.count(status="running") == 0
    assert handle.counts()["default"].keys() <= {"available", "completed"}
