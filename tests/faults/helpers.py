"""Helpers for the fault tests: worker processes on one shared storage, and their logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hauler.info import AttemptInfo

WORKER = Path(__file__).with_name("fault_worker.py")

#: The shared storages the process-level fault tests run on (see conftest's ``db``).
BACKENDS = ["sqlite", "postgres"]


def _no_core_dumps() -> None:
    """In the child: an abort (the crash-point hook) must not leave a core file behind."""
    import resource  # POSIX only, like every fault test

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def pid_of(worker_id: str) -> int:
    """The process id inside a worker id (``host:pid:random``)."""
    return int(worker_id.rsplit(":", 2)[-2])


def pids_of(history: list[AttemptInfo], outcome: str) -> list[int]:
    return [pid_of(a.worker_id) for a in history if a.outcome == outcome]


@dataclass
class Log:
    """The jobs' shared event log: ``<event> <n> <pid>`` lines."""

    path: Path

    def events(self) -> dict[str, dict[int, list[int]]]:
        """``{event: {n: [pids, in order]}}`` for every complete line."""
        out: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        if not self.path.exists():
            return out
        for line in self.path.read_text().splitlines():
            event, n, pid = line.split()
            out[event][int(n)].append(int(pid))
        return out

    def pids(self, event: str, n: int) -> list[int]:
        return self.events()[event][n]


@dataclass
class Processes:
    """Worker processes started by one test; all killed at its end."""

    db: str  # a SQLite file path or a PostgreSQL URL (see fault_worker.py)
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``fault_worker.py DB *args``, with ``env`` added to the environment."""
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), self.db, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            preexec_fn=_no_core_dumps,
        )
        self.started.append(proc)
        return proc

    def start_ready(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
    ) -> subprocess.Popen[str]:
        """Start a worker process and wait until its pool runs."""
        proc = self.start(*args, env=env)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the test timeout; ready comes in < 1 s
        if not line.startswith("ready "):
            proc.kill()
            _, err = proc.communicate(timeout=timeout)
            pytest.fail(f"worker did not start: {line!r}\n{err}")
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
                except ProcessLookupError:
                    pass
            proc.communicate(timeout=30)


def wait_until(predicate: object, *, timeout: float, what: str) -> None:
    """Poll ``predicate()`` every 20 ms; fail the test after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
