"""hauler: the worker pool in the harness process, or in a worker process of its own.

MemoryStorage can only be consumed in-process. SQLite and PostgreSQL run both ways: the
pool in the process that queues (``WorkerConfig.start(handle)``, an application embedding
hauler), and a separate worker process (``peers/hauler_worker.py``), as the peers run.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterable

import psycopg
from psycopg import sql

from benches.compare.common import SLEEP, Ctx, Failed, Peer, chunks
from benches.compare.record import record
from hauler import Job, QueueHandle, Worker, WorkerConfig, create_server
from hauler.storage import MemoryStorage, PostgresStorage, SqliteStorage, Storage


class Noop(Job[None]):
    """Records that it ran."""

    NAME = "compare.noop"

    i: int

    def run(self, state: None) -> None:
        record(self.i)


class Sleep(Job[None]):
    """Records that it ran, then sleeps (I/O stand-in)."""

    NAME = "compare.sleep"

    i: int
    seconds: float

    def run(self, state: None) -> None:
        record(self.i)
        time.sleep(self.seconds)


class HaulerPeer(Peer):
    library = "hauler"
    has_batch = True
    kind = "memory"

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.storage: Storage | None = None
        self.handle: QueueHandle | None = None
        self.worker: Worker | None = None
        self.schemas: list[str] = []
        self.files = 0
        self.where = ""

    def open(self) -> Storage:
        if self.kind == "memory":
            return MemoryStorage()
        if self.kind in ("sqlite-normal", "sqlite-full"):
            self.files += 1
            path = self.ctx.run_dir / f"hauler-{self.files}.db"
            self.where = str(path)
            return SqliteStorage(path, synchronous=self.kind.removeprefix("sqlite-"))  # type: ignore[arg-type]
        schema = f"compare_{uuid.uuid4().hex[:12]}"
        self.schemas.append(schema)
        self.where = schema
        return PostgresStorage(self.ctx.pg_dsn, schema=schema)

    def reset(self) -> None:
        self.stop()
        if self.storage is not None:
            self.storage.close()
        self.storage = self.open()
        self.handle = create_server(self.storage)

    def enqueue(self, ids: Iterable[int], *, batch: bool, kind: str) -> None:
        assert self.handle is not None
        handle = self.handle
        if kind == SLEEP:
            from benches.compare.common import SLEEP_S

            jobs: Iterable[Job[None]] = (Sleep(i, SLEEP_S) for i in ids)
        else:
            jobs = (Noop(i) for i in ids)
        if batch:
            for chunk in chunks(jobs):
                handle.queue_many(chunk)
        else:
            for job in jobs:
                handle.queue(job)

    def start(self, concurrency: int, kind: str) -> None:
        assert self.handle is not None
        config = (
            WorkerConfig[None](None, handle_sigterm=False)
            .register(Noop)
            .register(Sleep)
            .set_worker_count("default", concurrency)
        )
        self.worker = config.start(self.handle)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=10)
            self.worker = None
        super().stop()

    def worker_pids(self) -> list[int]:
        return super().worker_pids() if self.workers is not None else [os.getpid()]

    def check_alive(self) -> None:
        if self.worker is not None and not self.worker.running:
            raise Failed("the hauler worker pool stopped")
        super().check_alive()

    def verify(self, n: int) -> None:
        assert self.handle is not None
        deadline = time.monotonic() + 60
        while True:
            counts = self.handle.counts().get("default", {})
            if counts == {"completed": n}:
                return
            if time.monotonic() > deadline:
                raise Failed(f"hauler: storage counts {counts}, expected {n} completed")
            time.sleep(0.01)

    def close(self) -> None:
        self.stop()
        if self.storage is not None:
            self.storage.close()
            self.storage = None
        if self.schemas:
            with psycopg.connect(self.ctx.pg_dsn, autocommit=True) as conn:
                for schema in self.schemas:
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )


class HaulerMemory(HaulerPeer):
    store = "memory"
    kind = "memory"
    settings = "MemoryStorage; worker pool in the harness process"


class HaulerSqliteNormal(HaulerPeer):
    store = "SQLite NORMAL"
    kind = "sqlite-normal"
    settings = "SqliteStorage(synchronous='normal'), WAL; worker pool in the harness process"


class HaulerSqliteFull(HaulerPeer):
    store = "SQLite FULL"
    kind = "sqlite-full"
    settings = "SqliteStorage(synchronous='full'), WAL; worker pool in the harness process"


class HaulerPostgres(HaulerPeer):
    store = "PostgreSQL"
    kind = "postgres"
    settings = "PostgresStorage (LISTEN/NOTIFY, pool_size 10); worker pool in the harness process"


class HaulerProcess(HaulerPeer):
    """The pool in a worker process of its own; the harness process only queues."""

    def start(self, concurrency: int, kind: str) -> None:
        module = "benches.compare.peers.hauler_worker"
        self.spawn([sys.executable, "-m", module, self.kind, self.where, str(concurrency)])


class HaulerSqliteNormalProcess(HaulerProcess):
    store = "SQLite NORMAL, worker process"
    kind = "sqlite-normal"
    settings = (
        "SqliteStorage(synchronous='normal') shared by the harness (queues) and one worker "
        "process (finds jobs queued elsewhere by polling, every 0.1 s by default)"
    )


class HaulerPostgresProcess(HaulerProcess):
    store = "PostgreSQL, worker process"
    kind = "postgres"
    settings = "PostgresStorage; one worker process (LISTEN/NOTIFY), the harness only queues"
