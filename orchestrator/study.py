"""Tuning: the objective that runs one trainer process per trial, and `tune`.

A study remembers the settings its trials share (model, dataset, epochs, train limit,
validation fraction, seed, search space) in its user attributes; a later `tune` with the
same study name resumes it and refuses settings that would make its trials incomparable.
`--trials N` is the total: finished trials (complete, pruned or failed) count toward it,
so a rerun runs only the missing ones.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from orchestrator.errors import StudyMismatch
from orchestrator.events import EpochEvent, StartEvent
from orchestrator.registry import PRUNERS, SAMPLERS, PrunerSettings, SamplerSettings
from orchestrator.runner import Failure, RunOutcome, TrainerProcess
from orchestrator.space import SearchSpace, Value
from orchestrator.storage import open_storage

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
SETTINGS_ATTR = "settings"
_COMPARED = (
    "model",
    "dataset",
    "epochs",
    "train_limit",
    "val_fraction",
    "seed",
    "space",
    "extra",
)


def default_threads() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class TrialFailed(Exception):
    """The trainer gave no usable result; the study records the trial as FAIL and goes on."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.reason}: {failure.message}")
        self.failure = failure


@dataclass(frozen=True)
class TrainerFlags:
    """The trainer flags every trial of a study shares."""

    model: str = "cnn"
    dataset: str = "mnist"
    epochs: int = 3
    train_limit: int | None = None
    val_fraction: float | None = None
    device: str = "auto"
    data_dir: Path | None = None
    threads: int = field(default_factory=default_threads)
    # Further trainer flags, the same for every trial (`tune ... -- --width 0.25`).
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, but got epochs={self.epochs}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, but got threads={self.threads}")
        if self.train_limit is not None and self.train_limit < 1:
            raise ValueError(f"train_limit must be positive, but got {self.train_limit}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), but got {self.val_fraction}")

    def flags(self) -> list[str]:
        flags = ["--model", self.model, "--dataset", self.dataset, "--epochs", str(self.epochs)]
        if self.train_limit is not None:
            flags += ["--train-limit", str(self.train_limit)]
        if self.val_fraction is not None:
            flags += ["--val-fraction", repr(self.val_fraction)]
        flags += ["--device", self.device]
        if self.data_dir is not None:
            # Absolute, so that the recorded command re-runs from any folder.
            flags += ["--data-dir", str(self.data_dir.absolute())]
        return [*flags, "--threads", str(self.threads), *self.extra]


@dataclass(frozen=True)
class TuneConfig:
    trainer: Path
    study_name: str
    storage: str
    trials: int
    space: SearchSpace
    flags: TrainerFlags = field(default_factory=TrainerFlags)
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None
    runs_dir: Path = Path("runs")
    trial_timeout: float | None = None
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be at least 1, but got trials={self.trials}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, but got {self.sampler}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {sorted(PRUNERS)}, but got {self.pruner}")


@dataclass(frozen=True)
class TuneSummary:
    study_name: str
    storage: str
    seed: int
    finished_before: int
    ran: int
    states: dict[str, int]
    best: FrozenTrial | None
    stop_reason: str | None = None


class Objective:
    """One trial: sample a point, run the trainer on it, report each epoch, return val_loss."""

    def __init__(
        self,
        *,
        trainer: Path,
        flags: TrainerFlags,
        space: SearchSpace,
        seed: int,
        study_dir: Path,
        timeout: float | None = None,
    ) -> None:
        self.trainer = trainer
        self.flags = flags
        self.space = space
        self.seed = seed
        self.study_dir = study_dir
        self.timeout = timeout

    def command(self, sampled: dict[str, Value]) -> list[str]:
        """The exact trainer command for a sampled point."""
        return [
            str(self.trainer),
            "train",
            *self.flags.flags(),
            "--seed",
            str(self.seed),
            *self.space.flags(sampled),
        ]

    def __call__(self, trial: optuna.Trial) -> float:
        sampled = self.space.sample(trial)
        command = self.command(sampled)
        trial_dir = self.study_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("command", shlex.join(command))
        trial.set_user_attr("trial_dir", str(trial_dir))

        try:
            outcome = self._run(trial, command, trial_dir)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise

        failure = outcome.failure()
        if failure is not None:
            self._record_failure(trial, outcome, failure)
            raise TrialFailed(failure)

        result = outcome.result
        assert result is not None  # failure() is None only with a result
        _set_user_attrs(
            trial,
            status=result.status,
            val_accuracy=_json_float(result.val_accuracy),
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            seconds=round(outcome.seconds, 3),
            parameters=outcome.start.parameters if outcome.start else None,
        )
        return result.val_loss

    def _run(self, trial: optuna.Trial, command: list[str], trial_dir: Path) -> RunOutcome:
        started = time.monotonic()
        best: EpochEvent | None = None
        start: StartEvent | None = None
        with TrainerProcess(command, log_dir=trial_dir, timeout=self.timeout) as process:
            for event in process.events():
                if isinstance(event, StartEvent):
                    start = event
                if not isinstance(event, EpochEvent) or math.isnan(event.val_loss):
                    continue
                if best is None or event.val_loss < best.val_loss:
                    best = event

                trial.report(event.val_loss, step=event.epoch)
                if trial.should_prune():
                    process.end()
                    _set_user_attrs(
                        trial,
                        status="pruned",
                        val_accuracy=_json_float(best.val_accuracy),
                        best_epoch=best.epoch,
                        epochs_run=event.epoch,
                        seconds=round(time.monotonic() - started, 3),
                        parameters=start.parameters if start else None,
                    )
                    raise optuna.TrialPruned(
                        f"Pruned at epoch {event.epoch} with val_loss {event.val_loss:.6g}."
                    )
            return process.wait()

    def _record_failure(self, trial: optuna.Trial, outcome: RunOutcome, failure: Failure) -> None:
        tail = "\n".join(outcome.stderr_tail)
        exit_text = (
            f"exit code {outcome.exit_code}"
            if outcome.exit_code is not None
            else f"signal {outcome.signal}"
        )
        _set_user_attrs(
            trial,
            fail_reason=failure.reason,
            fail_message=failure.message,
            stderr_tail=tail,
            epochs_run=len(outcome.epochs),
            seconds=round(outcome.seconds, 3),
        )
        if outcome.exit_code is not None:
            trial.set_user_attr("exit_code", outcome.exit_code)
        else:
            trial.set_user_attr("signal", outcome.signal)

        logger.warning(
            "Trial %d failed (%s: %s; %s) with parameters %s.%s",
            trial.number,
            failure.reason,
            failure.message,
            exit_text,
            trial.params,
            "\n  stderr: " + "\n  stderr: ".join(outcome.stderr_tail) if tail else "",
        )


