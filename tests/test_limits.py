"""SINGLETON, CONCURRENCY and RATE_LIMIT: enforced by the storage, on every storage and
across processes. Jobs held back wait in ``available`` and burn no attempt."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pgserver as pg
from conftest import WAIT, StartWorker, wait_for
from hauler import ConfigError, Job, JobStatus, QueueHandle, WorkerConfig, create_server
from hauler.limits import parse_rate_limit
from hauler.storage import SqliteStorage, from_url

HELPER = Path(__file__).with_name("limits_process.py")


@dataclass
class Gate:
    """Jobs block on ``opened`` until the test sets it."""

    opened: threading.Event = field(default_factory=threading.Event)


def _hold(state: Gate) -> None:
    if not state.opened.wait(WAIT):
        raise TimeoutError("gate never opened")


class One(Job[Gate]):
    NAME = "limits_one"
    SINGLETON = True
    n: int = 0

    def run(self, state: Gate) -> None:
        _hold(state)


class PerAccount(Job[Gate]):
    NAME = "limits_per_account"
    SINGLETON = staticmethod(lambda job: str(job.account))  # type: ignore[attr-defined]
    account: int
    n: int = 0

    def run(self, state: Gate) -> None:
        _hold(state)


class Two(Job[Gate]):
    NAME = "limits_two"
    CONCURRENCY = 2
    n: int = 0

    def run(self, state: Gate) -> None:
        _hold(state)


class Rated(Job[Gate]):
    NAME = "limits_rated"
    RATE_LIMIT = "2/h"
    n: int = 0

    def run(self, state: Gate) -> None:
        pass


class Free(Job[Gate]):
    NAME = "limits_free"
    n: int = 0

    def run(self, state: Gate) -> None:
        pass


def _count(handle: QueueHandle, name: str, status: JobStatus) -> int:
    return handle.count(name=name, status=status)


def _worker(start_worker: StartWorker, gate: Gate, *jobs: type[Job[Gate]]) -> QueueHandle:
    config: WorkerConfig[Gate] = WorkerConfig(lambda: gate)
    for job in jobs:
        config = config.register(job)
    return start_worker(config.set_worker_count("default", 6))


def test_singleton_runs_one_at_a_time_and_the_rest_wait(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    gate = Gate()
    worker = _worker(start_worker, gate, One, Free)
    ids = handle.queue_many([One(i) for i in range(3)])
    free = handle.queue_many([Free(i) for i in range(3)])
    # The free jobs behind the held ones still run.
    assert all(i.status == JobStatus.COMPLETED for i in worker.wait(free, timeout=WAIT))
    wait_for(lambda: _count(handle, "limits_one", JobStatus.RUNNING) == 1)
    assert _count(handle, "limits_one", JobStatus.AVAILABLE) == 2
    waiting = [handle.get(i) for i in ids if handle.get(i).status == JobStatus.AVAILABLE]
    assert [w.attempt for w in waiting] == [0, 0]  # waiting burns no attempt
    gate.opened.set()
    infos = worker.wait(ids, timeout=WAIT)
    assert [i.status for i in infos] == [JobStatus.COMPLETED] * 3
    assert [i.attempt for i in infos] == [1, 1, 1]
    spans = sorted((i.started_at, i.finished_at) for i in infos)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


def test_singleton_function_runs_one_per_key(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    gate = Gate()
    _worker(start_worker, gate, PerAccount)
    handle.queue_many([PerAccount(1, 0), PerAccount(1, 1), PerAccount(2, 0)])
    wait_for(lambda: _count(handle, "limits_per_account", JobStatus.RUNNING) == 2)
    running = handle.list(name="limits_per_account", status="running").jobs
    assert sorted(j.args["account"] for j in running) == [1, 2]
    assert _count(handle, "limits_per_account", JobStatus.AVAILABLE) == 1
    gate.opened.set()
    wait_for(lambda: _count(handle, "limits_per_account", JobStatus.COMPLETED) == 3)


def test_long_singleton_keys_are_hashed() -> None:
    spec = PerAccount._spec()
    short = spec.limits(PerAccount(7))
    assert short is not None and short["concurrency_key"] == "limits_per_account:7"
    long = spec.limits(PerAccount(10**300))
    assert long is not None and len(long["concurrency_key"]) < 100


def test_concurrency_caps_running_jobs(handle: QueueHandle, start_worker: StartWorker) -> None:
    gate = Gate()
    worker = _worker(start_worker, gate, Two)
    ids = handle.queue_many([Two(i) for i in range(5)])
    wait_for(lambda: _count(handle, "limits_two", JobStatus.RUNNING) == 2)
    assert _count(handle, "limits_two", JobStatus.AVAILABLE) == 3
    gate.opened.set()
    assert {i.status for i in worker.wait(ids, timeout=WAIT)} == {JobStatus.COMPLETED}


def test_rate_limit_holds_jobs_past_the_limit(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    _worker(start_worker, Gate(), Rated)
    ids = handle.queue_many([Rated(i) for i in range(5)])
    wait_for(lambda: _count(handle, "limits_rated", JobStatus.COMPLETED) == 2)
    waiting = [handle.get(i) for i in ids]
    assert sorted(w.status.value for w in waiting) == ["available"] * 3 + ["completed"] * 2
    assert all(w.attempt == 0 for w in waiting if w.status == JobStatus.AVAILABLE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/m", (100, 60_000)),
        ("5/s", (5, 1_000)),
        ("1/h", (1, 3_600_000)),
        ("7/ 10 s", (7, 10_000)),
    ],
)
def test_rate_limit_strings(text: str, expected: tuple[int, int]) -> None:
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize(
    ("text", "quoted"),
    [("100/fortnight", "'fortnight'"), ("lots/m", "'lots'"), ("100", "'100'"), ("0/s", "1 to")],
)
def test_bad_rate_limits_are_config_errors(text: str, quoted: str) -> None:
    class Bad(Job[None]):
        NAME = "bad_rate"
        RATE_LIMIT = text

        def run(self, state: None) -> None:
            pass

    with pytest.raises(ConfigError, match=r"Bad\.RATE_LIMIT") as e:
        WorkerConfig().register(Bad)
    assert quoted in str(e.value)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"CONCURRENCY": 0}, "CONCURRENCY must be None or an int"),
        ({"CONCURRENCY": True}, "CONCURRENCY must be None or an int"),
        ({"SINGLETON": True, "CONCURRENCY": 3}, "SINGLETON must be False when CONCURRENCY is 3"),
        ({"SINGLETON": "yes"}, "SINGLETON must be True, False or a function"),
    ],
)
def test_bad_limits_are_config_errors(attrs: dict[str, Any], message: str) -> None:
    def run(self: Any, state: None) -> None:
        pass

    bad = type("Bad", (Job,), {"NAME": "bad_limits", "run": run, **attrs})
    with pytest.raises(ConfigError, match=message):
        create_server("memory://").queue(bad())


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """What the processes share: a SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
        return
    schema = pg.fresh_schema()
    yield f"{pg.dsn()}?schema={schema}&poll_interval=0.05"
    pg.drop_schema(schema)


