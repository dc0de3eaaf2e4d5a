from __future__ import annotations

import io
import math

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from orchestrator.errors import NoCompletedTrial
from orchestrator.events import EpochEvent, ErrorEvent, ResultEvent, StartEvent
from orchestrator.reports import best_lines, best_trial, event_line, trial_line, trials_table


def study_with_trials() -> optuna.Study:
    study = optuna.create_study(study_name="demo")
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    rows: list[tuple[float | None, TrialState, dict[str, object]]] = [
        (0.2, TrialState.COMPLETE, {"val_accuracy": 0.95, "command": "rust-trainer train"}),
        (None, TrialState.PRUNED, {"epochs_run": 1}),
        (None, TrialState.FAIL, {"fail_reason": "diverged", "exit_code": 4}),
        (0.1, TrialState.COMPLETE, {"val_accuracy": 0.97, "command": "rt train --lr 0.01"}),
    ]
    for number, (value, state, attrs) in enumerate(rows):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 10.0 ** -(number + 1)},
                distributions={"lr": dist},
                value=value,
                state=state,
                user_attrs=attrs,
            )
        )
    return study


def render(table: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    return out.getvalue()


def test_the_table_has_a_row_per_trial_with_its_ending() -> None:
    text = render(trials_table(study_with_trials()))

    # Parameters get their own column; each row says how the trial ended.
    assert " lr " in text
    assert "pruned at epoch 1" in text
    assert "diverged (exit code 4)" in text
    assert text.count("COMPLETE") == 2


def test_a_failed_trial_shows_no_result_even_with_its_attributes() -> None:
    study = study_with_trials()
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    # Its worker was lost after the trainer's result came: attributes, but no result.
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-3},
            distributions=dist,
            state=TrialState.FAIL,
            user_attrs={"val_accuracy": 0.9321, "val_loss": 0.3141},
        )
    )

    text = render(trials_table(study))

    assert "0.9321" not in text and "0.3141" not in text
    # Completed trials still show theirs.
    assert "0.97" in text


def test_best_is_the_lowest_val_loss_and_ends_with_its_command() -> None:
    best = best_trial(study_with_trials())
    lines = best_lines(best)

    # The best trial is the one with the lowest value, shown at full precision.
    assert best.number == 3 and "val_loss: 0.1" in lines
    # The command comes last, alone, so that it can be pasted into a shell.
    assert lines[-1] == "rt train --lr 0.01"


def test_best_without_a_completed_trial_is_an_error() -> None:
    study = optuna.create_study(study_name="empty")

    # The message names the study and what to do.
    with pytest.raises(NoCompletedTrial, match=r"'empty' has no completed trial.*tune"):
        best_trial(study)


def test_trial_lines_say_how_each_trial_ended() -> None:
    trials = study_with_trials().trials

    # Complete trials show their values; others their ending.
    assert trial_line(trials[0]).startswith("trial 0 COMPLETE val_loss 0.2 val_accuracy 0.95")
    assert "PRUNED at epoch 1" in trial_line(trials[1])
    assert "FAIL diverged (exit code 4)" in trial_line(trials[2])


def test_each_event_has_a_readable_line() -> None:
    start = StartEvent("0.1.0", "cnn", "mnist", "cpu", 2, 1111946, 1000, 1200, {})
    epoch = EpochEvent(2, 3, 0.5, 0.25, 0.9, 0.001, 1.5, 2000.0)
    result = ResultEvent("diverged", math.nan, math.nan, None, 0, 5.0)

    # Numbers are grouped and rounded for reading; NaN shows as nan.
    assert "1,111,946 parameters" in event_line(start)
    assert event_line(epoch).startswith("epoch 2/3  train_loss 0.5000  val_loss 0.2500")
    assert "val_loss nan" in event_line(result)
    assert "(data): missing" in event_line(ErrorEvent("data", "missing"))


def test_queued_trials_are_counted_and_retries_and_divergences_named() -> None:
    study = optuna.create_study(study_name="queue")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 10.0, log=True)}
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 5.0},
            distributions=dist,
            state=TrialState.PRUNED,
            intermediate_values={1: 4.6},
            user_attrs={"fail_reason": "diverged", "diverged_at_epoch": 1, "epochs_run": 0},
        )
    )
    study.add_trial(
        optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist, state=TrialState.FAIL)
    )
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-3},
            distributions=dist,
            state=TrialState.WAITING,
            system_attrs={"failed_trial": 1, "retry_history": [1]},
        )
    )
    trials = study.trials

    text = render(trials_table(study))

    # A waiting trial is not a row but is counted in the title.
    assert "study queue (1 queued)" in text and "WAITING" not in text
    # A diverged trial says so and where; a trial without a reason lost its worker.
    assert "PRUNED diverged at epoch 1" in trial_line(trials[0])
    assert "worker lost (heartbeat)" in trial_line(trials[1])
