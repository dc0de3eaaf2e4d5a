from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, run_orchestrate

from orchestrator import build
from orchestrator.errors import BuildFailed


def test_the_repo_root_is_this_checkout() -> None:
    # The package finds its checkout from its own location, whatever the current folder.
    assert build.repo_root() == REPO


def test_the_build_environment_points_libtorch_at_this_python() -> None:
    env = build.build_env()

    # libtorch comes from this interpreter's torch, found first on PATH.
    assert env["LIBTORCH_USE_PYTORCH"] == "1"
    assert env["VIRTUAL_ENV"] == sys.prefix
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_build_runs_cargo_in_the_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append({"command": command, **kwargs})
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(shutil, "which", lambda _: sys.executable)
    monkeypatch.setenv("CARGO_TARGET_DIR", str(tmp_path))
    # This fake build must not replace the real installed trainer.
    monkeypatch.setattr(build, "installed_copy", lambda: tmp_path / "bin" / "rust-trainer")
    binary = tmp_path / "release" / "rust-trainer"
    binary.parent.mkdir()
    binary.touch()

    # The release binary's path comes back (CARGO_TARGET_DIR is honoured).
    assert build.build_trainer("release") == binary
    # cargo builds the trainer's package in release mode from the repository root.
    assert calls[0]["command"][1:] == ["build", "--release", "-p", "rust-trainer"]
    assert calls[0]["cwd"] == REPO
    assert calls[0]["env"]["LIBTORCH_USE_PYTORCH"] == "1"
    # cargo's stdout goes to stderr: stdout carries only the path.
    assert calls[0]["stdout"] is sys.stderr


def test_a_failed_cargo_build_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: sys.executable)
    monkeypatch.setattr(
        subprocess, "run", lambda command, **_: subprocess.CompletedProcess(command, 101)
    )

    # The exit code of cargo is in the message.
    with pytest.raises(BuildFailed, match="exit code 101"):
        build.build_trainer("debug")


@pytest.mark.real
@pytest.mark.timeout(3600)
def test_orchestrate_build_prints_the_binary(real_trainer: Path) -> None:
    # With the trainer already built this is cargo's quick up-to-date check.
    completed = run_orchestrate(["build"], cwd=REPO, timeout=3600)

    # Exit 0, and stdout is exactly the path of the binary.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout == f"{real_trainer}\n"


def test_a_release_build_refreshes_the_installed_copy(tmp_path: Path) -> None:
    built = tmp_path / "target" / "rust-trainer"
    built.parent.mkdir()
    built.write_bytes(b"new build")
    installed = tmp_path / "bin" / "rust-trainer"
    installed.parent.mkdir()
    installed.write_bytes(b"old copy")

    # The installed copy now holds the new build, and no staging file is left behind.
    assert build.refresh_installed_copy(built, installed)
    assert installed.read_bytes() == b"new build"
    assert sorted(p.name for p in installed.parent.iterdir()) == ["rust-trainer"]


def test_no_installed_copy_is_created_where_there_was_none(tmp_path: Path) -> None:
    built = tmp_path / "rust-trainer"
    built.write_bytes(b"new build")
    installed = tmp_path / "bin" / "rust-trainer"

    # Installing is pip's job: without a copy there is nothing to refresh.
    assert not build.refresh_installed_copy(built, installed)
    assert not installed.exists()
