from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import pytest
from helpers import run_orchestrate
from optuna.trial import TrialState

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


# --sampler-args and --pruner-args, bruteforce, auto and the new pruners, through the CLI.

TINY = ["--train-limit", "500", "--val-fraction", "0.02", "--threads", "1"]


def test_sampler_args_reach_the_constructor() -> None:
    sampler = SAMPLERS["tpe"](
        SamplerSettings(seed=0, space=cnn_space(), args={"n_startup_trials": 3})
    )
    pruner = PRUNERS["patient"](PrunerSettings(epochs=5, args={"patience": 2}))

    # The keyword given wins over the default chosen by the registry.
    assert sampler._n_startup_trials == 3  # type: ignore[attr-defined]
    assert pruner._patience == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["--sampler-args", '{"n_startup": 3}'],
            "TPESampler takes no keyword 'n_startup'; it accepts: ",
        ),
        (["--sampler-args", "{n_startup_trials: 3}"], "--sampler-args .* is not valid JSON"),
        (["--sampler-args", '{"seed": 3}'], "'seed' is set by orchestrate; use --seed"),
        # The keyword exists but the value has the wrong type: found on a first draw.
        (
            ["--sampler-args", '{"n_startup_trials": "three"}'],
            r"--sampler tpe failed on its first draw with --sampler-args .*TypeError",
        ),
        (["--pruner-args", '{"patience": 2}'], "MedianPruner takes no keyword 'patience'"),
        (
            ["--pruner", "threshold"],
            r"--pruner threshold needs a bound: --pruner-args '\{\"upper\"",
        ),
        (["--sampler", "bruteforce"], r"bruteforce enumerates every value, but \['lr'"),
    ],
)
def test_bad_sampler_or_pruner_arguments_exit_2_before_any_study(
    real_trainer: Path, data_dir: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    completed = run_orchestrate(
        ["tune", "--trials", "1", "--epochs", "1", "--data-dir", str(data_dir), *TINY, *args],
        cwd=tmp_path,
        env={"RUST_TRAINER": str(real_trainer)},
    )

    # A usage error that names the key (and the accepted ones), with no study created.
    assert completed.returncode == 2, completed.stderr
    assert re.search(words, completed.stderr), completed.stderr
    assert not (tmp_path / "orchestrate.db").exists()
    if "it accepts" in words:
        assert "n_startup_trials" in completed.stderr


@pytest.mark.real
def test_real_threshold_pruner_stops_every_trial_above_the_bound(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    args = ["tune", "--pruner", "threshold", "--pruner-args", '{"upper": 0.01}']
    args += ["--trials", "2", "--epochs", "2", "--seed", "0", "--data-dir", str(data_dir), *TINY]

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})
    trials = _load(tmp_path).trials

    # No tiny trial reaches val_loss 0.01 in one epoch: each is pruned after epoch 1.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs["epochs_run"] == 1 for t in trials)


@pytest.mark.real
@pytest.mark.parametrize(
    ("pruner", "extra"),
    [("patient", ["--pruner-args", '{"patience": 0}']), ("wilcoxon", [])],
)
def test_real_patient_and_wilcoxon_pruners_run_a_study(
    real_trainer: Path, data_dir: Path, tmp_path: Path, pruner: str, extra: list[str]
) -> None:
    args = ["tune", "--pruner", pruner, *extra, "--pruner-startup-trials", "1", "--trials", "3"]
    args += ["--epochs", "2", "--sampler", "random", "--seed", "4", "--data-dir", str(data_dir)]

    completed = run_orchestrate(
        [*args, *TINY], cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)}
    )
    trials = _load(tmp_path).trials

    # Every trial finishes, completed or pruned, with one value reported per epoch run.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(trials) == 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert all(len(t.intermediate_values) == t.user_attrs["epochs_run"] for t in trials)
    if pruner == "wilcoxon":
        # With two epochs the signed-rank test cannot reach p < 0.1, so it never prunes.
        assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.real
