"""`orchestrate final`: the best configurations retrained on all the training data, with
several seeds, each tested once; with the real trainer on MNIST subsets."""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from helpers import run_orchestrate
from optuna.trial import FrozenTrial
from tuned import copy_storage, tune_tiny_study

from orchestrator.final import final_argv, final_epochs, flag_value, without_flags

pytestmark = pytest.mark.real

FINAL = ("--seeds", "0,1", "--train-limit", "300")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, real_trainer: Path, data_dir: Path) -> str:
    return tune_tiny_study(tmp_path_factory.mktemp("tuned"), data_dir)


def _final(
    storage: str, out: Path, *extra: str, trainer: Path | None = None
) -> subprocess.CompletedProcess[str]:
    args = ["final", "--study", "tiny", "--storage", storage, "--out", str(out), *FINAL, *extra]
    if trainer is not None:
        args += ["--trainer", str(trainer)]
    return run_orchestrate(args, cwd=out.parent)


def test_final_tests_each_seed_once_and_records_it(tuned: str, tmp_path: Path) -> None:
    storage = copy_storage(tuned, tmp_path)
    out = tmp_path / "final"
    study = optuna.load_study(study_name="tiny", storage=storage)

    first = _final(storage, out)
    assert first.returncode == 0, first.stderr[-3000:]
    document = json.loads((out / "final.json").read_text())
    [configuration] = document["configurations"]
    runs = configuration["runs"]

    # The best trial was retrained, with both seeds, for its best epoch.
    assert configuration["trial"] == study.best_trial.number
    assert configuration["epochs"] == study.best_trial.user_attrs["best_epoch"]
    assert [run["seed"] for run in runs] == [0, 1] and all(run["ok"] for run in runs)
    # Each seed was tested: an accuracy far above chance, on all 300 examples, no validation.
    accuracies = [run["test_accuracy"] for run in runs]
    losses = [run["test_loss"] for run in runs]
    assert all(0.3 < accuracy <= 1 for accuracy in accuracies), accuracies
    assert all(run["train_size"] == 300 for run in runs)
    for run in runs:
        argv = shlex.split(run["command"])
        assert flag_value(argv, "--val-fraction") == "0" and "--eval-test" in argv
        assert flag_value(argv, "--seed") == str(run["seed"])
    # Two seeds give two different models.
    assert accuracies[0] != accuracies[1] or losses[0] != losses[1]
    # The summary is the mean and the sample standard deviation, printed as such.
    mean, std = statistics.fmean(accuracies), statistics.stdev(accuracies)
    assert configuration["test_accuracy_mean"] == pytest.approx(mean, abs=1e-12)
    assert configuration["test_accuracy_std"] == pytest.approx(std, abs=1e-12)
    assert configuration["test_loss_mean"] == pytest.approx(statistics.fmean(losses), abs=1e-12)
    assert f"test_accuracy: {mean:.4f} ± {std:.4f}" in first.stdout

    # The study records both seeds' results.
    record = optuna.load_study(study_name="tiny", storage=storage).user_attrs[
        f"final:trial-{configuration['trial']}"
    ]
    assert {seed: run["test_accuracy"] for seed, run in record["runs"].items()} == {
        "0": accuracies[0],
        "1": accuracies[1],
    }

    # Each checkpoint exists and holds the tested model: resumed at its last epoch, the
    # trainer trains no further and tests it to the same test_loss, digit for digit.
    for run in runs:
        checkpoint = Path(run["checkpoint"])
        assert checkpoint.is_file() and checkpoint.with_name(checkpoint.name + ".json").is_file()
        argv = [*shlex.split(run["command"]), "--resume", str(checkpoint), "--quiet"]
        resumed = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        result = json.loads(resumed.stdout.splitlines()[-1])
        assert result["event"] == "result" and result["test_loss"] == run["test_loss"]
    mtimes = [Path(run["checkpoint"]).stat().st_mtime_ns for run in runs]

    second = _final(storage, out)
    # A second call tests nothing again: it prints the recorded results, checkpoints untouched.
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("recorded earlier") == 2
    assert f"test_accuracy: {mean:.4f} ± {std:.4f}" in second.stdout
    assert [Path(run["checkpoint"]).stat().st_mtime_ns for run in runs] == mtimes

    other = _final(storage, out, "--train-limit", "200")
    # Other settings for a tested seed are refused, naming --again, before anything runs.
    assert other.returncode == 2, other.stderr[-3000:]
    assert "--again" in other.stderr and "--train-limit 300" in other.stderr
    assert [Path(run["checkpoint"]).stat().st_mtime_ns for run in runs] == mtimes

    again = _final(storage, out, "--again", "--seeds", "1")
    # --again trains and tests anew; the same seed and threads give the same numbers.
    assert again.returncode == 0, again.stderr[-3000:]
    assert "recorded earlier" not in again.stdout
    assert Path(runs[1]["checkpoint"]).stat().st_mtime_ns != mtimes[1]
    rerun = json.loads((out / "final.json").read_text())["configurations"][0]["runs"]
    assert [run["seed"] for run in rerun] == [1]
    assert rerun[0]["test_loss"] == runs[1]["test_loss"]


