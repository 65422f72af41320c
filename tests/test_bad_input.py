"""Bad input raises the named error at once, says what to change, and stores nothing."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import WAIT, StartWorker
from hauler import (
    Backoff,
    ConfigError,
    HaulerError,
    Job,
    JobStatus,
    MaxRetries,
    QueueHandle,
    SerializationError,
    StorageClosedError,
    UnknownJobError,
    WorkerConfig,
    create_server,
)
from hauler.storage import MemoryStorage, SqliteStorage, Storage


class Holder(Job[None]):
    NAME = "holder"
    value: Any = None

    def run(self, state: None) -> None:
        pass


class Other(Job[None]):
    NAME = "other"

    def run(self, state: None) -> None:
        pass


def assert_nothing_stored(handle: QueueHandle) -> None:
    assert handle.counts() == {}
    assert len(handle.list()) == 0


# ---------------------------------------------------------------------------------------
# Fields that cannot be serialized.


@pytest.mark.parametrize(
    ("value", "path", "detail"),
    [
        pytest.param({1, 2}, "Holder.value", "unsupported type set", id="set"),
        pytest.param(object(), "Holder.value", "unsupported type object", id="object"),
        pytest.param(math.nan, "Holder.value", "NaN", id="nan"),
        pytest.param(math.inf, "Holder.value", "infinity", id="inf"),
        pytest.param(datetime(2024, 5, 1, 12, 0), "Holder.value", "naive datetime", id="naive"),
        pytest.param({1: "a"}, "Holder.value", "only str keys", id="int-key"),
        pytest.param(["ok", {"deep": b"bytes"}], "Holder.value[1]['deep']", "bytes", id="nested"),
    ],
)
def test_unserializable_field_is_named_and_nothing_stored(
    handle: QueueHandle, value: object, path: str, detail: str
) -> None:
    with pytest.raises(SerializationError, match="cannot serialize") as raised:
        handle.queue(Holder(value))
    message = str(raised.value)
    assert path in message
    assert detail in message
    assert_nothing_stored(handle)


def test_one_bad_job_in_a_batch_stores_none(handle: QueueHandle) -> None:
    jobs = [Holder(1), Holder("two"), Holder({3}), Holder(Decimal("4"))]
    with pytest.raises(SerializationError, match=r"Holder\.value"):
        handle.queue_many(jobs)
    with pytest.raises(SerializationError, match=r"Holder\.value"):
        handle.schedule(Holder({3}), after=timedelta(seconds=1))
    with pytest.raises(SerializationError, match=r"Holder\.value"):
        asyncio.run(handle.aqueue(Holder({3})))
    assert_nothing_stored(handle)


def test_not_a_job_is_refused(handle: QueueHandle) -> None:
    with pytest.raises(ConfigError, match="expected a hauler Job instance, got dict"):
        handle.queue({"name": "holder"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected a hauler Job instance"):
        handle.queue_many([Holder(1), "holder"])  # type: ignore[list-item]
    assert_nothing_stored(handle)


# ---------------------------------------------------------------------------------------
# Job classes with bad constants are refused when first used, before anything is stored.


def job_class(**constants: Any) -> type[Job[None]]:
    namespace: dict[str, Any] = {"NAME": "bad_constants", "run": lambda self, state: None}
    namespace.update(constants)
    return type("BadConstants", (Job,), namespace)


@pytest.mark.parametrize(
    ("constants", "message"),
    [
        ({"MAX_RETRIES": -1}, "MAX_RETRIES must be a MaxRetries"),
        ({"MAX_RETRIES": 3}, "MAX_RETRIES must be a MaxRetries"),
        ({"BACKOFF": 2}, "BACKOFF must be a Backoff"),
        ({"TIMEOUT": -1}, "TIMEOUT must be None or a positive number"),
        ({"PRIORITY": "high"}, "PRIORITY must be an int"),
        ({"HEARTBEAT_INTERVAL": 0}, "HEARTBEAT_INTERVAL must be a positive int"),
        ({"NAME": ""}, "NAME must be a non-empty str"),
        ({"QUEUE": ""}, "QUEUE must be a non-empty str"),
    ],
)
def test_bad_class_constant_stores_nothing(
    handle: QueueHandle, constants: dict[str, Any], message: str
) -> None:
    cls = job_class(**constants)
    with pytest.raises(ConfigError, match=message):
        handle.queue(cls())
    with pytest.raises(ConfigError, match=message):
        WorkerConfig().register(cls)
    assert_nothing_stored(handle)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MaxRetries.count(-1), "MaxRetries.count"),
        (lambda: MaxRetries.count(-100), "MaxRetries.count"),
        (lambda: MaxRetries.count(True), "MaxRetries.count"),
        (lambda: MaxRetries.count(1.5), "MaxRetries.count"),
        (lambda: Backoff.fixed(-1), "Backoff.fixed seconds must be a finite number >= 0"),
        (lambda: Backoff.linear(math.nan), "Backoff.linear seconds"),
        (lambda: Backoff.exponential(0.5), "Backoff.exponential base must be >= 1"),
        (lambda: Backoff.fixed(1, max_delay=-5), "max_delay"),
        (lambda: Backoff.fixed(1, jitter=2), "jitter"),
    ],
)
def test_negative_or_invalid_retry_numbers(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


# ---------------------------------------------------------------------------------------
# Worker configuration.


def test_two_classes_under_one_name() -> None:
    class Impostor(Job[None]):
        NAME = "holder"

        def run(self, state: None) -> None:
            pass

    config = WorkerConfig().register(Holder)
    config.register(Holder)  # the same class again is fine
    with pytest.raises(ConfigError, match="'holder' is already registered by") as raised:
        config.register(Impostor)
    assert "Holder" in str(raised.value)
    assert config.job_class("holder") is Holder


def test_unregistered_name_at_worker() -> None:
    config = WorkerConfig().register(Holder)
    with pytest.raises(UnknownJobError, match=r"'other' \(registered: holder\)"):
        config.job_class("other")
    assert issubclass(UnknownJobError, LookupError)


@pytest.mark.parametrize("count", [0, -1, True, 2.0])
def test_worker_count_must_be_positive(count: Any) -> None:
    config = WorkerConfig().register(Holder)
    with pytest.raises(ConfigError, match="must be an int >= 1"):
        config.set_worker_count("default", count)


def test_start_refuses_incomplete_configs(storage: Storage) -> None:
    handle = create_server(storage)
    with pytest.raises(ConfigError, match="no job registered"):
        WorkerConfig().start(handle)
    unused = WorkerConfig().register(Holder).set_worker_count("elsewhere", 2)
    with pytest.raises(ConfigError, match=r"\['elsewhere'\] but no registered job runs there"):
        unused.start(handle)
    with pytest.raises(ConfigError, match="register\\(\\) takes a Job subclass"):
        WorkerConfig().register(Holder(1))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="state_factory must be callable"):
        WorkerConfig(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="poll_interval must be a positive number"):
        WorkerConfig(poll_interval=0)
    with pytest.raises(ConfigError, match="not both"):
        WorkerConfig(storage=MemoryStorage()).register(Holder).start(handle)


def test_stop_and_join_timeouts_must_not_be_negative(start_worker: StartWorker) -> None:
    worker = start_worker(WorkerConfig().register(Holder))
    with pytest.raises(ConfigError, match="stop timeout must be >= 0"):
        worker.stop(timeout=-1)
    with pytest.raises(ConfigError, match="join timeout must be >= 0"):
        worker.join(timeout=-1)
    assert worker.running


# ---------------------------------------------------------------------------------------
# Times and listing arguments.


def test_naive_datetime_for_schedule_at(handle: QueueHandle) -> None:
    naive = datetime.now() + timedelta(minutes=5)
    with pytest.raises(ConfigError, match="timezone-aware") as raised:
        handle.schedule(Holder(1), at=naive)
    assert isinstance(raised.value, ValueError)
    with pytest.raises(ConfigError, match="timezone-aware"):
        asyncio.run(handle.aschedule(Holder(1), at=naive))
    assert_nothing_stored(handle)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of at= .* or after="),
        (
            {"at": datetime.now(UTC), "after": timedelta(seconds=1)},
            "exactly one of at= .* or after=",
        ),
        ({"after": timedelta(seconds=-1)}, "after= must not be negative"),
        ({"after": 5}, "after= must be a timedelta, got int"),
        ({"at": "2024-05-01T00:00:00Z"}, "at= must be a datetime, got str"),
    ],
)
def test_bad_schedule_arguments(handle: QueueHandle, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        handle.schedule(Holder(1), **kwargs)
    assert_nothing_stored(handle)


def test_bad_list_arguments(handle: QueueHandle) -> None:
    with pytest.raises(ConfigError, match="limit must be a positive int"):
        handle.list(limit=0)
    with pytest.raises(ConfigError, match="limit must be a positive int"):
        handle.list(limit=-5)
    with pytest.raises(ConfigError, match="unknown job status 'done'"):
        handle.list(status="done")
    with pytest.raises(ConfigError, match="expected a UUID"):
        handle.list(cursor="page-2")


# ---------------------------------------------------------------------------------------
# A closed storage.


CLOSED_CALLS = {
    "queue": lambda h: h.queue(Holder(1)),
    "queue_many": lambda h: h.queue_many([Holder(1), Holder(2)]),
    "schedule": lambda h: h.schedule(Holder(1), after=timedelta(seconds=1)),
    "get": lambda h: h.get("01a20c3d-ebdd-7299-a146-f6abf01235bf"),
    "list": lambda h: h.list(),
    "counts": lambda h: h.counts(),
    "aqueue": lambda h: asyncio.run(h.aqueue(Holder(1))),
    "start a worker": lambda h: WorkerConfig().register(Holder).start(h),
}


@pytest.mark.parametrize("call", CLOSED_CALLS.values(), ids=CLOSED_CALLS.keys())
def test_closed_storage(storage: Storage, call: Callable[[QueueHandle], object]) -> None:
    handle = create_server(storage)
    storage.close()
    assert storage.closed
    with pytest.raises(StorageClosedError, match="closed") as raised:
        call(handle)
    assert isinstance(raised.value, ValueError)
    storage.close()  # idempotent
    if isinstance(storage, SqliteStorage):
        with SqliteStorage(storage.path) as reopened:
            assert_nothing_stored(create_server(reopened))


def test_worker_refused_on_closed_storage_before_state_is_made(storage: Storage) -> None:
    storage.close()
    made: list[None] = []
    config = WorkerConfig(lambda: made.append(None), storage=storage).register(Holder)
    with pytest.raises(StorageClosedError, match="cannot start a worker on a closed storage"):
        config.start()
    assert made == []


# ---------------------------------------------------------------------------------------
# Storage URLs.


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost", "unsupported storage URL"),
        ("", "unsupported storage URL"),
        ("jobs.db", "unsupported storage URL"),
        ("sqlite://host/jobs.db", "has a host"),
        ("sqlite:///", "has no database path"),
        ("sqlite:///jobs.db?synchronous=sometimes", "synchronous must be 'normal' or 'full'"),
        ("sqlite:///jobs.db?busy_timeout=soon", "busy_timeout must be a number"),
        ("sqlite:///jobs.db?poll_interval=-1", "poll_interval must be a positive number"),
        ("sqlite:///jobs.db?bogus=1", "unknown option 'bogus'"),
        ("memory://somewhere", "memory:// takes no path"),
        ("postgresql://app:secret@db/jobs?pool_size=zero", "pool_size must be an int"),
    ],
)
def test_bad_storage_url(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        create_server(url)
    assert "secret" not in str(raised.value)
    made: list[None] = []
    config = WorkerConfig(lambda: made.append(None), storage=url).register(Holder)
    with pytest.raises(ConfigError, match=message):
        config.start()
    assert made == []
    assert list(tmp_path.iterdir()) == []  # no database file was created


def test_bad_storage_type() -> None:
    with pytest.raises(ConfigError, match="storage must be a Storage, a URL str or None"):
        create_server(42)  # type: ignore[arg-type]


def test_bad_url_in_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HAULER_STORAGE", "mysql://db/jobs")
    with pytest.raises(ConfigError, match="unsupported storage URL 'mysql://db/jobs'"):
        create_server()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Stored arguments that no longer fit the class fail for good, with the reason.


class ResizeV1(Job[None]):
    NAME = "resize"
    MAX_RETRIES = MaxRetries.count(5)
    BACKOFF = Backoff.fixed(0)
    width: int

    def run(self, state: None) -> None:
        pass


class ResizeV2(Job[None]):
    """The same NAME with a changed field type: old stored jobs no longer decode."""

    NAME = "resize"
    MAX_RETRIES = MaxRetries.count(5)
    BACKOFF = Backoff.fixed(0)
    width: str

    def run(self, state: None) -> None:
        raise AssertionError("must not run with undecodable arguments")


class ResizeV3(Job[None]):
    """The same NAME with a new required field."""

    NAME = "resize"
    MAX_RETRIES = MaxRetries.count(5)
    width: int
    height: int

    def run(self, state: None) -> None:
        raise AssertionError("must not run with undecodable arguments")


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (ResizeV2, "ResizeV2.width: expected str, got int 640"),
        (ResizeV3, "ResizeV3.height: the field is missing"),
    ],
)
def test_undecodable_args_fail_permanently(
    storage: Storage, start_worker: StartWorker, cls: type[Job[None]], reason: str
) -> None:
    producer = create_server(storage)
    job_id = producer.queue(ResizeV1(640))
    worker = start_worker(WorkerConfig().register(cls))
    (info,) = worker.wait([job_id], timeout=WAIT)
    assert info.status is JobStatus.FAILED
    assert info.attempt == 1  # no retry: it would never decode
    assert len(info.history) == 1
    error = info.last_error
    assert error is not None
    assert error.type == "hauler.errors.SerializationError"
    assert f"cannot deserialize {reason}" in error.message
    assert info.history[0].error == error
    assert producer.counts() == {"default": {"failed": 1}}


def test_every_error_is_a_hauler_error() -> None:
    for cls in (ConfigError, SerializationError, StorageClosedError, UnknownJobError):
        assert issubclass(cls, HaulerError)


@pytest.mark.parametrize("worker_id", ["", "a\x00b", "\udc80", 7])
def test_bad_worker_id(worker_id: object) -> None:
    # A NUL would be refused by PostgreSQL at every claim, so it is refused here, everywhere.
    with pytest.raises(ConfigError, match="worker_id must be non-empty"):
        WorkerConfig(worker_id=worker_id)  # type: ignore[arg-type]
