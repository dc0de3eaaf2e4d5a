from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from orchestrator.registry import (
    PRUNERS,
    SAMPLERS,
    PrunerSettings,
    SamplerSettings,
    describe,
)
from orchestrator.space import cnn_space
from orchestrator.study import TrainerFlags, TuneConfig, tune


def test_the_names_are_the_issue_s_choices() -> None:
    # The CLI offers exactly these names, from these dicts.
    assert list(SAMPLERS) == [
        "tpe", "random", "grid", "bruteforce", "cmaes", "qmc", "gp", "nsga2", "auto"
    ]  # fmt: skip
    assert list(PRUNERS) == [
        "median", "percentile", "successive-halving", "hyperband", "threshold", "patient",
        "wilcoxon", "none",
    ]  # fmt: skip


# bruteforce needs a discrete space and auto needs OptunaHub: both have tests of their own.
CNN_SAMPLERS = [name for name in SAMPLERS if name not in ("bruteforce", "auto")]


@pytest.mark.parametrize("name", CNN_SAMPLERS)
def test_every_sampler_builds_for_the_cnn_space(name: str) -> None:
    sampler = SAMPLERS[name](SamplerSettings(seed=0, space=cnn_space()))

    # Each factory gives an Optuna sampler, the grid one included.
    assert isinstance(sampler, optuna.samplers.BaseSampler)


@pytest.mark.parametrize("name", list(PRUNERS))
def test_every_pruner_builds(name: str) -> None:
    # threshold needs a bound; the others build from their defaults.
    args = {"upper": 1.0} if name == "threshold" else {}
    pruner = PRUNERS[name](PrunerSettings(epochs=9, startup_trials=2, args=args))

    # Each factory gives an Optuna pruner.
    assert isinstance(pruner, optuna.pruners.BasePruner)


def test_the_help_has_one_entry_per_name() -> None:
    text = describe(SAMPLERS)

    # Every name appears with the first line of its factory's docstring.
    assert all(f"{name}: " in text for name in SAMPLERS)
    assert "tpe: Tree-structured Parzen estimator" in text


@pytest.mark.real
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", CNN_SAMPLERS)
def test_every_sampler_runs_real_trials(
    name: str, real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    cfg = TuneConfig(
        trainer=real_trainer,
        study_name=name,
        storage=f"sqlite:///{tmp_path / 'studies.db'}",
        trials=2,
        space=cnn_space(),
        flags=TrainerFlags(
            epochs=1, train_limit=1000, val_fraction=0.02, threads=1, data_dir=data_dir
        ),
        sampler=name,
        pruner="none",
        seed=0,
        runs_dir=tmp_path / "runs",
    )

    summary = tune(cfg)

    # Each sampler drives two real trainer runs to a finite val_loss (the grid's other
    # points wait in the study's queue).
    assert {state: n for state, n in summary.states.items() if state != "WAITING"} == {
        "COMPLETE": 2
    }
    assert summary.best is not None and math.isfinite(summary.best.value or math.nan)


@pytest.mark.real
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["percentile", "successive-halving", "hyperband"])
def test_every_pruner_prunes_real_trials(
    name: str, real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    # (The median pruner's real test drives the CLI, in test_cli.py.)
    cfg = TuneConfig(
        trainer=real_trainer,
        study_name=name,
        storage=f"sqlite:///{tmp_path / 'studies.db'}",
        trials=6,
        space=cnn_space(),
        flags=TrainerFlags(
            epochs=3, train_limit=1000, val_fraction=0.02, threads=1, data_dir=data_dir
        ),
        sampler="random",
        pruner=name,
        seed=1,
        runs_dir=tmp_path / "runs",
        pruner_startup_trials=2,
    )

    summary = tune(cfg)

    # Random points differ enough in val_loss that each pruner stops at least one.
    assert summary.ran == 6
    assert summary.states.get("PRUNED", 0) >= 1, summary.states
