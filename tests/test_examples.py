"""The examples run as documented: each in a fresh directory, in its own process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run examples/<name>.py in ``cwd``; fail the test unless it exits 0."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_quickstart(tmp_path: Path) -> None:
    done = run_example("quickstart", tmp_path)
    out = done.stdout
    assert "queued 10 jobs into hauler-quickstart.db" in out
    results = re.findall(r"^[0-9a-f-]{36}  (\w+)\s+attempts=(\d+)  (\S+)", out, re.MULTILINE)
    assert len(results) == 10, out
    assert {status for status, _, _ in results} == {"completed"}
    attempts = {to: int(n) for _, n, to in results}
    assert attempts.pop("flaky@example.com") == 2  # failed once, retried
    assert set(attempts.values()) == {1}
    assert "later@example.com" in attempts  # the scheduled one
    assert "counts: {'default': {'completed': 10}}" in out
    assert (tmp_path / "hauler-quickstart.db").exists()


def test_admin(tmp_path: Path) -> None:
    done = run_example("admin", tmp_path)
    assert done.stdout.splitlines() == [
        "broken: failed (database timeout)",
        "cancel nightly: cancelled",
        "cancel huge: requested",
        "export 'huge' stopped early",
        "huge: cancelled",
        "retry broken: True",
        "export 'broken': 10 rows",
        "broken: completed; history: failed, retried, completed",
        "cancelled jobs: 2",
        "found by text: ['nightly']",
        "deleted cancelled: 2",
        "pruned completed: 1",
        "left: 0",
    ]


def test_cron(tmp_path: Path) -> None:
    done = run_example("cron", tmp_path)
    assert done.stdout.splitlines() == [
        "schedule nightly: 30 2 * * mon-fri, job report",
        "schedule ping: * * * * * *, job ping",
        "schedule ping-every: 0:00:01, job ping",
        "report: done",
        "unschedule ping-every: True",
        "unschedule ping-every again: False",
        "pings queued: at least 3; from ['cron', 'every']",
    ]


def test_context(tmp_path: Path) -> None:
    done = run_example("context", tmp_path)
    out = re.sub(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "<id>", done.stdout)
    assert out.splitlines() == [
        "import #1: [import <id> attempt 1] importing orders.csv",
        "import #2: [import <id> attempt 2] importing orders.csv",
        "import #2: [import <id> attempt 2] not uploaded yet, snoozing",
        "import #2: [import <id> attempt 2] importing orders.csv",
        "import #2: [import <id> attempt 2] done",
        "import: completed after 2 attempts",
        "history: 1 failed, 2 snoozed, 2 completed",
    ]


def test_versions_and_hooks(tmp_path: Path) -> None:
    done = run_example("versions_and_hooks", tmp_path)
    assert done.stdout.splitlines() == [
        "send_email VERSION 1: completed after 1 attempt(s); hooks: on_start x1, on_success x1",
        "digest VERSION 1: failed after 1 attempt(s); hooks: on_failure x1",
        "send_email VERSION 2: completed after 2 attempt(s); hooks: on_enqueue x1, on_start x2, "
        "on_retry x1, on_success x1",
        "digest VERSION 2: completed after 1 attempt(s); hooks: on_enqueue x1, on_start x1, "
        "on_success x1",
        "alert: digest failed for good: job 'digest' was stored with VERSION 1, older than "
        "Digest.MIN_SUPPORTED_VERSION (2), and Digest defines no migrate(); it was not run",
    ]


def test_unique(tmp_path: Path) -> None:
    done = run_example("unique", tmp_path)
    assert done.stdout.splitlines() == [
        "SyncAccount(7): stored=True",
        "SyncAccount(7) again: duplicate=True, same job: True",
        "all completed: True",
        "syncs overlapped: False",
        "never more than two thumbnails at once: True",
    ]


def test_groups(tmp_path: Path) -> None:
    done = run_example("groups", tmp_path)
    assert done.stdout.splitlines() == [
        "thumbnails: done, 10/10 done, 100%",
        "at most 2 thumbnails at once",
        "notified: ['10 thumbnails ready']",
        "cancelled 20 of 20",
        "more: cancelled",
    ]
