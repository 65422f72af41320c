"""The enqueue path (``queue``/``queue_many``/``schedule``): jobs of plain fields are
serialized straight from the object, the others through the codec; either way the stored
JSON, the errors and the ids are the same, on every storage."""

from __future__ import annotations

import enum
import math
import pickle
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import pgserver as pg
from hauler import (
    ConfigError,
    Job,
    JobStatus,
    QueuedId,
    QueueHandle,
    SerializationError,
    Unique,
    create_server,
)
from hauler.handle import _class_of, _job_tuple
from hauler.storage import PostgresStorage, SqliteStorage, Storage


class Color(enum.IntEnum):
    RED = 1


class Label(str):
    pass


class Plain(Job[None]):
    NAME = "enqueue_plain"
    n: int
    text: str = ""
    ratio: float = 0.5
    flag: bool = False
    nothing: None = None

    def run(self, state: None) -> None:
        pass


class Rich(Job[None]):
    NAME = "enqueue_rich"
    QUEUE = "rich"
    PRIORITY = 3
    value: Any
    when: datetime | None = None

    def run(self, state: None) -> None:
        pass


class Once(Job[None]):
    NAME = "enqueue_once"
    UNIQUE = Unique()
    key: int

    def run(self, state: None) -> None:
        pass


def _raw_args(storage: Storage, job_id: str) -> str | None:
    """The stored JSON text of a job's fields (None for MemoryStorage: it keeps no text)."""
    if isinstance(storage, SqliteStorage):
        with sqlite3.connect(storage.path) as db:
            row = db.execute("SELECT args FROM hauler_jobs WHERE id = ?", (job_id,)).fetchone()
        return str(row[0])
    if isinstance(storage, PostgresStorage):
        psycopg = pytest.importorskip("psycopg")
        with psycopg.connect(pg.dsn()) as conn:
            row = conn.execute(
                f'SELECT args FROM "{storage.schema}".jobs WHERE id = %s', (job_id,)
            ).fetchone()
        assert row is not None
        return str(row[0])
    return None


def _codec_stored(handle: QueueHandle, job: Job[Any]) -> str:
    """Store ``job`` the way the codec path does (its dict, serialized); return its id."""
    [(job_id, _)] = handle.storage._native.push_many([_job_tuple(job, None)])
    return job_id


PLAIN_VALUES = [
    Plain(0),
    Plain(-(2**63), 'é ☃ "quoted" \\ \n\t\x01 \U0001f600', 0.1, True, None),
    Plain(2**64 - 1, "", 1e300, False),
    Plain(7, "x", -0.0),
    Plain(1, "y", 5e-324),
    Plain(2**63, "z", 123456789.125),
]
RICH_VALUES = [
    Rich((1, 2, [3, "a"])),
    Rich({"k": [1.5, None, True]}, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    Rich(Color.RED),
    Rich(Label("sub")),
    Rich(uuid.UUID(int=5)),
]


@pytest.mark.parametrize("job", PLAIN_VALUES + RICH_VALUES, ids=repr)
def test_stored_fields_are_what_the_codec_stores(handle: QueueHandle, job: Job[Any]) -> None:
    [fast] = handle.queue_many([job])
    slow = _codec_stored(handle, job)
    native = handle.storage._native
    fast_args = native.get(str(fast))["args"]  # type: ignore[index]
    slow_args = native.get(slow)["args"]  # type: ignore[index]
    assert fast_args == slow_args == job._encode()
    assert [type(v) for v in fast_args.values()] == [type(v) for v in slow_args.values()]
    assert _raw_args(handle.storage, str(fast)) == _raw_args(handle.storage, slow)
    if isinstance(job, Plain):
        assert Plain._decode(fast_args) == job


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Plain(1, ratio=math.nan), "cannot serialize Plain.ratio: float nan"),
        (Plain(1, ratio=math.inf), "cannot serialize Plain.ratio: float inf"),
        (Plain(2**64), "n: integer 18446744073709551616 does not fit"),
        (Plain(-(2**63) - 1), "does not fit in 64 bits"),
        (Plain(1, "\ud800"), "text"),
        (Rich(object()), "cannot serialize Rich.value: unsupported type object"),
        (Rich(1, datetime(2026, 1, 1)), "cannot serialize Rich.when: naive datetime"),
    ],
    ids=repr,
)
def test_a_bad_field_in_the_middle_of_a_batch_stores_nothing(
    handle: QueueHandle, bad: Job[Any], message: str
) -> None:
    jobs: list[Job[Any]] = [Plain(1), Once(1), bad, Plain(2)]
    with pytest.raises(SerializationError) as raised:
        handle.queue_many(jobs)
    assert message in str(raised.value)
    # The same error as the codec path raises, word for word.
    with pytest.raises(SerializationError) as codec_raised:
        handle.storage._native.push_many([_job_tuple(j, None) for j in jobs])
    assert str(raised.value) == str(codec_raised.value)
    assert handle.count() == 0
    # The key of the unique job before it was not taken either.
    assert not handle.queue(Once(1)).duplicate


