"""Final models: a study's best configurations retrained on all the training data, with
several seeds, each tested once.

A trial's recorded command is rerun with `--val-fraction 0` (the validation examples train
too), `--eval-test`, a `--checkpoint` and each seed, for a number of epochs chosen from the
trial: its `best_epoch`, since without a validation set nothing can pick an epoch later.
Schedules whose shape depends on `--epochs` (cosine, onecycle) are the exception: cutting
`--epochs` to the best epoch would squeeze the whole schedule into fewer epochs, a run the
trial never made, so they rerun the trial's full `--epochs` and keep the model at its end.
Early stopping (`--patience`) has no val_loss to watch and is dropped; so is the trial's
`--train-limit` unless one is given (the final model sees the whole training file).

The test set is looked at once per configuration and seed: each seed's result is stored in
the study's user attributes (`final:trial-N`) as soon as it exists, and a later `final` for
the same trial and seed prints the stored result instead of testing again, unless told to
(`again`). Seeds whose process failed are not results and run again next time.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator import provenance
from orchestrator.contract import describe_trainer
from orchestrator.errors import TrialNotUsable
from orchestrator.runner import TrainerProcess, command_line
from orchestrator.storage import load_study
from orchestrator.study import _safe_name

logger = logging.getLogger(__name__)

ATTR_PREFIX = "final:trial-"
# Schedules whose learning rate at an epoch depends on the run's --epochs.
EPOCH_SHAPED_SCHEDULES = frozenset({"cosine", "onecycle"})
# Trial flags a final run must not keep: it sets them itself, or they need validation.
_DROPPED = ("--patience", "--min-delta", "--checkpoint", "--resume", "--eval-test", "--quiet")


@dataclass(frozen=True)
class FinalConfig:
    trainer: Path
    study_name: str
    storage: str
    seeds: tuple[int, ...] = (0, 1, 2)
    top_k: int = 1
    # Trial numbers chosen by the user; empty means the best top_k completed trials.
    trials: tuple[int, ...] = ()
    out_dir: Path = Path("final")
    train_limit: int | None = None
    threads: int | None = None
    again: bool = False
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must differ, but got seeds={list(self.seeds)}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, but got top_k={self.top_k}")


@dataclass(frozen=True)
class SeedRun:
    """One seed's final run: its test metrics, or why it has none."""

    seed: int
    ok: bool
    test_loss: float | None
    test_accuracy: float | None
    checkpoint: str | None
    command: str
    seconds: float
    train_size: int | None = None
    fail_reason: str | None = None
    fail_message: str | None = None
    provenance: Mapping[str, object] = field(default_factory=dict)
    # Whether this result was read from the study instead of being run now.
    recorded: bool = False

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["provenance"] = dict(self.provenance)
        del data["recorded"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> SeedRun:
        known = {name for name in cls.__dataclass_fields__ if name != "recorded"}
        fields = {key: value for key, value in data.items() if key in known}
        return cls(**fields, recorded=True)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Configuration:
    """One trial retrained with every seed."""

    trial: int
    value: float | None
    params: Mapping[str, object]
    epochs: int
    epochs_reason: str
    train_limit: int | None
    runs: tuple[SeedRun, ...]

    @property
    def succeeded(self) -> list[SeedRun]:
        return [run for run in self.runs if run.ok]

    def mean_std(self, metric: str) -> tuple[float, float | None] | None:
        """Mean and sample standard deviation (n - 1) over the seeds that succeeded; the
        deviation is None with a single seed."""
        values = [getattr(run, metric) for run in self.succeeded]
        if not values:
            return None
        spread = statistics.stdev(values) if len(values) > 1 else None
        return statistics.fmean(values), spread

    def to_json(self) -> dict[str, object]:
        summary: dict[str, object] = {}
        for metric in ("test_accuracy", "test_loss"):
            stats = self.mean_std(metric)
            summary[f"{metric}_mean"] = stats[0] if stats else None
            summary[f"{metric}_std"] = stats[1] if stats else None
        return {
            "trial": self.trial,
            "value": self.value,
            "params": dict(self.params),
            "epochs": self.epochs,
            "epochs_reason": self.epochs_reason,
            "train_limit": self.train_limit,
            "seeds": [run.seed for run in self.runs],
            **summary,
            "runs": [run.to_json() for run in self.runs],
        }


def runs_dir_of(study_name: str) -> Path:
    """The study's folder under runs/, as `tune` names it."""
    return Path("runs") / _safe_name(study_name)


def choose_trials(study: optuna.Study, numbers: Sequence[int], top_k: int) -> list[FrozenTrial]:
    """The trials named, or the best `top_k` completed ones of a single-objective study."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if numbers:
        by_number = {trial.number: trial for trial in study.get_trials(deepcopy=False)}
        chosen = []
        for number in numbers:
            trial = by_number.get(number)
            if trial is None:
                raise TrialNotUsable(
                    f"study {study.study_name!r} has no trial {number} (it has trials 0 to "
                    f"{len(by_number) - 1}); see `orchestrate trials`"
                )
            if trial.state != TrialState.COMPLETE:
                raise TrialNotUsable(
                    f"trial {number} is {trial.state.name}, not COMPLETE, so it has no best "
                    "epoch to retrain for; choose a completed one with --trial"
                )
            chosen.append(trial)
        return chosen

    if len(study.directions) > 1:
        raise TrialNotUsable(
            f"study {study.study_name!r} has {len(study.directions)} objectives, so no single "
            "trial is best; choose the trials to retrain with --trial N (repeatable), e.g. "
            "from its Pareto front"
        )
    if not complete:
        raise TrialNotUsable(
            f"study {study.study_name!r} has no completed trial to retrain; run "
            "`orchestrate tune` on it first"
        )
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda t: t.value if t.value is not None else math.inf)
    return (ranked[::-1] if reverse else ranked)[:top_k]


def trial_argv(trial: FrozenTrial) -> list[str]:
    """The trainer command the trial ran, from its provenance or its shell line."""
    argv = provenance.recorded_argv(trial.user_attrs)
    command = trial.user_attrs.get("command")
    if argv is None and isinstance(command, str):
        argv = provenance.argv_from_command(command)
    if not argv or "train" not in argv:
        raise TrialNotUsable(
            f"trial {trial.number} has no recorded trainer command (user attribute argv or "
            "command); it was not run by `orchestrate tune`"
        )
    return argv


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of the last `--flag VALUE` or `--flag=VALUE` in `args` (the one that wins)."""
    found = None
    for index, token in enumerate(args):
        if token == flag and index + 1 < len(args):
            found = args[index + 1]
        elif token.startswith(flag + "="):
            found = token.split("=", 1)[1]
    return found


def without_flags(args: Sequence[str], flags: Sequence[str], switches: set[str]) -> list[str]:
    """`args` without every occurrence of `flags` and their values (switches take none)."""
    kept: list[str] = []
    skip = False
    for token in args:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in flags:
            skip = "=" not in token and name not in switches
            continue
        kept.append(token)
    return kept


def final_epochs(trial: FrozenTrial, args: Sequence[str]) -> tuple[int, str]:
    """How many epochs the final runs train, and why (see the module's docstring)."""
    recorded = flag_value(args, "--epochs")
    trial_epochs = int(recorded) if recorded is not None else 10  # the trainer's default
    schedule = flag_value(args, "--schedule") or "constant"
    best_epoch = trial.user_attrs.get("best_epoch")
    if schedule in EPOCH_SHAPED_SCHEDULES:
        return trial_epochs, (
            f"the trial's --epochs {trial_epochs}: the {schedule} schedule's shape depends on "
            "--epochs, so the whole schedule is rerun"
        )
    if not isinstance(best_epoch, int) or best_epoch < 1:
        return trial_epochs, f"the trial's --epochs {trial_epochs} (no best_epoch recorded)"
    return best_epoch, f"the trial's best_epoch ({schedule} schedule)"


def final_argv(
    trainer: Path,
    args: Sequence[str],
    *,
    switches: set[str],
    epochs: int,
    seed: int,
    checkpoint: Path,
    train_limit: int | None,
    threads: int | None,
) -> list[str]:
    """The trainer command of one final run: the trial's flags (`args`, after `train`), then
    the final ones, which win because the trainer takes a flag's last value."""
    dropped = (*_DROPPED, "--train-limit") if train_limit is None else _DROPPED
    flags = without_flags(args, dropped, switches)
    flags += ["--val-fraction", "0", "--epochs", str(epochs), "--seed", str(seed)]
    if train_limit is not None:
        flags += ["--train-limit", str(train_limit)]
    if threads is not None:
        flags += ["--threads", str(threads)]
    flags += ["--eval-test", "--checkpoint", str(checkpoint.absolute())]
    return [str(trainer), "train", *flags]


def run_final(
    config: FinalConfig, on_run: Callable[[int, SeedRun], None] | None = None
) -> list[Configuration]:
    """Retrains the chosen trials with every seed; `on_run(trial, run)` hears each seed's
    result as soon as its process ends (not the results read from the study)."""
    study = load_study(config.study_name, config.storage)
    trials = choose_trials(study, config.trials, config.top_k)
    plans = [(trial, trial_argv(trial)) for trial in trials]
    described = describe_trainer(config.trainer).values()
    switches = {spec.flag for spec in described if spec.kind == "bool"}
    facts = provenance.trainer_facts(config.trainer)

    # Every seed already tested with other settings is refused before anything runs.
    for trial, argv in plans:
        epochs, _ = final_epochs(trial, argv[argv.index("train") + 1 :])
        settings = {"epochs": epochs, "train_limit": config.train_limit}
        for seed in () if config.again else config.seeds:
            previous = _recorded_runs(study, trial.number).get(str(seed))
            if isinstance(previous, dict) and previous.get("ok"):
                _check_same_settings(trial.number, seed, previous, settings)

    configurations = []
    for trial, argv in plans:
        args = argv[argv.index("train") + 1 :]
        epochs, reason = final_epochs(trial, args)
        key = f"{ATTR_PREFIX}{trial.number}"
        runs_by_seed = _recorded_runs(study, trial.number)
        settings = {"epochs": epochs, "train_limit": config.train_limit}

        runs = []
        for seed in config.seeds:
            previous = runs_by_seed.get(str(seed))
            tested = isinstance(previous, dict) and bool(previous.get("ok"))
            if isinstance(previous, dict) and tested and not config.again:
                run = SeedRun.from_json(previous)
            else:
                checkpoint = (
                    config.out_dir / f"trial-{trial.number:04d}" / f"seed-{seed}.safetensors"
                )
                command = final_argv(
                    config.trainer,
                    args,
                    switches=switches,
                    epochs=epochs,
                    seed=seed,
                    checkpoint=checkpoint,
                    train_limit=config.train_limit,
                    threads=config.threads,
                )
                run = _run_seed(command, seed, checkpoint.with_suffix(""), config.timeout)
                run = replace(run, provenance={**facts.attrs(), "argv": command})
                # Stored at once: a later failure or interrupt keeps this seed's test result.
                # A failed --again keeps the earlier result on record.
                if run.ok or not tested:
                    runs_by_seed[str(seed)] = {**run.to_json(), **settings}
                    study.set_user_attr(
                        key, {"trial": trial.number, "params": trial.params, "runs": runs_by_seed}
                    )
                if on_run is not None:
                    on_run(trial.number, run)
            runs.append(run)

        configurations.append(
            Configuration(
                trial=trial.number,
                value=trial.value,
                params=trial.params,
                epochs=epochs,
                epochs_reason=reason,
                train_limit=config.train_limit,
                runs=tuple(runs),
            )
        )
    return configurations


def write_results(config: FinalConfig, configurations: Sequence[Configuration]) -> Path:
    """Writes every configuration's results to OUT/final.json; returns its path."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    path = config.out_dir / "final.json"
    document = {
        "study": config.study_name,
        "storage": config.storage,
        "seeds": list(config.seeds),
        "configurations": [c.to_json() for c in configurations],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def configuration_lines(configuration: Configuration) -> list[str]:
    """The plain-text summary of one configuration, after its seeds' lines."""
    lines = []
    for metric in ("test_accuracy", "test_loss"):
        stats = configuration.mean_std(metric)
        if stats is None:
            continue
        mean, spread = stats
        deviation = f" ± {spread:.4f}" if spread is not None else " (one seed, no spread)"
        lines.append(f"  {metric}: {mean:.4f}{deviation}")
    ran = len(configuration.succeeded)
    lines.append(f"  {ran} of {len(configuration.runs)} seeds gave a test result")
    return lines


def run_line(run: SeedRun) -> str:
    """One seed's result, or why it has none."""
    if not run.ok:
        return f"seed {run.seed}: FAILED ({run.fail_reason}: {run.fail_message})"
    recorded = " (recorded earlier; --again tests again)" if run.recorded else ""
    return (
        f"seed {run.seed}: test_accuracy {run.test_accuracy:.4f}  test_loss "
        f"{run.test_loss:.4f}  checkpoint {run.checkpoint}{recorded}"
    )


def _recorded_runs(study: optuna.Study, trial: int) -> dict[str, object]:
    """The final runs recorded for `trial`, by seed (as a string: JSON keys)."""
    record = study.user_attrs.get(f"{ATTR_PREFIX}{trial}")
    runs = record.get("runs") if isinstance(record, dict) else None
    return dict(runs) if isinstance(runs, dict) else {}


# How each setting of a final run is spelt in messages.
_SETTING_FLAGS = {"epochs": "--epochs", "train_limit": "--train-limit"}


def _check_same_settings(
    trial: int, seed: int, previous: Mapping[str, object], settings: Mapping[str, object]
) -> None:
    different = {k: previous.get(k) for k, v in settings.items() if previous.get(k) != v}
    if different:
        was = ", ".join(f"{_SETTING_FLAGS[k]} {_text(v)}" for k, v in different.items())
        now = ", ".join(f"{_SETTING_FLAGS[k]} {_text(settings[k])}" for k in different)
        raise TrialNotUsable(
            f"trial {trial} with seed {seed} was already tested with {was} (now {now}); its "
            "recorded result stands, so pass --again to train and test it again with these "
            "settings"
        )


def _text(value: object) -> str:
    # No --train-limit means the whole training file.
    return "all" if value is None else str(value)


def _run_seed(command: list[str], seed: int, log_dir: Path, timeout: float | None) -> SeedRun:
    with TrainerProcess(command, log_dir=log_dir, timeout=timeout) as process:
        outcome = process.wait()
    failure = outcome.failure(validation=False)
    result = outcome.result
    if failure is None and (result is None or result.test_accuracy is None):
        failure_reason, message = "no result", "the result event has no test_accuracy"
    elif failure is not None:
        failure_reason, message = failure.reason, failure.message
    else:
        failure_reason, message = None, None
    ok = failure_reason is None and result is not None
    if not ok:
        tail = "\n  ".join(outcome.stderr_tail[-5:])
        logger.warning(
            "final run with seed %d failed (%s: %s)%s",
            seed,
            failure_reason,
            message,
            f"\n  {tail}" if tail else "",
        )
    return SeedRun(
        seed=seed,
        ok=ok,
        test_loss=result.test_loss if ok and result else None,
        test_accuracy=result.test_accuracy if ok and result else None,
        checkpoint=result.checkpoint if ok and result else None,
        command=command_line(command),
        seconds=round(outcome.seconds, 3),
        train_size=outcome.start.train_size if outcome.start else None,
        fail_reason=failure_reason,
        fail_message=message,
    )
