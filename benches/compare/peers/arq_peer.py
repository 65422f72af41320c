"""arq: the ``arq`` command (one asyncio process, ``max_jobs`` = N), results not kept.

arq has no batch enqueue. Its worker polls Redis every ``poll_delay`` (0.5 s by default,
kept: arq's docs give no other advice for throughput), which shows in its latency.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from benches.compare.common import SLEEP, SLEEP_S, Ctx, Failed, Peer, python_tool
from benches.compare.record import record


async def noop(ctx: dict[str, Any], i: int) -> None:
    record(i)


async def sleep(ctx: dict[str, Any], i: int, seconds: float) -> None:
    record(i)
    await asyncio.sleep(seconds)


def settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


class WorkerSettings:
    """The worker's settings (``arq benches.compare.peers.arq_peer.WorkerSettings``)."""

    functions = [noop, sleep]
    redis_settings = settings(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "10"))
    keep_result = 0
    handle_signals = True


class ArqRedis(Peer):
    library = "arq"
    store = "Redis"
    settings = "arq worker, max_jobs N, keep_result 0, default poll_delay 0.5 s; async jobs"

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(settings(ctx.redis_url)))

    def reset(self) -> None:
        self.stop()
        self.loop.run_until_complete(self.pool.flushall())

    def enqueue(self, ids: Iterable[int], *, batch: bool, kind: str) -> None:
        async def go() -> None:
            for i in ids:
                if kind == SLEEP:
                    job = await self.pool.enqueue_job("sleep", i, SLEEP_S)
                else:
                    job = await self.pool.enqueue_job("noop", i)
                if job is None:
                    raise Failed(f"arq refused job {i} (duplicate id)")

        self.loop.run_until_complete(go())

    def start(self, concurrency: int, kind: str) -> None:
        self.spawn(
            [python_tool("arq"), "benches.compare.peers.arq_peer.WorkerSettings"],
            BENCH_CONCURRENCY=str(concurrency),
        )

    def verify(self, n: int) -> None:
        left = self.loop.run_until_complete(self.pool.zcard("arq:queue"))
        if left:
            raise Failed(f"arq: {left} jobs still queued after the drain")

    def close(self) -> None:
        self.stop()
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()