def test_a_payload_over_the_limit_in_a_batch_stores_nothing(storage: Storage) -> None:
    handle = create_server(storage, max_payload_bytes=100)
    with pytest.raises(SerializationError, match="over the limit of 100 bytes"):
        handle.queue_many([Plain(1), Plain(2, "x" * 200), Plain(3)])
    assert handle.count() == 0


def test_a_batch_mixing_classes_and_unique_jobs_keeps_order(handle: QueueHandle) -> None:
    held = handle.queue(Once(5))
    jobs: list[Job[Any]] = [
        Plain(1),
        Once(5),
        Rich((1, 2)),
        Once(6),
        Plain(2, "b"),
        Once(6),
        Rich("r"),
        Plain(3),
    ]
    ids = handle.queue_many(jobs)
    assert [i.duplicate for i in ids] == [False, True, False, False, False, True, False, False]
    assert ids[1] == held
    assert ids[5] == ids[3]
    assert len(set(ids)) == 7
    native = handle.storage._native
    for job, job_id in zip(jobs, ids, strict=True):
        stored = native.get(str(job_id))
        assert stored is not None
        assert stored["name"] == type(job).NAME
        assert stored["queue"] == type(job).QUEUE
        assert stored["priority"] == type(job).PRIORITY
        assert stored["args"] == job._encode()
    assert handle.count() == 7


def test_ids_are_queued_ids_built_like_uuids(handle: QueueHandle) -> None:
    ids = [*handle.queue_many([Plain(i) for i in range(3)]), handle.queue(Plain(9))]
    for i in ids:
        assert type(i) is QueuedId
        assert not i.duplicate and i.inserted
        assert i.version == 7
        assert i.is_safe is uuid.SafeUUID.unknown
        same = uuid.UUID(str(i))
        assert i == same and hash(i) == hash(same) and i.int == same.int
        assert QueuedId(str(i)) == i
        assert repr(i) == f"QueuedId('{i}', duplicate=False)"
        back = pickle.loads(pickle.dumps(i))
        assert back == i and back.duplicate is False
        with pytest.raises(TypeError):
            i.duplicate = True  # type: ignore[misc]
    assert ids == sorted(ids), "ids are time-ordered"
    assert len(set(ids)) == 4


def test_scheduled_jobs_take_the_fast_path_too(handle: QueueHandle) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    job_id = handle.schedule(Plain(4, "later"), at=at)
    info = handle.get(job_id)
    assert info.status is JobStatus.SCHEDULED
    assert abs(info.run_at - at) < timedelta(milliseconds=1)
    assert info.args == {"n": 4, "text": "later", "ratio": 0.5, "flag": False, "nothing": None}


def test_something_other_than_a_job_is_a_config_error(handle: QueueHandle) -> None:
    with pytest.raises(ConfigError, match="expected a hauler Job instance, got int"):
        handle.queue_many([Plain(1), 5])  # type: ignore[list-item]
    assert handle.count() == 0
    assert handle.queue_many([]) == []
    assert handle.queue_many(iter([Plain(1), Plain(2)]))[1].inserted


def test_a_field_deleted_from_the_object_is_the_codec_error(handle: QueueHandle) -> None:
    job = Plain(1)
    object.__delattr__(job, "n")
    with pytest.raises(AttributeError):
        job._encode()
    with pytest.raises(AttributeError):
        handle.queue(job)
    assert handle.count() == 0


def test_the_id_class_must_be_a_uuid_subclass_with_duplicate(handle: QueueHandle) -> None:
    native = handle.storage._native
    for bad in (int, uuid.UUID):
        with pytest.raises(ConfigError, match=r"uuid\.UUID subclass with a duplicate slot"):
            native.enqueue([Plain(1)], _class_of, bad)  # type: ignore[type-var]
    assert handle.count() == 0
