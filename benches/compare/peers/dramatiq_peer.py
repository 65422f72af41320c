"""Dramatiq with the Redis broker: the ``dramatiq`` command, 2 processes (one per core)
with N/2 threads each, so the total concurrency is N. Dramatiq has no batch enqueue
(``group`` sends its messages one by one).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benches.compare.common import SLEEP, SLEEP_S, Ctx, Failed, Peer, python_tool
from benches.compare.record import record

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)

PROCESSES = 2


@dramatiq.actor(actor_name="compare_noop", queue_name="default")
def noop(i: int) -> None:
    record(i)


@dramatiq.actor(actor_name="compare_sleep", queue_name="default")
def sleep(i: int, seconds: float) -> None:
    record(i)
    time.sleep(seconds)


class DramatiqRedis(Peer):
    library = "dramatiq"
    store = "Redis"
    settings = f"dramatiq -p {PROCESSES} -t N/{PROCESSES} (RedisBroker, default middleware)"

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        if broker.client.connection_pool.connection_kwargs.get("port") is None:
            raise Failed("dramatiq broker has no port")

    def reset(self) -> None:
        self.stop()
        broker.client.flushall()

    def enqueue(self, ids: Iterable[int], *, batch: bool, kind: str) -> None:
        if kind == SLEEP:
            for i in ids:
                sleep.send(i, SLEEP_S)
        else:
            for i in ids:
                noop.send(i)

    def start(self, concurrency: int, kind: str) -> None:
        self.spawn(
            [
                python_tool("dramatiq"),
                "benches.compare.peers.dramatiq_peer",
                "-p", str(PROCESSES),
                "-t", str(max(1, concurrency // PROCESSES)),
                "-Q", "default",
            ]
        )  # fmt: skip

    def verify(self, n: int) -> None:
        left = broker.client.llen("dramatiq:default")
        if left:
            raise Failed(f"dramatiq: {left} messages still queued after the drain")
