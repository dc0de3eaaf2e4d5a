"""The `orchestrate` command: light checks through Click's runner with fake trainers, and
end-to-end runs of `python -m orchestrator` with the real trainer on real MNIST."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner, Result
from helpers import REAL_FLAGS, REPO, fake_data, run_orchestrate, trainer_processes
from optuna.trial import TrialState

from orchestrator.cli import cli
from orchestrator.registry import PRUNERS, SAMPLERS

FakeTrainer = Callable[..., Path]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_the_commands() -> None:
    result = invoke("--help")

    # The group's help shows every command.
    assert result.exit_code == 0
    for command in ("build", "train", "tune", "best", "trials"):
        assert f"  {command} " in result.output


def test_tune_help_lists_every_sampler_and_pruner() -> None:
    result = invoke("tune", "--help")

    # The choices come from the registries.
    assert result.exit_code == 0
    assert all(name in result.output for name in [*SAMPLERS, *PRUNERS])
    # The default storage is documented, and the other kinds of storage.
    assert "sqlite:///orchestrate.db" in result.output
    assert "postgresql://" in result.output and "journal:///" in result.output
    # So are the options for parallel, bounded and watched studies.
    for option in ("--n-jobs", "--trials-per-gpu", "--timeout", "--trial-timeout", "--heartbeat"):
        assert option in result.output


def test_a_missing_trainer_exits_2_with_advice(tmp_path: Path) -> None:
    result = invoke("train", "--trainer", str(tmp_path / "nope"), "--epochs", "1")

    # A usage problem: exit 2, and the message says what is wrong.
    assert result.exit_code == 2
    assert "not an executable file" in result.output


def test_train_passes_flags_through_and_exits_with_the_trainers_code(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    argv_file = tmp_path / "argv.json"
    trainer = fake_trainer(
        f"json.dump(sys.argv[1:], open({str(argv_file)!r}, 'w')); train(); sys.exit(7)"
    )
    flags = ["--epochs", "2", "--lr", "0.01", "--nesterov", "--unknown-to-orchestrate", "x"]

    result = invoke("train", "--trainer", str(trainer), *flags)

    # The trainer sees exactly the flags given, after its `train` subcommand and --quiet
    # (its progress lines would repeat the events shown).
    assert json.loads(argv_file.read_text()) == ["train", "--quiet", *flags]
    # Its exit code is ours, and each epoch and the result are shown.
    assert result.exit_code == 7
    assert "epoch 2/2" in result.output and "completed" in result.output


@pytest.mark.parametrize("flag", ["--flags-from-stdin", "--flags-from-stdin=true"])
def test_train_refuses_flags_from_stdin_it_would_not_pass_on(
    fake_trainer: FakeTrainer, tmp_path: Path, flag: str
) -> None:
    marker = tmp_path / "ran"
    trainer = fake_trainer(f"open({str(marker)!r}, 'w').close(); train()")

    result = invoke("train", "--trainer", str(trainer), "--epochs", "1", flag)

    # The trainer would wait for a line that never comes: usage, named, and nothing runs.
    assert result.exit_code == 2
    assert "--flags-from-stdin: the trainer run here reads nothing on stdin" in result.output
    assert not marker.exists()


def test_tune_trials_and_best_with_a_fake_trainer(fake_trainer: FakeTrainer, in_tmp: Path) -> None:
    trainer = str(fake_trainer())
    tune_args = ["tune", "--trainer", trainer, "--trials", "3", "--seed", "4", "--epochs", "2"]
    tune_args += ["--data-dir", str(fake_data(in_tmp))]

    tuned = invoke(*tune_args, "--sampler", "random")
    table = invoke("trials")
    best = invoke("best", "--study", "cnn-mnist")
    best_json = json.loads(invoke("best", "--json").output)

    # tune reports what it ran, in the default storage in the current folder.
    assert tuned.exit_code == 0, tuned.output
    assert "ran 3 trials" in tuned.output and (in_tmp / "orchestrate.db").is_file()
    # trials shows one row per trial (the only study is picked without --study).
    assert table.exit_code == 0
    assert all(re.search(rf"│ +{n} │ COMPLETE ", table.output) for n in range(3))
    # best's last line is the exact command of the best trial, as JSON also gives it.
    assert best.exit_code == 0
    assert best.output.splitlines()[-1] == best_json["command"]
    assert shlex.split(best_json["command"])[0] == trainer


def test_resuming_with_other_epochs_exits_2(fake_trainer: FakeTrainer, in_tmp: Path) -> None:
    base = ["tune", "--trainer", str(fake_trainer()), "--data-dir", str(fake_data(in_tmp))]
    invoke(*base, "--trials", "1", "--seed", "1", "--epochs", "2")

    result = invoke(*base, "--trials", "2", "--seed", "1", "--epochs", "3")

    # The study's settings differ: refused, naming the difference.
    assert result.exit_code == 2
    assert "epochs: study has 2, this command 3" in result.output


def test_unknown_study_exits_2_and_lists_the_studies(in_tmp: Path) -> None:
    optuna.create_study(study_name="cnn-mnist", storage="sqlite:///orchestrate.db")

    result = invoke("best", "--study", "cnn-fashion")

    # The message names the study and the storage, and lists what exists.
    assert result.exit_code == 2
    assert "no study 'cnn-fashion' in sqlite:///orchestrate.db" in result.output
    assert "cnn-mnist" in result.output


@pytest.mark.parametrize("storage", ["not a url", "sqlite:///missing/none.db"])
def test_a_bad_storage_exits_2(in_tmp: Path, storage: str) -> None:
    result = invoke("trials", "--study", "x", "--storage", storage)

    # Exit 2, naming the storage.
    assert result.exit_code == 2
    assert storage in result.output


def test_best_without_a_completed_trial_exits_1(fake_trainer: FakeTrainer, in_tmp: Path) -> None:
    trainer = str(fake_trainer("sys.exit(3)"))
    args = ["tune", "--trainer", trainer, "--trials", "2", "--seed", "1"]
    tuned = invoke(*args, "--data-dir", str(fake_data(in_tmp)))

    # A study in which every trial failed is a failed tune, for scripts to see ...
    assert tuned.exit_code == 1
    assert "no trial of study" in tuned.output and "completed (2 FAIL)" in tuned.output
    # ... and stays one when the same command finds nothing left to run.
    again = invoke(*args, "--data-dir", str(fake_data(in_tmp)))
    assert again.exit_code == 1
    assert "nothing to run" in again.output and "completed (2 FAIL)" in again.output

    result = invoke("best")

    # Nothing to show is a failure of the request, not of its usage.
    assert result.exit_code == 1
    assert "no completed trial yet (2 FAIL)" in result.output


# End to end, with the real trainer on real MNIST.


@pytest.fixture(scope="module")
def e2e_study(
    real_trainer: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """A four-trial TPE study made with the real trainer; returns its folder and command."""
    cwd = tmp_path_factory.mktemp("e2e")
    args = ["tune", "--trials", "4", "--sampler", "tpe", "--pruner", "none", "--seed", "3"]
    args += ["--epochs", "2", "--data-dir", str(data_dir), "--study", "e2e", *REAL_FLAGS]
    completed = run_orchestrate(args, cwd=cwd, env={"RUST_TRAINER": str(real_trainer)})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return cwd, args


def load(cwd: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'orchestrate.db'}")


@pytest.mark.real
def test_real_tune_completes_with_finite_values(e2e_study: tuple[Path, list[str]]) -> None:
    cwd, _ = e2e_study
    trials = load(cwd, "e2e").trials[:4]

    # Four trials, each completed with a finite val_loss and its accuracy.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert all(math.isfinite(t.value or math.nan) for t in trials)
    assert all(0 < t.user_attrs["val_accuracy"] <= 1 for t in trials)


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_rerun_resumes_without_duplicating(
    e2e_study: tuple[Path, list[str]], real_trainer: Path
) -> None:
    cwd, args = e2e_study
    env = {"RUST_TRAINER": str(real_trainer)}

    again = run_orchestrate(args, cwd=cwd, env=env)
    more = run_orchestrate([*args, "--trials", "6"], cwd=cwd, env=env)
    trials = load(cwd, "e2e").trials

    # The same command again has nothing to run and says so.
    assert again.returncode == 0 and "nothing to run" in again.stdout
    # Asking for six runs two more: six trials, six folders, no point run twice.
    assert more.returncode == 0 and "ran 2 trials" in more.stdout
    assert [t.number for t in trials] == list(range(6))
    assert len(list((cwd / "runs" / "e2e").iterdir())) == 6
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6


@pytest.mark.real
def test_real_best_command_reproduces_the_val_loss(
    e2e_study: tuple[Path, list[str]], real_trainer: Path, tmp_path: Path
) -> None:
    cwd, _ = e2e_study
    best = run_orchestrate(["best", "--study", "e2e"], cwd=cwd)
    command = best.stdout.splitlines()[-1]

    # Pasted into a shell elsewhere, the printed command trains the same model again ...
    rerun = subprocess.run(
        command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    result = json.loads(rerun.stdout.splitlines()[-1])
    # ... and reaches the same val_loss, to the last digit.
    assert best.returncode == 0 and rerun.returncode == 0, rerun.stderr[-2000:]
    assert command.startswith(f"{real_trainer} train ")
    assert result["event"] == "result"
    assert result["val_loss"] == load(cwd, "e2e").best_value


@pytest.mark.real
def test_real_trials_table_shows_every_trial(e2e_study: tuple[Path, list[str]]) -> None:
    cwd, _ = e2e_study
    completed = run_orchestrate(["trials", "--study", "e2e"], cwd=cwd)

    # One row per trial, with its state.
    assert completed.returncode == 0
    assert completed.stdout.count("COMPLETE") == len(load(cwd, "e2e").trials)


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_random_sampler_with_a_median_pruner_prunes(
    real_trainer: Path, data_dir: Path, tmp_path: Path, marker: str
) -> None:
    # Two trials to compare against, then every worse-than-median trial stops at epoch 1.
    args = ["tune", "--trials", "7", "--sampler", "random", "--seed", "1", "--epochs", "3"]
    args += ["--pruner", "median", "--pruner-startup-trials", "2", "--data-dir", str(data_dir)]
    completed = run_orchestrate(
        [*args, *REAL_FLAGS], cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)}
    )
    states = [t.state for t in load(tmp_path, "cnn-mnist").trials]

    # The random sampler ran all seven trials, and the pruner stopped some of them.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(states) == 7
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    # A pruned trial says so, with the tail of its stderr; its trainer is gone.
    pruned = [t for t in load(tmp_path, "cnn-mnist").trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["fail_reason"] == "pruned" for t in pruned)
    assert all("stderr_tail" in t.user_attrs for t in pruned)
    assert not trainer_processes(marker)


@pytest.mark.real
def test_real_train_passes_through_and_keeps_exit_codes(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    env = {"RUST_TRAINER": str(real_trainer)}
    base = ["train", "--epochs", "1", *REAL_FLAGS]

    ok = run_orchestrate([*base, "--data-dir", str(data_dir)], cwd=tmp_path, env=env)
    bad_flag = run_orchestrate(
        [*base, "--data-dir", str(data_dir), "--lr", "-1"], cwd=tmp_path, env=env
    )
    no_data = run_orchestrate([*base, "--data-dir", str(tmp_path)], cwd=tmp_path, env=env)

    # A good run shows its epoch and result, and exits 0.
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "epoch 1/1" in ok.stdout and "completed" in ok.stdout
    # A bad flag exits 2 and missing data 3, as the trainer does.
    assert bad_flag.returncode == 2 and "--lr" in bad_flag.stderr
    assert no_data.returncode == 3


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("sigint_raises")
def test_ctrl_c_during_tune_exits_130_and_keeps_the_study(
    fake_trainer: FakeTrainer, in_tmp: Path
) -> None:
    # The trainer has its own session; Ctrl-C reaches only the orchestrator. Simulate it.
    trainer = fake_trainer("start(); os.kill(os.getppid(), signal.SIGINT); time.sleep(600)")
    data = str(fake_data(in_tmp))

    result = invoke(
        "tune", "--trainer", str(trainer), "--trials", "3", "--seed", "1", "--data-dir", data
    )
    trials = optuna.load_study(study_name="cnn-mnist", storage="sqlite:///orchestrate.db").trials

    # The shell convention for SIGINT, and a hint that a rerun resumes.
    assert result.exit_code == 130
    assert "run the same command again to resume" in result.output
    # The interrupted trial is recorded as such; no other trial started, and its parameters
    # wait in the queue for the rerun.
    assert [t.user_attrs.get("fail_reason") for t in trials] == ["interrupted", None]
    assert trials[1].state == TrialState.WAITING and trials[1].params == trials[0].params


@pytest.mark.real
def test_real_grid_over_a_toml_space_runs_each_point_once(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    space = tmp_path / "two-points.toml"
    space.write_text(
        '[params.lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-1\nlog = true\n'
        "grid = [1e-3, 3e-3]\n\n"
        '[fixed.optimizer]\nvalue = "adamw"\n'
    )
    args = ["tune", "--space", str(space), "--sampler", "grid", "--trials", "5", "--seed", "0"]
    args += ["--epochs", "1", "--data-dir", str(data_dir), *REAL_FLAGS]

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})
    trials = load(tmp_path, "cnn-mnist").trials

    # The two grid points run once each, then the study stops and says why.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "stopped: the grid is exhausted" in completed.stdout
    assert sorted(t.params["lr"] for t in trials) == [1e-3, 3e-3]
    # The fixed value from the file reaches the trainer.
    assert all("--optimizer adamw" in t.user_attrs["command"] for t in trials)


@pytest.mark.real
@pytest.mark.timeout(120)
def test_real_ctrl_c_during_train_stops_the_trainer_and_exits_130(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    args = ["train", "--data-dir", str(data_dir), "--epochs", "50", *REAL_FLAGS]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUST_TRAINER": str(real_trainer)}
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # As in a terminal: SIGINT interrupts (a background job would ignore it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    # Press Ctrl-C once the first epoch is shown.
    for line in process.stdout:
        if line.startswith("epoch 1/50"):
            break
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)

    # The trainer got the interrupt, printed its stopped result, and its exit code is ours.
    assert process.returncode == 130
    assert "stopped: val_loss" in rest
    assert "epoch 50/50" not in rest


@pytest.mark.real
@pytest.mark.timeout(600)
def test_real_resnet_tune_on_a_cifar10_subset(
    real_trainer: Path, cifar_dir: Path, tmp_path: Path
) -> None:
    # The built-in ResNet space, two epochs (cosine gets one of warm-up), a narrow ResNet-18
    # through the `--` pass-through.
    args = ["tune", "--model", "resnet18", "--dataset", "cifar10", "--trials", "2"]
    args += ["--epochs", "2", "--pruner", "none", "--seed", "0", "--threads", "2"]
    args += ["--data-dir", str(cifar_dir), "--train-limit", "300", "--val-fraction", "0.1"]
    args += ["--", "--width", "0.125", "--eval-batch-size", "250"]
    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})
    trials = load(tmp_path, "resnet18-cifar10").trials

    # Both trials complete with finite values, and the pass-through flags reached them.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(math.isfinite(t.value or math.nan) for t in trials)
    for trial in trials:
        command = shlex.split(trial.user_attrs["command"])
        assert command[command.index("--width") + 1] == "0.125"
        assert "--nesterov" in command and "--schedule" in command


@pytest.mark.real
def test_real_pass_through_flags_must_match_on_resume(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    env = {"RUST_TRAINER": str(real_trainer)}
    base = ["tune", "--trials", "1", "--epochs", "1", "--data-dir", str(data_dir), "--seed", "0"]
    first = run_orchestrate([*base, *REAL_FLAGS, "--", "--hidden", "64"], cwd=tmp_path, env=env)
    other = run_orchestrate(
        [*base, "--trials", "2", *REAL_FLAGS, "--", "--hidden", "32"], cwd=tmp_path, env=env
    )

    # Trials with another architecture would not be comparable: refused, naming the flags.
    assert first.returncode == 0, first.stderr[-2000:]
    assert other.returncode == 2
    assert "extra" in other.stderr and "--hidden" in other.stderr


@pytest.mark.real
@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("no trainer", "not an executable file"),
        ("a trainer that cannot run", "did not describe its flags"),
        ("no data", "holds no mnist files"),
        ("a parameter the trainer lacks", "'learning_rate' is not a flag of the trainer"),
        ("a choice the trainer lacks", "'lbfgs' is not a --optimizer choice"),
        ("a grid without points", "the grid sampler needs grid points for 'lr'"),
        ("a misspelt flag after --", "'--widht' after `--` is not one"),
    ],
)
def test_real_configuration_errors_exit_2_before_any_study(
    real_trainer: Path, data_dir: Path, tmp_path: Path, marker: str, case: str, words: str
) -> None:
    broken = tmp_path / "rust-trainer"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    broken.chmod(0o755)
    space = tmp_path / "space.toml"
    space.write_text(
        {
            "a parameter the trainer lacks": '[params.learning_rate]\ntype = "float"\n'
            "low = 1e-4\nhigh = 1e-1\n",
            "a choice the trainer lacks": '[params.optimizer]\ntype = "categorical"\n'
            'choices = ["sgd", "lbfgs"]\n',
        }.get(case, '[params.lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-1\n')
    )
    args = ["tune", "--trials", "2", "--epochs", "1", "--space", str(space), *REAL_FLAGS]
    args += ["--data-dir", str(tmp_path / "empty" if case == "no data" else data_dir)]
    args += {
        "no trainer": ["--trainer", str(tmp_path / "nope")],
        "a trainer that cannot run": ["--trainer", str(broken)],
        "a grid without points": ["--sampler", "grid"],
        "a misspelt flag after --": ["--", "--widht", "0.5"],
    }.get(case, [])

    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})

    # A usage error: exit 2, with a message that names what to fix.
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert words in completed.stderr
    # Found before anything was stored or run: no storage, no study, no trial, no trainer.
    assert not (tmp_path / "orchestrate.db").exists()
    assert not (tmp_path / "runs").exists()
    assert not trainer_processes(marker)


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_timeout_bounds_the_study(
    real_trainer: Path, data_dir: Path, tmp_path: Path, marker: str
) -> None:
    args = ["tune", "--trials", "50", "--epochs", "1", "--timeout", "3", "--seed", "0"]
    args += ["--pruner", "none", "--data-dir", str(data_dir), *REAL_FLAGS]

    started = time.monotonic()
    completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})
    seconds = time.monotonic() - started
    trials = load(tmp_path, "cnn-mnist").trials

    # No trial starts after three seconds; the one running then finishes; tune says why
    # it stopped short of fifty.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "stopped: the --timeout of 3 s was reached" in completed.stdout
    assert 1 <= len(trials) < 50 and seconds < 60
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert not trainer_processes(marker)
