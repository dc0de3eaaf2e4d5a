"""`tune --enqueue FILE`: known configurations tried first, once per study."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from helpers import run_orchestrate

from orchestrator.enqueue import ENQUEUED_ATTR, read_points

TINY = ["--epochs", "1", "--train-limit", "500", "--val-fraction", "0.02", "--threads", "1"]
KNOWN = [
    {"lr": 0.003, "optimizer": "adam", "batch_size": 128},
    {"lr": 0.01, "optimizer": "sgd", "momentum": 0.9},
]


def load(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name="cnn-mnist", storage=f"sqlite:///{cwd / 'orchestrate.db'}")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("points.json", json.dumps(KNOWN)),
        ("points.jsonl", "\n".join(json.dumps(p) for p in KNOWN) + "\n"),
        (
            "points.toml",
            '[[trial]]\nlr = 0.003\noptimizer = "adam"\nbatch_size = 128\n\n'
            '[[trial]]\nlr = 0.01\noptimizer = "sgd"\nmomentum = 0.9\n',
        ),
    ],
)
def test_the_three_kinds_of_file_read_the_same(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)

    # JSON, JSON Lines and TOML give the same configurations, in order.
    assert read_points(path) == KNOWN


@pytest.mark.real
def test_real_enqueued_configurations_run_first_and_once(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    points = tmp_path / "known.json"
    points.write_text(json.dumps(KNOWN))
    args = ["tune", "--enqueue", str(points), "--sampler", "random", "--pruner", "none"]
    args += ["--seed", "0", "--data-dir", str(data_dir), *TINY]
    env = {"RUST_TRAINER": str(real_trainer)}

    first = run_orchestrate([*args, "--trials", "3"], cwd=tmp_path, env=env)
    again = run_orchestrate([*args, "--trials", "4"], cwd=tmp_path, env=env)
    study = load(tmp_path)
    trials = study.trials

    # The known configurations are the first two trials; the sampler fills in what they
    # leave out (dropout, weight decay, ...).
    assert first.returncode == 0, first.stderr[-3000:]
    assert again.returncode == 0, again.stderr[-3000:]
    for trial, known in zip(trials[:2], KNOWN, strict=True):
        assert {k: trial.params[k] for k in known} == known
        assert "dropout" in trial.params and trial.user_attrs["enqueued"] is True
    # The rerun of the same command queued nothing again: four trials, two enqueued.
    assert len(trials) == 4
    assert sum(bool(t.user_attrs.get("enqueued")) for t in trials) == 2
    assert len(study._storage.get_study_system_attrs(study._study_id)[ENQUEUED_ATTR]) == 2


@pytest.mark.parametrize(
    ("points", "words"),
    [
        ([{"lr": 5.0}], r"configuration 1 .*lr = 5.0: it must lie in \[0.0001, 0.03\]"),
        ([{}, {"learning_rate": 0.01}], r"configuration 2 .*\['learning_rate'\] is not sampled"),
        (
            [{"optimizer": "adam", "momentum": 0.9}],
            r"momentum is sampled only when optimizer = 'sgd', but optimizer = 'adam' here",
        ),
        ([{"batch_size": 100}], r"batch_size = 100: it must be one of \[64, 128, 256\]"),
        # Without its parent the sampler could draw adam and drop the momentum unseen.
        (
            [{"momentum": 0.9}],
            r"momentum is sampled only when optimizer = 'sgd'; give optimizer too",
        ),
    ],
)
def test_a_bad_configuration_exits_2_naming_it(
    tmp_path: Path, data_dir: Path, points: list[dict[str, object]], words: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(points))

    completed = run_orchestrate(
        ["tune", "--enqueue", str(path), "--data-dir", str(data_dir), *TINY], cwd=tmp_path
    )

    # A usage error naming the file, the configuration and what is wrong with it; no study.
    assert completed.returncode == 2
    assert str(path) in completed.stderr
    assert re.search(words, completed.stderr), completed.stderr
    assert not (tmp_path / "orchestrate.db").exists()


def test_enqueue_with_the_grid_sampler_exits_2(
    tmp_path: Path, data_dir: Path, real_trainer: Path
) -> None:
    path = tmp_path / "known.json"
    path.write_text(json.dumps(KNOWN))
    args = ["tune", "--enqueue", str(path), "--sampler", "grid", "--data-dir", str(data_dir)]

    completed = run_orchestrate(
        [*args, *TINY], cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)}
    )

    # The grid queues its own points; the message says what to do instead.
    assert completed.returncode == 2
    assert "--enqueue cannot be used with --sampler grid" in completed.stderr
