import math
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from hauler.errors import ConfigError
from hauler.storage import (
    ENV_VAR,
    MemoryStorage,
    SqliteStorage,
    Storage,
    from_url,
    resolve_storage,
)

StorageT = TypeVar("StorageT", bound=Storage)


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Relative database paths land in a fresh directory; HAULER_STORAGE starts unset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    return tmp_path


@pytest.fixture
def opened() -> Iterator[list[Storage]]:
    """Collects storages to close after the test."""
    storages: list[Storage] = []
    yield storages
    for s in storages:
        s.close()


def keep(opened: list[Storage], storage: StorageT) -> StorageT:
    opened.append(storage)
    return storage


class TestMemoryStorage:
    def test_url_and_close(self) -> None:
        storage = MemoryStorage()
        assert storage.url == "memory://"
        assert not storage.closed
        assert repr(storage) == "<MemoryStorage memory://>"
        storage.close()
        assert storage.closed
        assert repr(storage) == "<MemoryStorage memory:// closed>"

    def test_context_manager(self) -> None:
        with MemoryStorage() as storage:
            assert isinstance(storage, MemoryStorage)
            assert not storage.closed
        assert storage.closed

    def test_base_class_is_abstract(self) -> None:
        with pytest.raises(TypeError):
            Storage(None)  # type: ignore[abstract,arg-type]


class TestSqliteStorage:
    def test_defaults(self, in_tmp_dir: Path, opened: list[Storage]) -> None:
        storage = keep(opened, SqliteStorage())
        assert isinstance(storage, SqliteStorage)
        assert storage.path == "hauler.db"
        assert storage.synchronous == "normal"
        assert storage.busy_timeout == 5.0
        assert storage.poll_interval == 0.1
        assert storage.url == "sqlite:///hauler.db"
        assert (in_tmp_dir / "hauler.db").exists()

    def test_options_appear_in_the_url(self, opened: list[Storage]) -> None:
        storage = keep(
            opened,
            SqliteStorage("jobs.db", synchronous="full", busy_timeout=2, poll_interval=0.05),
        )
        assert (
            storage.url == "sqlite:///jobs.db?synchronous=full&busy_timeout=2.0&poll_interval=0.05"
        )
        again = keep(opened, from_url(storage.url))
        assert isinstance(again, SqliteStorage)
        assert (again.path, again.synchronous, again.busy_timeout, again.poll_interval) == (
            "jobs.db",
            "full",
            2.0,
            0.05,
        )

    def test_absolute_and_pathlike(self, in_tmp_dir: Path, opened: list[Storage]) -> None:
        path = in_tmp_dir / "sub dir" / "a.db"
        path.parent.mkdir()
        storage = keep(opened, SqliteStorage(path))
        assert storage.path == str(path)
        assert storage.url == "sqlite:///" + str(path).replace(" ", "%20")
        assert storage.url.startswith("sqlite:////")
        assert path.exists()
        again = keep(opened, from_url(storage.url))
        assert isinstance(again, SqliteStorage) and again.path == str(path)

    def test_context_manager_closes(self) -> None:
        with SqliteStorage("ctx.db") as storage:
            assert not storage.closed
        assert storage.closed

    @pytest.mark.parametrize("bad", ["off", "FULL", "", None])
    def test_bad_synchronous(self, bad: object) -> None:
        with pytest.raises(
            ConfigError, match=f"synchronous must be 'normal' or 'full', got {bad!r}"
        ):
            SqliteStorage("x.db", synchronous=bad)  # type: ignore[arg-type]

    @pytest.mark.parametrize("option", ["busy_timeout", "poll_interval"])
    @pytest.mark.parametrize("bad", [0, -1, -0.5, math.nan, math.inf, "5", True, None])
    def test_bad_durations(self, option: str, bad: object) -> None:
        with pytest.raises(ConfigError) as info:
            SqliteStorage("x.db", **{option: bad})  # type: ignore[arg-type]
        assert option in str(info.value) and repr(bad) in str(info.value)

    def test_bad_path(self) -> None:
        with pytest.raises(ConfigError, match="path"):
            SqliteStorage("")
        with pytest.raises(ConfigError, match="MemoryStorage"):
            SqliteStorage(":memory:")

    def test_tiny_durations_round_up(self, opened: list[Storage]) -> None:
        storage = keep(opened, SqliteStorage("x.db", busy_timeout=1e-6, poll_interval=1e-6))
        assert storage.poll_interval == 1e-6


