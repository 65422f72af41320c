"""RQ: ``rq worker-pool -n N`` with ``SimpleWorker`` (N processes that run jobs in place),
results not kept (``result_ttl=0``). Batch enqueue: ``Queue.enqueue_many`` (one Redis
pipeline per batch).

RQ's default ``Worker`` forks a work horse per job, for isolation; on the 2-core machine it
drained about 10x slower than ``SimpleWorker``, so the faster one is measured
(``BENCH_RQ_WORKER=rq.worker.Worker`` measures the default).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from redis import Redis
from rq import Queue

from benches.compare.common import SLEEP, SLEEP_S, Ctx, Failed, Peer, chunks, python_tool
from benches.compare.record import record


def noop(i: int) -> None:
    record(i)


def sleep(i: int, seconds: float) -> None:
    record(i)
    time.sleep(seconds)


WORKER_CLASS = os.environ.get("BENCH_RQ_WORKER", "rq.worker.SimpleWorker")


class RqRedis(Peer):
    library = "rq"
    store = "Redis"
    has_batch = True
    settings = (
        "rq worker-pool -n N -w SimpleWorker (no fork per job), result_ttl=0; batch = enqueue_many"
    )

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.redis = Redis.from_url(ctx.redis_url)
        self.queue = Queue("default", connection=self.redis)

    def reset(self) -> None:
        self.stop()
        self.redis.flushall()

    def enqueue(self, ids: Iterable[int], *, batch: bool, kind: str) -> None:
        func = sleep if kind == SLEEP else noop
        extra = (SLEEP_S,) if kind == SLEEP else ()
        if batch:
            for chunk in chunks(ids):
                self.queue.enqueue_many(
                    [Queue.prepare_data(func, (i, *extra), result_ttl=0) for i in chunk]
                )
        else:
            for i in ids:
                self.queue.enqueue(func, i, *extra, result_ttl=0)

    def start(self, concurrency: int, kind: str) -> None:
        self.spawn(
            [
                python_tool("rq"),
                "worker-pool",
                "-n", str(concurrency),
                "-u", self.ctx.redis_url,
                "-w", WORKER_CLASS,
                "-q",
                "default",
            ]
        )  # fmt: skip

    def verify(self, n: int) -> None:
        left = self.queue.count
        if left:
            raise Failed(f"rq: {left} jobs still queued after the drain")
