"""Kill at every step: a worker process dies at each named point of the engine, and each
point ends in the state ``docs/state_machine.md`` documents once another worker runs.

The engine's test hook (``HAULER_TEST_CRASH_AT``, see ``hauler_core::testhook``) aborts
the process the first time it reaches the named point:

| point                     | stored right after the crash     | after worker B runs         |
|---------------------------|----------------------------------|-----------------------------|
| after_claim               | running under A, never started   | lease_expired, completed    |
| during_run                | running under A, started         | lease_expired, completed    |
| before_complete_commit    | running under A, ran to the end  | lease_expired, completed    |
|                           | (the completion rolled back)     | (so it ran twice)           |
| during_retry_reschedule   | running under A, failed          | lease_expired, completed    |
|                           | (the reschedule rolled back)     | (the failure is not kept)   |
| during_enqueue            | nothing: the batch rolled back   | the file works as before    |
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from faults.fault_worker import Flaky, Step
from faults.helpers import BACKENDS, Log, Processes, pid_of, pids_of, wait_until
from hauler import JobStatus, QueueHandle

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals"),
    pytest.mark.parametrize("backend", BACKENDS),
]

CRASH = "HAULER_TEST_CRASH_AT"


def crashed(proc: object, point: str) -> None:
    """Wait for ``proc`` to abort at ``point``."""
    assert hasattr(proc, "communicate")
    try:
        _, err = proc.communicate(timeout=20)
    except Exception:  # pragma: no cover - TimeoutExpired: report it as a failure
        pytest.fail(f"the worker did not crash at {point}")
    assert proc.returncode == -signal.SIGABRT, err  # type: ignore[attr-defined]
    assert f"{CRASH}={point}: aborting the process" in err


@pytest.mark.parametrize(
    ("point", "a_started", "a_ended"),
    [
        ("after_claim", False, False),
        ("during_run", True, False),
        ("before_complete_commit", True, True),
    ],
)
def test_crash_while_running_a_job(
    handle: QueueHandle,
    procs: Processes,
    log: Log,
    point: str,
    a_started: bool,
    a_ended: bool,
) -> None:
    job_id = handle.queue(Step(str(log.path), 1, 0.5))
    a = procs.start("--threads", "1", env={CRASH: point})
    crashed(a, point)

    held = handle.get(job_id)
    assert (held.status, held.attempt, held.history) == (JobStatus.RUNNING, 1, [])
    assert held.worker_id is not None and pid_of(held.worker_id) == a.pid
    assert log.pids("start", 1) == ([a.pid] if a_started else [])
    assert log.pids("end", 1) == ([a.pid] if a_ended else [])

    b = procs.start_ready("--threads", "1")
    wait_until(
        lambda: handle.get(job_id).status is JobStatus.COMPLETED, timeout=20, what="B to finish"
    )
    info = handle.get(job_id)
    assert info.attempt == 2
    assert pids_of(info.history, "lease_expired") == [a.pid]
    assert pids_of(info.history, "completed") == [b.pid]
    assert [x.outcome for x in info.history] == ["lease_expired", "completed"]
    assert log.pids("start", 1) == ([a.pid, b.pid] if a_started else [b.pid])
    assert log.pids("end", 1) == ([a.pid, b.pid] if a_ended else [b.pid])


def test_crash_during_retry_reschedule(
    handle: QueueHandle, procs: Processes, log: Log, tmp_path: Path
) -> None:
    marker = tmp_path / "failed-once"
    job_id = handle.queue(Flaky(str(log.path), 1, str(marker)))
    a = procs.start("--threads", "1", env={CRASH: "during_retry_reschedule"})
    crashed(a, "during_retry_reschedule")

    held = handle.get(job_id)  # the failure was never committed: still A's
    assert (held.status, held.attempt, held.history, held.last_error) == (
        JobStatus.RUNNING,
        1,
        [],
        None,
    )
    assert marker.exists() and log.pids("start", 1) == [a.pid]

    b = procs.start_ready("--threads", "1")
    wait_until(
        lambda: handle.get(job_id).status is JobStatus.COMPLETED, timeout=20, what="B to finish"
    )
    info = handle.get(job_id)
    assert [(x.outcome, pid_of(x.worker_id)) for x in info.history] == [
        ("lease_expired", a.pid),
        ("completed", b.pid),
    ]
    assert log.pids("start", 1) == [a.pid, b.pid]
    assert log.pids("end", 1) == [b.pid]


def test_crash_during_enqueue_stores_nothing(
    handle: QueueHandle, procs: Processes, log: Log
) -> None:
    producer = procs.start("--enqueue", str(log.path), "3", env={CRASH: "during_enqueue"})
    crashed(producer, "during_enqueue")
    assert handle.counts() == {}  # not even the batch's first row

    # The file is intact: the same batch stores, and a worker runs it.
    ok = procs.start("--enqueue", str(log.path), "3")
    out, err = ok.communicate(timeout=30)
    assert ok.returncode == 0, err
    ids = out.split()
    assert len(ids) == 3
    b = procs.start_ready("--threads", "2")
    wait_until(lambda: handle.counts() == {"default": {"completed": 3}}, timeout=20, what="3 jobs")
    assert sorted(log.events()["end"]) == [0, 1, 2]
    assert all(p == [b.pid] for p in log.events()["end"].values())
