"""Slow runner fencing: a worker stalled past its lease (SIGSTOP) loses the job for good.

Worker A starts a job and is frozen with SIGSTOP. Its heartbeats stop, the lease (0.75 s)
expires, and worker B reclaims the job and completes it. Then A is resumed (SIGCONT): its
run goes on to the end and its completion is refused by the lease fence. The job was
completed exactly once in storage and its history shows both attempts, in order.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from faults.fault_worker import Step
from faults.helpers import BACKENDS, Log, Processes, pid_of, wait_until
from hauler import JobStatus, QueueHandle

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="uses SIGSTOP"),
    pytest.mark.parametrize("backend", BACKENDS),
]


def test_stalled_runner_cannot_complete_a_reclaimed_job(
    handle: QueueHandle, procs: Processes, log: Log
) -> None:
    a = procs.start_ready("--threads", "1")
    job_id = handle.queue(Step(str(log.path), 1, 1.5))
    wait_until(lambda: log.pids("start", 1) == [a.pid], timeout=15, what="A to start the job")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        held = handle.get(job_id)
        assert held.status is JobStatus.RUNNING and held.worker_id is not None
        assert pid_of(held.worker_id) == a.pid
        lease_end = held.lease_expires_at

        b = procs.start_ready("--threads", "1")
        wait_until(
            lambda: handle.get(job_id).status is JobStatus.COMPLETED,
            timeout=20,
            what="B to reclaim and complete the job",
        )
        assert log.pids("start", 1) == [a.pid, b.pid]
        assert log.pids("end", 1) == [b.pid]
        done = handle.get(job_id)
    finally:
        os.kill(a.pid, signal.SIGCONT)

    # A wakes up mid-run: it finishes the job's code and reports a completion.
    wait_until(lambda: log.pids("end", 1) == [b.pid, a.pid], timeout=15, what="A to finish")
    time.sleep(0.5)  # A's completer writes (and is refused) within a few milliseconds
    assert a.poll() is None, "the stalled worker must survive the refusal"

    info = handle.get(job_id)
    assert info == done, "A's late completion changed the job"
    assert (info.status, info.attempt) == (JobStatus.COMPLETED, 2)
    lost, completed = info.history
    assert (lost.outcome, pid_of(lost.worker_id)) == ("lease_expired", a.pid)
    assert lost.error is not None and "lease expired" in lost.error.message
    assert (completed.outcome, pid_of(completed.worker_id)) == ("completed", b.pid)
    # B started only once A's lease had run out: never two holders at once.
    assert lease_end is not None and completed.started_at >= lease_end
    assert handle.counts() == {"default": {"completed": 1}}
