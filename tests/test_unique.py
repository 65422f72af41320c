"""Unique jobs (``UNIQUE = Unique(...)``): deduplicated by the storage, on every storage and
across processes."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import pgserver as pg
from conftest import WAIT, StartWorker, wait_for
from hauler import (
    ConfigError,
    Job,
    JobStatus,
    QueuedId,
    QueueHandle,
    Unique,
    WorkerConfig,
    create_server,
)
from hauler.storage import SqliteStorage, from_url

HELPER = Path(__file__).with_name("limits_process.py")


class ByArgs(Job[None]):
    NAME = "unique_by_args"
    UNIQUE = Unique()
    account: int
    note: str = ""

    def run(self, state: None) -> None:
        pass


class ByName(Job[None]):
    NAME = "unique_by_name"
    UNIQUE = Unique(by=("name",))
    n: int = 0

    def run(self, state: None) -> None:
        pass


class ByKey(Job[None]):
    NAME = "unique_by_key"
    UNIQUE = Unique(by=lambda job: str(job.account))  # type: ignore[attr-defined]
    account: int
    attempt_note: str = ""

    def run(self, state: None) -> None:
        pass


class KeepsCompleted(Job[None]):
    NAME = "unique_keeps_completed"
    UNIQUE = Unique(states=("scheduled", "available", "running", "retryable", "completed"))

    def run(self, state: None) -> None:
        pass


class Plain(Job[None]):
    NAME = "not_unique"
    n: int

    def run(self, state: None) -> None:
        pass


def test_a_duplicate_returns_the_existing_id_and_stores_nothing(handle: QueueHandle) -> None:
    first = handle.queue(ByArgs(1))
    assert isinstance(first, QueuedId) and isinstance(first, uuid.UUID)
    assert (first.duplicate, first.inserted) == (False, True)
    again = handle.queue(ByArgs(1))
    assert again == first and again.duplicate and not again.inserted
    other = handle.queue(ByArgs(2))
    assert other != first and not other.duplicate
    assert handle.queue(ByArgs(1, note="x")) != first  # other fields: another job
    assert handle.count(name="unique_by_args") == 3
    key = handle.get(first).unique_key
    assert key is not None and key.startswith("unique_by_args:args:")
    # Plain jobs are never duplicates.
    plain = [handle.queue(Plain(1)) for _ in range(2)]
    assert plain[0] != plain[1] and not any(p.duplicate for p in plain)


def test_duplicates_in_one_batch_match_the_first(handle: QueueHandle) -> None:
    ids = handle.queue_many([ByArgs(5), Plain(1), ByArgs(5), ByArgs(6)])
    assert [i.duplicate for i in ids] == [False, False, True, False]
    assert ids[2] == ids[0]
    assert handle.count(name="unique_by_args") == 2


def test_by_name_and_by_key(handle: QueueHandle) -> None:
    a = handle.queue(ByName(1))
    assert handle.queue(ByName(2)) == a  # every job of the class is equal
    k = handle.queue(ByKey(7, "first"))
    assert handle.queue(ByKey(7, "second")) == k  # the key function ignores the note
    assert handle.queue(ByKey(8)) != k


def test_schedule_and_async_twins_say_so_too(handle: QueueHandle) -> None:
    import asyncio

    scheduled = handle.schedule(ByArgs(9), after=timedelta(hours=1))
    assert not scheduled.duplicate
    assert handle.schedule(ByArgs(9), after=timedelta(hours=2)).duplicate

    async def go() -> tuple[QueuedId, list[QueuedId]]:
        return await handle.aqueue(ByArgs(9)), await handle.aqueue_many([ByArgs(9)])

    one, many = asyncio.run(go())
    assert one == scheduled and one.duplicate and many[0].duplicate


def test_the_key_is_free_once_the_job_completes(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    first = handle.queue(ByArgs(1))
    kept = handle.queue(KeepsCompleted())
    worker = start_worker(WorkerConfig().register(ByArgs).register(KeepsCompleted))
    assert [i.status for i in worker.wait([first, kept], timeout=WAIT)] == [JobStatus.COMPLETED] * 2
    second = handle.queue(ByArgs(1))
    assert second != first and not second.duplicate
    # States that include "completed" keep the key after the job completed.
    assert handle.queue(KeepsCompleted()) == kept


def test_period_buckets() -> None:
    u = Unique(for_=timedelta(minutes=10))
    job = ByArgs(1)
    at = 600.0 * 2_833_333  # a multiple of 10 minutes since the epoch
    assert u.key("n", job, now=at) == u.key("n", job, now=at + 599)
    assert u.key("n", job, now=at) != u.key("n", job, now=at + 600)
    assert u.key("n", job, now=at) != Unique().key("n", job)


def test_retry_is_skipped_while_another_job_holds_the_key(handle: QueueHandle) -> None:
    first = handle.queue(ByArgs(1))
    handle.cancel(first)  # cancelled is not a unique state: the key is free
    holder = handle.queue(ByArgs(1))
    assert not holder.duplicate and holder != first
    # Retrying the first would make two live jobs of one key: skipped, and it says so.
    assert handle.retry(first) is False
    assert handle.get(first).status == JobStatus.CANCELLED
    assert handle.retry_many(name="unique_by_args", status="cancelled") == 0
    handle.cancel(holder)
    # Now both are cancelled: one retry takes the key, the other is skipped.
    assert handle.retry_many(name="unique_by_args", status="cancelled") == 1
    statuses = sorted(handle.get(i).status.value for i in (first, holder))
    assert statuses == ["available", "cancelled"]


def test_bad_unique_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="missing: retryable"):
        Unique(states=("scheduled", "available", "running"))
    with pytest.raises(ConfigError, match="unknown status 'done'"):
        Unique(states=("scheduled", "available", "running", "retryable", "done"))
    with pytest.raises(ConfigError, match=r"by=\.\.\.\) must be"):
        Unique(by=("fields",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="for_"):
        Unique(for_=timedelta(0))
    with pytest.raises(ConfigError, match="for_"):
        Unique(for_=5)  # type: ignore[arg-type]

    class NotUnique(Job[None]):
        NAME = "bad_unique"
        UNIQUE = "yes"  # type: ignore[assignment]

        def run(self, state: None) -> None:
            pass

    with pytest.raises(ConfigError, match=r"NotUnique\.UNIQUE must be None or a Unique"):
        create_server("memory://").queue(NotUnique())

    class BadKey(Job[None]):
        NAME = "bad_key"
        UNIQUE = Unique(by=lambda job: 5)  # type: ignore[arg-type,return-value]

        def run(self, state: None) -> None:
            pass

    with pytest.raises(ConfigError, match="must return a str, got int"):
        create_server("memory://").queue(BadKey())


def test_queued_id_pickles_and_prints() -> None:
    q = QueuedId("12345678-1234-5678-1234-567812345678", duplicate=True)
    assert pickle.loads(pickle.dumps(q)).duplicate is True
    assert pickle.loads(pickle.dumps(q)) == q
    assert str(q) == "12345678-1234-5678-1234-567812345678"
    assert "duplicate=True" in repr(q)
    assert {q: 1}[uuid.UUID(str(q))] == 1


@pytest.fixture
def pg_handle() -> Iterator[QueueHandle]:
    """A handle on a fresh PostgreSQL schema (for transactional enqueue)."""
    schema = pg.fresh_schema()
    handle = create_server(from_url(f"{pg.dsn()}?schema={schema}"))
    yield handle
    handle.close()
    pg.drop_schema(schema)


def test_unique_jobs_dedupe_on_your_own_connection(pg_handle: QueueHandle) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(pg.dsn()) as conn:
        ids = pg_handle.queue_many([ByArgs(1), Plain(1), ByArgs(1)], connection=conn)
        assert [i.duplicate for i in ids] == [False, False, True]
        assert ids[2] == ids[0]
        assert pg_handle.queue(ByArgs(1), connection=conn) == ids[0]
    # Committed: a queue through the storage's own transaction matches it.
    again = pg_handle.queue(ByArgs(1))
    assert again.duplicate and again == ids[0]
    with psycopg.connect(pg.dsn()) as conn:
        assert pg_handle.queue(ByArgs(1), connection=conn) == ids[0]
        conn.rollback()
    assert pg_handle.count(name="unique_by_args") == 1


def test_an_uncommitted_equal_job_makes_the_other_transaction_wait(
    pg_handle: QueueHandle,
) -> None:
    psycopg = pytest.importorskip("psycopg")
    results: dict[str, QueuedId] = {}

    def second(name: str) -> None:
        with psycopg.connect(pg.dsn()) as conn:
            results[name] = pg_handle.queue(ByArgs(2), connection=conn)

    for outcome in ("commit", "rollback"):
        with psycopg.connect(pg.dsn()) as first:
            held = pg_handle.queue(ByArgs(2), connection=first)
            assert not held.duplicate
            waiter = threading.Thread(target=second, args=(outcome,))
            waiter.start()
            waiter.join(0.2)
            assert waiter.is_alive(), "the equal insert must wait for the first transaction"
            if outcome == "commit":
                first.commit()
            else:
                first.rollback()
            waiter.join(WAIT)
            assert not waiter.is_alive()
        got = results[outcome]
        if outcome == "commit":
            assert got == held and got.duplicate  # the first job, now committed
        else:
            assert got != held and not got.duplicate  # the first never existed
        assert pg_handle.count(name="unique_by_args", status="available") == 1
        pg_handle.cancel(got)  # frees the key for the next round


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """What the processes share: a SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
        return
    schema = pg.fresh_schema()
    yield f"{pg.dsn()}?schema={schema}&poll_interval=0.05"
    pg.drop_schema(schema)


def test_processes_racing_to_queue_one_unique_job_store_one(db: str, tmp_path: Path) -> None:
    shared = create_server(from_url(db) if "://" in db else SqliteStorage(db))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPER), "queue", db, str(go), "same"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    wait_for(lambda: len(list(tmp_path.glob("go.*"))) == len(procs), timeout=60)
    go.touch()
    results: list[dict[str, Any]] = []
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, out + err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["id"] for r in results}) == 1, results
    assert sorted(r["duplicate"] for r in results) == [False, True, True, True], results
    assert shared.count(name="once") == 1
    shared.close()
