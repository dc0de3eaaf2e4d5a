"""The benchmarks' own arithmetic: how the tuning-efficiency benchmark counts epochs."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from tuning_efficiency import tally


def _trial(number: int, losses: list[float], **attrs: object) -> FrozenTrial:
    trial = optuna.trial.create_trial(
        state=TrialState.PRUNED,
        intermediate_values={epoch: loss for epoch, loss in enumerate(losses, start=1)},
        user_attrs=attrs,
    )
    trial.number = number
    return trial


def test_epochs_count_up_to_the_one_that_reaches_the_target() -> None:
    trials = [_trial(0, [0.9, 0.5]), _trial(1, [0.4, 0.2, 0.1])]
    outcome = tally(trials, target=0.25, budget=100)
    # Two epochs of the pruned trial, then the second epoch of the next reaches 0.2.
    assert (outcome.epochs, outcome.reached, outcome.trials) == (4, True, 2)


def test_a_diverged_trials_penalty_step_is_not_an_epoch() -> None:
    # Diverged in its second epoch: one epoch trained, the penalty reported at step 2.
    trials = [_trial(0, [0.9, 4.6], epochs_run=1), _trial(1, [0.1])]
    outcome = tally(trials, target=0.2, budget=100)
    assert outcome.epochs == 2


def test_a_study_that_never_reaches_the_target_counts_the_budget() -> None:
    trials = [_trial(n, [0.9, 0.8, 0.7]) for n in range(5)]
    outcome = tally(trials, target=0.1, budget=10)
    # Stopped at the budget, marked as not reached.
    assert (outcome.epochs, outcome.reached) == (10, False)
