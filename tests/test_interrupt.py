"""Ending a study on SIGINT or SIGTERM: the running trainers stop, their trials are FAIL
(interrupted) and queued again, the exit code is 128 + the signal, and a rerun finishes."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from helpers import (
    REAL_FLAGS,
    start_orchestrate,
    trainer_processes,
    wait_until,
)
from optuna.trial import TrialState

from orchestrator.interrupt import Interrupter, SecondSignal
from orchestrator.runner import TrainerProcess

FakeTrainer = Callable[..., Path]


def test_a_signal_stops_every_tracked_process_and_one_started_after_it(
    fake_trainer: FakeTrainer,
) -> None:
    interrupter = Interrupter()
    trainer = str(fake_trainer("start(); time.sleep(600)"))

    with TrainerProcess([trainer, "train"]) as first, interrupter.tracking(first):
        next(first.events())
        interrupter.interrupt(signal.SIGTERM)
        with TrainerProcess([trainer, "train"]) as late, interrupter.tracking(late):
            late_outcome = late.wait()
        outcome = first.wait()

    # Both end by the SIGTERM, the late one as soon as it is tracked; the signal is kept.
    assert outcome.signal == signal.SIGTERM and late_outcome.signal == signal.SIGTERM
    assert interrupter.signal == signal.SIGTERM


def test_a_second_signal_kills_and_raises(fake_trainer: FakeTrainer, sigint_raises: None) -> None:
    # (SIGINT taken even when the suite runs as a background job, which ignores it.)
    interrupter = Interrupter()
    # A trainer that ignores SIGTERM, as one stuck in a long batch would seem to.
    trainer = fake_trainer(
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); start(); time.sleep(600)"
    )

    with (
        interrupter.handling_signals(),
        TrainerProcess([str(trainer), "train"]) as process,
        interrupter.tracking(process),
    ):
        next(process.events())
        signal.raise_signal(signal.SIGINT)
        # The first signal only asks; the second kills the group and stops the caller.
        with pytest.raises(SecondSignal):
            signal.raise_signal(signal.SIGINT)
        outcome = process.wait()

    assert outcome.signal == signal.SIGKILL
    assert interrupter.signal == signal.SIGINT


def test_handlers_are_restored_and_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        before_term = signal.getsignal(signal.SIGTERM)
        with Interrupter().handling_signals():
            # A background job's ignored SIGINT stays ignored; SIGTERM is taken.
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not before_term
        # Afterwards both are as they were.
        assert signal.getsignal(signal.SIGTERM) is before_term
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_handlers_are_not_touched_outside_the_main_thread() -> None:
    seen: list[object] = []

    def worker() -> None:
        with Interrupter().handling_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()

    # Only the main thread may install handlers; elsewhere nothing changes (and nothing fails).
    assert seen == [before]


@pytest.mark.real
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("sig", "code", "n_jobs"),
    [(signal.SIGINT, 130, 1), (signal.SIGTERM, 143, 2), (signal.SIGHUP, 129, 1)],
    ids=["SIGINT", "SIGTERM-two-trials-running", "SIGHUP"],
)
def test_real_signal_to_tune_ends_its_trials_and_a_rerun_resumes(
    real_trainer: Path,
    data_dir: Path,
    tmp_path: Path,
    marker: str,
    sig: signal.Signals,
    code: int,
    n_jobs: int,
) -> None:
    args = ["tune", "--trials", "3", "--epochs", "2", "--seed", "0", "--sampler", "random"]
    args += ["--pruner", "none", "--n-jobs", str(n_jobs), "--data-dir", str(data_dir)]
    args += REAL_FLAGS
    env = {"RUST_TRAINER": str(real_trainer)}
    orchestrate = start_orchestrate(args, cwd=tmp_path, env=env)

    # Wait until n_jobs trials are training: started and without a result. (Counting
    # trainer processes would also count one started ahead of a trial to come.)
    def training() -> int:
        logs = [path.read_text() for path in tmp_path.glob("runs/*/trial-*/events.jsonl")]
        return sum('"start"' in log and '"result"' not in log for log in logs)

    assert wait_until(lambda: training() == n_jobs, within=60)

    orchestrate.send_signal(sig)
    _, stderr = orchestrate.communicate(timeout=60)
    study = optuna.load_study(
        study_name="cnn-mnist", storage="sqlite:///" + str(tmp_path / "orchestrate.db")
    )
    trials = study.trials

    # The shell's code for the signal, and a message that says how to resume.
    assert orchestrate.returncode == code, stderr[-3000:]
    assert f"interrupted by {sig.name}" in stderr and "run the same command again" in stderr
    # No trainer outlives the orchestrator.
    assert wait_until(lambda: not trainer_processes(marker), within=10)
    # Each running trial is FAIL (interrupted) and its parameters wait in the queue; the
    # storage holds nothing RUNNING.
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == "interrupted"]
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(interrupted) == n_jobs
    assert all(t.state == TrialState.FAIL for t in interrupted)
    assert sorted(json.dumps(t.params, sort_keys=True) for t in queued) == sorted(
        json.dumps(t.params, sort_keys=True) for t in interrupted
    )
    assert not [t for t in trials if t.state == TrialState.RUNNING]

    rerun = start_orchestrate(args, cwd=tmp_path, env=env)
    _, rerun_stderr = rerun.communicate(timeout=240)
    trials = study.trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    # The same command again reaches the three trials, starting with the queued ones.
    assert rerun.returncode == 0, rerun_stderr[-3000:]
    assert len(finished) == 3
    assert {t.number for t in queued} <= {t.number for t in finished}
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert wait_until(lambda: not trainer_processes(marker), within=10)
