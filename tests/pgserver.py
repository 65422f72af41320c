"""The PostgreSQL server the tests use: `HAULER_TEST_POSTGRES_DSN`, started by `make test`.

Tests that need it are skipped only when ``HAULER_TEST_POSTGRES=skip`` is set explicitly;
without a DSN and without that opt-out they fail, saying how to start a server.
"""

from __future__ import annotations

import os
import uuid

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
