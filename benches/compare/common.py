"""What the peers share: the :class:`Peer` interface, the run context, worker processes."""

from __future__ import annotations

import abc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]

# The job kinds: "noop" jobs only record themselves; "sleep" jobs record, then sleep.
NOOP = "noop"
SLEEP = "sleep"
SLEEP_S = 0.005
BATCH = 1000


class Failed(Exception):
    """A run that could not be measured; the message says why (it goes into the report)."""


@dataclass
class Ctx:
    """Where one run's servers and files are."""

    redis_url: str
    pg_dsn: str
    run_dir: Path
    record_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a worker process: this one's plus the harness's settings."""
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(REPO),
            BENCH_REDIS_URL=self.redis_url,
            BENCH_PG_DSN=self.pg_dsn,
            BENCH_RECORD_DIR=str(self.record_dir),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env


class Workers:
    """Worker processes started from a command line, in a session of their own."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.argv = list(argv)
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # The harness kills what is left of these sessions if this run times out.
        with (log.parent / "worker-sessions").open("a") as f:
            f.write(f"{self.proc.pid}\n")

    def pids(self) -> list[int]:
        """The main process and all its descendants."""
        try:
            main = psutil.Process(self.proc.pid)
            return [main.pid, *(c.pid for c in main.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def check_alive(self) -> None:
        """Raise :class:`Failed` with the end of the log if the main process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise Failed(f"worker exited with {code}: {self.tail()}")

    def tail(self, lines: int = 6) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the session, then SIGKILL to whatever is left after ``grace`` s."""
        pgid = self.proc.pid  # the session leader's pid is the group id
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()


def python_tool(name: str) -> str:
    """A console script installed next to this interpreter (the bench virtualenv's)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise Failed(f"{name} is not installed in {Path(sys.executable).parent}")
    return str(path)


class Peer(abc.ABC):
    """One library on one storage, driven by the harness.

    ``reset`` makes a fresh, empty queue; ``enqueue`` queues jobs from the harness process;
    ``start`` starts the workers (separate processes where that is how the library runs);
    ``stop`` stops them. Jobs call :func:`benches.compare.record.record`.
    """

    library: str = ""
    store: str = ""
    has_batch: bool = False
    settings: str = ""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.workers: Workers | None = None

    @property
    def label(self) -> str:
        return f"{self.library} ({self.store})"

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def enqueue(self, ids: Iterable[int], *, batch: bool, kind: str) -> None: ...

    @abc.abstractmethod
    def start(self, concurrency: int, kind: str) -> None: ...

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
            self.workers = None

    def worker_pids(self) -> list[int]:
        return self.workers.pids() if self.workers is not None else []

    def check_alive(self) -> None:
        if self.workers is not None:
            self.workers.check_alive()

    def verify(self, n: int) -> None:  # noqa: B027 (a hook: most peers add a check)
        """Extra checks after a drain of ``n`` jobs (the library's own view of the queue)."""

    def close(self) -> None:
        self.stop()

    def spawn(self, argv: Sequence[str], **env: str) -> None:
        self.workers = Workers(argv, self.ctx.env(**env), self.ctx.run_dir / "worker.log")


def chunks(items: Iterable[T], size: int = BATCH) -> Iterable[list[T]]:
    """``items`` in lists of ``size``."""
    batch: list[T] = []
    for i in items:
        batch.append(i)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def wait_until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.01)
