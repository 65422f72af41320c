"""Carry the engine's log records to :mod:`logging`.

The Rust engine queues its records (it never takes the GIL to log); one daemon thread
started here drains the queue and logs each record under ``hauler.engine.*`` (hauler's
own) or ``hauler.deps.*`` (the database drivers', warnings and errors only). Configure
them like any logger, e.g. ``logging.getLogger("hauler").setLevel(logging.WARNING)``.
"""

import atexit
import logging
import threading

from hauler import _native
from hauler._signals import block_async_signals

_lock = threading.Lock()
_stop = threading.Event()
_thread: threading.Thread | None = None
_log = logging.getLogger("hauler.engine")


def _pump() -> None:
    block_async_signals()
    while not _stop.is_set():
        records, dropped = _native.take_log_records(0.1)
        for level, name, message in records:
            logging.getLogger(name).log(level, "%s", message)
        if dropped:
            _log.warning("%d engine log records were dropped (logging fell behind)", dropped)


def start() -> None:
    """Start the pump thread once per process (again in a forked child)."""
    global _thread
    with _lock:
        if _thread is not None and _thread.is_alive():
            return
        _stop.clear()
        _thread = threading.Thread(target=_pump, name="hauler-logs", daemon=True)
        _thread.start()


def stop() -> None:
    """Deliver what is queued and stop the thread (at exit, before finalization).

    It must not be left inside the engine when the interpreter finalizes.
    """
    with _lock:
        thread = _thread
    if thread is None:
        return
    _stop.set()
    thread.join(timeout=5)
    records, _ = _native.take_log_records(0)
    for level, name, message in records:
        logging.getLogger(name).log(level, "%s", message)


atexit.register(stop)
