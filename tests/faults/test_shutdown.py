"""Graceful shutdown of worker processes.

- Ctrl-C while ``stop()`` drains does not abandon the stop: it completes in the background
  and interpreter exit waits for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")


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
