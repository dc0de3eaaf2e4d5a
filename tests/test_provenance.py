"""Provenance: each trial records the trainer that ran it and its exact command, before the
process starts, so failed trials have it too; with the real trainer."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from pathlib import Path

import optuna
import pytest
from helpers import fake_data, run_orchestrate
from optuna.trial import TrialState
from tuned import TINY_TUNE, tune_tiny_study

from orchestrator import provenance

pytestmark = pytest.mark.real


def _info(trainer: Path) -> dict[str, object]:
    completed = subprocess.run([str(trainer), "info"], capture_output=True, text=True, check=True)
    info: dict[str, object] = json.loads(completed.stdout)
    return info


def _check_provenance(attrs: dict[str, object], trainer: Path) -> None:
    info = _info(trainer)
    # The trainer's version and libtorch as `info` says, and the binary's own hash.
    assert attrs["trainer_version"] == info["version"]
    assert attrs["libtorch_version"] == info["libtorch"]
    assert attrs["trainer_sha256"] == hashlib.sha256(trainer.read_bytes()).hexdigest()
    assert attrs["trainer_path"] == str(trainer.resolve())
    # The argv is the shell line's words: either one re-runs the other.
    argv = attrs["argv"]
    assert isinstance(argv, list) and argv[0] == str(trainer.resolve()) and argv[1] == "train"
    assert shlex.split(str(attrs["command"])) == argv


def test_completed_trials_record_their_provenance(
    tmp_path: Path, real_trainer: Path, data_dir: Path
) -> None:
    storage = tune_tiny_study(tmp_path, data_dir)
    trials = optuna.load_study(study_name="tiny", storage=storage).trials

    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:
        _check_provenance(dict(trial.user_attrs), real_trainer)
    # Each trial's argv is its own: the sampled lr differs.
    assert trials[0].user_attrs["argv"] != trials[1].user_attrs["argv"]

    shown = run_orchestrate(["best", "--study", "tiny", "--storage", storage], cwd=tmp_path)
    as_json = run_orchestrate(
        ["best", "--study", "tiny", "--storage", storage, "--json"], cwd=tmp_path
    )
    # Only --json shows the provenance; the plain output stays as it was.
    assert shown.returncode == 0 and as_json.returncode == 0
    assert "trainer_sha256" not in shown.stdout and "argv" not in shown.stdout
    assert "trainer_sha256" in json.loads(as_json.stdout)["user_attrs"]


def test_failed_trials_record_their_provenance_too(tmp_path: Path, real_trainer: Path) -> None:
    # A data folder that passes tune's check but holds an empty file: every trial exits 3.
    broken = fake_data(tmp_path / "broken")
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    args = ["tune", "--study", "broken", "--storage", storage, "--data-dir", str(broken)]
    completed = run_orchestrate([*args, *TINY_TUNE], cwd=tmp_path)
    # Every trial failed: tune says so with exit 1.
    assert completed.returncode == 1, completed.stderr[-3000:]
    trials = optuna.load_study(study_name="broken", storage=storage).trials

    # The trials failed in the trainer, and still say which trainer ran which command.
    assert [t.user_attrs.get("fail_reason") for t in trials] == ["data error"] * 2
    for trial in trials:
        _check_provenance(dict(trial.user_attrs), real_trainer)


def test_trainer_facts_are_cached_until_the_binary_changes(tmp_path: Path) -> None:
    binary = tmp_path / "trainer"
    binary.write_text('#!/bin/sh\necho \'{"version": "1.0", "libtorch": "2.11.0"}\'\n')
    binary.chmod(0o755)
    first = provenance.trainer_facts(binary)
    # The same file is asked once; the hash is the file's.
    assert provenance.trainer_facts(binary) is first
    assert first.sha256 == hashlib.sha256(binary.read_bytes()).hexdigest()

    binary.write_text('#!/bin/sh\necho \'{"version": "1.1", "libtorch": "2.11.0"}\'\n\n')
    # A rebuilt binary (new size and time) is asked again.
    assert provenance.trainer_facts(binary).version == "1.1"


def test_argv_from_an_older_shell_line_drops_the_environment() -> None:
    line = "CUDA_VISIBLE_DEVICES=1 /opt/rust-trainer train --lr 0.1 --data-dir '/a b'"
    # The variables in front are not part of the argv.
    assert provenance.argv_from_command(line) == [
        "/opt/rust-trainer",
        "train",
        "--lr",
        "0.1",
        "--data-dir",
        "/a b",
    ]
