"""User code with unique jobs and limits, checked by ``mypy --strict``, never run.

Each ``# type: ignore[code]`` marks a line that must be an error.
"""

from datetime import timedelta
from typing import assert_type
from uuid import UUID

from hauler import Job, QueuedId, Unique, create_server


class SyncAccount(Job[None]):
    NAME = "sync_account"
    UNIQUE = Unique(by=("args",), for_=timedelta(minutes=5))
    SINGLETON = True
    account_id: int

    def run(self, state: None) -> None:
        pass


class PerTenant(Job[None]):
    NAME = "per_tenant"
    UNIQUE = Unique(by=lambda job: "key", states=("scheduled", "available", "running", "retryable"))
    CONCURRENCY = 4
    RATE_LIMIT = "100/m"
    tenant: str

    def run(self, state: None) -> None:
        pass


handle = create_server("memory://")
job_id = handle.queue(SyncAccount(account_id=7))
assert_type(job_id, QueuedId)
assert_type(job_id.duplicate, bool)
as_uuid: UUID = job_id  # still a UUID
ids = handle.queue_many([PerTenant("a"), PerTenant("b")])
assert_type(ids, list[QueuedId])
Unique(for_=5)  # type: ignore[arg-type]
