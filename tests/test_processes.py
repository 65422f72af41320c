"""Several processes sharing one SQLite file or PostgreSQL schema: real processes, SIGKILL.

The jobs and commands the subprocesses run are in tests/process_jobs.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pgserver as pg
from conftest import WAIT, wait_for
from hauler import JobStatus, QueueHandle, create_server
from hauler.storage import ENV_VAR, MemoryStorage, SqliteStorage, from_url
from process_jobs import Touch

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")

HELPER = Path(__file__).with_name("process_jobs.py")


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a process_jobs.py command to its end; return the JSON line it printed."""
    done = subprocess.run(
        [sys.executable, str(HELPER), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """What the processes share: a SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
        return
    schema = pg.fresh_schema()
    yield f"{pg.dsn()}?schema={schema}&poll_interval=0.05"
    pg.drop_schema(schema)


@pytest.fixture
def shared(db: str) -> Iterator[QueueHandle]:
    """This (test) process's own handle on the shared storage."""
    h = create_server(from_url(db) if "://" in db else SqliteStorage(db))
    yield h
    h.close()


def test_job_queued_by_one_process_runs_in_another(
    tmp_path: Path, db: str, shared: QueueHandle
) -> None:
    out = tmp_path / "touched"
    job_id = run("queue", str(db), str(out), cwd=tmp_path)["id"]
    # The producer has exited; the job waits in the file.
    info = shared.get(job_id)
    assert (info.status, info.attempt) == (JobStatus.AVAILABLE, 0)
    assert not out.exists()

    result = run("work", str(db), job_id, cwd=tmp_path)
    assert result["status"] == "completed"
    assert out.read_text() == str(result["pid"])
    info = shared.get(job_id)
    assert (info.status, info.attempt) == (JobStatus.COMPLETED, 1)
    (attempt,) = info.history
    assert f":{result['pid']}:" in attempt.worker_id


def test_a_waiting_worker_hears_of_a_job_queued_by_another_process(
    tmp_path: Path, db: str, shared: QueueHandle
) -> None:
    # The worker polls once an hour: only the storage's signal (SQLite: a watch on the
    # -wal file; PostgreSQL: LISTEN/NOTIFY) can start the job within the wait.
    with subprocess.Popen(
        [sys.executable, str(HELPER), "serve", str(db)],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            assert worker.stdout is not None and worker.stdin is not None
            pid = json.loads(worker.stdout.readline())["pid"]
            time.sleep(0.5)  # past the worker's first look for jobs
            out = tmp_path / "touched"
            for n in range(3):  # again and again, not just once
                out.unlink(missing_ok=True)
                job_id = shared.queue(Touch(str(out)))
                (info,) = shared.wait([job_id], timeout=WAIT)
                assert info.status is JobStatus.COMPLETED, n
                assert out.read_text() == str(pid)
            worker.stdin.close()
            assert worker.wait(timeout=WAIT) == 0
        finally:
            worker.kill()


def test_killed_worker_job_is_rerun_by_another_process(
    tmp_path: Path, db: str, shared: QueueHandle
) -> None:
    marker = tmp_path / "hang-marker"
    job_id = run("hang", str(db), str(marker), cwd=tmp_path)["id"]

    first = subprocess.Popen(
        [sys.executable, str(HELPER), "work", str(db), job_id],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: marker.exists() and marker.read_text() != "", timeout=WAIT * 2)
        assert marker.read_text() == str(first.pid)
        running = shared.get(job_id)
        assert running.status is JobStatus.RUNNING
        assert running.worker_id is not None and f":{first.pid}:" in running.worker_id
        assert running.lease_expires_at is not None
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=WAIT)
    assert first.returncode == -signal.SIGKILL

    # The lease still names the dead worker until it expires; nobody renews it now.
    lease_end = shared.get(job_id).lease_expires_at
    assert lease_end is not None

    result = run("work", str(db), job_id, cwd=tmp_path)
    assert result["status"] == "completed"
    assert Path(f"{marker}.rerun").read_text() == str(result["pid"])

    info = shared.get(job_id)
    assert (info.status, info.attempt) == (JobStatus.COMPLETED, 2)
    lost, rerun = info.history
    assert lost.outcome == "lease_expired"
    assert f":{first.pid}:" in lost.worker_id
    assert lost.error is not None
    assert "lease expired" in lost.error.message
    assert rerun.outcome == "completed"
    assert f":{result['pid']}:" in rerun.worker_id
    # Never in two workers at once: the rerun started only after the lease ran out.
    assert rerun.started_at >= lease_end


def test_hauler_storage_env_picks_the_storage(tmp_path: Path, db: str, shared: QueueHandle) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    out = tmp_path / "touched"
    url = db if "://" in db else f"sqlite:///{db}"  # a SQLite db is absolute: four slashes
    env = {**os.environ, ENV_VAR: url}

    job_id = run("queue", str(out), cwd=workdir, env=env)["id"]
    result = run("work", job_id, cwd=workdir, env=env)
    assert result["status"] == "completed"
    assert out.read_text() == str(result["pid"])
    assert list(workdir.iterdir()) == []  # the default hauler.db was not used

    assert shared.get(job_id).status is JobStatus.COMPLETED


def test_without_env_the_default_is_hauler_db_in_cwd(tmp_path: Path) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    job_id = run("queue", str(tmp_path / "touched"), cwd=workdir, env=env)["id"]
    assert (workdir / "hauler.db").exists()
    with SqliteStorage(workdir / "hauler.db") as storage:
        assert create_server(storage).get(job_id).status is JobStatus.AVAILABLE


def test_a_forked_child_draws_other_job_ids_than_its_parent(tmp_path: Path) -> None:
    # The child inherits the parent's random generator state; hauler reseeds it after
    # fork, else both would draw the same random bits for their next job ids.
    parent = create_server(MemoryStorage())
    parent.queue(Touch(str(tmp_path / "before")))  # the generator is in use before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            child = create_server(MemoryStorage())
            tails = b"".join(child.queue(Touch("x")).bytes[-4:] for _ in range(5))
            os.write(write_end, tails)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        got = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0
    theirs = {got[i : i + 4] for i in range(0, len(got), 4)}
    assert len(theirs) == 5
    ours = {parent.queue(Touch("x")).bytes[-4:] for _ in range(5)}
    assert ours.isdisjoint(theirs)
    parent.close()