def test_a_failed_seed_is_reported_and_the_others_kept(
    tuned: str, tmp_path: Path, real_trainer: Path
) -> None:
    storage = copy_storage(tuned, tmp_path)
    out = tmp_path / "final"
    # The real trainer, except that seed 1 crashes at once.
    flaky = tmp_path / "flaky-trainer"
    flaky.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""\
            import os, sys
            args = sys.argv[1:]
            seeds = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--seed"]
            if seeds and seeds[-1] == "1":
                sys.stderr.write("flaky: seed 1 crashes\\n")
                sys.exit(1)
            os.execv({str(real_trainer)!r}, [{str(real_trainer)!r}, *args])
            """
        )
    )
    flaky.chmod(0o755)

    failed = _final(storage, out, trainer=flaky)
    # Exit 1, seed 1 reported as failed with its reason, seed 0's result kept and recorded.
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "seed 1: FAILED (crashed" in failed.stdout
    runs = json.loads((out / "final.json").read_text())["configurations"][0]["runs"]
    assert [run["ok"] for run in runs] == [True, False]
    assert runs[1]["test_accuracy"] is None and runs[0]["test_accuracy"] > 0.3
    assert "1 of 2 seeds gave a test result" in failed.stdout

    retried = _final(storage, out)
    # The next call runs only the failed seed; seed 0 comes from the record.
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert retried.stdout.count("recorded earlier") == 1
    assert "seed 0:" in retried.stdout and "2 of 2 seeds" in retried.stdout


def test_several_objectives_need_a_trial(tmp_path: Path, real_trainer: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'multi.db'}"
    study = optuna.create_study(study_name="multi", storage=storage, directions=["minimize"] * 2)
    study.add_trial(optuna.trial.create_trial(values=[0.1, 0.2], user_attrs={"argv": ["x"]}))

    completed = run_orchestrate(
        ["final", "--study", "multi", "--storage", storage, "--trainer", str(real_trainer)],
        cwd=tmp_path,
    )
    # No single best trial: exit 2, naming --trial.
    assert completed.returncode == 2
    assert "2 objectives" in completed.stderr and "--trial N" in completed.stderr

    missing = run_orchestrate(
        ["final", "--study", "multi", "--storage", storage, "--trial", "5"], cwd=tmp_path
    )
    # An unknown trial number is a usage error too.
    assert missing.returncode == 2 and "no trial 5" in missing.stderr


def _trial(**user_attrs: object) -> FrozenTrial:
    return optuna.trial.create_trial(value=0.5, user_attrs=user_attrs)


def test_epochs_follow_best_epoch_unless_the_schedule_depends_on_epochs() -> None:
    args = ["--epochs", "5", "--schedule", "step"]
    # A schedule that does not depend on --epochs retrains for the best epoch...
    assert final_epochs(_trial(best_epoch=3), args)[0] == 3
    # ...one-cycle and cosine rerun the trial's whole schedule.
    assert final_epochs(_trial(best_epoch=3), [*args, "--schedule", "onecycle"])[0] == 5
    assert final_epochs(_trial(best_epoch=3), [*args, "--schedule=cosine"])[0] == 5


def test_final_argv_drops_early_stopping_and_adds_the_final_flags() -> None:
    args = ["--epochs", "5", "--patience", "2", "--nesterov", "--train-limit", "100", "--lr=0.1"]
    argv = final_argv(
        Path("/bin/trainer"),
        args,
        switches={"--nesterov", "--eval-test", "--quiet"},
        epochs=3,
        seed=7,
        checkpoint=Path("/out/seed-7.safetensors"),
        train_limit=None,
        threads=None,
    )
    # --patience and the trial's --train-limit go; switches keep their neighbours.
    assert "--patience" not in argv and "--train-limit" not in argv and "--nesterov" in argv
    assert without_flags(["--a", "1", "--b", "--c=2"], ["--a", "--c"], set()) == ["--b"]
    # The final flags come last, so they win.
    assert flag_value(argv, "--epochs") == "3" and flag_value(argv, "--seed") == "7"
    assert flag_value(argv, "--val-fraction") == "0" and "--eval-test" in argv


@pytest.mark.parametrize(
    ("seeds", "words"),
    [("0,a", "not a comma-separated list"), ("0,0", "distinct seeds"), ("-1", "negative seed")],
)
def test_bad_seeds_are_refused_before_anything_runs(
    tmp_path: Path, seeds: str, words: str
) -> None:
    completed = run_orchestrate(
        ["final", "--study", "s", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--seeds", seeds],
        cwd=tmp_path,
    )

    # A usage error naming --seeds; no storage was even opened.
    assert completed.returncode == 2
    assert "--seeds" in completed.stderr and words in completed.stderr
    assert not (tmp_path / "x.db").exists()
