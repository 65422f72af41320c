"""A job whose fields take more than ``max_payload_bytes`` of JSON is refused at queue().

The limit is a queue-handle option (``create_server``, ``QueueHandle``, ``WorkerConfig``),
1 MiB by default; a refused job names its size and the limit, and nothing is stored.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from conftest import WAIT
from hauler import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ConfigError,
    Job,
    JobStatus,
    QueueHandle,
    SerializationError,
    WorkerConfig,
    create_server,
)
from hauler.storage import Storage

MIB = 1 << 20


class Blob(Job[None]):
    NAME = "blob"
    data: str

    def run(self, state: None) -> None:
        pass


# The payload of Blob(data) is {"data":"<data>"}: 11 bytes around an ASCII string.
OVERHEAD = len('{"data":""}')


def blob(size: int) -> Blob:
    """A Blob whose JSON payload takes exactly ``size`` bytes."""
    return Blob("x" * (size - OVERHEAD))


def assert_refused(raised: pytest.ExceptionInfo[SerializationError], size: int, limit: int) -> None:
    message = str(raised.value)
    assert f"arguments take {size} bytes as JSON" in message
    assert f"over the limit of {limit} bytes (max_payload_bytes)" in message


def test_default_limit_is_one_mib(storage: Storage) -> None:
    handle = create_server(storage)
    assert DEFAULT_MAX_PAYLOAD_BYTES == MIB
    assert handle.max_payload_bytes == MIB
    at_limit = handle.queue(blob(MIB))
    assert len(handle.get(at_limit).args["data"]) == MIB - OVERHEAD
    with pytest.raises(SerializationError) as raised:
        handle.queue(blob(MIB + 1))
    assert_refused(raised, MIB + 1, MIB)
    assert handle.counts() == {"default": {"available": 1}}


def test_multibyte_text_counts_in_bytes(storage: Storage) -> None:
    handle = create_server(storage, max_payload_bytes=OVERHEAD + 10)
    handle.queue(Blob("é" * 5))  # 10 bytes of UTF-8
    with pytest.raises(SerializationError) as raised:
        handle.queue(Blob("é" * 6))
    assert_refused(raised, OVERHEAD + 12, OVERHEAD + 10)


@pytest.mark.parametrize(
    "queue",
    [
        pytest.param(lambda h, job: h.queue(job), id="queue"),
        pytest.param(lambda h, job: h.queue_many([blob(10), job, blob(10)]), id="queue_many"),
        pytest.param(lambda h, job: h.schedule(job, after=timedelta(seconds=5)), id="schedule"),
    ],
)
def test_oversized_job_stores_nothing(storage: Storage, queue: Any) -> None:
    handle = create_server(storage, max_payload_bytes=100)
    with pytest.raises(SerializationError) as raised:
        queue(handle, blob(101))
    assert_refused(raised, 101, 100)
    assert handle.counts() == {}


def test_worker_handle_uses_its_config_limit(storage: Storage) -> None:
    config = WorkerConfig(storage=storage, max_payload_bytes=200).register(Blob)
    worker = config.start()
    try:
        assert worker.max_payload_bytes == 200
        with pytest.raises(SerializationError) as raised:
            worker.queue(blob(201))
        assert_refused(raised, 201, 200)
        (info,) = worker.wait([worker.queue(blob(200))], timeout=WAIT)
        assert info.status is JobStatus.COMPLETED
    finally:
        worker.stop(timeout=5)


def test_none_means_no_limit(storage: Storage) -> None:
    handle = QueueHandle(storage, max_payload_bytes=None)
    job_id = handle.queue(blob(2 * MIB))
    assert len(handle.get(job_id).args["data"]) == 2 * MIB - OVERHEAD


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1024"])
def test_bad_limit_is_a_config_error(storage: Storage, bad: Any) -> None:
    for make in (
        lambda: create_server(storage, max_payload_bytes=bad),
        lambda: QueueHandle(storage, max_payload_bytes=bad),
        lambda: WorkerConfig(storage=storage, max_payload_bytes=bad),
    ):
        with pytest.raises(ConfigError, match="max_payload_bytes must be a positive int or None"):
            make()
