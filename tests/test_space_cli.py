"""`orchestrate space` and conditional spaces, end to end with the real trainer on MNIST."""

from __future__ import annotations

import shlex
from pathlib import Path

import optuna
import pytest
from helpers import run_orchestrate
from optuna.trial import TrialState

from orchestrator.space import builtin_space, load_space

# Tiny trials: 500 examples, one epoch.
TINY = ["--epochs", "1", "--train-limit", "500", "--val-fraction", "0.02", "--threads", "1"]


def load(cwd: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'orchestrate.db'}")


def test_space_list_and_an_unknown_name(tmp_path: Path) -> None:
    listed = run_orchestrate(["space", "list"], cwd=tmp_path)
    unknown = run_orchestrate(["space", "show", "vgg"], cwd=tmp_path)

    # Every built-in space is listed with the models that use it.
    assert listed.returncode == 0
    assert "cnn: cnn" in listed.stdout and "resnet: resnet18, resnet34, resnet50" in listed.stdout
    # An unknown name is a usage error that points at `space list`.
    assert unknown.returncode == 2
    assert "no built-in search space 'vgg'" in unknown.stderr
    assert "orchestrate space list" in unknown.stderr


@pytest.mark.real
def test_real_space_show_round_trips_through_tune(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    shown = run_orchestrate(["space", "show", "cnn"], cwd=tmp_path)
    copy = tmp_path / "my.toml"
    copy.write_text(shown.stdout)
    args = ["tune", "--space", str(copy), "--trials", "4", "--sampler", "random"]
    args += ["--pruner", "none", "--seed", "5", "--data-dir", str(data_dir), *TINY]

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})
    trials = load(tmp_path, "cnn-mnist").trials

    # The printed TOML is the built-in space, parameter for parameter.
    assert shown.returncode == 0
    assert load_space(copy).params == builtin_space("cnn").params
    # tune takes it, and every trial completes with momentum exactly for SGD.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for trial in trials:
        command = shlex.split(trial.user_attrs["command"])
        sgd = trial.params["optimizer"] == "sgd"
        assert ("momentum" in trial.params) == sgd
        assert ("--momentum" in command) == sgd


@pytest.mark.real
def test_real_grid_runs_only_valid_conditional_combinations(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    space = tmp_path / "conditional.toml"
    space.write_text(
        '[params.optimizer]\ntype = "categorical"\nchoices = ["sgd", "adam"]\n\n'
        '[params.momentum]\ntype = "float"\nlow = 0.5\nhigh = 0.99\ngrid = [0.5, 0.9]\n'
        'when = { optimizer = "sgd" }\n\n'
        "[fixed.lr]\nvalue = 0.01\n"
    )
    args = ["tune", "--space", str(space), "--sampler", "grid", "--trials", "10"]
    args += ["--seed", "0", "--data-dir", str(data_dir), *TINY]

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})
    trials = load(tmp_path, "cnn-mnist").trials

    # Three points, not four: adam has no momentum to vary. Each runs once.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "stopped: the grid is exhausted" in completed.stdout
    assert sorted(map(repr, (t.params for t in trials))) == sorted(
        map(
            repr,
            [
                {"optimizer": "adam"},
                {"optimizer": "sgd", "momentum": 0.5},
                {"optimizer": "sgd", "momentum": 0.9},
            ],
        )
    )
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.real
def test_real_a_conditional_parameter_the_trainer_rejects_exits_2(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    space = tmp_path / "bad.toml"
    space.write_text(
        '[params.optimizer]\ntype = "categorical"\nchoices = ["sgd", "adam"]\n\n'
        '[params.momentum]\ntype = "float"\nlow = 0.5\nhigh = 1.5\n'
        'when = { optimizer = "sgd" }\n'
    )
    args = ["tune", "--space", str(space), "--trials", "1", "--data-dir", str(data_dir), *TINY]

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})

    # The contract check covers conditional parameters too, before any study exists.
    assert completed.returncode == 2
    assert (
        "'momentum'" in completed.stderr and "outside what --momentum accepts" in completed.stderr
    )
    assert not (tmp_path / "orchestrate.db").exists()


@pytest.mark.real
def test_real_a_cyclic_space_exits_2_naming_the_parameters(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    space = tmp_path / "cycle.toml"
    space.write_text(
        '[params.optimizer]\ntype = "categorical"\nchoices = ["sgd", "adam"]\n'
        "when = { nesterov = true }\n\n"
        '[params.nesterov]\ntype = "categorical"\nchoices = [true, false]\n'
        'when = { optimizer = "sgd" }\n'
    )
    args = ["tune", "--space", str(space), "--trials", "1", "--data-dir", str(data_dir), *TINY]

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})

    # The cycle is named, with the file.
    assert completed.returncode == 2
    assert "['nesterov', 'optimizer'] depend on each other in a cycle" in completed.stderr
    assert str(space) in completed.stderr