def tune(config: TuneConfig, on_trial: Callable[[FrozenTrial], None] | None = None) -> TuneSummary:
    """Runs the trials the study still lacks to reach `config.trials` finished trials."""
    _quiet_optuna_failure_logs()
    storage = open_storage(config.storage, create=True)
    study = optuna.create_study(
        study_name=config.study_name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
    )
    seed = _settle_settings(study, config)

    finished_before = len(study.get_trials(deepcopy=False, states=FINISHED))
    missing = config.trials - finished_before
    # Offset by the trials so far, so a resumed study does not replay the first draws.
    sampler_seed = seed + len(study.get_trials(deepcopy=False))
    study.sampler = SAMPLERS[config.sampler](SamplerSettings(sampler_seed, config.space))
    study.pruner = PRUNERS[config.pruner](
        PrunerSettings(
            epochs=config.flags.epochs,
            startup_trials=config.pruner_startup_trials,
            warmup_epochs=config.pruner_warmup_epochs,
        )
    )

    stop_reason = _why_nothing_to_do(study, missing)
    ran = 0
    if stop_reason is None:
        objective = Objective(
            trainer=config.trainer,
            flags=config.flags,
            space=config.space,
            seed=seed,
            study_dir=config.runs_dir.absolute() / _safe_name(config.study_name),
            timeout=config.trial_timeout,
        )
        # Other workers may share the study: stop when it holds enough finished trials.
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
            MaxTrialsCallback(config.trials, states=FINISHED)
        ]
        if on_trial is not None:
            callbacks.append(lambda _study, trial: on_trial(trial))
        study.optimize(objective, n_trials=missing, catch=(TrialFailed,), callbacks=callbacks)
        ran = len(study.get_trials(deepcopy=False, states=FINISHED)) - finished_before
        if ran < missing and _grid_exhausted(study):
            stop_reason = "the grid is exhausted"

    return TuneSummary(
        study_name=config.study_name,
        storage=config.storage,
        seed=seed,
        finished_before=finished_before,
        ran=ran,
        states=state_counts(study),
        best=_best_trial(study),
        stop_reason=stop_reason,
    )


def _settle_settings(study: optuna.Study, config: TuneConfig) -> int:
    """Stores the study's shared settings, or checks them on resume; returns the seed."""
    if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise StudyMismatch(
            f"study {config.study_name!r} in {config.storage} does not minimise one value; "
            "choose another --study name"
        )

    stored = study.user_attrs.get(SETTINGS_ATTR)
    seed = config.seed
    if isinstance(stored, dict) and seed is None and isinstance(stored.get("seed"), int):
        seed = stored["seed"]
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
        logger.info("study %r uses seed %d (pass --seed to choose one)", study.study_name, seed)

    wanted: dict[str, object] = {
        "model": config.flags.model,
        "dataset": config.flags.dataset,
        "epochs": config.flags.epochs,
        "train_limit": config.flags.train_limit,
        "val_fraction": config.flags.val_fraction,
        "seed": seed,
        "space": config.space.describe(),
        "extra": list(config.flags.extra),
    }
    if not isinstance(stored, dict):
        study.set_user_attr(SETTINGS_ATTR, wanted)
        return seed

    # Studies from before `extra` existed had none.
    stored = {"extra": [], **stored}
    different = [key for key in _COMPARED if stored.get(key) != wanted[key]]
    if different:
        details = "; ".join(
            f"{key}: study has {_short(stored.get(key))}, this command {_short(wanted[key])}"
            for key in different
        )
        raise StudyMismatch(
            f"study {config.study_name!r} in {config.storage} was created with other settings "
            f"({details}); its trials would not be comparable, so use another --study name"
        )
    return seed


def _why_nothing_to_do(study: optuna.Study, missing: int) -> str | None:
    if missing <= 0:
        return "the study already has the requested number of finished trials"
    if _grid_exhausted(study):
        return "the grid is exhausted"
    return None


def _grid_exhausted(study: optuna.Study) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def state_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials the study holds in each state, by state name."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def _set_user_attrs(trial: optuna.Trial, **attrs: object) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _json_float(value: float) -> float | None:
    # Storages keep user attributes as JSON, which has no NaN.
    return value if math.isfinite(value) else None


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "study"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _DropTrialFailedRecords(logging.Filter):
    """Optuna logs a caught failure with its traceback, then once more; the objective has
    already logged one WARNING with the reason and stderr tail, so those two go."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrialFailed):
            return False
        message = record.getMessage()
        return not (message.startswith("Trial ") and message.endswith("failed with value None."))


def _quiet_optuna_failure_logs() -> None:
    optuna_logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _DropTrialFailedRecords) for f in optuna_logger.filters):
        optuna_logger.addFilter(_DropTrialFailedRecords())