def _spans(log: Path) -> list[tuple[int, int, int]]:
    rows = [tuple(int(x) for x in line.split()) for line in log.read_text().splitlines()]
    return sorted(rows)  # type: ignore[arg-type]


def _most_at_once(spans: list[tuple[int, int, int]]) -> int:
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    most = now = 0
    for _, step in events:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


def test_worker_processes_share_the_limits(db: str, tmp_path: Path) -> None:
    from limits_process import Pair, Span

    shared = create_server(from_url(db) if "://" in db else SqliteStorage(db))
    span_log, pair_log = tmp_path / "span.log", tmp_path / "pair.log"
    shared.queue_many([Span(str(span_log)) for _ in range(8)])
    shared.queue_many([Pair(str(pair_log)) for _ in range(10)])
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPER), "work", db, str(go), "18"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    wait_for(lambda: len(list(tmp_path.glob("go.*"))) == len(procs), timeout=60)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, out + err
        json.loads(out.strip().splitlines()[-1])
    spans, pairs = _spans(span_log), _spans(pair_log)
    assert (len(spans), len(pairs)) == (8, 10)
    assert _most_at_once(spans) == 1, spans
    assert _most_at_once(pairs) <= 2, pairs
    assert shared.count(status="completed") == 18
    shared.close()
