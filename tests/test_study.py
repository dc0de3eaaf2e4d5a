from __future__ import annotations

import dataclasses
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import WRAPPER_BEHAVIOURS
from helpers import fake_data, marked_processes, process_gone, trainer_processes, wait_until
from optuna.trial import TrialState

from orchestrator import runner
from orchestrator.errors import ArgumentsError, Interrupted, StudyMismatch
from orchestrator.registry import SAMPLERS
from orchestrator.space import CategoricalParam, FixedParam, FloatParam, SearchSpace, cnn_space
from orchestrator.study import TrainerFlags, TuneConfig, divergence_penalty, tune

FakeTrainer = Callable[..., Path]


def config(trainer: Path, tmp_path: Path, **changes: Any) -> TuneConfig:
    base = TuneConfig(
        trainer=trainer,
        study_name="s",
        storage=f"sqlite:///{tmp_path / 'studies.db'}",
        trials=4,
        space=cnn_space(),
        flags=TrainerFlags(epochs=3, threads=1, data_dir=fake_data(tmp_path)),
        sampler="random",
        pruner="none",
        seed=1,
        runs_dir=tmp_path / "runs",
    )
    return dataclasses.replace(base, **changes)


def load(cfg: TuneConfig) -> optuna.Study:
    return optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)


def test_a_study_runs_its_trials_and_records_them(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    cfg = config(fake_trainer(), tmp_path)

    summary = tune(cfg)
    trials = load(cfg).trials

    # Every trial completes with the result event's val_loss as its value.
    assert summary.ran == 4 and summary.states == {"COMPLETE": 4}
    assert all(
        t.state == TrialState.COMPLETE and math.isfinite(t.value or math.nan) for t in trials
    )
    # Each trial has its attributes and its folder with command, events and stderr.
    first = trials[0]
    assert first.user_attrs["status"] == "completed"
    assert first.user_attrs["epochs_run"] == 3 and first.user_attrs["best_epoch"] == 3
    assert first.user_attrs["parameters"] == 1234
    folder = Path(first.user_attrs["trial_dir"])
    assert folder == tmp_path / "runs" / "s" / "trial-0000"
    assert {p.name for p in folder.iterdir()} == {"command.txt", "events.jsonl", "stderr.log"}
    # The recorded command is absolute, carries the study's seed, and matches the folder's.
    command = shlex.split(first.user_attrs["command"])
    assert command[0] == str(cfg.trainer) and command[1] == "train"
    assert command[command.index("--seed") + 1] == "1"
    assert command[command.index("--data-dir") + 1] == str(tmp_path)
    assert (folder / "command.txt").read_text().strip() == first.user_attrs["command"]


def test_every_epoch_is_reported_as_an_intermediate_value(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    cfg = config(fake_trainer(), tmp_path, trials=1)

    tune(cfg)
    trial = load(cfg).trials[0]

    # One intermediate value per epoch, keyed by the 1-based epoch.
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert trial.intermediate_values[3] == trial.value


def test_rerunning_resumes_to_the_requested_total(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    cfg = config(fake_trainer(), tmp_path, trials=2)

    first = tune(cfg)
    second = tune(dataclasses.replace(cfg, trials=5))
    third = tune(dataclasses.replace(cfg, trials=5))
    trials = load(cfg).trials

    # The second run adds only the missing trials; the third has nothing left to do.
    assert (first.ran, second.ran, third.ran) == (2, 3, 0)
    assert third.stop_reason is not None and "already has" in third.stop_reason
    # Trials are not duplicated: five numbers, five folders, five different points.
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert len(list((tmp_path / "runs" / "s").iterdir())) == 5
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5


def test_a_resumed_study_keeps_its_seed(fake_trainer: FakeTrainer, tmp_path: Path) -> None:
    cfg = config(fake_trainer(), tmp_path, trials=1, seed=None)

    first = tune(cfg)
    second = tune(dataclasses.replace(cfg, trials=2))
    commands = [t.user_attrs["command"] for t in load(cfg).trials]

    # A new study without --seed draws one and stores it; resuming uses the stored one.
    assert first.seed == second.seed
    assert all(f"--seed {first.seed} " in c for c in commands)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"flags": TrainerFlags(epochs=5, threads=1)}, "epochs: study has 3, this command 5"),
        ({"seed": 2}, "seed: study has 1, this command 2"),
        ({"space": SearchSpace("x", (FloatParam("lr", 0.1, 0.2),))}, "space: study has"),
    ],
)
def test_resuming_with_other_settings_is_refused(
    fake_trainer: FakeTrainer, tmp_path: Path, change: dict[str, Any], words: str
) -> None:
    cfg = config(fake_trainer(), tmp_path, trials=1)
    tune(cfg)
    if "flags" in change:
        change = {"flags": dataclasses.replace(change["flags"], data_dir=cfg.flags.data_dir)}

    # Trials with other epochs, seed or space would not be comparable.
    with pytest.raises(StudyMismatch, match=words):
        tune(dataclasses.replace(cfg, trials=2, **change))


