"""hauler job context: ``run(self, state, ctx)``, its logger, attempt and cancel flag.

Run it with ``python examples/context.py``. It creates ``hauler-context.db`` in the current
directory (delete it whenever you like) and runs one import job that fails its first
attempt and succeeds on the retry; every log line the job writes names the job's id, name
and attempt.
"""

from __future__ import annotations

import logging
import sys

from hauler import Backoff, Job, JobContext, MaxRetries, WorkerConfig, create_server
from hauler.storage import SqliteStorage


class Import(Job[None]):
    """Import a file; the first attempt hits a (simulated) network error."""

    NAME = "import"
    MAX_RETRIES = MaxRetries.count(2)
    BACKOFF = Backoff.fixed(0.1)

    path: str

    def run(self, state: None, ctx: JobContext) -> None:
        """A third parameter, ``ctx``, asks the worker for the job's context."""
        ctx.logger.info("importing %s", self.path)
        if ctx.attempt == 1:
            raise ConnectionError("network unreachable")
        if ctx.cancelled:  # the same flag as hauler.current_job_cancelled()
            return
        ctx.logger.info("done")


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
    worker = WorkerConfig().register(Import).start(handle)
    try:
        job_id = handle.queue(Import(path="orders.csv"))
        (info,) = handle.wait([job_id], timeout=30)
    finally:
        worker.stop()
        storage.close()
    print(f"{info.name}: {info.status.value} after {info.attempt} attempts")


if __name__ == "__main__":
    main()
