"""hauler job context: ``run(self, state, ctx)``, its logger, attempt and cancel flag; snooze.

Run it with ``python examples/context.py``. It creates ``hauler-context.db`` in the current
directory (delete it whenever you like) and runs one import job that fails its first
attempt, then on the retry finds its file not there yet and snoozes (which costs no
attempt), then succeeds; every log line the job writes names the job's id, name and
attempt.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import timedelta

from hauler import Backoff, Job, JobContext, MaxRetries, Snooze, WorkerConfig, create_server
from hauler.storage import SqliteStorage


@dataclass
class Uploads:
    """The application state: how many times the file was looked for."""

    looks: int = 0


class Import(Job[Uploads]):
    """Import a file; the first attempt hits a (simulated) network error."""

    NAME = "import"
    MAX_RETRIES = MaxRetries.count(1)
    BACKOFF = Backoff.fixed(0.1)

    path: str

    def run(self, state: Uploads, ctx: JobContext) -> Snooze | None:
        """A third parameter, ``ctx``, asks the worker for the job's context."""
        ctx.logger.info("importing %s", self.path)
        if ctx.attempt == 1:
            raise ConnectionError("network unreachable")
        state.looks += 1
        if state.looks == 1:
            ctx.logger.info("not uploaded yet, snoozing")
            return self.snooze(timedelta(seconds=0.2))  # the attempt is not counted
        if ctx.cancelled:  # the same flag as hauler.current_job_cancelled()
            return None
        ctx.logger.info("done")
        return None


def main() -> None:
    """Run the import on a worker pool and print its log lines and status."""
    handler = logging.StreamHandler(sys.stdout)
    # The logger's records carry job_id, job_name and job_attempt for formatters too.
    handler.setFormatter(logging.Formatter("%(job_name)s #%(job_attempt)s: %(message)s"))
    logger = logging.getLogger("hauler.job")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    storage = SqliteStorage("hauler-context.db")
    handle = create_server(storage)
    uploads = Uploads()
    worker = WorkerConfig(lambda: uploads).register(Import).start(handle)
    try:
        job_id = handle.queue(Import(path="orders.csv"))
        (info,) = handle.wait([job_id], timeout=30)
    finally:
        worker.stop()
        storage.close()
    print(f"{info.name}: {info.status.value} after {info.attempt} attempts")
    print("history:", ", ".join(f"{a.attempt} {a.outcome}" for a in info.history))


if __name__ == "__main__":
    main()
