"""Replaying a trial: its recorded command run again, its metrics compared with the study's.

A trial recorded its argv and the trainer that ran it (see `provenance`). The replay runs
that argv with the same environment (CUDA_VISIBLE_DEVICES), compares each epoch's val_loss
with the value the trial reported to Optuna, and the result's val_loss and val_accuracy
with the trial's value and attributes. On the CPU the same seed and --threads give the
same numbers to the last digit, so any difference beyond the tolerance means that the
binary, libtorch, the data or the machine changed what the command computes. A trial that
was pruned is replayed only up to the epoch where it stopped.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator import provenance
from orchestrator.errors import TrialNotUsable
from orchestrator.events import EpochEvent
from orchestrator.runner import Failure, RunOutcome, TrainerProcess, command_line
from orchestrator.trainer import find_trainer

DEFAULT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Comparison:
    """One recorded value next to its replayed one."""

    what: str
    recorded: float | None
    replayed: float | None
    tolerance: float

    @property
    def matches(self) -> bool:
        if self.recorded is None or self.replayed is None:
            return self.recorded is None and self.replayed is None
        if math.isnan(self.recorded) or math.isnan(self.replayed):
            return math.isnan(self.recorded) and math.isnan(self.replayed)
        return abs(self.recorded - self.replayed) <= self.tolerance


@dataclass(frozen=True)
class ReplayReport:
    trial: int
    command: str
    warnings: tuple[str, ...]
    epochs: tuple[Comparison, ...]
    final: tuple[Comparison, ...]
    failure: Failure | None

    @property
    def matches(self) -> bool:
        return all(c.matches for c in (*self.epochs, *self.final))


def find_trial(study: optuna.Study, number: int) -> FrozenTrial:
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial
    raise TrialNotUsable(
        f"study {study.study_name!r} has no trial {number}; see `orchestrate trials`"
    )


def replay(
    study: optuna.Study,
    number: int,
    *,
    trainer: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    log_dir: Path | None = None,
) -> ReplayReport:
    """Runs trial `number`'s recorded command again and compares its metrics."""
    trial = find_trial(study, number)
    argv = provenance.recorded_argv(trial.user_attrs)
    if argv is None or "trainer_sha256" not in trial.user_attrs:
        raise TrialNotUsable(
            f"trial {number} of study {study.study_name!r} has no recorded provenance "
            "(argv, trainer_sha256): it was run by an older orchestrate, so there is no "
            "exact command to replay; rerun its `command` attribute by hand "
            "(`orchestrate best` prints it for the best trial)"
        )

    binary = _binary(trainer, argv[0])
    warnings = _differences(trial, binary)
    command = [str(binary), *argv[1:]]
    recorded_env = trial.user_attrs.get("env")
    env = (
        {str(k): str(v) for k, v in recorded_env.items()} if isinstance(recorded_env, dict) else {}
    )

    recorded_epochs = _recorded_epochs(trial)
    last_epoch = max(recorded_epochs, default=None)
    complete = trial.state == TrialState.COMPLETE
    if not complete and last_epoch is None:
        # Nothing recorded to compare with: refuse before spending a whole training run.
        raise TrialNotUsable(
            f"trial {number} ({trial.state.name}) recorded no val_loss, neither per epoch nor "
            "at the end, so a replay has nothing to compare with; replay a trial that "
            "finished an epoch (`orchestrate trials` lists them)"
        )
    outcome = _run(command, env, log_dir, None if complete else last_epoch)
    replayed = {event.epoch: event.val_loss for event in outcome.epochs}

    epochs = tuple(
        Comparison(f"epoch {epoch} val_loss", value, replayed.get(epoch), tolerance)
        for epoch, value in sorted(recorded_epochs.items())
    )
    final: tuple[Comparison, ...] = ()
    failure = None
    if complete:
        failure = outcome.failure()
        result = outcome.result
        accuracy = trial.user_attrs.get("val_accuracy")
        final = (
            Comparison("val_loss", trial.value, result.val_loss if result else None, tolerance),
            Comparison(
                "val_accuracy",
                float(accuracy) if isinstance(accuracy, (int, float)) else None,
                result.val_accuracy if result else None,
                tolerance,
            ),
        )
    elif not recorded_epochs:
        failure = Failure(
            "no result",
            f"trial {number} ({trial.state.name}) recorded no val_loss to compare with",
        )
    return ReplayReport(
        trial=number,
        command=command_line(command, env),
        warnings=tuple(warnings),
        epochs=epochs,
        final=final,
        failure=failure,
    )


def _binary(explicit: Path | None, recorded: str) -> Path:
    """--trainer when given, else the recorded binary while it exists, else the usual one."""
    if explicit is not None:
        return find_trainer(explicit)
    path = Path(recorded)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    return find_trainer(None)


def _differences(trial: FrozenTrial, binary: Path) -> list[str]:
    """Warnings for each way the binary differs from the one that ran the trial."""
    facts = provenance.trainer_facts(binary)
    attrs = trial.user_attrs
    warnings = []
    if attrs.get("trainer_sha256") != facts.sha256:
        warnings.append(
            f"the trainer {binary} (sha256 {facts.sha256[:12]}…) is not the binary that ran "
            f"trial {trial.number} (sha256 {str(attrs.get('trainer_sha256'))[:12]}…, version "
            f"{attrs.get('trainer_version')}); its numbers may differ"
        )
    if attrs.get("libtorch_version") != facts.libtorch:
        warnings.append(
            f"libtorch {facts.libtorch} differs from the {attrs.get('libtorch_version')} that "
            f"ran trial {trial.number}; its numbers may differ"
        )
    return warnings


def _recorded_epochs(trial: FrozenTrial) -> dict[int, float]:
    """The val_loss the trial reported at each epoch; a diverged trial's penalty is not one."""
    values = {int(step): value for step, value in trial.intermediate_values.items()}
    if trial.user_attrs.get("fail_reason") == "diverged":
        values.pop(int(trial.user_attrs.get("diverged_at_epoch", -1)), None)
    return values


def _run(
    command: list[str], env: dict[str, str], log_dir: Path | None, stop_after: int | None
) -> RunOutcome:
    with TrainerProcess(command, log_dir=log_dir, env=env) as process:
        for event in process.events():
            if not isinstance(event, EpochEvent) or stop_after is None:
                continue
            # A pruned trial stopped here: nothing after it was recorded to compare with.
            if event.epoch >= stop_after:
                process.end()
                break
        return process.wait()
