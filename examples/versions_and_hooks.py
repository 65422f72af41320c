"""hauler job versions and lifecycle hooks.

Run it with ``python examples/versions_and_hooks.py``. It creates ``hauler-versions.db``
in the current directory (delete it whenever you like). Yesterday's deployment queued jobs
with VERSION 1 of two classes; today's classes store VERSION 2 and no longer run VERSION 1
as is: ``SendEmail`` upgrades old jobs with ``migrate``, ``Digest`` has no ``migrate``, so
its old job fails at once. Hooks on the worker count what happens to each job.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from hauler import Backoff, Job, JobContext, JobInfo, WorkerConfig, create_server
from hauler.storage import SqliteStorage


class SendEmailV1(Job[None]):
    """Yesterday's class: one address per job."""

    NAME = "send_email"
    VERSION = 1
    to: str

    def run(self, state: None) -> None:
        """Never run here: only queued, as the old deployment did."""


class DigestV1(Job[None]):
    """Yesterday's digest: a day as text."""

    NAME = "digest"
    VERSION = 1
    day: str

    def run(self, state: None) -> None:
        """Never run here: only queued, as the old deployment did."""


class SendEmail(Job[None]):
    """Today's class: a list of addresses. VERSION 1 jobs are upgraded by ``migrate``."""

    NAME = "send_email"
    VERSION = 2
    MIN_SUPPORTED_VERSION = 2
    BACKOFF = Backoff.fixed(0.2)
    to: list[str]

    @classmethod
    def migrate(cls, old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
        """VERSION 1 stored one address as ``to``: make it a list."""
        return {"to": [old_args["to"]]}

    def run(self, state: None, ctx: JobContext) -> None:
        """Send; the SMTP server times out the first time it sees flaky@example.com."""
        if "flaky@example.com" in self.to and ctx.attempt == 1:
            raise ConnectionError("SMTP timeout")
        ctx.logger.info("sent to %s", ", ".join(self.to))


class Digest(Job[None]):
    """Today's digest: no ``migrate``, so VERSION 1 digests are not run."""

    NAME = "digest"
    VERSION = 2
    MIN_SUPPORTED_VERSION = 2
    year: int
    month: int

    def run(self, state: None) -> None:
        """Build the digest."""


class Events:
    """Counts the hook calls per job (hooks run on several threads: lock)."""

    def __init__(self) -> None:
        self.seen: dict[str, Counter[str]] = {}
        self.lock = threading.Lock()

    def hook(self, event: str) -> Callable[[JobInfo], None]:
        """Return a hook that counts ``event`` for the job it is given."""

        def count(info: JobInfo) -> None:
            with self.lock:
                self.seen.setdefault(str(info.id), Counter())[event] += 1

        return count


def main() -> None:
    """Queue old jobs, then run them with today's classes and hooks."""
    storage = SqliteStorage("hauler-versions.db")
    yesterday = create_server(storage)
    old_email = yesterday.queue(SendEmailV1(to="ada@example.com"))
    old_digest = yesterday.queue(DigestV1(day="2024-05-01"))

    events = Events()
    alerts: list[str] = []

    def on_failure(info: JobInfo) -> None:
        """Failed for good: count it, and raise an alert."""
        events.hook("on_failure")(info)
        reason = info.last_error.message if info.last_error else "?"
        alerts.append(f"alert: {info.name} failed for good: {reason}")

    config: WorkerConfig[None] = WorkerConfig(
        on_enqueue=events.hook("on_enqueue"),  # jobs queued through `handle` below
        on_start=events.hook("on_start"),
        on_retry=events.hook("on_retry"),
        on_success=events.hook("on_success"),
        on_failure=on_failure,
    )
    handle = create_server(storage)
    with config.register(SendEmail).register(Digest).start(handle) as worker:
        new_email = handle.queue(SendEmail(to=["flaky@example.com", "bob@example.com"]))
        new_digest = handle.queue(Digest(year=2024, month=5))
        jobs = [old_email, old_digest, new_email, new_digest]
        infos = worker.wait(jobs, timeout=30)
    # stop() (the end of the with block) waited for the last hooks.

    names = ["on_enqueue", "on_start", "on_retry", "on_success", "on_failure"]

    def order(item: tuple[str, int]) -> int:
        return names.index(item[0])

    for info in infos:
        counts = events.seen.get(str(info.id), Counter())
        calls = ", ".join(f"{e} x{n}" for e, n in sorted(counts.items(), key=order))
        print(
            f"{info.name} VERSION {info.version}: {info.status.value} after "
            f"{info.attempt} attempt(s); hooks: {calls or 'none'}"
        )
    print(*alerts, sep="\n")


if __name__ == "__main__":
    main()
