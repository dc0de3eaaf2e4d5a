"""Helpers the tests share: the repository root, `orchestrate` in a subprocess, and
checks on processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# NOTE: lets `pytest` import the package from a checkout that was never installed; a
# `pythonpath = ["."]` in pyproject's pytest settings would do the same.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Small enough for a 2-core machine: one epoch is about a second on one thread.
REAL_FLAGS = ("--train-limit", "1000", "--val-fraction", "0.02", "--threads", "1")


def run_orchestrate(
    args: Sequence[str], *, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m orchestrator ARGS` as a user would, from `cwd`."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def process_gone(pid: int, within: float = 5.0) -> bool:
    """True once `pid` has exited (a zombie waiting for its reaper counts as exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def fake_data(folder: Path) -> Path:
    """A data folder that passes tune's check before the first trial (the file the trainer
    reads first, empty); fake trainers read nothing from it."""
    (folder / "mnist").mkdir(parents=True, exist_ok=True)
    (folder / "mnist" / "train-images-idx3-ubyte").touch()
    return folder
