"""PostgreSQL-only behaviour: transactional enqueue, migrations, LISTEN/NOTIFY across
processes, and a fleet of worker processes with one killed mid-run.

The storage behaviour shared with memory and SQLite runs in the parametrized suites
(conftest's ``storage`` fixture); these tests need a real server (see pgserver.py).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import pgserver as pg
from conftest import wait_for
from hauler import (
    ConfigError,
    Job,
    JobStatus,
    QueueHandle,
    StorageError,
    WorkerConfig,
    create_server,
)
from hauler.storage import MemoryStorage, PostgresStorage, from_url, migrate

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")

FLEET = Path(__file__).with_name("pg_fleet.py")


class Note(Job[list[str]]):
    NAME = "note"
    text: str

    def run(self, state: list[str]) -> None:
        state.append(self.text)


@pytest.fixture
def schema() -> Iterator[str]:
    name = pg.fresh_schema()
    yield name
    pg.drop_schema(name)


@pytest.fixture
def storage(schema: str) -> Iterator[PostgresStorage]:
    s = PostgresStorage(pg.dsn(), schema=schema, poll_interval=0.05)
    yield s
    s.close()


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(pg.dsn()) as c:
        yield c


class TestTransactionalEnqueue:
    def test_job_exists_only_if_the_transaction_commits(
        self, storage: PostgresStorage, conn: psycopg.Connection[tuple[object, ...]]
    ) -> None:
        handle = create_server(storage)
        conn.execute("CREATE TEMP TABLE signups (email text)")
        conn.execute("INSERT INTO signups VALUES ('kept@example.com')")
        kept = handle.queue(Note("kept"), connection=conn)
        # Not visible to anyone else before the commit.
        with pytest.raises(Exception, match="no job"):
            handle.get(kept)
        conn.commit()
        assert handle.get(kept).status is JobStatus.AVAILABLE

        conn.execute("INSERT INTO signups VALUES ('gone@example.com')")
        gone = handle.queue_many([Note("gone-1"), Note("gone-2")], connection=conn)
        conn.rollback()
        for job_id in gone:
            with pytest.raises(Exception, match="no job"):
                handle.get(job_id)
        assert handle.counts() == {"default": {"available": 1}}

    def test_committed_job_wakes_an_idle_worker(
        self, schema: str, conn: psycopg.Connection[tuple[object, ...]]
    ) -> None:
        # A 30 s poll interval: only the NOTIFY sent at commit can wake the worker in time.
        slow_poll = PostgresStorage(pg.dsn(), schema=schema, poll_interval=30)
        seen: list[str] = []
        config = WorkerConfig(lambda: seen, storage=slow_poll).register(Note)
        with config.start() as worker:
            time.sleep(0.3)  # let the pool go idle
            job_id = worker.schedule(Note("later"), after=_td(0), connection=conn)
            time.sleep(0.3)
            assert seen == []  # not committed yet
            conn.commit()
            (info,) = worker.wait([job_id], timeout=10)
        assert info.status is JobStatus.COMPLETED
        assert seen == ["later"]
        slow_poll.close()

    def test_connection_needs_postgres_storage(
        self, conn: psycopg.Connection[tuple[object, ...]]
    ) -> None:
        handle = create_server(MemoryStorage())
        with pytest.raises(ConfigError, match="needs a PostgresStorage"):
            handle.queue(Note("x"), connection=conn)
        assert handle.counts() == {}


def _td(seconds: float) -> object:
    from datetime import timedelta

    return timedelta(seconds=seconds)


class TestSetup:
    def test_migrate_ahead_of_time_then_connect_without_migrating(self, schema: str) -> None:
        with pytest.raises(StorageError, match="migrat"):
            PostgresStorage(pg.dsn(), schema=schema, migrate=False)
        version = migrate(pg.dsn(), schema=schema)
        assert version >= 1
        assert migrate(pg.dsn(), schema=schema) == version  # idempotent
        with PostgresStorage(pg.dsn(), schema=schema, migrate=False) as s:
            handle = create_server(s)
            handle.queue(Note("after migrate"))
            assert handle.counts() == {"default": {"available": 1}}

    def test_url_options_reach_the_storage(self, schema: str) -> None:
        s = from_url(f"{pg.dsn()}?schema={schema}&pool_size=2&poll_interval=0.5")
        assert isinstance(s, PostgresStorage)
        assert s.schema == schema
        assert f"schema={schema}" in s.url and "pool_size=2" in s.url
        s.close()

    def test_unreachable_server_is_a_storage_error_without_the_password(self) -> None:
        with pytest.raises(StorageError) as raised:
            PostgresStorage(
                "postgresql://app:hunter2@127.0.0.1:1/app", connect_timeout=2, schema="x"
            )
        assert "hunter2" not in str(raised.value)
        assert "127.0.0.1" in str(raised.value)

    def test_closed_storage_refuses_transactional_enqueue(
        self, schema: str, conn: psycopg.Connection[tuple[object, ...]]
    ) -> None:
        s = PostgresStorage(pg.dsn(), schema=schema)
        handle = create_server(s)
        s.close()
        with pytest.raises(Exception, match="closed"):
            handle.queue(Note("x"), connection=conn)


def _start_fleet(url: str, log: Path, *extra: str) -> subprocess.Popen[str]:
    """Start a pg_fleet.py worker and wait until it is ready; its stderr goes to a file."""
    with open(f"{log}.{time.monotonic_ns()}.err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(FLEET), url, str(log), *extra],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.stdout.close()
    return proc


def _errors(log: Path) -> str:
    return "".join(p.read_text() for p in log.parent.glob(f"{log.name}.*.err"))


def test_notify_wakes_a_worker_in_another_process(schema: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    url = f"{pg.dsn()}?schema={schema}&poll_interval=30"
    proc = _start_fleet(url, log, "stay")
    try:
        time.sleep(0.5)  # idle, waiting on LISTEN (its next poll is 30 s away)
        from pg_fleet import Append

        with PostgresStorage(pg.dsn(), schema=schema) as s:
            handle = create_server(s)
            started = time.monotonic()
            (info,) = handle.wait([handle.queue(Append(7))], timeout=10)
            elapsed = time.monotonic() - started
        assert info.status is JobStatus.COMPLETED
        assert elapsed < 10
        assert log.read_text() == "7\n"
    finally:
        proc.kill()
        proc.wait()


def test_fleet_of_three_with_one_killed_completes_every_job_once(
    schema: str, tmp_path: Path
) -> None:
    """Issue 3's multi-host simulation: 3 worker processes, 10,000 jobs, one SIGKILLed."""
    from pg_fleet import Append

    total = 10_000
    log = tmp_path / "log"
    url = f"{pg.dsn()}?schema={schema}&poll_interval=0.1"
    with PostgresStorage(pg.dsn(), schema=schema) as s:
        handle: QueueHandle = create_server(s)
        for start in range(0, total, 1000):
            handle.queue_many(Append(n) for n in range(start, start + 1000))

        fleet = [_start_fleet(url, log) for _ in range(3)]
        victim = fleet[0]
        # Kill one host mid-run, while it holds jobs.
        wait_for(lambda: handle.counts()["default"].get("completed", 0) > total // 4, timeout=60)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        for proc in fleet[1:]:
            assert proc.wait(timeout=120) == 0, _errors(log)

        counts = handle.counts()
        assert counts == {"default": {"completed": total}}, counts
        infos = []
        cursor = None
        while True:
            page = handle.list(limit=1000, cursor=cursor)
            infos.extend(page.jobs)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert len(infos) == total
    completions = Counter(
        sum(1 for a in info.history if a.outcome == "completed") for info in infos
    )
    assert completions == {1: total}, "a job was completed twice, or never"
    lost = [info for info in infos if any(a.outcome == "lease_expired" for a in info.history)]
    ran = Counter(int(line) for line in log.read_text().split())
    assert set(ran) == set(range(total))  # every job ran at least once
    duplicates = sum(n - 1 for n in ran.values())
    # A job runs twice only if the killed host may have run it: its lease expired.
    assert duplicates <= len(lost)
    print(f"\nfleet: {len(lost)} jobs reclaimed from the killed host, {duplicates} ran twice")


class Slow(Job[list[int]]):
    NAME = "slow"
    HEARTBEAT_INTERVAL = 300
    n: int

    def run(self, state: list[int]) -> None:
        time.sleep(0.02)
        state.append(self.n)


def _restart_server() -> None:
    script = Path(__file__).resolve().parent.parent / ".ci" / "postgres.sh"
    if subprocess.run(["bash", str(script), "status"], capture_output=True).returncode != 0:
        pytest.skip("the server was not started by .ci/postgres.sh, so it cannot be restarted")
    subprocess.run(["bash", str(script), "restart"], check=True, capture_output=True)


def test_server_restart_mid_run_loses_nothing_and_completes_nothing_twice(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    total = 300
    ran: list[int] = []
    with PostgresStorage(pg.dsn(), schema=schema, poll_interval=0.05) as s:
        config = WorkerConfig(lambda: ran, storage=s, reclaim_interval=0.2).register(Slow)
        with config.start() as worker:
            ids = worker.queue_many(Slow(n) for n in range(total))
            wait_for(lambda: len(ran) > 30, timeout=30)
            _restart_server()  # every pooled connection and the listener are cut
            # The pool reconnects: producers and workers carry on.
            wait_for(lambda: _queue_ok(worker), timeout=30)
            infos = worker.wait(ids, timeout=120)
    assert {info.status for info in infos} == {JobStatus.COMPLETED}
    for info in infos:
        assert sum(a.outcome == "completed" for a in info.history) == 1, info.history
    assert set(ran) == set(range(total))
    # The workers said what happened, through logging.
    engine = [r for r in caplog.records if r.name.startswith("hauler.")]
    assert any(r.levelno >= logging.WARNING for r in engine), [r.getMessage() for r in engine]


def _queue_ok(handle: QueueHandle) -> bool:
    try:
        handle.counts()
    except StorageError:
        return False
    return True


def _terminate(conn: psycopg.Connection[tuple[object, ...]], application_name: str) -> int:
    """pg_terminate_backend every connection of ``application_name``; how many there were."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (application_name,),
    ).fetchall()
    return len(rows)


def test_connections_killed_mid_run_lose_nothing_and_complete_nothing_twice(
    schema: str, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The server terminates the worker's connections (pooled and listening) again and
    again while it runs jobs: every job completes exactly once, none is left behind."""
    conn.autocommit = True
    app = f"hauler-kill-{schema}"
    total = 500
    ran: list[int] = []
    dsn = f"{pg.dsn()}{'&' if '?' in pg.dsn() else '?'}application_name={app}"
    producer = create_server(PostgresStorage(pg.dsn(), schema=schema))
    with PostgresStorage(dsn, schema=schema, poll_interval=0.05) as s:
        config = WorkerConfig(lambda: ran, storage=s, reclaim_interval=0.2).register(Slow)
        config.set_worker_count("default", 4)
        with config.start():
            ids = producer.queue_many(Slow(n) for n in range(total))
            killed = 0
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and len(set(ran)) < total:
                killed += _terminate(conn, app)
                time.sleep(0.15)
            assert killed > 0, "no connection was ever terminated"
            infos = producer.wait(ids, timeout=60)
    producer.close()
    assert {info.status for info in infos} == {JobStatus.COMPLETED}
    for info in infos:
        outcomes = [a.outcome for a in info.history]
        assert outcomes.count("completed") == 1 and outcomes[-1] == "completed", outcomes
    assert set(ran) == set(range(total))
    runs = Counter(ran)
    # A job runs again only after an attempt whose lease expired (its heartbeats were cut).
    for info in infos:
        n = info.args["n"]
        assert runs[n] <= len(info.history), (n, runs[n], info.history)
