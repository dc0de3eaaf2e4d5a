"""Helpers the tests share: the repository root, `orchestrate` in a subprocess, and
checks on processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# NOTE: lets `pytest` import the package from a checkout that was never installed; a
# `pythonpath = ["."]` in pyproject's pytest settings would do the same.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Small enough for a 2-core machine: one epoch is about a second on one thread.
REAL_FLAGS = ("--train-limit", "1000", "--val-fraction", "0.02", "--threads", "1")


# Every process a test starts inherits this variable, so the process table tells which
# trainers are the test's: `marked_processes` finds them, wherever they were reparented.
MARKER_ENV = "ORCHESTRATE_TEST_MARKER"


def orchestrate_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `orchestrate` runs with in a subprocess: ours, plus `env`."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    return full_env


def run_orchestrate(
    args: Sequence[str], *, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m orchestrator ARGS` as a user would, from `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=orchestrate_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_orchestrate(
    args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Starts `python -m orchestrator ARGS` in the background, with SIGINT and SIGHUP
    handled as in a terminal (a background job of a shell starts with SIGINT ignored, one
    under nohup with SIGHUP ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=orchestrate_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )


def _default_signals() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def marked_processes(marker: str) -> list[tuple[int, list[str]]]:
    """The live processes (zombies left out) whose environment holds MARKER_ENV=marker,
    with their command lines."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state not in ("Z", "X"):
            found.append((int(entry.name), [a.decode(errors="replace") for a in argv if a]))
    return found


def trainer_processes(marker: str) -> list[int]:
    """The test's trainer processes now training: rust-trainer itself, or a script standing
    in for it (a fake or a wrapper: `python .../fake-trainer train ...`); `describe` and
    `info` do not count."""
    return [pid for pid, argv in marked_processes(marker) if _is_trainer(argv)]


def _is_trainer(argv: list[str]) -> bool:
    if "train" not in argv:
        return False
    return Path(argv[0]).name == "rust-trainer" or (
        len(argv) > 1 and "trainer" in Path(argv[1]).name
    )


def wait_until(check: Callable[[], bool], within: float, every: float = 0.05) -> bool:
    """True as soon as `check()` is, False if it is still false after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


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
