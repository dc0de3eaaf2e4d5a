"""What the commands show: the trials table, the best trial, and one line per event.

Everything here turns data into text or rich renderables; the CLI decides where it goes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.markup import escape
from rich.table import Table

from orchestrator import provenance
from orchestrator.errors import NoCompletedTrial
from orchestrator.events import EpochEvent, ErrorEvent, Event, ResultEvent, StartEvent
from orchestrator.objectives import DIRECTIONS, objectives_of
from orchestrator.study import state_counts


@dataclass(frozen=True)
class BestTrial:
    study_name: str
    number: int
    value: float
    params: Mapping[str, object]
    user_attrs: Mapping[str, object]
    command: str | None
    # What `value` is: the study's objective.
    objective: str = "val_loss"

    def to_json(self) -> dict[str, object]:
        return {
            "study": self.study_name,
            "number": self.number,
            "value": self.value,
            "params": dict(self.params),
            "user_attrs": dict(self.user_attrs),
            "command": self.command,
        }


def best_trial(study: optuna.Study) -> BestTrial:
    """The completed trial with the lowest val_loss."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        counts = ", ".join(f"{n} {s}" for s, n in state_counts(study).items()) or "no trials"
        raise NoCompletedTrial(
            f"study {study.study_name!r} has no completed trial yet ({counts}); "
            "run `orchestrate tune` on it first"
        )
    best = study.best_trial
    assert best.value is not None
    command = best.user_attrs.get("command")
    return BestTrial(
        study_name=study.study_name,
        number=best.number,
        value=best.value,
        params=best.params,
        user_attrs=best.user_attrs,
        command=command if isinstance(command, str) else None,
        objective=objectives_of(study)[0],
    )


def best_lines(best: BestTrial) -> list[str]:
    """The best trial as plain lines; the command comes last, alone on its line."""
    lines = [
        f"study: {best.study_name}",
        f"best trial: {best.number}",
        f"{best.objective}: {best.value!r}",
        "params:",
        *(f"  {name}: {_format(value)}" for name, value in best.params.items()),
        "user attrs:",
        *(
            f"  {name}: {_format(value)}"
            for name, value in best.user_attrs.items()
            # The provenance is for `best --json` and `replay`; the command comes last.
            if name != "command" and name not in provenance.ATTRS
        ),
    ]
    if best.command is not None:
        lines += ["command (re-runs this trial):", best.command]
    return lines


def trials_table(study: optuna.Study) -> Table:
    """One row per trial: number, state, val_loss, val_accuracy, a column per parameter,
    duration, and why it failed or was pruned. Queued trials are counted in the title."""
    everything = study.get_trials(deepcopy=False)
    trials = [t for t in everything if t.state != TrialState.WAITING]
    queued = len(everything) - len(trials)
    param_names = list(dict.fromkeys(name for t in trials for name in t.params))

    title = f"study {study.study_name}" + (f" ({queued} queued)" if queued else "")
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column("val_loss", justify="right")
    table.add_column("val_accuracy", justify="right")
    for name in param_names:
        table.add_column(name, justify="right")
    table.add_column("duration", justify="right")
    table.add_column("fail reason")

    for trial in trials:
        # A trial that failed after its trainer reported (its worker lost before Optuna
        # recorded it) keeps the attributes, but no result to show.
        result = trial.state == TrialState.COMPLETE
        table.add_row(
            str(trial.number),
            trial.state.name,
            _format(_val_loss(trial) if result else None),
            _format(trial.user_attrs.get("val_accuracy") if result else None),
            *(_format(trial.params.get(name)) for name in param_names),
            _duration(trial.duration),
            _ending(trial),
        )
    return table


def trial_line(trial: FrozenTrial) -> str:
    """A one-line account of a finished trial, for progress output."""
    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        outcome = (
            f"val_loss {_format(_val_loss(trial))} "
            f"val_accuracy {_format(attrs.get('val_accuracy', float('nan')))}"
        )
        if trial.values is not None and len(trial.values) > 1:
            outcome += f" values ({', '.join(_format(v) for v in trial.values)})"
    elif trial.state == TrialState.PRUNED and attrs.get("fail_reason") == "diverged":
        outcome = _ending(trial)
    elif trial.state == TrialState.PRUNED:
        outcome = f"at epoch {attrs.get('epochs_run', '?')}"
    else:
        outcome = _ending(trial)
    return (
        f"trial {trial.number} {trial.state.name} {outcome} ({_duration(trial.duration)}) "
        f"{params_text(trial.params)}"
    )


def event_line(event: Event) -> str:
    """One readable line per trainer event, in rich markup (the trainer's text escaped)."""
    if isinstance(event, StartEvent):
        return (
            f"[bold]training[/] {escape(event.model)} on {escape(event.dataset)}: "
            f"device {escape(event.device)}, threads {event.threads}, "
            f"{event.parameters:,} parameters, "
            f"{event.train_size:,} train / {event.val_size:,} val examples"
        )
    if isinstance(event, EpochEvent):
        return (
            f"epoch {event.epoch}/{event.epochs}  train_loss {_f4(event.train_loss)}  "
            f"val_loss {_f4(event.val_loss)}  val_accuracy {_f4(event.val_accuracy)}  "
            f"lr {event.lr:.3g}  {event.seconds:.1f} s  "
            f"{event.samples_per_second:,.0f} samples/s"
        )
    if isinstance(event, ResultEvent):
        style = "green" if event.status in ("completed", "early_stopped") else "yellow"
        line = (
            f"[bold {style}]{event.status}[/]: val_loss {_f4(event.val_loss)}  "
            f"val_accuracy {_f4(event.val_accuracy)}  best_epoch {event.best_epoch}  "
            f"epochs_run {event.epochs_run}  {event.seconds:.1f} s"
        )
        if event.test_loss is not None and event.test_accuracy is not None:
            line += f"  test_loss {_f4(event.test_loss)}  test_accuracy {_f4(event.test_accuracy)}"
        if event.checkpoint is not None:
            line += f"  checkpoint {escape(event.checkpoint)}"
        return line
    assert isinstance(event, ErrorEvent)
    return f"[bold red]error[/] ({event.kind}): {escape(event.message)}"


