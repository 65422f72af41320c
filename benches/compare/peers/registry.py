"""Every peer the harness knows, by key: ``python -m benches.compare.one KEY ...``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping

from benches.compare.common import Ctx, Peer

# key -> (module, class); imported only when used, so a broken peer fails alone.
_PEERS: dict[str, tuple[str, str]] = {
    "hauler-memory": ("hauler_peer", "HaulerMemory"),
    "hauler-sqlite-normal": ("hauler_peer", "HaulerSqliteNormal"),
    "hauler-sqlite-full": ("hauler_peer", "HaulerSqliteFull"),
    "hauler-postgres": ("hauler_peer", "HaulerPostgres"),
    "hauler-sqlite-normal-process": ("hauler_peer", "HaulerSqliteNormalProcess"),
    "hauler-postgres-process": ("hauler_peer", "HaulerPostgresProcess"),
    "huey-memory": ("huey_peer", "HueyMemory"),
    "huey-sqlite": ("huey_peer", "HueySqlite"),
    "huey-redis": ("huey_peer", "HueyRedis"),
    "celery-redis": ("celery_peer", "CeleryRedis"),
    "rq-redis": ("rq_peer", "RqRedis"),
    "dramatiq-redis": ("dramatiq_peer", "DramatiqRedis"),
    "procrastinate-postgres": ("procrastinate_peer", "ProcrastinatePostgres"),
    "arq-redis": ("arq_peer", "ArqRedis"),
    "taskiq-redis": ("taskiq_peer", "TaskiqRedis"),
}


def load(key: str) -> type[Peer]:
    module, name = _PEERS[key]
    cls: type[Peer] = getattr(importlib.import_module(f"benches.compare.peers.{module}"), name)
    return cls


class _Lazy(Mapping[str, Callable[[Ctx], Peer]]):
    def __getitem__(self, key: str) -> Callable[[Ctx], Peer]:
        return load(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_PEERS)

    def __len__(self) -> int:
        return len(_PEERS)


PEERS: Mapping[str, Callable[[Ctx], Peer]] = _Lazy()
KEYS = list(_PEERS)
