"""hauler periodic jobs: a cron entry, a fixed interval, run_now, unschedule.

Run it with ``python examples/cron.py``. It creates ``hauler-cron.db`` in the current
directory (delete it whenever you like) and runs for about three seconds: a cron entry
that ticks every second, an every-second interval added from a queue handle, a nightly
report run by hand with ``run_now``, and ``unschedule``. Start it twice at once in the same
directory and each tick still queues one job: ticks are taken in the storage.
"""

from __future__ import annotations

import time
from datetime import timedelta

from hauler import Job, WorkerConfig
from hauler.storage import SqliteStorage


class Ping(Job[None]):
    """Runs on every tick of its schedule."""

    NAME = "ping"
    source: str = "cron"

    def run(self, state: None) -> None:
        pass


class Report(Job[None]):
    """A nightly report (only ever run by hand here)."""

    NAME = "report"

    def run(self, state: None) -> None:
        print("report: done")


config = (
    WorkerConfig(storage=SqliteStorage("hauler-cron.db"))
    .cron("* * * * * *", Ping(), name="ping")  # every second (six fields: seconds first)
    .cron("30 2 * * mon-fri", Report, name="nightly", timezone="Europe/Paris")
)
with config.start() as worker:
    worker.every(timedelta(seconds=1), Ping(source="every"), name="ping-every")
    for entry in worker.schedules():
        print(f"schedule {entry.name}: {entry.cron or entry.every}, job {entry.job_name}")
    worker.wait([worker.run_now("nightly")], timeout=10)  # the ticks do not move
    time.sleep(2.5)
    print("unschedule ping-every:", worker.unschedule("ping-every"))
    print("unschedule ping-every again:", worker.unschedule("ping-every"))
    pings = worker.list(name="ping", limit=100).jobs
    sources = {j.args["source"] for j in pings}
    count = "at least 3" if len(pings) >= 3 else str(len(pings))
    print(f"pings queued: {count}; from {sorted(sources)}")
