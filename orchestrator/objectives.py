"""What a study optimises (`tune --objectives`): one value, or several at once.

Each objective has a fixed direction: val_loss, seconds (the trainer's `result`) and
parameters (its `start` event) are minimised, val_accuracy is maximised. One objective is
an ordinary study that prunes on that value epoch by epoch; several make a
multi-objective study whose answer is a Pareto front. Optuna cannot prune such trials, so
with several objectives the pruner is `none` and asking for another is a usage error, and
NSGA-II is the default sampler. A study keeps its objectives in its user attributes
(`objectives`) for `best` and the reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.study import StudyDirection

from orchestrator.errors import ArgumentsError
from orchestrator.events import ResultEvent, StartEvent

DIRECTIONS: dict[str, str] = {
    "val_loss": "minimize",
    "val_accuracy": "maximize",
    "seconds": "minimize",
    "parameters": "minimize",
}
# The study user attribute naming the objectives, in order.
OBJECTIVES_ATTR = "objectives"
DEFAULT: tuple[str, ...] = ("val_loss",)
# Objectives with a value after every epoch, so a single one can be pruned on.
PER_EPOCH = ("val_loss", "val_accuracy")


def parse_objectives(text: str | None) -> tuple[str, ...]:
    """`val_loss,seconds` as a tuple of known objective names."""
    if text is None:
        return DEFAULT
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in DIRECTIONS]
    if unknown or not names:
        raise ArgumentsError(
            f"--objectives {text!r}: unknown objective {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(DIRECTIONS)}, separated by commas"
        )
    if len(set(names)) != len(names):
        raise ArgumentsError(f"--objectives {text!r} names an objective twice")
    if len(names) == 1 and names[0] not in PER_EPOCH:
        raise ArgumentsError(
            f"--objectives {names[0]} alone would favour the smallest, fastest model whatever "
            f"its loss; pair it with one, e.g. --objectives val_loss,{names[0]}"
        )
    return names


def resolve_sampler_and_pruner(
    objectives: Sequence[str], sampler: str | None, pruner: str | None
) -> tuple[str, str]:
    """The sampler and pruner to use: the defaults for one objective (tpe, median) or for
    several (nsga2, none); a pruner with several objectives is a usage error."""
    if len(objectives) == 1:
        return sampler or "tpe", pruner or "median"
    if pruner not in (None, "none"):
        raise ArgumentsError(
            f"--pruner {pruner} cannot be used with --objectives {','.join(objectives)}: "
            "Optuna cannot prune a trial with several objectives; leave out --pruner (or "
            "give --pruner none) for a multi-objective study"
        )
    return sampler or "nsga2", "none"


def directions(objectives: Sequence[str]) -> list[StudyDirection]:
    return [
        StudyDirection.MAXIMIZE if DIRECTIONS[name] == "maximize" else StudyDirection.MINIMIZE
        for name in objectives
    ]


def objectives_of(study: optuna.Study) -> tuple[str, ...]:
    """The objectives a study records; a study from before they were recorded has val_loss."""
    stored = study.user_attrs.get(OBJECTIVES_ATTR)
    if isinstance(stored, list) and all(isinstance(name, str) for name in stored):
        return tuple(stored)
    return DEFAULT


def values(
    objectives: Sequence[str], result: ResultEvent, start: StartEvent | None
) -> list[float]:
    """A finished trial's value for each objective."""
    known: dict[str, float] = {
        "val_loss": result.val_loss,
        "val_accuracy": result.val_accuracy,
        "seconds": result.seconds,
        "parameters": float(start.parameters) if start is not None else float("nan"),
    }
    return [known[name] for name in objectives]


def diverged_values(
    objectives: Sequence[str], penalty: float, seconds: float, parameters: int | None
) -> list[float]:
    """A diverged trial's value for each objective: the penalty for val_loss, no accuracy,
    and its true cost, which samplers see next to a violated constraint."""
    known = {
        "val_loss": penalty,
        "val_accuracy": 0.0,
        "seconds": seconds,
        "parameters": float(parameters) if parameters is not None else float("inf"),
    }
    return [known[name] for name in objectives]


def epoch_value(objective: str, val_loss: float, val_accuracy: float) -> float:
    """What a single-objective trial reports after an epoch, for the pruner."""
    return val_accuracy if objective == "val_accuracy" else val_loss
