"""A row damaged in storage does not break ``get()`` or ``list()``: the job is shown.

An admin screen lists jobs and opens one by id; a single row that does not decode (a retry
policy that does not parse, an out-of-range version, an error that is not JSON) must not
make the whole listing fail, or the operator cannot even find the job to delete it. Such a
job is shown with what decodes, and its ``last_error`` (kind ``CorruptJob``) names the job
and each damaged column. The same on SQLite and PostgreSQL (the memory storage holds
decoded values only, so it has no such rows).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

import pgserver as pg
from bad_input.test_corrupt_rows import sql
from hauler import Job, JobStatus, QueueHandle, create_server
from hauler.storage import PostgresStorage, SqliteStorage, Storage


class Item(Job[None]):
    NAME = "item"
    n: int

    def run(self, state: None) -> None:
        raise AssertionError("never run: no worker here")


Damaged = tuple[QueueHandle, Callable[[uuid.UUID], None]]

_DAMAGE = "retry = 'garbage', version = -1, last_error = '{'"


@pytest.fixture(params=["sqlite", "postgres"])
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> Damaged:
    """A storage, and how to damage one job's row in it behind hauler's back."""
    if request.param == "sqlite":
        db = tmp_path / "jobs.db"
        storage: Storage = SqliteStorage(db)

        def damage(job_id: uuid.UUID) -> None:
            done = sql(db, f"UPDATE hauler_jobs SET {_DAMAGE} WHERE id = ?", str(job_id))
            assert done["rowcount"] == 1

    else:
        schema = pg.fresh_schema()
        storage = PostgresStorage(pg.dsn(), schema=schema)
        request.addfinalizer(lambda: pg.drop_schema(schema))

        def damage(job_id: uuid.UUID) -> None:
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                statement = f'UPDATE "{schema}".jobs SET {_DAMAGE} WHERE id = %s'
                assert conn.execute(statement, (str(job_id),)).rowcount == 1

    handle = create_server(storage)
    request.addfinalizer(handle.close)
    return handle, damage


def test_a_damaged_row_is_listed_and_got_with_what_is_wrong(damaged: Damaged) -> None:
    handle, damage = damaged
    ids = handle.queue_many(Item(n) for n in range(3))
    damage(ids[1])

    listed = {info.id: info for info in handle.list()}
    assert set(listed) == set(ids)
    bad = listed[ids[1]]
    assert bad.last_error is not None and bad.last_error.type == "CorruptJob"
    for part in (str(ids[1]), "retry", "version -1", "last_error"):
        assert part in bad.last_error.message, bad.last_error.message
    assert (bad.status, bad.name, bad.args) == (JobStatus.AVAILABLE, "item", {"n": 1})
    assert handle.get(ids[1]).last_error == bad.last_error
    for good in (ids[0], ids[2]):
        assert listed[good].last_error is None
    assert {info.id for info in handle.list(status="available")} == set(ids)
    # What the operator does next works too.
    assert handle.delete(ids[1])
    assert {info.id for info in handle.list()} == {ids[0], ids[2]}
