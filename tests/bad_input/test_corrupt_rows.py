"""Rows damaged in the SQLite file fail their own job, clearly, and never stall a worker.

The rows are written with the ``sqlite3`` module behind hauler's back: a payload that is not
JSON (or not UTF-8), a ``VERSION`` newer than the registered class's, an out-of-range
integer, a retry policy that does not parse. Each such job must end ``failed`` after one
attempt with a reason in ``last_error``, the good jobs claimed in the same batch must run,
and the worker must not claim the bad job again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import WAIT
from hauler import Job, JobStatus, QueueHandle, WorkerConfig, create_server
from hauler.storage import SqliteStorage


class Work(Job[list[int]]):
    NAME = "work"
    n: int

    def run(self, state: list[int]) -> None:
        state.append(self.n)


class WorkV2(Job[list[int]]):
    """The class a newer deployment has; the worker under test only knows :class:`Work`."""

    NAME = "work"
    VERSION = 2
    n: int

    def run(self, state: list[int]) -> None:
        raise AssertionError("the test's worker never registers this class")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def producer(db: Path) -> Iterator[QueueHandle]:
    handle = create_server(SqliteStorage(db, poll_interval=0.02))
    yield handle
    handle.close()


# The raw SQL runs in a child process: two copies of SQLite in one process (hauler's bundled
# one and the sqlite3 module's) do not see each other's POSIX locks, so a read here could
# miss committed changes and a write could damage the file.
_SQL_CHILD = """
import json, sqlite3, sys
db, sql, params = json.loads(sys.argv[1])
con = sqlite3.connect(db)
con.text_factory = lambda b: b.decode(errors="replace")
with con:
    cur = con.execute(sql, params)
    print(json.dumps({"rows": cur.fetchall(), "rowcount": cur.rowcount}))
"""


def sql(db: Path, statement: str, *params: object) -> dict[str, Any]:
    """Run one SQL statement on ``db`` with Python's sqlite3, in a child process."""
    done = subprocess.run(
        [sys.executable, "-c", _SQL_CHILD, json.dumps([str(db), statement, params])],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def corrupt(db: Path, job_id: uuid.UUID, assignment: str, *params: object) -> None:
    """Run ``UPDATE hauler_jobs SET <assignment> WHERE id = job_id`` behind hauler's back."""
    statement = f"UPDATE hauler_jobs SET {assignment} WHERE id = ?"
    assert sql(db, statement, *params, str(job_id))["rowcount"] == 1


def raw_row(db: Path, job_id: uuid.UUID) -> tuple[str, int, str | None, str]:
    """(status, attempt, last_error, history) as stored, read without hauler."""
    statement = "SELECT status, attempt, last_error, history FROM hauler_jobs WHERE id = ?"
    (row,) = sql(db, statement, str(job_id))["rows"]
    return tuple(row)  # type: ignore[return-value]


def run_worker_until(producer: QueueHandle, done: list[uuid.UUID], state: list[int]) -> None:
    """Run a worker (4 slots: good and bad jobs share a claim batch) until ``done`` finish."""
    config = WorkerConfig(lambda: state, storage=producer.storage).register(Work)
    with config.start() as worker:
        worker.wait(done, timeout=WAIT)
        # A few more poll intervals: a bad row must not be claimed again.
        time.sleep(0.3)


# Each case: (SQL that damages the row, its parameters, text the failure reason contains).
CASES = {
    "args-not-json": ("args = ?", ("{not json",), "not valid JSON"),
    "args-not-object": ("args = ?", ("[1, 2]",), "expected a dict of Work fields"),
    "args-not-utf8": ("args = CAST(x'7b226e223a2022ff227d' AS TEXT)", (), "UTF-8"),
    "version-newer": ("version = 2", (), "VERSION 2"),
    "version-zero": ("version = 0", (), "VERSION 0"),
    "version-negative": ("version = -1", (), "version -1 is out of range"),
    "version-huge": ("version = ?", (2**40,), "out of range"),
    "retry-garbage": ("retry = 'garbage'", (), "retry"),
    "heartbeat-negative": ("heartbeat_ms = -5", (), "heartbeat_ms -5 is out of range"),
}


@pytest.mark.parametrize("case", CASES.keys())
def test_corrupt_row_fails_alone_and_the_worker_goes_on(
    db: Path, producer: QueueHandle, case: str
) -> None:
    sql, params, reason = CASES[case]
    good_before = [producer.queue(Work(i)) for i in range(3)]
    bad = producer.queue(Work(99))
    good_after = [producer.queue(Work(i)) for i in range(3, 6)]
    corrupt(db, bad, sql, *params)

    state: list[int] = []
    run_worker_until(producer, good_before + good_after, state)

    assert sorted(state) == [0, 1, 2, 3, 4, 5]  # every good job ran once; the bad one never
    status, attempt, last_error, history = raw_row(db, bad)
    assert (status, attempt) == ("failed", 1), (status, attempt, last_error)
    assert last_error is not None and reason in last_error
    assert history.count('"outcome":"failed"') == 1  # one attempt: no hot loop
    counts = producer.counts()["default"]
    assert counts == {"completed": 6, "failed": 1}


def test_corrupt_rows_are_inspectable(db: Path, producer: QueueHandle) -> None:
    """get() and list() still work on a failed job whose stored payload is not JSON."""
    bad = producer.queue(Work(1))
    corrupt(db, bad, "args = ?", "{not json")
    good = producer.queue(Work(2))
    run_worker_until(producer, [good], [])

    info = producer.get(bad)
    assert info.status is JobStatus.FAILED
    assert info.args == {}
    assert info.raw_args == "{not json"
    assert info.last_error is not None
    assert "stored job arguments are not valid JSON" in info.last_error.message
    assert [j.id for j in producer.list(status="failed")] == [bad]
    assert producer.get(good).raw_args is None


def test_newer_version_is_not_run_by_older_code(db: Path, producer: QueueHandle) -> None:
    """A job queued by a newer deployment (VERSION 2) fails on a worker that has VERSION 1."""
    newer = producer.queue(WorkV2(7))
    older = producer.queue(Work(8))
    state: list[int] = []
    run_worker_until(producer, [newer, older], state)
    assert state == [8]
    info = producer.get(newer)
    assert (info.status, info.attempt, info.version) == (JobStatus.FAILED, 1, 2)
    assert info.last_error is not None
    assert info.last_error.message == (
        "job 'work' was stored with VERSION 2, but the registered class Work has VERSION 1; "
        "a worker runs only jobs stored with its class's VERSION or older"
    )
