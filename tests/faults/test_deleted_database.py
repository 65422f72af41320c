"""The SQLite database file deleted (or replaced) under a running worker process.

An open SQLite connection goes on writing to the file it opened after that file is
unlinked, and whatever it commits there vanishes when the process exits: before hauler
checked, every job queued after an ``rm jobs.db`` was acknowledged and then lost. Now every
transaction checks that the path still names the open file: the first call after the
deletion fails with a ``StorageError`` naming the path ("the database file was deleted or
replaced"), and the handle reopens the path, creating a fresh database. The worker's
failed claim is retried like any other storage error, so it goes on working from the new
file.

Jobs acknowledged before the deletion were in the file the operator deleted: they are gone
with it (the worker's running job loses its lease when its heartbeat finds no such job in
the new file). What the test holds hauler to: every job ``queue()`` acknowledged after the
deletion is in the file at the path, runs once, and is still there once the worker has
exited.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from faults.fault_worker import Step
from faults.helpers import Log, Processes, wait_until
from hauler import JobNotFoundError, JobStatus, QueueHandle, StorageError, create_server
from hauler.storage import SqliteStorage

pytestmark = pytest.mark.skipif(os.name != "posix", reason="unlinks an open file")


def queue_until_accepted(handle: QueueHandle, job: Step, errors: list[str]) -> uuid.UUID:
    """``queue(job)``, again after each StorageError (recorded): the caller's retry."""
    for _ in range(20):
        try:
            return handle.queue(job)
        except StorageError as e:
            errors.append(str(e))
    pytest.fail(f"queue() kept failing: {errors[-3:]}")


@pytest.mark.parametrize("what", ["db", "db+wal+shm", "replaced"])
def test_jobs_queued_after_the_file_is_deleted_are_not_lost(
    db: str, handle: QueueHandle, procs: Processes, log: Log, tmp_path: Path, what: str
) -> None:
    worker = procs.start_ready("--threads", "2")
    before = [handle.queue(Step(str(log.path), n, 0.0)) for n in range(5)]
    wait_until(lambda: len(log.events()["end"]) == 5, timeout=30, what="the first jobs")
    # A job running through the deletion: its file is gone, so is it (its lease is lost).
    handle.queue(Step(str(log.path), 99, 1.0))
    wait_until(lambda: 99 in log.events()["start"], timeout=30, what="the long job to start")

    path = Path(db)
    if what == "replaced":  # another (empty) hauler database moved over the path
        other = tmp_path / "other.db"
        create_server(SqliteStorage(other)).close()
        other.rename(path)
    else:
        path.unlink()
        if what == "db+wal+shm":
            for suffix in ("-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)

    errors: list[str] = []
    after = [
        queue_until_accepted(handle, Step(str(log.path), n, 0.0), errors) for n in range(5, 25)
    ]
    # This handle noticed once, whether the path was empty or the worker had already
    # created a fresh file there; the retry went to the file at the path.
    assert len(errors) == 1, errors
    assert "the database file was deleted or replaced" in errors[0], errors
    assert db in errors[0]

    wait_until(
        lambda: all(n in log.events()["end"] for n in range(5, 25)),
        timeout=30,
        what="the worker to run the jobs queued after the deletion",
    )
    assert worker.poll() is None, "the worker kept running"
    worker.kill()
    _, err = worker.communicate(timeout=30)
    assert "the database file was deleted or replaced" in err, err  # logged

    # Read back from a fresh handle on the path, after the worker process has gone.
    fresh = create_server(SqliteStorage(path))
    try:
        for info in fresh.wait(after, timeout=5):
            assert info.status is JobStatus.COMPLETED, info
            assert [a.outcome for a in info.history] == ["completed"]
        for job_id in before:  # gone with the deleted file
            with pytest.raises(JobNotFoundError):
                fresh.get(job_id)
        assert fresh.counts() == {"default": {"completed": 20}}
    finally:
        fresh.close()
    events = log.events()
    assert all(len(events["start"][n]) == 1 for n in range(5, 25)), "each ran once"


def test_a_relative_path_is_not_taken_for_deleted_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares the file opened with the path made absolute at open: changing
    the working directory later does not look like a deleted file (nor reopen elsewhere)."""
    monkeypatch.chdir(tmp_path)
    handle = create_server(SqliteStorage("jobs.db"))
    try:
        first = handle.queue(Step("log", 0, 0.0))
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        second = handle.queue(Step("log", 1, 0.0))  # no StorageError
        assert {info.id for info in handle.list()} == {first, second}
        assert not (elsewhere / "jobs.db").exists()
    finally:
        handle.close()
