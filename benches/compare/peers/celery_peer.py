"""Celery with the Redis broker: ``celery worker`` processes started by the harness.

No-op jobs: the prefork pool (Celery's default, one process per slot) with
``--without-gossip --without-mingle --without-heartbeat`` and a prefetch multiplier of 16,
as Celery's optimisation guide suggests for many short tasks. I/O jobs: the threads pool.
Results are ignored (no result backend). Batch enqueue: ``group(...).apply_async()``
(Celery publishes a group's messages on one connection).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from celery import Celery, group

from benches.compare.common import SLEEP, SLEEP_S, Ctx, Peer, chunks, python_tool
from benches.compare.record import record

app = Celery("compare", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=16,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
)


@app.task(name="compare.noop")
def noop(i: int) -> None:
    record(i)


@app.task(name="compare.sleep")
def sleep(i: int, seconds: float) -> None:
    record(i)
    time.sleep(seconds)


class CeleryRedis(Peer):
    library = "celery"
    store = "Redis"
    has_batch = True
    settings = (
        "celery worker -P prefork -c N (threads pool for I/O), prefetch 16, "
        "--without-gossip/mingle/heartbeat, no result backend; batch = group().apply_async()"
    )

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        app.conf.broker_url = ctx.redis_url

    def reset(self) -> None:
        self.stop()
        with app.connection_for_write() as conn:
            conn.default_channel.client.flushall()

    def enqueue(self, ids: Iterable[int], *, batch: bool, kind: str) -> None:
        task = sleep if kind == SLEEP else noop
        extra = (SLEEP_S,) if kind == SLEEP else ()
        if batch:
            for chunk in chunks(ids):
                group(task.s(i, *extra) for i in chunk).apply_async()
        else:
            for i in ids:
                task.apply_async((i, *extra))

    def start(self, concurrency: int, kind: str) -> None:
        pool = "threads" if kind == SLEEP else "prefork"
        self.spawn(
            [
                python_tool("celery"),
                "-A", "benches.compare.peers.celery_peer",
                "worker",
                "-P", pool,
                "-c", str(concurrency),
                "-l", "WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )  # fmt: skip

    def verify(self, n: int) -> None:
        with app.connection_for_write() as conn:
            left = conn.default_channel.client.llen("celery")
        if left:
            from benches.compare.common import Failed

            raise Failed(f"celery: {left} messages still queued after the drain")