def params_text(params: Mapping[str, object]) -> str:
    return " ".join(f"{name}={_format(value)}" for name, value in params.items())


def _ending(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    retry = trial.system_attrs.get("failed_trial")
    again = f", retry of trial {retry}" if retry is not None else ""
    if trial.state == TrialState.PRUNED and attrs.get("fail_reason") == "diverged":
        return f"diverged at epoch {attrs.get('diverged_at_epoch', '?')}{again}"
    if trial.state == TrialState.PRUNED:
        return f"pruned at epoch {attrs.get('epochs_run', '?')}{again}"
    if trial.state == TrialState.FAIL:
        # Without a reason, a lost heartbeat ended the trial, or the objective itself raised.
        reason = attrs.get("fail_reason", "worker lost (heartbeat) or orchestrator error")
        code = attrs.get("exit_code")
        sig = attrs.get("signal")
        detail = f" (exit code {code})" if code is not None else ""
        detail = f" (signal {sig})" if sig is not None else detail
        return f"{reason}{detail}{again}"
    return again.removeprefix(", ")


def _duration(duration: timedelta | None) -> str:
    return f"{duration.total_seconds():.1f} s" if duration is not None else ""


def _f4(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "nan"


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _val_loss(trial: FrozenTrial) -> object:
    """A trial's val_loss: its value, or an attribute where it optimises something else."""
    if "val_loss" in trial.user_attrs:
        return trial.user_attrs["val_loss"]
    return trial.values[0] if trial.values is not None and len(trial.values) == 1 else None


@dataclass(frozen=True)
class ParetoFront:
    """The trials of a study with several objectives that no other trial beats in all."""

    study_name: str
    objectives: tuple[str, ...]
    trials: tuple[BestTrial, ...]
    values: tuple[tuple[float, ...], ...]

    def to_json(self) -> dict[str, object]:
        return {
            "study": self.study_name,
            "objectives": {name: DIRECTIONS[name] for name in self.objectives},
            "pareto_front": [
                {**trial.to_json(), "values": dict(zip(self.objectives, values, strict=True))}
                for trial, values in zip(self.trials, self.values, strict=True)
            ],
        }


def is_multi_objective(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def pareto_front(study: optuna.Study) -> ParetoFront:
    """The Pareto front of the completed trials, diverged ones (penalty values) left out,
    ordered by the first objective."""
    objectives = objectives_of(study)
    signs = [1.0 if DIRECTIONS[name] == "minimize" else -1.0 for name in objectives]
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and t.user_attrs.get("fail_reason") != "diverged"
    ]
    if not complete:
        counts = ", ".join(f"{n} {s}" for s, n in state_counts(study).items()) or "no trials"
        # A diverged trial is COMPLETE (Optuna cannot prune several objectives) but not a
        # result: say so, or "(1 COMPLETE)" would contradict "no completed trial".
        diverged = sum(
            t.user_attrs.get("fail_reason") == "diverged"
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        )
        also = f", of which {diverged} diverged" if diverged else ""
        raise NoCompletedTrial(
            f"study {study.study_name!r} has no completed trial yet ({counts}{also}); "
            "run `orchestrate tune` on it first"
        )

    def costs(trial: FrozenTrial) -> list[float]:
        assert trial.values is not None
        return [sign * value for sign, value in zip(signs, trial.values, strict=True)]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    front = [t for t in complete if not any(dominates(costs(o), costs(t)) for o in complete)]
    front.sort(key=lambda t: (costs(t), t.number))
    return ParetoFront(
        study_name=study.study_name,
        objectives=objectives,
        trials=tuple(_as_best(study, t) for t in front),
        values=tuple(tuple(t.values or ()) for t in front),
    )


def pareto_lines(front: ParetoFront) -> list[str]:
    """The front as an aligned table, one row per trial, then each trial's command."""
    header = ["trial", *front.objectives, "params"]
    rows = [
        [str(trial.number), *(_format(v) for v in values), params_text(trial.params)]
        for trial, values in zip(front.trials, front.values, strict=True)
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    table = [
        "  ".join(
            [*(cell.rjust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]
        )
        for row in [header, *rows]
    ]
    directions = ", ".join(f"{name} ({DIRECTIONS[name]})" for name in front.objectives)
    lines = [
        f"study: {front.study_name}",
        f"objectives: {directions}",
        f"Pareto front: {len(front.trials)} trials, none beaten in every objective by another",
        *table,
    ]
    for trial in front.trials:
        if trial.command is not None:
            lines += [f"command of trial {trial.number}:", trial.command]
    return lines


def _as_best(study: optuna.Study, trial: FrozenTrial) -> BestTrial:
    command = trial.user_attrs.get("command")
    return BestTrial(
        study_name=study.study_name,
        number=trial.number,
        value=(trial.values or [math.nan])[0],
        params=trial.params,
        user_attrs=trial.user_attrs,
        command=command if isinstance(command, str) else None,
    )
