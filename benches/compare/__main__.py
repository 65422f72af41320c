"""``python -m benches.compare``: set up the bench virtualenv, then run the comparison in it.

Only the standard library is imported here: this part runs under whatever Python started
it, makes (or updates) ``.hauler-bench/venv``, builds hauler from this tree into it and
re-runs the command with that interpreter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "benches" / "compare"
WORK = REPO / ".hauler-bench"
VENV = WORK / "venv"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = HERE / "requirements.txt"
READY = "BENCH_VENV_READY"


def say(message: str) -> None:
    print(f"compare: {message}", file=sys.stderr, flush=True)


def run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, cwd=REPO, stdout=sys.stderr)


def ensure_venv() -> None:
    """Create the virtualenv and install the pinned peers when the pins changed."""
    if not PYTHON.exists():
        say(f"creating {VENV.relative_to(REPO)}")
        run(sys.executable, "-m", "venv", VENV)
        run(PYTHON, "-m", "pip", "install", "-q", "--upgrade", "pip")
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        say("installing the pinned peers (benches/compare/requirements.txt)")
        run(PYTHON, "-m", "pip", "install", "-q", "-r", REQUIREMENTS)
        stamp.write_text(digest)


def build_hauler() -> None:
    """Build hauler's release wheel from this tree and install it into the virtualenv."""
    wheels = WORK / "wheels"
    for old in wheels.glob("hauler-*.whl"):
        old.unlink()
    # A target directory of its own: sharing target/ with `make dev` (other features and
    # flags) would rebuild pyo3 and the engine from scratch on every switch.
    say("building hauler (maturin build --release; first time: several minutes)")
    env = dict(os.environ, CARGO_TARGET_DIR=str(WORK / "target"))
    subprocess.run(
        [
            str(VENV / "bin" / "maturin"),
            "build",
            "--release",
            "--out",
            str(wheels),
            "-i",
            str(PYTHON),
        ],
        check=True,
        cwd=REPO,
        stdout=sys.stderr,
        env=env,
    )
    (wheel,) = wheels.glob("hauler-*.whl")
    run(PYTHON, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", wheel)


def main() -> None:
    args = sys.argv[1:]
    if os.environ.get(READY) != "1":
        ensure_venv()
        if "--no-build" not in args and not {"-h", "--help"} & set(args):
            build_hauler()
        env = dict(os.environ, **{READY: "1"})
        env.pop("PYTHONPATH", None)
        os.chdir(REPO)
        os.execve(PYTHON, [str(PYTHON), "-m", "benches.compare", *args], env)

    from benches.compare import harness

    harness.main(args)


if __name__ == "__main__":
    main()
