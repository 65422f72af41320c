"""The Redis and PostgreSQL servers of a comparison run: private, on loopback, temporary.

Redis: ``redis-server`` (Debian's ``redis-server`` package, installed when missing) on a
free loopback port, in a temporary directory, persistence off (no RDB snapshots, no AOF),
stopped and deleted afterwards.

PostgreSQL: ``.ci/postgres.sh`` with a free ``HAULER_PG_PORT`` and its own
``HAULER_PG_STATE_DIR`` (under ``.hauler-bench/``), so it never touches the test cluster on
port 54329. That script's cluster is tuned for tests: ``fsync=off``,
``synchronous_commit=off``, ``full_page_writes=off`` -- the same for every PostgreSQL peer.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benches.compare.common import REPO

PG_STATE_DIR = REPO / ".hauler-bench" / "postgres"


def say(message: str) -> None:
    print(f"compare: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def apt_install(package: str) -> None:
    say(f"installing Debian's {package} package")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, check=True, stdout=sys.stderr)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", package],
        env=env,
        check=True,
        stdout=sys.stderr,
    )


class Redis:
    """A private redis-server; ``url`` once started."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hauler-bench-redis."))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.version = ""

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            apt_install("redis-server")
            binary = shutil.which("redis-server")
            if binary is None:
                raise RuntimeError("installed redis-server but it is not on PATH")
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        self.version = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
        port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "yes",
                "--maxclients", "2000",
            ],
            stdout=(self.dir / "redis.log").open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{port}/0"
        say(f"redis-server {self.version} on {self.url} (pid {self.proc.pid})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    """A private cluster made by ``.ci/postgres.sh`` with its own port and state directory."""

    def __init__(self) -> None:
        self.dsn = ""
        self.version = ""
        self.env = dict(
            os.environ,
            HAULER_PG_PORT=str(free_port()),
            HAULER_PG_STATE_DIR=str(PG_STATE_DIR),
        )

    def _script(self, command: str) -> str:
        # Never without our own state dir: the default one is the shared test cluster.
        assert self.env["HAULER_PG_STATE_DIR"] == str(PG_STATE_DIR)
        done = subprocess.run(
            ["bash", str(REPO / ".ci" / "postgres.sh"), command],
            env=self.env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        return done.stdout

    def start(self) -> None:
        out = self._script("start")
        for line in out.splitlines():
            if line.startswith("export HAULER_TEST_POSTGRES_DSN="):
                self.dsn = line.split("=", 1)[1].strip()
        if not self.dsn:
            raise RuntimeError(f".ci/postgres.sh start printed no DSN: {out!r}")
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            self.version = str(row[0]) if row else "?"
        say(f"PostgreSQL {self.version} on {self.dsn}")

    def stop(self) -> None:
        self._script("stop")
