"""Periodic jobs: WorkerConfig.cron, QueueHandle.every / unschedule / run_now / schedules.

Every test with the ``storage`` fixture runs on memory, SQLite and PostgreSQL; the
cross-process test runs two worker processes on one SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import pgserver as pg
from conftest import StartWorker, wait_for
from hauler import (
    ConfigError,
    Job,
    JobInfo,
    QueueHandle,
    ScheduleNotFoundError,
    WorkerConfig,
    create_server,
)
from hauler.storage import SqliteStorage, from_url

HELPER = Path(__file__).with_name("cron_process.py")


class Tick(Job[None]):
    NAME = "tick"

    def run(self, state: None) -> None:
        pass


class Report(Job[None]):
    NAME = "report"
    kind: str

    def run(self, state: None) -> None:
        pass


def ticks(handle: QueueHandle, name: str = "tick") -> list[JobInfo]:
    return handle.list(name=name, limit=1000).jobs


def per_second(jobs: list[JobInfo]) -> Counter[int]:
    """How many jobs were stored in each wall-clock second (a tick stores its job then)."""
    return Counter(int(j.created_at.timestamp()) for j in jobs)


def test_every_second_cron_runs_once_per_tick(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    worker = start_worker(WorkerConfig().cron("*/1 * * * * *", Tick))
    time.sleep(2.2)
    jobs = ticks(handle)
    assert 2 <= len(jobs) <= 3, [j.created_at for j in jobs]
    assert set(per_second(jobs).values()) == {1}, per_second(jobs)
    wait_for(lambda: all(j.status.value == "completed" for j in ticks(handle)))
    (entry,) = worker.schedules()
    assert entry.last_enqueued_at is not None
    assert entry.last_enqueued_at >= max(j.created_at for j in jobs)


def test_every_interval_from_a_handle_runs_in_workers_and_unschedule_stops_it(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    start_worker(WorkerConfig().register(Report))
    info = handle.every(timedelta(seconds=1), Report(kind="hourly"), name="beat")
    assert (info.name, info.every, info.cron, info.job_name) == (
        "beat",
        timedelta(seconds=1),
        None,
        "report",
    )
    assert info.args == {"kind": "hourly"}
    wait_for(lambda: len(ticks(handle, "report")) >= 2, timeout=5)
    assert handle.unschedule("beat") is True
    assert handle.unschedule("beat") is False
    assert handle.schedules() == []
    n = len(ticks(handle, "report"))
    time.sleep(1.5)
    jobs = ticks(handle, "report")
    assert len(jobs) == n, "no tick after unschedule"
    assert set(per_second(jobs).values()) == {1}
    assert {j.args["kind"] for j in jobs} == {"hourly"}


def test_schedules_lists_entries_with_their_next_run_and_run_now_leaves_them(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    paris = ZoneInfo("Europe/Paris")
    worker = start_worker(
        WorkerConfig()
        .cron("30 9 * * mon-fri", Report(kind="daily"), name="daily", timezone="Europe/Paris")
        .cron("@monthly", Report(kind="monthly"), name="monthly", catch_up="none")
    )
    before = datetime.now(UTC)
    daily, monthly = worker.schedules()
    assert (daily.name, daily.cron, daily.timezone, daily.catch_up) == (
        "daily",
        "30 9 * * mon-fri",
        "Europe/Paris",
        "one",
    )
    local = daily.next_run_at.astimezone(paris)
    assert (local.hour, local.minute, local.second) == (9, 30, 0)
    assert local.weekday() < 5
    assert timedelta(0) < daily.next_run_at - before <= timedelta(days=3, hours=1)
    assert (monthly.catch_up, monthly.next_run_at.day, monthly.next_run_at.hour) == ("none", 1, 0)

    job_id = handle.run_now("daily")
    (done,) = handle.wait([job_id], timeout=10)
    assert (done.name, done.args, done.status.value) == ("report", {"kind": "daily"}, "completed")
    daily_after = next(s for s in handle.schedules() if s.name == "daily")
    assert daily_after.next_run_at == daily.next_run_at, "run_now does not move the ticks"
    assert daily_after.last_enqueued_at is not None
    with pytest.raises(ScheduleNotFoundError, match="nope"):
        handle.run_now("nope")


def test_async_twins_of_the_schedule_methods(handle: QueueHandle) -> None:
    """aevery, aschedules, arun_now and aunschedule do what their sync twins do."""

    async def scenario() -> None:
        info = await handle.aevery(
            timedelta(hours=1), Report(kind="async"), name="async-beat", catch_up="none"
        )
        assert (info.name, info.every, info.catch_up) == ("async-beat", timedelta(hours=1), "none")
        (listed,) = await handle.aschedules()
        assert listed == info
        job_id = await handle.arun_now("async-beat")
        job = await handle.aget(job_id)
        assert (job.name, job.args) == ("report", {"kind": "async"})
        assert await handle.aunschedule("async-beat") is True
        assert await handle.aunschedule("async-beat") is False
        assert await handle.aschedules() == []
        with pytest.raises(ScheduleNotFoundError, match="async-beat"):
            await handle.arun_now("async-beat")
        with pytest.raises(ConfigError, match="interval"):
            await handle.aevery(timedelta(0), Report(kind="x"), name="zero")

    asyncio.run(scenario())


class Missed(Job[None]):
    NAME = "missed"
    entry: str

    def run(self, state: None) -> None:
        pass


def test_ticks_missed_while_no_worker_ran_are_caught_up_once_or_skipped(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    def config() -> WorkerConfig[None]:
        return (
            WorkerConfig()
            .cron("* * * * * *", Missed("one"), name="one")
            .cron("* * * * * *", Missed("none"), name="none", catch_up="none")
        )

    first = start_worker(config())
    wait_for(lambda: all(s.last_enqueued_at for s in handle.schedules()), timeout=5)
    first.stop(timeout=5)
    # No worker for two ticks or more, then a worker starts between two ticks.
    time.sleep(int(time.time()) + 2.3 - time.time())
    started = datetime.now(UTC)
    start_worker(config())
    time.sleep(0.4)  # before the next tick
    late = [j for j in ticks(handle, "missed") if j.created_at >= started]
    assert [j.args["entry"] for j in late] == ["one"], "one job for the missed ticks, or none"
    for entry in handle.schedules():
        assert entry.next_run_at > started
        assert entry.next_run_at - started < timedelta(seconds=1)


@pytest.mark.parametrize(
    ("expr", "bad"),
    [
        ("61 * * * *", 'minute field "61"'),
        ("0 25 * * *", 'hour field "25"'),
        ("* * 0 * *", 'day of month field "0"'),
        ("* * * 13 *", 'month field "13"'),
        ("* * * * funday", 'day of week field "funday"'),
        ("*/x * * * * *", 'second field "*/x"'),
        ("* * * *", "got 4"),
        ("@sometimes", 'unknown alias "@sometimes"'),
        ("0 0 30 feb *", "never matches"),
    ],
)
def test_malformed_cron_raises_config_error_naming_the_bad_part(expr: str, bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        WorkerConfig().cron(expr, Tick)
    assert bad in str(e.value)
    assert expr in str(e.value)


def test_bad_timezone_catch_up_names_and_intervals_raise_config_error() -> None:
    with pytest.raises(ConfigError, match='unknown time zone "Mars/Olympus"'):
        WorkerConfig().cron("* * * * *", Tick, timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="catch_up"):
        WorkerConfig().cron("* * * * *", Tick, catch_up="all")
    with pytest.raises(ConfigError, match="registered twice"):
        WorkerConfig().cron("* * * * *", Tick).cron("@hourly", Tick)
    with pytest.raises(ConfigError, match="fields without defaults"):
        WorkerConfig().cron("* * * * *", Report)
    handle = create_server("memory://")
    with pytest.raises(ConfigError, match="interval"):
        handle.every(timedelta(0), Tick(), name="x")
    with pytest.raises(ConfigError, match="schedule name"):
        handle.every(timedelta(seconds=1), Tick(), name="")
    assert handle.schedules() == []


def test_the_forms_of_cron_are_accepted() -> None:
    config = WorkerConfig()
    for i, expr in enumerate(
        ["*/5 * * * *", "0/5 * * * *", "0 9-17 * * 1-5", "0 0 1 jan,jul *", "@hourly", "@daily"]
    ):
        config.cron(expr, Tick, name=f"e{i}")
    assert config.job_class("tick") is Tick


@pytest.fixture(params=["sqlite", "postgres"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """What the worker processes share: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
        return
    schema = pg.fresh_schema()
    yield f"{pg.dsn()}?schema={schema}&poll_interval=0.05"
    pg.drop_schema(schema)


def test_two_worker_processes_store_one_job_per_tick(tmp_path: Path, shared_db: str) -> None:
    until = time.time() + 4.0
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPER), shared_db, str(until)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    handle = create_server(from_url(shared_db) if "://" in shared_db else SqliteStorage(shared_db))
    try:
        jobs = ticks(handle)
        # Both processes ran for at least the last ~2.5 s; one job per tick between them.
        assert len(jobs) >= 2, len(jobs)
        assert set(per_second(jobs).values()) == {1}, per_second(jobs)
        (entry,) = handle.schedules()
        assert entry.name == "tick"
    finally:
        handle.close()
