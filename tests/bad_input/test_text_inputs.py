"""Arbitrary text as a job name, a queue name or a storage URL never crashes hauler.

Each call either works (and then the text comes back unchanged) or raises a ``HaulerError``
subclass or ``ValueError``; any other exception, or a crash of the interpreter, fails.
PostgreSQL URLs are left out here: they would open network connections.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from conftest import WAIT
from hauler import ConfigError, HaulerError, Job, JobStatus, WorkerConfig, create_server
from hauler.storage import ENV_VAR, MemoryStorage, SqliteStorage, Storage, from_url, resolve_storage

ALLOWED = (HaulerError, ValueError)

names = st.text() | st.text(alphabet=st.characters(categories=["Cs", "Cc", "Zs"]))


def job_class(name: Any = "text_job", queue: Any = "default") -> type[Job[None]]:
    def run(self: Any, state: None) -> None:
        pass

    return type("TextJob", (Job,), {"NAME": name, "QUEUE": queue, "run": run})


@given(name=names)
def test_any_job_name(storage: Storage, name: str) -> None:
    handle = create_server(storage)
    before = handle.counts()
    try:
        job_id = handle.queue(job_class(name=name)())
    except ALLOWED:
        assert handle.counts() == before
        return
    info = handle.get(job_id)
    assert (info.name, info.status) == (name, JobStatus.AVAILABLE)
    # Hypothesis may generate a name twice against the same storage: one job per example.
    found = handle.list(name=name, limit=1000).jobs
    assert job_id in [j.id for j in found] and {j.name for j in found} == {name}


@given(queue=names)
def test_any_queue_name(storage: Storage, queue: str) -> None:
    handle = create_server(storage)
    cls = job_class(queue=queue)
    try:
        job_id = handle.queue(cls())
    except ALLOWED:
        return
    assert handle.get(job_id).queue == queue
    assert handle.counts()[queue]["available"] >= 1
    try:
        WorkerConfig().register(cls).set_worker_count(queue, 1)
    except ALLOWED:  # pragma: no cover - a queue that stored must be configurable
        pytest.fail(f"queue {queue!r} was stored but cannot be given a worker count")


@pytest.mark.parametrize("text", ["名前", " ", "\n", "x" * 10_000, "🙂", "\u200b"])
def test_odd_names_run_end_to_end(storage: Storage, text: str) -> None:
    """A job whose NAME and QUEUE are odd text is claimed and run by a worker."""
    cls = job_class(name=text, queue=text)
    with WorkerConfig(storage=storage).register(cls).set_worker_count(text, 1).start() as w:
        (info,) = w.wait([w.queue(cls())], timeout=WAIT)
    assert (info.name, info.queue, info.status) == (text, text, JobStatus.COMPLETED)


@given(
    name=st.text(alphabet=st.characters(categories=["Cs"]), min_size=1)
    | st.text().map(lambda t: f"{t}\x00{t}")
)
def test_surrogate_and_nul_names_are_refused(storage: Storage, name: str) -> None:
    handle = create_server(storage)
    with pytest.raises(ConfigError, match="NAME must be valid Unicode text"):
        handle.queue(job_class(name=name)())
    with pytest.raises(ConfigError, match="QUEUE must be valid Unicode text"):
        handle.queue(job_class(queue=name)())
    with pytest.raises(ConfigError, match="queue must be valid Unicode text"):
        WorkerConfig().set_worker_count(name, 1)
    if "\x00" not in name:  # a NUL name simply matches nothing (or is refused)
        with pytest.raises(ALLOWED):
            handle.list(name=name)
    assert handle.counts() == {}


def relative(path: str) -> bool:
    """Whether a storage opened at ``path`` stays inside the working directory."""
    parts = path.replace("\\", "/").split("/")
    return not path.startswith(("/", "~")) and ".." not in parts


urls = st.one_of(
    st.text(),
    st.builds(
        str.__add__,
        st.sampled_from(
            ["memory:", "memory://", "MEMORY://", "sqlite:", "sqlite://", "sqlite:///"]
        ),
        st.text(),
    ),
    st.builds(
        lambda path, query: f"sqlite:///{path}.db?{query}",
        st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=8),
        st.text(),
    ),
)


def open_storage(open_: Any, text: str) -> None:
    try:
        storage = open_(text)
    except ALLOWED:
        return
    assert isinstance(storage, Storage)
    storage.close()


@given(url=urls)
def test_any_storage_url(tmp_path: Path, url: str) -> None:
    # A sqlite URL with an absolute path could create files anywhere: keep them local.
    if url.lower().startswith("sqlite:"):
        assume(relative(url.split(":", 1)[1].removeprefix("///")))
    assert Path.cwd() == tmp_path
    open_storage(from_url, url)
    open_storage(lambda u: create_server(u).storage, url)


@given(path=st.text())
def test_any_sqlite_path(tmp_path: Path, path: str) -> None:
    assume(relative(path))
    open_storage(SqliteStorage, path)


@given(url=urls)
def test_any_url_in_the_environment(url: str) -> None:
    if url.lower().startswith("sqlite:"):
        assume(relative(url.split(":", 1)[1].removeprefix("///")))
    assume("\x00" not in url)  # the environment cannot hold NUL
    os.environ[ENV_VAR] = url
    try:
        open_storage(lambda _: resolve_storage(None), url)
    finally:
        del os.environ[ENV_VAR]


def test_memory_url_gives_memory_storage() -> None:
    assert isinstance(from_url("memory://"), MemoryStorage)
