"""huey: SqliteHuey and RedisHuey run ``huey_consumer`` processes; MemoryHuey (which only
one process can see) runs its ``Consumer`` in the harness process. Thread workers, no
result store, no periodic tasks. huey has no batch enqueue (``task.map`` loops).

The worker processes import this module: ``$BENCH_HUEY`` picks the storage.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from huey import MemoryHuey, RedisHuey, SqliteHuey
from huey.storage import SqliteStorage

from benches.compare.common import SLEEP, SLEEP_S, Ctx, Peer, python_tool
from benches.compare.record import record


class NormalSqliteStorage(SqliteStorage):  # type: ignore[misc]
    """huey's SQLite storage with ``synchronous=NORMAL`` (WAL), as hauler's default.

    huey's ``fsync`` option only offers FULL (True) or OFF (False).
    """

    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


def make_huey(kind: str) -> Any:
    if kind == "memory":
        return MemoryHuey("compare", results=False)
    if kind == "redis":
        return RedisHuey("compare", url=os.environ["BENCH_REDIS_URL"], results=False)
    return SqliteHuey("compare", filename=kind, results=False, storage_class=NormalSqliteStorage)


huey = make_huey(os.environ.get("BENCH_HUEY", "memory"))


@huey.task(name="compare.noop")
def noop(i: int) -> None:
    record(i)


@huey.task(name="compare.sleep")
def sleep(i: int, seconds: float) -> None:
    record(i)
    time.sleep(seconds)


class HueyPeer(Peer):
    library = "huey"
    kind = "redis"

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.files = 0
        self.env_kind = ""
        self.consumer: Any = None

    def reset(self) -> None:
        global huey
        self.stop()
        if self.kind == "sqlite":
            self.files += 1
            self.env_kind = str(self.ctx.run_dir / f"huey-{self.files}.db")
        else:
            self.env_kind = self.kind
        # Rebind the module's tasks to a fresh app for this storage.
        huey = make_huey(self.env_kind)
        self.noop = huey.task(name="compare.noop")(noop.func)
        self.sleep = huey.task(name="compare.sleep")(sleep.func)
        self.huey = huey
        if self.kind == "redis":
            huey.storage.conn.flushall()

    def enqueue(self, ids: Iterable[int], *, batch: bool, kind: str) -> None:
        if kind == SLEEP:
            for i in ids:
                self.sleep(i, SLEEP_S)
        else:
            for i in ids:
                self.noop(i)

    def start(self, concurrency: int, kind: str) -> None:
        argv = [
            python_tool("huey_consumer"),
            "benches.compare.peers.huey_peer.huey",
            "--workers", str(concurrency),
            "--worker-type", "thread",
            "--no-periodic",
            "--quiet",
        ]  # fmt: skip
        self.spawn(argv, BENCH_HUEY=self.env_kind)

    def verify(self, n: int) -> None:
        pending = self.huey.pending_count()
        if pending:
            from benches.compare.common import Failed

            raise Failed(f"huey: {pending} jobs still pending after the drain")


class HueySqlite(HueyPeer):
    store = "SQLite NORMAL"
    kind = "sqlite"
    settings = "SqliteHuey (WAL, synchronous=NORMAL); huey_consumer -k thread, 1 process"


class HueyRedis(HueyPeer):
    store = "Redis"
    kind = "redis"
    settings = "RedisHuey; huey_consumer -k thread, 1 process"


class HueyMemory(HueyPeer):
    store = "memory"
    kind = "memory"
    settings = "MemoryHuey; Consumer(worker_type='thread') in the harness process"

    def start(self, concurrency: int, kind: str) -> None:
        self.consumer = self.huey.create_consumer(
            workers=concurrency, worker_type="thread", periodic=False, check_worker_health=False
        )
        # Consumer.start() installs signal handlers for a consumer process; put ours back.
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        handlers = {s: signal.getsignal(s) for s in sigs}
        self.consumer.start()
        for s, h in handlers.items():
            signal.signal(s, h)

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop(graceful=True)
            self.consumer = None

    def worker_pids(self) -> list[int]:
        return [os.getpid()]
