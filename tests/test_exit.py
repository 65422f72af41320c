"""Interpreter exit with sync jobs still running must be clean, never an abort."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from hauler import Job, WorkerConfig
    from hauler.storage import MemoryStorage

    class Busy(Job[None]):
        NAME = "busy"

        def run(self, state: None) -> None:
            started = time.monotonic()
            while time.monotonic() - started < 1.5:  # CPU-bound: keeps taking the GIL
                pass
            print("job returned", flush=True)

    worker = WorkerConfig(storage=MemoryStorage()).register(Busy).start()
    worker.queue(Busy())
    while worker.in_flight == 0:
        time.sleep(0.01)
    if sys.argv[1] == "stop":
        worker.stop(timeout=0.05)  # released; its thread still runs the job
    print("main done", flush=True)
    """
)


@pytest.mark.parametrize("how", ["stop", "atexit"])
def test_exit_waits_for_running_sync_jobs(tmp_path: Path, how: str) -> None:
    script = tmp_path / "busy_exit.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), how], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["main done", "job returned"]
    assert "Fatal Python error" not in result.stderr


PICTURE = textwrap.dedent(
    """
    import gc
    from dataclasses import dataclass
    from hauler import Job, WorkerConfig, create_server, MaxRetries, Backoff, DEFAULT_QUEUE
    from hauler.storage import SqliteStorage

    @dataclass
    class AppState:
        app_name: str

    class SendEmail(Job[AppState]):
        NAME = "send_email"
        QUEUE = DEFAULT_QUEUE
        MAX_RETRIES = MaxRetries.count(3)
        BACKOFF = Backoff.exponential(2)
        to: str
        subject: str

        def run(self, state: AppState) -> None:
            print("sent", self.to, "for", state.app_name, flush=True)

    queue_handle = create_server(SqliteStorage("jobs.db"))
    WorkerConfig(lambda: AppState("my app")).register(SendEmail) \\
        .set_worker_count(DEFAULT_QUEUE, 16).start(queue_handle)
    gc.collect()  # the Worker was not kept: the pool must run on regardless
    job_id = queue_handle.queue(SendEmail(to="a@b.c", subject="hi"))
    print(queue_handle.wait(job_id, timeout=30)[0].status, flush=True)
    """
)


def test_product_picture_runs_with_the_worker_discarded(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PICTURE], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["sent a@b.c for my app", "completed"]
