from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from orchestrator import build, trainer
from orchestrator.errors import NotACheckout, TrainerNotFound
from orchestrator.trainer import find_trainer, trainer_info


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No trainer anywhere: no variable, an empty PATH, a Python in an empty folder, and no
    checkout build."""
    monkeypatch.delenv("RUST_TRAINER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setattr(trainer, "repo_root", lambda: tmp_path / "checkout")
    monkeypatch.delenv("CARGO_TARGET_DIR", raising=False)
    return tmp_path


def test_an_explicit_path_wins_and_is_made_absolute(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = executable(nowhere / "bin" / "rust-trainer")
    executable(nowhere / "venv" / "bin" / "rust-trainer")
    monkeypatch.chdir(nowhere)

    # --trainer comes first, even over an installed binary, and a relative path is resolved.
    assert find_trainer(Path("bin/rust-trainer")) == binary


def test_the_variable_comes_before_the_installed_binary(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = executable(nowhere / "from-env" / "rust-trainer")
    executable(nowhere / "venv" / "bin" / "rust-trainer")
    monkeypatch.setenv("RUST_TRAINER", str(binary))

    # RUST_TRAINER is second in line.
    assert find_trainer() == binary


def test_the_installed_binary_beside_python_comes_before_the_build(nowhere: Path) -> None:
    installed = executable(nowhere / "venv" / "bin" / "rust-trainer")
    executable(nowhere / "checkout" / "target" / "release" / "rust-trainer")

    # `pip install .` puts the binary beside the interpreter; it beats the checkout's build.
    assert find_trainer() == installed


def test_the_checkout_build_is_the_last_resort(nowhere: Path) -> None:
    built = executable(nowhere / "checkout" / "target" / "release" / "rust-trainer")

    # With nothing else, target/release of the checkout is used.
    assert find_trainer() == built


def test_no_trainer_says_how_to_build_one(nowhere: Path) -> None:
    # The error says where it looked and what to run.
    with pytest.raises(TrainerNotFound, match=r"orchestrate build.*pip install"):
        find_trainer()


@pytest.mark.parametrize("how", ["option", "variable"])
def test_an_explicit_path_to_nothing_is_an_error(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    executable(nowhere / "venv" / "bin" / "rust-trainer")
    missing = nowhere / "missing" / "rust-trainer"
    if how == "variable":
        monkeypatch.setenv("RUST_TRAINER", str(missing))

    # A path the user gave is not silently replaced by another binary.
    with pytest.raises(TrainerNotFound, match=f"points at {missing}"):
        find_trainer(missing if how == "option" else None)


def test_outside_a_checkout_the_build_is_not_looked_for(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_a_checkout() -> Path:
        raise NotACheckout("installed from a wheel")

    monkeypatch.setattr(trainer, "repo_root", not_a_checkout)

    # An installed package without the binary still gives the advice, not a crash.
    with pytest.raises(TrainerNotFound, match="orchestrate build"):
        find_trainer()


@pytest.mark.real
def test_the_real_trainer_is_found_and_reports_libtorch(
    real_trainer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUST_TRAINER", raising=False)
    monkeypatch.setenv("PATH", os.defpath)
    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python")

    found = find_trainer()
    info = trainer_info(found)

    # From a checkout with nothing installed, lookup ends at target/release.
    assert found == build.built_binary(build.repo_root()) == real_trainer
    # `info` is one JSON object with the libtorch version the pin promises.
    assert str(info["libtorch"]).startswith("2.11.0")
    assert isinstance(info["cuda_available"], bool)
    json.dumps(info)


def test_an_installed_binary_older_than_the_build_is_used_with_a_warning(
    nowhere: Path, caplog: pytest.LogCaptureFixture
) -> None:
    installed = executable(nowhere / "venv" / "bin" / "rust-trainer")
    built = executable(nowhere / "checkout" / "target" / "release" / "rust-trainer")
    os.utime(installed, (1_000_000, 1_000_000))

    found = find_trainer()

    # The order holds (installed before build), but the user hears the copy is stale.
    assert found == installed
    assert f"older than this checkout's build {built}" in caplog.text