class TestFromUrl:
    def test_memory(self) -> None:
        storage = from_url("memory://")
        assert isinstance(storage, MemoryStorage)
        storage.close()

    def test_scheme_is_case_insensitive(self, opened: list[Storage]) -> None:
        assert isinstance(keep(opened, from_url("MEMORY://")), MemoryStorage)
        assert isinstance(keep(opened, from_url("SQLite:///x.db")), SqliteStorage)

    def test_relative_path(self, in_tmp_dir: Path, opened: list[Storage]) -> None:
        (in_tmp_dir / "data").mkdir()
        storage = keep(opened, from_url("sqlite:///data/jobs.db"))
        assert isinstance(storage, SqliteStorage)
        assert storage.path == "data/jobs.db"

    def test_absolute_path(self, in_tmp_dir: Path, opened: list[Storage]) -> None:
        url = f"sqlite:///{in_tmp_dir}/abs.db"
        assert url.startswith("sqlite:////")
        storage = keep(opened, from_url(url))
        assert isinstance(storage, SqliteStorage)
        assert storage.path == f"{in_tmp_dir}/abs.db"
        assert (in_tmp_dir / "abs.db").exists()

    def test_percent_encoded_path(self, in_tmp_dir: Path, opened: list[Storage]) -> None:
        storage = keep(opened, from_url("sqlite:///my%20jobs%23.db"))
        assert isinstance(storage, SqliteStorage)
        assert storage.path == "my jobs#.db"
        assert (in_tmp_dir / "my jobs#.db").exists()

    def test_query_options(self, opened: list[Storage]) -> None:
        storage = keep(
            opened, from_url("sqlite:///x.db?synchronous=full&busy_timeout=2&poll_interval=0.05")
        )
        assert isinstance(storage, SqliteStorage)
        assert storage.synchronous == "full"
        assert storage.busy_timeout == 2.0
        assert storage.poll_interval == 0.05

    def test_some_options(self, opened: list[Storage]) -> None:
        storage = keep(opened, from_url("sqlite:///x.db?busy_timeout=0.5"))
        assert isinstance(storage, SqliteStorage)
        assert (storage.synchronous, storage.busy_timeout, storage.poll_interval) == (
            "normal",
            0.5,
            0.1,
        )

    @pytest.mark.parametrize(
        ("url", "fragment"),
        [
            ("sqlite:///x.db?synchronous=off", "'off'"),
            ("sqlite:///x.db?busy_timeout=soon", "busy_timeout must be a number, got 'soon'"),
            ("sqlite:///x.db?poll_interval=0", "poll_interval must be a positive number"),
            ("sqlite:///x.db?busy_timeout=-1", "got -1.0"),
            ("sqlite:///x.db?busy_timeout=nan", "got nan"),
            ("sqlite:///x.db?timeout=1", "unknown option 'timeout'"),
            ("sqlite:///x.db?synchronous=full&synchronous=normal", "sets synchronous twice"),
            ("sqlite:///x.db?synchronous", "malformed query"),
            ("sqlite://", "no database path"),
            ("sqlite:///", "no database path"),
            ("sqlite://?synchronous=full", "no database path"),
            ("sqlite://localhost/x.db", "has a host ('localhost')"),
            ("sqlite:///x#y.db", "fragment"),
            ("memory://somewhere", "memory:// takes no path or options"),
            ("memory://?x=1", "memory:// takes no path or options"),
        ],
    )
    def test_bad_sqlite_and_memory_urls(self, url: str, fragment: str) -> None:
        with pytest.raises(ConfigError) as info:
            from_url(url)
        assert fragment in str(info.value)

    @pytest.mark.parametrize(
        ("url", "fragment"),
        [
            ("postgresql://localhost/jobs?pool_size=x", "pool_size must be an int"),
            ("postgresql://localhost/jobs?poll_interval=soon", "poll_interval must be a number"),
            ("postgresql://localhost/jobs?schema=Bad-Name", "schema"),
            ("postgresql://localhost/jobs?pool_size=0", "pool_size"),
        ],
    )
    def test_bad_postgres_options(self, url: str, fragment: str) -> None:
        with pytest.raises(ConfigError) as info:
            from_url(url)
        assert fragment in str(info.value)

    @pytest.mark.parametrize("url", ["redis://localhost:6379", "hauler.db", "", "file:///x.db"])
    def test_unknown_scheme_quotes_the_url_and_lists_accepted(self, url: str) -> None:
        with pytest.raises(ConfigError) as info:
            from_url(url)
        msg = str(info.value)
        assert repr(url) in msg
        assert "memory://" in msg and "sqlite:///relative/path.db" in msg
        assert "sqlite:////absolute/path.db" in msg

    def test_password_is_not_quoted(self) -> None:
        with pytest.raises(ConfigError) as info:
            from_url("redis://user:hunter2@localhost")
        assert "hunter2" not in str(info.value)
        assert "redis://user:***@localhost" in str(info.value)

    def test_not_a_str(self) -> None:
        with pytest.raises(ConfigError, match="must be a str"):
            from_url(None)  # type: ignore[arg-type]


class TestResolveStorage:
    def test_a_storage_passes_through(self) -> None:
        with MemoryStorage() as storage:
            assert resolve_storage(storage) is storage
            assert resolve_storage(storage)._native is storage._native

    def test_a_str_is_a_url(self, opened: list[Storage]) -> None:
        storage = keep(opened, resolve_storage("sqlite:///r.db?synchronous=full"))
        assert isinstance(storage, SqliteStorage) and storage.synchronous == "full"

    def test_none_reads_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, opened: list[Storage]
    ) -> None:
        monkeypatch.setenv("HAULER_STORAGE", "memory://")
        assert isinstance(keep(opened, resolve_storage(None)), MemoryStorage)
        monkeypatch.setenv("HAULER_STORAGE", "sqlite:///env.db?poll_interval=0.5")
        storage = keep(opened, resolve_storage())
        assert isinstance(storage, SqliteStorage)
        assert (storage.path, storage.poll_interval) == ("env.db", 0.5)

    def test_bad_environment_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HAULER_STORAGE", "mysql://db/jobs")
        with pytest.raises(ConfigError, match="mysql://db/jobs"):
            resolve_storage(None)

    @pytest.mark.parametrize("env", [None, ""])
    def test_default_is_sqlite_in_the_working_directory(
        self,
        env: str | None,
        in_tmp_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
        opened: list[Storage],
    ) -> None:
        if env is not None:
            monkeypatch.setenv("HAULER_STORAGE", env)
        storage = keep(opened, resolve_storage(None))
        assert isinstance(storage, SqliteStorage)
        assert storage.path == "hauler.db"
        assert (in_tmp_dir / "hauler.db").exists()

    def test_other_types_are_refused(self) -> None:
        with pytest.raises(ConfigError, match="got int"):
            resolve_storage(5)  # type: ignore[arg-type]
