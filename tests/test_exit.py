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
