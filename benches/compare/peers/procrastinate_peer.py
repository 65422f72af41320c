"""procrastinate on PostgreSQL: ``procrastinate worker`` (one asyncio process, concurrency
N, LISTEN/NOTIFY), a fresh database per run. Batch enqueue: ``Task.batch_defer``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterable

import procrastinate
import psycopg
from procrastinate.types import JSONValue
from psycopg import sql
from psycopg.conninfo import make_conninfo

from benches.compare.common import SLEEP, SLEEP_S, Ctx, Failed, Peer, chunks, python_tool
from benches.compare.record import record

logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)


def noop(i: int) -> None:
    record(i)


async def sleep(i: int, seconds: float) -> None:
    record(i)
    await asyncio.sleep(seconds)


def make_app(dsn: str) -> procrastinate.App:
    """An app on ``dsn`` with the two jobs."""
    new = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    new.task(name="compare.noop", queue="default")(noop)
    new.task(name="compare.sleep", queue="default")(sleep)
    return new


# The worker processes' app (`procrastinate --app benches.compare.peers.procrastinate_peer.app`).
app = make_app(os.environ.get("BENCH_PROCRASTINATE_DSN", "postgresql://localhost/postgres"))


class ProcrastinatePostgres(Peer):
    library = "procrastinate"
    store = "PostgreSQL"
    has_batch = True
    settings = "procrastinate worker -c N (asyncio, LISTEN/NOTIFY); batch = batch_defer"

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.databases: list[str] = []
        self.dsn = ""
        self.app: procrastinate.App | None = None

    def reset(self) -> None:
        self.stop()
        if self.app is not None:
            self.app.close()
        database = f"compare_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.ctx.pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        self.databases.append(database)
        self.dsn = make_conninfo(self.ctx.pg_dsn, dbname=database)
        self.app = make_app(self.dsn)
        self.app.open()
        self.app.schema_manager.apply_schema()

    def enqueue(self, ids: Iterable[int], *, batch: bool, kind: str) -> None:
        assert self.app is not None
        task = self.app.tasks["compare.sleep" if kind == SLEEP else "compare.noop"]
        extra: dict[str, JSONValue] = {"seconds": SLEEP_S} if kind == SLEEP else {}
        if batch:
            for chunk in chunks(ids):
                task.batch_defer(*({"i": i, **extra} for i in chunk))
        else:
            for i in ids:
                task.defer(i=i, **extra)

    def start(self, concurrency: int, kind: str) -> None:
        self.spawn(
            [
                python_tool("procrastinate"),
                "--app", "benches.compare.peers.procrastinate_peer.app",
                "worker",
                "-c", str(concurrency),
                "-q", "default",
            ],
            BENCH_PROCRASTINATE_DSN=self.dsn,
        )  # fmt: skip

    def verify(self, n: int) -> None:
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT status::text, count(*) FROM procrastinate_jobs WHERE id > 0 GROUP BY 1"
            ).fetchall()
        statuses = {str(s): int(c) for s, c in rows}
        if statuses != {"succeeded": n}:
            raise Failed(f"procrastinate: job statuses {statuses}, expected {n} succeeded")

    def close(self) -> None:
        self.stop()
        if self.app is not None:
            self.app.close()
        with psycopg.connect(self.ctx.pg_dsn, autocommit=True) as conn:
            for database in self.databases:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(database)
                    )
                )
