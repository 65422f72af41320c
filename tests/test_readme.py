"""The README's quick start is real code: run it and check what it prints."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_runs_and_completes_the_job(tmp_path: Path) -> None:
    quick_start = python_blocks()[0]
    assert "WorkerConfig" in quick_start and "queue(" in quick_start
    result = subprocess.run(
        [sys.executable, "-c", quick_start],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[my app] mail 'hi' to a@b.c", "completed"]


def test_readme_names_the_real_api() -> None:
    import hauler
    import hauler.storage

    text = README.read_text()
    for name in ("create_server", "WorkerConfig", "MaxRetries", "Backoff", "DEFAULT_QUEUE"):
        assert name in text and hasattr(hauler, name)
    for name in ("MemoryStorage", "SqliteStorage"):
        assert hasattr(hauler.storage, name)
    for method in ("queue", "queue_many", "schedule", "get", "list", "counts", "wait"):
        assert f".{method}(" in text
        assert callable(getattr(hauler.QueueHandle, method))