# A discrete space with a conditional parameter, which bruteforce can enumerate.
DISCRETE = SearchSpace(
    "discrete",
    (
        CategoricalParam("optimizer", ("sgd", "adam")),
        CategoricalParam("batch_size", (64, 128, 256)),
        CategoricalParam("momentum", (0.8, 0.9), when=(("optimizer", "sgd"),)),
    ),
)


# NOTE: auto (OptunaHub's AutoSampler) needs the network to fetch; it is seeded the same way
# but cannot be checked here.
@pytest.mark.parametrize("sampler", sorted(set(SAMPLERS) - {"auto"}))
def test_a_seeded_sampler_is_reproducible(
    fake_trainer: FakeTrainer, tmp_path: Path, sampler: str
) -> None:
    trainer = fake_trainer()
    space = DISCRETE if sampler == "bruteforce" else cnn_space()
    runs = []
    for name in ("a", "b"):
        cfg = config(
            trainer, tmp_path, study_name=name, sampler=sampler, trials=3, seed=11, space=space
        )
        tune(cfg)
        runs.append([(t.params, t.value) for t in load(cfg).trials])

    # The same seed gives the same points and values, trial by trial.
    assert runs[0] == runs[1]


def test_a_diverging_trainer_is_pruned_with_a_penalty_and_the_study_goes_on(
    fake_trainer: FakeTrainer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Diverges for a large lr, the way the real trainer does: result, error event, exit 4;
    # one epoch first, so the penalty is twice the last finite val_loss.
    trainer = fake_trainer(
        """
        start()
        if LR > 3e-3:
            emit("epoch", epoch=1, epochs=EPOCHS, train_loss=9.0, val_loss=3.5,
                 val_accuracy=0.1, lr=LR, seconds=0.01, samples_per_second=1e4)
            print("epoch 2: loss is NaN", file=sys.stderr)
            result("diverged")
            emit("error", kind="diverged", message="the loss became non-finite; lower --lr")
            sys.exit(4)
        train()
        """
    )
    cfg = config(trainer, tmp_path, trials=6, seed=3)

    with caplog.at_level(logging.WARNING):
        summary = tune(cfg)
    trials = load(cfg).trials
    diverged = [t for t in trials if t.user_attrs.get("fail_reason") == "diverged"]

    # All six trials ran: the divergences did not stop the study.
    assert summary.ran == 6 and diverged and len(diverged) < 6
    # A diverged trial is PRUNED, so samplers see it, with the penalty at the epoch where it
    # diverged: twice its last finite val_loss, since that beats twice ln(10).
    first = diverged[0]
    assert first.state == TrialState.PRUNED
    assert first.intermediate_values == {1: 3.5, 2: 7.0}
    assert first.user_attrs["penalty"] == 7.0 and first.user_attrs["diverged_at_epoch"] == 2
    # It keeps the trainer's reason, message, exit code and stderr tail.
    attrs = first.user_attrs
    assert attrs["fail_message"] == "the loss became non-finite; lower --lr"
    assert attrs["exit_code"] == 4
    assert attrs["stderr_tail"] == "epoch 2: loss is NaN"
    assert "command" in attrs
    # One WARNING per diverged trial, with params, reason and stderr; no traceback.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(diverged)
    assert "diverged" in warnings[0].getMessage() and "'lr'" in warnings[0].getMessage()
    assert "stderr: epoch 2: loss is NaN" in warnings[0].getMessage()
    assert "Traceback" not in caplog.text


def test_a_divergence_at_the_first_epoch_reports_twice_ln_10() -> None:
    epoch, penalty = divergence_penalty(())

    # With no finite val_loss, the floor: twice the loss of a uniform guess over 10 classes.
    assert (epoch, penalty) == (1, 2 * math.log(10))


def test_a_crashing_trainer_becomes_fail_and_the_study_goes_on(
    fake_trainer: FakeTrainer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = fake_trainer(
        """
        start()
        if LR > 3e-3:
            print("thread 'main' panicked", file=sys.stderr)
            emit("error", kind="internal", message="index out of range")
            sys.exit(1)
        train()
        """
    )
    cfg = config(trainer, tmp_path, trials=6, seed=3)

    with caplog.at_level(logging.WARNING):
        summary = tune(cfg)
    failed = [t for t in load(cfg).trials if t.state == TrialState.FAIL]

    # All six trials ran; the crashes are FAIL, with reason, message, code and stderr.
    assert summary.ran == 6 and failed and len(failed) < 6
    attrs = failed[0].user_attrs
    assert (attrs["fail_reason"], attrs["fail_message"]) == ("crashed", "index out of range")
    assert attrs["exit_code"] == 1 and attrs["stderr_tail"] == "thread 'main' panicked"
    # One WARNING per failed trial and no traceback from Optuna.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(failed)
    assert "Traceback" not in caplog.text


def test_a_killed_trainer_is_recorded_with_its_signal(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    cfg = config(fake_trainer("start(); os.kill(os.getpid(), signal.SIGKILL)"), tmp_path, trials=2)

    tune(cfg)
    trials = load(cfg).trials

    # A signal is a crash, recorded with the signal's number instead of an exit code.
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert trials[0].user_attrs["fail_reason"] == "crashed"
    assert trials[0].user_attrs["signal"] == 9 and "exit_code" not in trials[0].user_attrs


def test_a_malformed_event_fails_the_trial(fake_trainer: FakeTrainer, tmp_path: Path) -> None:
    cfg = config(fake_trainer("start(); emit('result', status='done')"), tmp_path, trials=1)

    tune(cfg)
    trial = load(cfg).trials[0]

    # A broken contract is bad output, and the reason names the field.
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "bad output"
    assert "'status'" in trial.user_attrs["fail_message"]


def test_a_pruned_trial_ends_its_process(fake_trainer: FakeTrainer, tmp_path: Path) -> None:
    # Each epoch takes a moment, and the process records its pid for the check below.
    trainer = fake_trainer(
        f"""
        open({str(tmp_path / "pids")!r}, "a").write(f"{{os.getpid()}}\\n")
        start()
        for n in range(1, EPOCHS + 1):
            epoch(n)
            time.sleep(0.05)
        result()
        """
    )
    cfg = config(trainer, tmp_path, trials=8, pruner="median", pruner_startup_trials=2, seed=5)

    summary = tune(cfg)
    pruned = [t for t in load(cfg).trials if t.state == TrialState.PRUNED]

    # With two trials to compare against, a worse trial is stopped early.
    assert summary.ran == 8 and pruned
    assert pruned[0].user_attrs["status"] == "pruned"
    assert pruned[0].user_attrs["epochs_run"] < 3
    # No trainer process outlives its trial.
    pids = [int(line) for line in (tmp_path / "pids").read_text().split()]
    assert all(process_gone(pid) for pid in pids)


@pytest.mark.parametrize("pruner", ["median", "percentile", "successive-halving", "hyperband"])
def test_each_pruner_prunes(fake_trainer: FakeTrainer, tmp_path: Path, pruner: str) -> None:
    cfg = config(
        fake_trainer(), tmp_path, trials=12, pruner=pruner, pruner_startup_trials=2, seed=2
    )
    cfg = dataclasses.replace(cfg, flags=dataclasses.replace(cfg.flags, epochs=9))

    tune(cfg)
    states = [t.state for t in load(cfg).trials]

    # Every pruner stops at least one of the worse trials.
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states


def test_the_grid_stops_when_exhausted(fake_trainer: FakeTrainer, tmp_path: Path) -> None:
    space = SearchSpace(
        "tiny",
        (
            FloatParam("lr", 1e-4, 1e-1, log=True, grid=(1e-3, 1e-2)),
            CategoricalParam("optimizer", ("sgd", "adam")),
        ),
    )
    cfg = config(fake_trainer(), tmp_path, space=space, sampler="grid", trials=10)

    first = tune(cfg)
    again = tune(cfg)
    points = {tuple(sorted(t.params.items())) for t in load(cfg).trials}

    # Four grid points, each run once, then the study stops and says why.
    assert first.ran == 4 and len(points) == 4
    assert first.stop_reason == "the grid is exhausted"
    # A rerun does not repeat a point.
    assert again.ran == 0 and again.stop_reason == "the grid is exhausted"


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("sigint_raises")
def test_an_interrupt_ends_the_process_marks_the_trial_and_queues_it_again(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    # Ctrl-C reaches the orchestrator (the trainer has its own session): simulate it.
    trainer = fake_trainer(
        f"""
        open({str(tmp_path / "pid")!r}, "w").write(str(os.getpid()))
        start()
        os.kill(os.getppid(), signal.SIGINT)
        time.sleep(600)
        """
    )
    cfg = config(trainer, tmp_path, trials=3)

    with pytest.raises(Interrupted, match="interrupted by SIGINT") as raised:
        tune(cfg)
    trials = load(cfg).trials

    # The exit code follows the shell's convention for SIGINT.
    assert raised.value.exit_code == 130
    # The trial is a FAIL marked interrupted, and its process is gone.
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"] == "interrupted"
    assert process_gone(int((tmp_path / "pid").read_text()))
    # Its parameters wait in the queue for the next run; no other trial started.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params
    assert trials[1].system_attrs["failed_trial"] == 0


@pytest.mark.real
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:Fixed parameter lr")
def test_real_diverging_trial_is_pruned_with_a_penalty_and_the_study_goes_on(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    cfg = config(
        real_trainer,
        tmp_path,
        trials=3,
        flags=TrainerFlags(epochs=1, train_limit=1000, val_fraction=0.02, threads=1,
                           data_dir=data_dir),
    )  # fmt: skip
    study = optuna.create_study(study_name=cfg.study_name, storage=cfg.storage)
    # lr 1e6 is far outside the space, as a user's enqueued guess may be.
    study.enqueue_trial(
        {"lr": 1e6, "batch_size": 64, "optimizer": "sgd", "weight_decay": 1e-5, "dropout": 0.1},
        skip_if_exists=False,
    )

    summary = tune(cfg)
    trials = load(cfg).trials

    # The enqueued trial runs first and diverges in its first epoch: PRUNED, with the
    # penalty 2 ln(10) at epoch 1 and the trainer's reason, code and stderr.
    assert trials[0].params["lr"] == 1e6
    assert trials[0].state == TrialState.PRUNED
    assert trials[0].intermediate_values == {1: 2 * math.log(10)}
    assert trials[0].user_attrs["fail_reason"] == "diverged"
    assert trials[0].user_attrs["exit_code"] == 4
    assert "non-finite" in trials[0].user_attrs["fail_message"]
    assert "stderr_tail" in trials[0].user_attrs
    # The sampled trials after it complete with finite values.
    assert summary.ran == 3
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 2
    assert all(math.isfinite(t.value or math.nan) for t in trials[1:])


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_broken_data_fails_every_trial_and_the_study_goes_on(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken" / "mnist"
    broken.mkdir(parents=True)
    for source in (data_dir / "mnist").iterdir():
        data = source.read_bytes()
        # The training images are cut to a tenth; the other files are intact.
        cut = len(data) // 10 if source.name.startswith("train-images") else len(data)
        (broken / source.name).write_bytes(data[:cut])
    cfg = config(
        real_trainer,
        tmp_path,
        trials=2,
        flags=TrainerFlags(epochs=1, train_limit=1000, threads=1, data_dir=broken.parent),
    )

    summary = tune(cfg)
    trials = load(cfg).trials

    # Both trials ran, and each failed as a data error with the trainer's message.
    assert summary.ran == 2
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["fail_reason"] == "data error" for t in trials)
    assert all(t.user_attrs["exit_code"] == 3 for t in trials)
    assert "train-images" in trials[0].user_attrs["fail_message"]


@pytest.mark.real
def test_real_trial_past_its_time_limit_fails_as_timeout(
    real_trainer: Path, data_dir: Path, tmp_path: Path, marker: str
) -> None:
    # Loading MNIST alone takes longer than a tenth of a second.
    flags = TrainerFlags(epochs=1, train_limit=1000, threads=1, data_dir=data_dir)
    cfg = config(real_trainer, tmp_path, trials=1, flags=flags, trial_timeout=0.1)

    tune(cfg)
    trial = load(cfg).trials[0]

    # The process is ended and the trial is a FAIL that says why, with its stderr tail.
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "timeout"
    assert "stderr_tail" in trial.user_attrs
    assert not trainer_processes(marker)


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_every_failure_kind_is_recorded_with_its_stderr_tail(
    wrapped_trainer: Path, data_dir: Path, tmp_path: Path, marker: str
) -> None:
    # One trial per behaviour of the wrapped real trainer, each run once (grid).
    space = SearchSpace("kinds", (CategoricalParam("behaviour", WRAPPER_BEHAVIOURS),))
    flags = TrainerFlags(epochs=1, train_limit=1000, val_fraction=0.02, threads=1,
                         data_dir=data_dir)  # fmt: skip
    cfg = config(
        wrapped_trainer, tmp_path, space=space, sampler="grid", flags=flags,
        trials=len(WRAPPER_BEHAVIOURS),
    )  # fmt: skip

    summary = tune(cfg)
    trials = {t.params["behaviour"]: t for t in load(cfg).trials}

    # Every behaviour ran once, and the study went on after each failure.
    assert summary.ran == len(WRAPPER_BEHAVIOURS) and sorted(trials) == sorted(WRAPPER_BEHAVIOURS)
    ending = {b: (t.state, t.user_attrs.get("fail_reason")) for b, t in trials.items()}
    # Each way of failing is told apart; a diverged trial is pruned with its penalty.
    assert ending == {
        "ok": (TrialState.COMPLETE, None),
        "noisy": (TrialState.COMPLETE, None),
        "crash": (TrialState.FAIL, "crashed"),
        "oom": (TrialState.FAIL, "out of memory"),
        "diverge": (TrialState.PRUNED, "diverged"),
        "data": (TrialState.FAIL, "data error"),
        "bad-output": (TrialState.FAIL, "bad output"),
    }
    # Each failure keeps the tail of stderr and how the process ended.
    for behaviour in ("crash", "oom", "diverge", "data", "bad-output"):
        attrs = trials[behaviour].user_attrs
        assert "stderr_tail" in attrs and "fail_message" in attrs, behaviour
        assert ("exit_code" in attrs) != ("signal" in attrs), behaviour
    assert trials["crash"].user_attrs["signal"] == signal.SIGABRT
    # The trainer itself reports a failed allocation as a device problem: exit 5.
    assert trials["oom"].user_attrs["exit_code"] == 5
    assert "allocate memory" in trials["oom"].user_attrs["fail_message"]
    assert "/nonexistent/datasets" in trials["data"].user_attrs["stderr_tail"]
    assert "must be an integer" in trials["bad-output"].user_attrs["fail_message"]
    # 1 MiB on stderr and a stray stdout line did not stall or fail the run; both are kept.
    noisy = Path(trials["noisy"].user_attrs["trial_dir"])
    assert (noisy / "stderr.log").stat().st_size > 1 << 20
    assert "warming up (not an event)" in (noisy / "events.jsonl").read_text()
    # No trial is left running, and no trainer process outlives its trial.
    assert all(t.state.is_finished() for t in trials.values())
    assert wait_until(lambda: not trainer_processes(marker), within=10)


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_tpe_learns_to_avoid_the_region_where_training_diverges(
    real_trainer: Path, data_dir: Path, tmp_path: Path, marker: str
) -> None:
    # SGD with lr over six decades; measured with this trainer on this MNIST subset, every
    # lr from 70 up diverges in the first epoch. The region above 100 is a third of the
    # log-range, so random search would put a third of its proposals there.
    low, high, diverging = 1e-2, 1e4, 100.0
    space = SearchSpace(
        "lr-only", (FloatParam("lr", low, high, log=True),), (FixedParam("optimizer", "sgd"),)
    )
    flags = TrainerFlags(epochs=1, train_limit=1000, val_fraction=0.02, threads=1,
                         data_dir=data_dir)  # fmt: skip
    startup, total = 4, 14
    cfg = config(
        real_trainer, tmp_path, space=space, flags=flags, sampler="tpe", trials=total, seed=0,
        sampler_startup_trials=startup,
    )  # fmt: skip

    tune(cfg)
    trials = load(cfg).trials
    in_region = [t for t in trials if t.params["lr"] >= diverging]
    proposed = [t for t in trials[startup:] if t.params["lr"] >= diverging]
    random_share = (math.log(high) - math.log(diverging)) / (math.log(high) - math.log(low))

    # The region is what it was measured to be: every trial there diverged, and was kept
    # as a PRUNED trial with a penalty, so TPE saw it.
    assert in_region and all(t.user_attrs.get("fail_reason") == "diverged" for t in in_region)
    assert all(t.state == TrialState.PRUNED for t in in_region)
    # After its random start-up trials TPE proposes fewer points there than random search
    # would (a third of ten, 3.3), since the diverged trials rank below every finished one.
    # (Seeded, it proposes one.)
    assert len(proposed) < random_share * (total - startup)
    assert wait_until(lambda: not trainer_processes(marker), within=10)


@pytest.mark.real
def test_real_trials_started_ahead_train_as_trials_started_for_them(
    real_trainer: Path,
    data_dir: Path,
    tmp_path: Path,
    marker: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handed: list[tuple[str, ...]] = []
    hand_over = runner.Prestarted.hand_over

    def counting(spare: runner.Prestarted, rest: Any) -> bool:
        handed.append(tuple(rest))
        return hand_over(spare, rest)

    monkeypatch.setattr(runner.Prestarted, "hand_over", counting)
    started: list[float] = []
    prestarted_init = runner.Prestarted.__init__

    def starting(spare: runner.Prestarted, prefix: Any) -> None:
        started.append(time.monotonic())
        prestarted_init(spare, prefix)

    monkeypatch.setattr(runner.Prestarted, "__init__", starting)
    flags = TrainerFlags(
        epochs=1, train_limit=256, val_fraction=0.02, threads=1, data_dir=data_dir
    )
    studies = {}
    # The default for a binary trainer is to start ahead.
    for prestart in (None, False):
        cfg = config(
            real_trainer, tmp_path, study_name=f"ahead-{prestart}", flags=flags, prestart=prestart
        )
        assert tune(cfg).states == {"COMPLETE": 4}
        studies[prestart] = load(cfg).trials

    # Every trial after the first ran in a process started while the last one was recorded,
    # and was handed the seed and its sampled flags; none did with --no-prestart, and none
    # was started after the last trial.
    assert len(handed) == 3 and all(rest[:2] == ("--seed", "1") for rest in handed)
    assert len(started) == 3
    # The same trials, to the bit (the CPU is deterministic), with the same recorded commands.
    assert [t.value for t in studies[None]] == [t.value for t in studies[False]]
    commands = {p: [t.user_attrs["argv"][1:] for t in ts] for p, ts in studies.items()}
    assert commands[None] == commands[False]
    assert not any("--flags-from-stdin" in argv for argv in commands[None])
    # No process waiting for its flags outlives the study.
    assert not [argv for _, argv in marked_processes(marker) if "--flags-from-stdin" in argv]


def test_a_wrapper_script_gets_its_trials_started_for_them(
    fake_trainer: FakeTrainer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A wrapper script that needs --lr on its own command line, as one that picks a queue
    # or an environment by a flag would; the trainer behind it takes flags on stdin.
    real = fake_trainer()
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = train ]; then case " $* " in *\' --lr \'*) ;; *)\n'
        "  echo 'error: the wrapper needs --lr' >&2; exit 2;; esac; fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    started: list[tuple[str, ...]] = []
    prestarted_init = runner.Prestarted.__init__

    def counting(spare: runner.Prestarted, prefix: Any) -> None:
        started.append(tuple(prefix))
        prestarted_init(spare, prefix)

    monkeypatch.setattr(runner.Prestarted, "__init__", counting)

    # By default a script's trials start once sampled: nothing is started ahead.
    assert tune(config(wrapper, tmp_path, study_name="auto")).states == {"COMPLETE": 4}
    assert started == []

    # Asked to, tune starts the second trial's process ahead; gone before its flags came,
    # the trial runs in a process started for it, as does every trial after it.
    with caplog.at_level(logging.WARNING, logger="orchestrator.study"):
        forced = tune(config(wrapper, tmp_path, study_name="forced", prestart=True))
    assert forced.states == {"COMPLETE": 4}
    assert len(started) == 1
    warnings = [r.getMessage() for r in caplog.records if "started ahead" in r.getMessage()]
    assert len(warnings) == 1 and "trial 1" in warnings[0] and "--no-prestart" in warnings[0]
    trial_dir = Path(load(config(wrapper, tmp_path, study_name="forced")).trials[1]
                     .user_attrs["trial_dir"])  # fmt: skip
    assert "needs --lr" not in (trial_dir / "stderr.log").read_text()


@pytest.mark.parametrize(
    "wrapper_body",
    [
        # Swallows its stdin and runs the trainer with none: a process started ahead takes
        # its line of flags, and the trainer then stops on a usage error about them.
        'cat >/dev/null\nexec {real} "$@" </dev/null\n',
        # Drops --flags-from-stdin and runs the trainer anyway, stdin unread: it would train
        # on the shared flags alone, and is caught by the values its start event echoes.
        'args=()\nfor a in "$@"; do [ "$a" = --flags-from-stdin ] || args+=("$a"); done\n'
        'exec {real} "${{args[@]}}"\n',
    ],
    ids=["stdin-closed", "flag-dropped"],
)
def test_a_trial_whose_flags_never_reached_the_trainer_runs_again(
    fake_trainer: FakeTrainer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    wrapper_body: str,
) -> None:
    # The trainer loads for a while, as the real one does, so that a process started ahead
    # is still there when its trial comes.
    real = fake_trainer("time.sleep(0.5); train()")
    wrapper = tmp_path / "wrapper"
    wrapper.write_text("#!/bin/bash\n" + wrapper_body.format(real=real))
    wrapper.chmod(0o755)

    with caplog.at_level(logging.WARNING, logger="orchestrator.study"):
        summary = tune(config(wrapper, tmp_path, prestart=True))

    # The trial whose flags were lost ran again in a process started for it, as did every
    # trial after it: none failed, one warning said so, and every value is the one the
    # trial's own lr gives.
    assert summary.states == {"COMPLETE": 4}
    warnings = [r.getMessage() for r in caplog.records if "started ahead" in r.getMessage()]
    assert len(warnings) == 1 and "trial 1" in warnings[0]
    for trial in load(config(wrapper, tmp_path)).trials:
        lr = trial.params["lr"]
        assert trial.value == pytest.approx(abs(math.log10(lr) - math.log10(3e-3)) + 1 / 3)


def test_prestart_needs_a_trainer_that_takes_flags_on_stdin(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    # A trainer built before --flags-from-stdin: its description lacks the flag.
    real = fake_trainer()
    older = tmp_path / "older"
    older.write_text(
        f"#!{sys.executable}\n"
        "import json, os, subprocess, sys\n"
        "if sys.argv[1:2] == ['describe']:\n"
        f"    out = json.loads(subprocess.run([{str(real)!r}, 'describe'],\n"
        "                     capture_output=True, text=True).stdout)\n"
        "    out['flags'] = [f for f in out['flags'] if f['name'] != 'flags_from_stdin']\n"
        "    print(json.dumps(out)); sys.exit(0)\n"
        f"os.execv({str(real)!r}, [{str(real)!r}, *sys.argv[1:]])\n"
    )
    older.chmod(0o755)
    cfg = config(older, tmp_path, prestart=True)

    # Asked for, it is refused before any study exists, naming the flag and the way out.
    with pytest.raises(ArgumentsError, match=r"--prestart: .* does not take --flags-from-stdin"):
        tune(cfg)
    assert "s" not in optuna.get_all_study_names(storage=cfg.storage)
    # Left to the default, trials simply start once sampled.
    assert tune(dataclasses.replace(cfg, prestart=None)).states == {"COMPLETE": 4}


def test_a_second_signal_queues_the_killed_trial_again(
    fake_trainer: FakeTrainer, tmp_path: Path, sigint_raises: None
) -> None:
    # A trainer that ignores SIGTERM: only the second signal's SIGKILL ends it.
    trainer = fake_trainer(
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); start(); time.sleep(600)"
    )
    cfg = config(trainer, tmp_path, trials=2)
    events = tmp_path / "runs" / "s" / "trial-0000" / "events.jsonl"

    def interrupt_twice() -> None:
        wait_until(lambda: events.is_file() and '"start"' in events.read_text(), within=30)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_twice, daemon=True).start()
    with pytest.raises(Interrupted):
        tune(cfg)
    trials = load(cfg).trials

    # Killed by the second signal, the trial is FAIL and its parameters wait in the queue,
    # as after one signal; the rerun starts with them.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["fail_reason"] == "interrupted"
    assert trials[1].params == trials[0].params
