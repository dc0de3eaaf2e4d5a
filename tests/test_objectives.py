"""`tune --objectives`: one value or a Pareto front, end to end with the real trainer."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import optuna
import pytest
from helpers import run_orchestrate
from optuna.study import StudyDirection
from optuna.trial import TrialState

from orchestrator.errors import ArgumentsError
from orchestrator.objectives import parse_objectives, resolve_sampler_and_pruner

TINY = ["--train-limit", "500", "--val-fraction", "0.02", "--threads", "1"]


def load(cwd: Path, name: str = "cnn-mnist") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'orchestrate.db'}")


def test_several_objectives_default_to_nsga2_without_pruning() -> None:
    objectives = parse_objectives("val_loss, seconds")

    # Directions are fixed per objective; NSGA-II and no pruner are the defaults.
    assert objectives == ("val_loss", "seconds")
    assert resolve_sampler_and_pruner(objectives, None, None) == ("nsga2", "none")
    assert resolve_sampler_and_pruner(("val_loss",), None, None) == ("tpe", "median")
    # Asking for a pruner with several objectives is a usage error naming both.
    with pytest.raises(ArgumentsError, match=r"--pruner median cannot be used with --objectives"):
        resolve_sampler_and_pruner(objectives, None, "median")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("val_loss,speed", "unknown objective speed; choose from val_loss, val_accuracy"),
        ("seconds", "seconds alone would favour"),
        ("val_loss,val_loss", "names an objective twice"),
    ],
)
def test_bad_objectives_say_what_to_give(text: str, words: str) -> None:
    # Each message names the value and what would do.
    with pytest.raises(ArgumentsError, match=words):
        parse_objectives(text)


@pytest.fixture(scope="module")
def front_study(
    real_trainer: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A three-trial study of val_loss against the parameter count, over the CNN's width."""
    cwd = tmp_path_factory.mktemp("front")
    space = cwd / "widths.toml"
    space.write_text(
        '[params.hidden]\ntype = "categorical"\nchoices = [32, 128, 512]\n\n'
        '[params.lr]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\nlog = true\n'
    )
    args = ["tune", "--objectives", "val_loss,parameters", "--space", str(space)]
    args += ["--trials", "3", "--epochs", "1", "--seed", "2", "--data-dir", str(data_dir), *TINY]
    completed = run_orchestrate(args, cwd=cwd, env={"RUST_TRAINER": str(real_trainer)})
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "`orchestrate best` shows the Pareto front" in completed.stdout
    return cwd


@pytest.mark.real
def test_real_a_study_records_its_objectives_and_values(front_study: Path) -> None:
    study = load(front_study)

    # Two minimised values per trial, named in the study's user attributes.
    assert study.directions == [StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]
    assert study.user_attrs["objectives"] == ["val_loss", "parameters"]
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert trial.values is not None and len(trial.values) == 2
        # The second value is the trainer's parameter count, the first its val_loss.
        assert trial.values[1] == trial.user_attrs["parameters"]
        assert trial.values[0] == trial.user_attrs["val_loss"]
        # Optuna cannot prune several objectives, so nothing was reported per epoch; the
        # curve is kept as an attribute instead (one epoch here), for the report.
        assert trial.intermediate_values == {}
        assert trial.user_attrs["val_loss_by_epoch"] == {"1": trial.values[0]}


@pytest.mark.real
def test_real_report_draws_learning_curves_for_several_objectives(
    front_study: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    args = ["report", "--storage", f"sqlite:///{front_study / 'orchestrate.db'}", "--out"]
    completed = run_orchestrate([*args, str(out)], cwd=front_study)

    # The curves come from the kept attribute: drawn, not left out.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "left out: Learning curves" not in completed.stderr
    assert (out / "intermediate.png").stat().st_size > 5000


@pytest.mark.real
def test_real_best_shows_the_pareto_front(front_study: Path) -> None:
    text = run_orchestrate(["best"], cwd=front_study)
    as_json = run_orchestrate(["best", "--json"], cwd=front_study)
    front = json.loads(as_json.stdout)["pareto_front"]
    trials = load(front_study).trials

    # The table names the objectives; the JSON gives each front trial's values by name.
    assert text.returncode == 0 and as_json.returncode == 0
    assert "objectives: val_loss (minimize), parameters (minimize)" in text.stdout
    assert "trial  val_loss  parameters  params" in text.stdout
    assert front and all(set(t["values"]) == {"val_loss", "parameters"} for t in front)
    # No trial of the study beats a front trial in both objectives.
    for member in front:
        mine = (member["values"]["val_loss"], member["values"]["parameters"])
        for other in trials:
            theirs = tuple(other.values or ())
            assert not (theirs[0] <= mine[0] and theirs[1] <= mine[1] and theirs != mine)
    # Each front trial's command reruns it.
    assert all(shlex.split(t["command"])[1] == "train" for t in front)


@pytest.mark.real
def test_real_resuming_with_other_objectives_exits_2(
    front_study: Path, real_trainer: Path, data_dir: Path
) -> None:
    args = ["tune", "--trials", "4", "--epochs", "1", "--data-dir", str(data_dir), *TINY]

    completed = run_orchestrate(args, cwd=front_study, env={"RUST_TRAINER": str(real_trainer)})

    # The study's objectives are named, and what to do.
    assert completed.returncode == 2
    assert "optimises val_loss,parameters" in completed.stderr
    assert "--objectives val_loss" in completed.stderr
    assert len(load(front_study).trials) == 3


@pytest.mark.real
def test_real_a_diverged_trial_gets_a_value_per_objective_and_stays_off_the_front(
    wrapped_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    args = ["tune", "--objectives", "val_loss,seconds", "--trials", "1", "--epochs", "2"]
    args += ["--seed", "0", "--data-dir", str(data_dir), *TINY, "--", "--behaviour", "diverge"]

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(wrapped_trainer)})
    trial = load(tmp_path).trials[0]
    best = run_orchestrate(["best"], cwd=tmp_path)

    # Optuna cannot prune it, so it completes with the penalty for val_loss and its time.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["fail_reason"] == "diverged"
    assert trial.values is not None and trial.values[0] == trial.user_attrs["penalty"]
    assert trial.values[0] >= 2 * math.log(10) and trial.values[1] > 0
    # It is never part of the Pareto front: with no other trial there is none.
    assert best.returncode == 1
    assert "no completed trial yet (1 COMPLETE, of which 1 diverged)" in best.stderr


@pytest.mark.real
def test_real_val_accuracy_alone_is_maximised_and_pruned_on(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    args = ["tune", "--objectives", "val_accuracy", "--trials", "2", "--epochs", "2"]
    args += ["--sampler", "random", "--seed", "0", "--data-dir", str(data_dir), *TINY]

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})
    study = load(tmp_path)
    best = run_orchestrate(["best"], cwd=tmp_path)

    # The study maximises accuracy; each epoch reports accuracy for the pruner.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert study.direction == StudyDirection.MAXIMIZE
    for trial in study.trials:
        assert trial.value == trial.user_attrs["val_accuracy"]
        assert all(0 <= v <= 1 for v in trial.intermediate_values.values())
    assert study.best_trial.value == max(t.value or 0 for t in study.trials)
    assert f"val_accuracy: {study.best_trial.value!r}" in best.stdout
