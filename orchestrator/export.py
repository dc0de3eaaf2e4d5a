"""Every trial of a study as plain records, for `orchestrate trials --format csv|json`.

A record keeps everything Optuna stores about a trial that a user may want to analyse
elsewhere: its number and state, its value(s), parameters, the val_loss reported at each
epoch (intermediate values), timing and the user attributes (fail_reason, exit_code, ...).
CSV columns have stable names: the fixed ones first, then `param.NAME` and
`user_attr.NAME` in sorted order; nested values (the intermediate values, list-valued
attributes) are JSON text in their cell. JSON is one document, with non-finite numbers
written as null so that any JSON reader (jq included) accepts it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial

FORMATS = ("table", "csv", "json")
# Where a study keeps the names of its objectives: a list of strings under one of these
# user attributes (top level, or inside the tune settings).
_OBJECTIVE_ATTRS = ("objectives", "objective_names")
_FIXED_COLUMNS = (
    "number",
    "state",
    "datetime_start",
    "datetime_complete",
    "duration_seconds",
    "epochs_reported",
    "intermediate_values",
)


def objective_names(study: optuna.Study) -> list[str]:
    """The names of the study's objectives: those it recorded (metric names, or a list in
    its user attributes), else `val_loss` for a single objective (what `tune` minimises),
    else `objective 0`, `objective 1`, ..."""
    count = len(study.directions)
    # Optuna's own place for them (Study.set_metric_names) first.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        recorded = study.metric_names
    if recorded is not None and len(recorded) == count:
        return list(recorded)
    attrs = study.user_attrs
    settings = attrs.get("settings")
    places = [attrs, settings] if isinstance(settings, dict) else [attrs]
    for place in places:
        for key in _OBJECTIVE_ATTRS:
            names = place.get(key)
            if (
                isinstance(names, list)
                and len(names) == count
                and all(isinstance(n, str) for n in names)
            ):
                return list(names)
    if count == 1:
        return ["val_loss"]
    return [f"objective {i}" for i in range(count)]


def trial_record(trial: FrozenTrial, objectives: Sequence[str]) -> dict[str, object]:
    """One trial as a JSON-ready dict (non-finite floats become None)."""
    values = trial.values
    return {
        "number": trial.number,
        "state": trial.state.name,
        # `value` for the common single-objective case; `values` names every objective.
        "value": _finite(values[0]) if values is not None and len(values) == 1 else None,
        "values": (
            {name: _finite(v) for name, v in zip(objectives, values, strict=False)}
            if values is not None
            else None
        ),
        "params": {name: _finite(v) for name, v in trial.params.items()},
        "intermediate_values": {
            str(step): _finite(v) for step, v in sorted(trial.intermediate_values.items())
        },
        "datetime_start": _iso(trial.datetime_start),
        "datetime_complete": _iso(trial.datetime_complete),
        "duration_seconds": (
            round(trial.duration.total_seconds(), 3) if trial.duration is not None else None
        ),
        "user_attrs": _clean(dict(trial.user_attrs)),
    }


def trials_json(study: optuna.Study) -> str:
    """The study and every trial as one JSON document."""
    objectives = objective_names(study)
    document = {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "objectives": objectives,
        "trials": [trial_record(t, objectives) for t in study.get_trials(deepcopy=False)],
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def trials_csv(study: optuna.Study) -> str:
    """Every trial as CSV, one row each, with a header of stable column names."""
    objectives = objective_names(study)
    trials = study.get_trials(deepcopy=False)
    value_columns = ["value"] if len(objectives) == 1 else [f"value.{n}" for n in objectives]
    params = sorted({name for t in trials for name in t.params})
    attrs = sorted({name for t in trials for name in t.user_attrs})
    header = [
        *_FIXED_COLUMNS[:2],
        *value_columns,
        *_FIXED_COLUMNS[2:],
        *(f"param.{p}" for p in params),
        *(f"user_attr.{a}" for a in attrs),
    ]

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for trial in trials:
        record = trial_record(trial, objectives)
        values = trial.values or [None] * len(objectives)
        row = [
            record["number"],
            record["state"],
            *(_cell(_finite(v)) for v in values),
            _cell(record["datetime_start"]),
            _cell(record["datetime_complete"]),
            _cell(record["duration_seconds"]),
            len(trial.intermediate_values),
            json.dumps(record["intermediate_values"], allow_nan=False),
            *(_cell(_finite(trial.params.get(p))) for p in params),
            *(_cell(_clean(trial.user_attrs.get(a))) for a in attrs),
        ]
        writer.writerow(row)
    return out.getvalue()


def _cell(value: object) -> str:
    """A CSV cell: empty for None, JSON text for lists and dicts, else the value's text."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, allow_nan=False)
    # repr keeps a float's every digit, as the storage has it.
    return repr(value) if isinstance(value, float) else str(value)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(value: object) -> object:
    """A user attribute with every non-finite float (at any depth) replaced by None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return _finite(value)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