def test_real_bruteforce_tries_each_valid_combination_once(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    space = tmp_path / "discrete.toml"
    space.write_text(
        '[params.optimizer]\ntype = "categorical"\nchoices = ["sgd", "adam"]\n\n'
        '[params.momentum]\ntype = "categorical"\nchoices = [0.5, 0.9]\n'
        'when = { optimizer = "sgd" }\n'
    )
    args = ["tune", "--space", str(space), "--sampler", "bruteforce", "--trials", "10"]
    args += ["--epochs", "1", "--seed", "0", "--data-dir", str(data_dir), *TINY]

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})
    trials = _load(tmp_path).trials

    # Three combinations (adam has no momentum), each once; then it says why it stopped.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sorted(repr(sorted(t.params.items())) for t in trials) == sorted(
        repr(sorted(p.items()))
        for p in [
            {"optimizer": "adam"},
            {"optimizer": "sgd", "momentum": 0.5},
            {"optimizer": "sgd", "momentum": 0.9},
        ]
    )
    assert "stopped: the bruteforce sampler has tried every combination" in completed.stdout

    again = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})

    # The same command again runs nothing: no fourth trial repeating a combination.
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_load(tmp_path).trials) == 3
    assert "the bruteforce sampler has tried every combination" in again.stdout


def test_auto_without_network_exits_2_saying_what_it_needs(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("optunahub")
    args = ["tune", "--sampler", "auto", "--trials", "1", "--data-dir", str(data_dir), *TINY]
    # An empty cache, so that optunahub must fetch from GitHub, which is not reachable here.
    env = {"RUST_TRAINER": str(real_trainer), "OPTUNAHUB_CACHE_HOME": str(tmp_path / "cache")}

    completed = run_orchestrate(args, cwd=tmp_path, env=env, timeout=300)

    # A usage error that says it needs the network once, or a local copy; no study.
    assert completed.returncode == 2, completed.stderr
    assert "could not load OptunaHub's samplers/auto_sampler" in completed.stderr
    assert "needs network access" in completed.stderr
    assert "ORCHESTRATE_OPTUNAHUB_REGISTRY" in completed.stderr
    assert not (tmp_path / "orchestrate.db").exists()


def test_auto_without_optunahub_says_what_to_install(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    # A package that fails to import, first on the path, stands in for a missing optunahub.
    shim = tmp_path / "shim" / "optunahub"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named optunahub')\n")
    args = ["tune", "--sampler", "auto", "--trials", "1", "--data-dir", str(data_dir), *TINY]
    env = {"RUST_TRAINER": str(real_trainer), "PYTHONPATH": str(shim.parent)}

    completed = run_orchestrate(args, cwd=tmp_path, env=env)

    # The message names the package and the command that installs it.
    assert completed.returncode == 2, completed.stderr
    assert "needs the optunahub package" in completed.stderr
    assert "pip install optunahub" in completed.stderr


@pytest.mark.real
def test_real_auto_from_a_local_registry_runs_seeded_trials(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("optunahub")
    # A stand-in AutoSampler in the registry's layout (the real one needs the network).
    package = tmp_path / "registry" / "samplers" / "auto_sampler"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import optuna\n\n"
        "class AutoSampler(optuna.samplers.RandomSampler):\n"
        "    def __init__(self, *, seed=None, constraints_func=None):\n"
        "        super().__init__(seed=seed)\n"
    )
    env = {
        "RUST_TRAINER": str(real_trainer),
        "ORCHESTRATE_OPTUNAHUB_REGISTRY": str(tmp_path / "registry"),
    }
    args = ["tune", "--sampler", "auto", "--pruner", "none", "--trials", "2", "--epochs", "1"]
    args += ["--seed", "0", "--data-dir", str(data_dir), *TINY]

    runs = []
    for folder in ("a", "b"):
        cwd = tmp_path / folder
        cwd.mkdir()
        completed = run_orchestrate(args, cwd=cwd, env=env)
        assert completed.returncode == 0, completed.stderr[-3000:]
        runs.append([t.params for t in _load(cwd).trials])
    unknown = run_orchestrate(
        [*args, "--sampler-args", '{"budget": 3}'], cwd=tmp_path / "a", env=env
    )

    # The local module is used, and the same seed proposes the same points.
    assert len(runs[0]) == 2 and runs[0] == runs[1]
    # Its constructor's keywords are checked like any other sampler's.
    assert unknown.returncode == 2
    assert "AutoSampler takes no keyword 'budget'; it accepts: constraints_func" in unknown.stderr


def _load(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name="cnn-mnist", storage=f"sqlite:///{cwd / 'orchestrate.db'}")
