"""The PostgreSQL server the tests use: `HAULER_TEST_POSTGRES_DSN`, started by `make test`.

Tests that need it are skipped only when ``HAULER_TEST_POSTGRES=skip`` is set explicitly;
without a DSN and without that opt-out they fail, saying how to start a server.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

DSN_VAR = "HAULER_TEST_POSTGRES_DSN"


def dsn() -> str:
    """The test server's DSN; skip or fail the calling test when there is none."""
    value = os.environ.get(DSN_VAR)
    if value:
        return value
    if os.environ.get("HAULER_TEST_POSTGRES") == "skip":
        pytest.skip("PostgreSQL tests skipped: HAULER_TEST_POSTGRES=skip")
    pytest.fail(
        f"{DSN_VAR} is not set. Start a throwaway server with "
        '`eval "$(bash .ci/postgres.sh start)"` (make test does it for you), '
        "or set HAULER_TEST_POSTGRES=skip to skip the PostgreSQL tests."
    )


def fresh_schema() -> str:
    """A new schema name, so tests never see each other's jobs."""
    return f"t_{uuid.uuid4().hex[:16]}"


def drop_schema(schema: str) -> None:
    """Drop a test schema and everything in it."""
    import psycopg

    with psycopg.connect(dsn(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class PrivateServer:
    """A PostgreSQL cluster of the test's own, for tests that stop or restart the server
    (never the shared one): initdb in a temporary directory, loopback only, on a free port.

    Needs the server binaries (``PG_BINDIR``, or Debian's ``/usr/lib/postgresql/*/bin``);
    as root, it runs them as the ``postgres`` user. Skips the test where they are missing.
    """

    def __init__(self) -> None:
        self.bindir = _server_bindir()
        # Not under pytest's tmp_path: the ``postgres`` user must be able to reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="hauler-pg-private."))
        self.data = self.dir / "data"
        self.port = _free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.dir}'\nfsync = off\n"
                "synchronous_commit = off\nmax_connections = 50\n"
            )
        self.start()

    @property
    def dsn(self) -> str:
        """The cluster's DSN (the ``postgres`` database, trust auth)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        log = str(self.dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server (fast: open connections are cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        """Stop the server if it runs (immediately) and delete its files."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.dir)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")


def _server_bindir() -> Path:
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if all((path / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    pytest.skip("no PostgreSQL server binaries (set PG_BINDIR) for a private cluster")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
