"""Job versions: VERSION, MIN_SUPPORTED_VERSION and migrate, on every storage.

A job is stored by one class (an old deployment) and claimed by a worker that registers a
redefined class with the same NAME (the new deployment).
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import WAIT, StartWorker
from hauler import (
    ConfigError,
    Job,
    JobInfo,
    JobStatus,
    JobVersionError,
    QueueHandle,
    SerializationError,
    WorkerConfig,
)

Seen = list[tuple[str, list[str]]]


class SendV1(Job[Seen]):
    """Version 1 stored a single address."""

    NAME = "send"
    VERSION = 1
    to: str

    def run(self, state: Seen) -> None:
        state.append(("v1", [self.to]))


class SendV2(Job[Seen]):
    """Version 2 stores a list of addresses."""

    NAME = "send"
    VERSION = 2
    to: list[str]

    def run(self, state: Seen) -> None:
        state.append(("v2", self.to))


class SendV3(Job[Seen]):
    """Runs versions 2 and 3 as stored; version 1 is not supported any more."""

    NAME = "send"
    VERSION = 3
    MIN_SUPPORTED_VERSION = 2
    to: list[str]

    def run(self, state: Seen) -> None:
        state.append(("v3", self.to))


class SendV3Migrating(SendV3):
    """Like :class:`SendV3`, and upgrades version 1 jobs."""

    NAME = "send"

    @classmethod
    def migrate(cls, old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
        return {"to": [old_args["to"], f"from-v{old_version}"]}


class AsyncSendV3Migrating(Job[Seen]):
    NAME = "send"
    VERSION = 3
    MIN_SUPPORTED_VERSION = 2
    to: list[str]

    @classmethod
    def migrate(cls, old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
        return {"to": [old_args["to"].upper()]}

    async def run(self, state: Seen) -> None:
        state.append(("async v3", self.to))


def finished(handle: QueueHandle, job_id: Any) -> JobInfo:
    (info,) = handle.wait([job_id], timeout=WAIT)
    return info


def assert_failed_for_good(info: JobInfo, *parts: str) -> str:
    """The job failed on its first attempt, never retried, with a JobVersionError."""
    assert (info.status, info.attempt) == (JobStatus.FAILED, 1), info
    assert [a.outcome for a in info.history] == ["failed"]
    assert info.last_error is not None
    assert info.last_error.type == "hauler.errors.JobVersionError"
    for part in parts:
        assert part in info.last_error.message, info.last_error.message
    return info.last_error.message


def test_a_job_older_than_min_supported_version_fails_at_once_without_migrate(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    old = handle.queue(SendV1("ada@example.com"))
    supported = handle.queue(SendV2(["bob@example.com"]))
    seen: Seen = []
    start_worker(WorkerConfig(lambda: seen).register(SendV3))
    message = assert_failed_for_good(finished(handle, old))
    assert message == (
        "job 'send' was stored with VERSION 1, older than SendV3.MIN_SUPPORTED_VERSION (2), "
        "and SendV3 defines no migrate(); it was not run"
    )
    assert finished(handle, supported).status is JobStatus.COMPLETED
    assert seen == [("v3", ["bob@example.com"])]  # the old job never ran


def test_migrate_upgrades_an_old_job_which_then_runs(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    old = handle.queue(SendV1("ada@example.com"))
    current = handle.queue(SendV3(["bob@example.com"]))
    seen: Seen = []
    start_worker(WorkerConfig(lambda: seen).register(SendV3Migrating))
    info = finished(handle, old)
    assert (info.status, info.attempt, info.last_error) == (JobStatus.COMPLETED, 1, None)
    # The stored job is not rewritten: it keeps its old fields and version.
    assert (info.args, info.version) == ({"to": "ada@example.com"}, 1)
    assert finished(handle, current).status is JobStatus.COMPLETED
    assert sorted(seen) == [
        ("v3", ["ada@example.com", "from-v1"]),
        ("v3", ["bob@example.com"]),  # a current job is not migrated
    ]


def test_migrate_runs_for_async_jobs_too(handle: QueueHandle, start_worker: StartWorker) -> None:
    old = handle.queue(SendV1("ada@example.com"))
    seen: Seen = []
    start_worker(WorkerConfig(lambda: seen).register(AsyncSendV3Migrating))
    assert finished(handle, old).status is JobStatus.COMPLETED
    assert seen == [("async v3", ["ADA@EXAMPLE.COM"])]


class RaisingMigrate(SendV3):
    NAME = "send"

    @classmethod
    def migrate(cls, old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
        raise KeyError("address")


class NotADictMigrate(SendV3):
    NAME = "send"

    @classmethod
    def migrate(cls, old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
        return [old_args["to"]]  # type: ignore[return-value]


class MisfitMigrate(SendV3):
    NAME = "send"

    @classmethod
    def migrate(cls, old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
        return {"to": old_args["to"]}  # a str where the class wants a list


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (RaisingMigrate, "RaisingMigrate.migrate(old_args, 1) failed: KeyError: 'address'"),
        (
            NotADictMigrate,
            "NotADictMigrate.migrate(old_args, 1) failed: TypeError: "
            "it must return a dict of fields, got list",
        ),
        (MisfitMigrate, "MisfitMigrate.migrate(old_args, 1) returned fields that do not fit"),
    ],
)
def test_a_failing_migrate_fails_the_job_for_good_with_the_reason(
    handle: QueueHandle, start_worker: StartWorker, cls: type[SendV3], reason: str
) -> None:
    old = handle.queue(SendV1("ada@example.com"))
    seen: Seen = []
    start_worker(WorkerConfig(lambda: seen).register(cls))
    info = finished(handle, old)
    assert_failed_for_good(info, "job 'send' was stored with VERSION 1", reason)
    assert info.last_error is not None and info.last_error.traceback is not None
    assert "The above exception was the direct cause" in info.last_error.traceback
    assert seen == []


def test_a_job_newer_than_the_class_fails_at_once(
    handle: QueueHandle, start_worker: StartWorker
) -> None:
    newer = handle.queue(SendV3(["ada@example.com"]))
    seen: Seen = []
    start_worker(WorkerConfig(lambda: seen).register(SendV2))
    message = assert_failed_for_good(finished(handle, newer))
    assert message == (
        "job 'send' was stored with VERSION 3, but the registered class SendV2 has VERSION 2; "
        "a worker runs only jobs stored with its class's VERSION or older"
    )
    assert seen == []


def test_job_version_error_is_a_serialization_error() -> None:
    assert issubclass(JobVersionError, SerializationError)


def make(**attrs: Any) -> type[Job[None]]:
    def run(self: Job[None], state: None) -> None:
        pass

    return type("Versioned", (Job,), {"NAME": "versioned", "run": run, **attrs})


@pytest.mark.parametrize(
    "attrs",
    [
        {"MIN_SUPPORTED_VERSION": 0},
        {"MIN_SUPPORTED_VERSION": -1},
        {"MIN_SUPPORTED_VERSION": "1"},
        {"MIN_SUPPORTED_VERSION": True},
        {"MIN_SUPPORTED_VERSION": 1.0},
        {"VERSION": 2, "MIN_SUPPORTED_VERSION": 3},
    ],
)
def test_bad_min_supported_version_raises_config_error(attrs: dict[str, Any]) -> None:
    cls = make(**attrs)
    with pytest.raises(ConfigError, match=r"Versioned\.MIN_SUPPORTED_VERSION must be None or an"):
        WorkerConfig().register(cls)


def test_min_supported_version_up_to_version_is_accepted() -> None:
    assert make(VERSION=3, MIN_SUPPORTED_VERSION=3)._spec().min_supported_version == 3
    assert make(VERSION=3, MIN_SUPPORTED_VERSION=1)._spec().min_supported_version == 1
    assert make()._spec().min_supported_version is None


def test_migrate_must_be_a_classmethod_and_needs_min_supported_version() -> None:
    def migrate(old_args: dict[str, Any], old_version: int) -> dict[str, Any]:
        return old_args

    with pytest.raises(ConfigError, match=r"Versioned\.migrate must be a classmethod"):
        make(VERSION=2, MIN_SUPPORTED_VERSION=2, migrate=staticmethod(migrate))._spec()
    with pytest.raises(ConfigError, match=r"Versioned\.migrate must be a classmethod"):
        make(VERSION=2, MIN_SUPPORTED_VERSION=2, migrate=None)._spec()
    with pytest.raises(ConfigError, match=r"migrate is never called without MIN_SUPPORTED"):
        make(VERSION=2, migrate=classmethod(lambda cls, a, v: a))._spec()
    spec = make(VERSION=2, MIN_SUPPORTED_VERSION=2, migrate=classmethod(lambda cls, a, v: a))
    assert spec._spec().migrates
    assert not make()._spec().migrates
