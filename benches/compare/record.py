"""How every job of every library proves it ran: a 16-byte record appended to a file.

A job calls :func:`record` with its number; the record holds the number and the
``CLOCK_MONOTONIC`` time it started (one clock for every process on the machine). Each
process appends to its own file in ``$BENCH_RECORD_DIR`` (``O_APPEND`` writes of 16 bytes
are atomic, so threads share the file). The harness counts records by file size while it
waits, then reads them all to check that every job ran exactly once and to compute rates
and latencies. Every library pays the same: one ``write(2)`` per job.

This module is imported by worker processes of every library: it imports nothing else of
the harness.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

RECORD = struct.Struct("<qq")
DIR_VAR = "BENCH_RECORD_DIR"

_fds: dict[int, int] = {}


def record(i: int) -> None:
    """Record that job ``i`` starts now."""
    pid = os.getpid()
    fd = _fds.get(pid)
    if fd is None:
        path = os.path.join(os.environ[DIR_VAR], f"{pid}.rec")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fds[pid] = fd
    os.write(fd, RECORD.pack(i, time.monotonic_ns()))


def count(directory: Path) -> int:
    """How many records the files in ``directory`` hold (complete ones only)."""
    total = 0
    for entry in os.scandir(directory):
        if entry.name.endswith(".rec"):
            total += entry.stat().st_size // RECORD.size
    return total


def read(directory: Path) -> list[tuple[int, int]]:
    """Every record: ``(job number, start time in ns)``."""
    out: list[tuple[int, int]] = []
    for path in sorted(directory.glob("*.rec")):
        data = path.read_bytes()
        usable = len(data) - len(data) % RECORD.size
        out.extend(RECORD.iter_unpack(data[:usable]))
    return out
