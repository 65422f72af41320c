"""taskiq with taskiq-redis's ``ListQueueBroker``: ``taskiq worker`` (one process,
``--max-async-tasks N``), async jobs, no result backend. taskiq has no batch enqueue.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable

from taskiq_redis import ListQueueBroker

from benches.compare.common import SLEEP, SLEEP_S, Ctx, Failed, Peer, python_tool
from benches.compare.record import record

broker = ListQueueBroker(
    url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"), queue_name="default"
)


@broker.task(task_name="compare.noop")
async def noop(i: int) -> None:
    record(i)


@broker.task(task_name="compare.sleep")
async def sleep(i: int, seconds: float) -> None:
    record(i)
    await asyncio.sleep(seconds)


class TaskiqRedis(Peer):
    library = "taskiq"
    store = "Redis"
    settings = "taskiq worker --workers 1 --max-async-tasks N (ListQueueBroker); async jobs"

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        if os.environ.get("BENCH_REDIS_URL") != ctx.redis_url:
            raise Failed("taskiq: BENCH_REDIS_URL must be set before import")
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(broker.startup())

    def reset(self) -> None:
        self.stop()
        import redis

        redis.Redis.from_url(self.ctx.redis_url).flushall()

    def enqueue(self, ids: Iterable[int], *, batch: bool, kind: str) -> None:
        async def go() -> None:
            for i in ids:
                if kind == SLEEP:
                    await sleep.kiq(i, SLEEP_S)
                else:
                    await noop.kiq(i)

        self.loop.run_until_complete(go())

    def start(self, concurrency: int, kind: str) -> None:
        self.spawn(
            [
                python_tool("taskiq"),
                "worker",
                "benches.compare.peers.taskiq_peer:broker",
                "--workers", "1",
                "--max-async-tasks", str(concurrency),
                "--no-configure-logging",
            ]
        )  # fmt: skip

    def verify(self, n: int) -> None:
        import redis

        left = redis.Redis.from_url(self.ctx.redis_url).llen("default")
        if left:
            raise Failed(f"taskiq: {left} messages still queued after the drain")

    def close(self) -> None:
        self.stop()
        self.loop.run_until_complete(broker.shutdown())
        self.loop.close()
