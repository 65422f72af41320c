"""hauler job groups: one job made of many tasks, with a concurrency limit and a callback.

Run it with ``python examples/groups.py``. It creates ``hauler-groups.db`` in the current
directory (delete it whenever you like), queues a group of thumbnail jobs of which at most
two run at once, follows the group's progress, and runs a ``Notify`` job once every
thumbnail is done; then it cancels a second group part-way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from hauler import GroupStatus, Job, WorkerConfig, create_server
from hauler.storage import SqliteStorage


@dataclass
class AppState:
    """Shared by every job the pool runs: thumbnails being made, and messages sent."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0
    most: int = 0
    sent: list[str] = field(default_factory=list)


class Thumbnail(Job[AppState]):
    """Make the thumbnail of one picture (here: wait a little)."""

    NAME = "thumbnail"
    picture: str

    def run(self, state: AppState) -> None:
        """Count this job as running while it works."""
        with state.lock:
            state.running += 1
            state.most = max(state.most, state.running)
        time.sleep(0.05)
        with state.lock:
            state.running -= 1


class Notify(Job[AppState]):
    """The group's callback: queued once, when every member is finished."""

    NAME = "notify"
    text: str

    def run(self, state: AppState) -> None:
        """Tell someone (here: keep the message)."""
        with state.lock:
            state.sent.append(self.text)


def main() -> None:
    """Run a group to the end, and cancel another one part-way."""
    handle = create_server(SqliteStorage("hauler-groups.db"))
    state = AppState()
    config = WorkerConfig(lambda: state).register(Thumbnail).register(Notify)
    worker = config.set_worker_count("default", 8).start(handle)

    pictures = [f"photo{i}.jpg" for i in range(10)]
    group_id = handle.queue_group(
        "thumbnails",
        [Thumbnail(picture=p) for p in pictures],
        concurrency=2,  # however many workers and processes: two at a time
        on_complete=Notify(text="10 thumbnails ready"),
    )
    while (info := handle.group(group_id)).status is GroupStatus.IN_PROGRESS:
        time.sleep(0.05)
    print(f"{info.name}: {info.status.value}, {info.done}/{info.total} done, {info.progress}%")
    print(f"at most {state.most} thumbnails at once")
    while handle.count(name="notify", status="completed") < 1:
        time.sleep(0.01)
    print(f"notified: {state.sent}")

    slow = handle.queue_group(
        "more", [Thumbnail(picture=f"more{i}.jpg") for i in range(20)], concurrency=1
    )
    counts = handle.cancel_group(slow)
    print(f"cancelled {counts.total} of 20")
    info = handle.group(slow)
    while info.status is GroupStatus.IN_PROGRESS:
        time.sleep(0.01)
        info = handle.group(slow)
    print(f"{info.name}: {info.status.value}")
    worker.stop(timeout=5)


if __name__ == "__main__":
    main()
