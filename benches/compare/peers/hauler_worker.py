"""A hauler worker process, as an application would run one next to its producers.

    python -m benches.compare.peers.hauler_worker sqlite-normal|sqlite-full PATH N
    python -m benches.compare.peers.hauler_worker postgres SCHEMA N    # DSN: $BENCH_PG_DSN

Runs N workers on the storage until SIGTERM (hauler's graceful stop).
"""

from __future__ import annotations

import os
import sys

from benches.compare.peers.hauler_peer import Noop, Sleep
from hauler import WorkerConfig
from hauler.storage import PostgresStorage, SqliteStorage, Storage


def main() -> None:
    kind, where, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    storage: Storage
    if kind == "postgres":
        storage = PostgresStorage(os.environ["BENCH_PG_DSN"], schema=where)
    else:
        storage = SqliteStorage(where, synchronous=kind.removeprefix("sqlite-"))  # type: ignore[arg-type]
    worker = (
        WorkerConfig[None](None, storage=storage)
        .register(Noop)
        .register(Sleep)
        .set_worker_count("default", count)
        .start()
    )
    worker.join()
    storage.close()


if __name__ == "__main__":
    main()
