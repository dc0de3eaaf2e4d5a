"""`orchestrate trials --format csv|json`: every trial, with stable names, parsed back."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from orchestrator.cli import cli
from orchestrator.export import objective_names, trials_csv, trials_json


def study_in(storage: str) -> optuna.Study:
    """Three trials: completed with its learning curve, pruned at epoch 1 (with a NaN
    attribute), failed with its reason; and one queued."""
    study = optuna.create_study(study_name="demo", storage=storage)
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    opt = optuna.distributions.CategoricalDistribution(["adam", "sgd"])
    rows = [
        (0.25, TrialState.COMPLETE, {1: 0.4, 2: 0.25}, {"val_accuracy": 0.93}),
        (None, TrialState.PRUNED, {1: 0.9}, {"fail_reason": "pruned", "penalty": math.nan}),
        (None, TrialState.FAIL, {}, {"fail_reason": "crashed", "stderr_tail": 'a,b\n"c"'}),
    ]
    for number, (value, state, curve, attrs) in enumerate(rows):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 10.0 ** -(number + 1), "optimizer": "adam"},
                distributions={"lr": lr, "optimizer": opt},
                value=value,
                state=state,
                intermediate_values=curve,
                user_attrs=attrs,
            )
        )
    study.enqueue_trial({"lr": 0.5e-2})
    return study


def test_json_is_one_document_with_every_trial(tmp_path: Path) -> None:
    document = json.loads(trials_json(study_in(f"sqlite:///{tmp_path / 's.db'}")))
    trials = document["trials"]

    # Every trial, queued included, in order, with its state.
    assert [t["state"] for t in trials] == ["COMPLETE", "PRUNED", "FAIL", "WAITING"]
    assert document["objectives"] == ["val_loss"] and document["directions"] == ["minimize"]
    # Values, params, learning curves and attributes come through; NaN becomes null.
    assert trials[0]["value"] == 0.25 and trials[0]["values"] == {"val_loss": 0.25}
    assert trials[0]["params"] == {"lr": 0.1, "optimizer": "adam"}
    assert trials[0]["intermediate_values"] == {"1": 0.4, "2": 0.25}
    assert trials[1]["user_attrs"] == {"fail_reason": "pruned", "penalty": None}
    assert trials[2]["user_attrs"]["fail_reason"] == "crashed"
    assert trials[0]["duration_seconds"] is not None and trials[3]["value"] is None


def test_csv_has_stable_columns_and_round_trips_awkward_text(tmp_path: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(trials_csv(study_in(f"sqlite:///{tmp_path / 's'}")))))

    # The fixed columns come first, then one per parameter and one per attribute, sorted.
    assert list(rows[0]) == [
        "number",
        "state",
        "value",
        "datetime_start",
        "datetime_complete",
        "duration_seconds",
        "epochs_reported",
        "intermediate_values",
        "param.lr",
        "param.optimizer",
        "user_attr.fail_reason",
        "user_attr.penalty",
        "user_attr.stderr_tail",
        "user_attr.val_accuracy",
    ]
    # One row per trial; values keep every digit; missing ones are empty cells.
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "FAIL", "WAITING"]
    assert float(rows[0]["value"]) == 0.25 and rows[1]["value"] == ""
    assert json.loads(rows[0]["intermediate_values"]) == {"1": 0.4, "2": 0.25}
    assert rows[0]["epochs_reported"] == "2" and rows[1]["epochs_reported"] == "1"
    # Commas, quotes and newlines in an attribute survive CSV quoting.
    assert rows[2]["user_attr.stderr_tail"] == 'a,b\n"c"'
    assert rows[2]["user_attr.fail_reason"] == "crashed"


def test_several_objectives_get_a_column_each(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="mo", directions=["minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.3, 12.5], params={}, distributions={}))
    study.set_user_attr("objectives", ["val_loss", "seconds"])
    rows = list(csv.DictReader(io.StringIO(trials_csv(study))))
    document = json.loads(trials_json(study))

    # The study's recorded names label the values, in CSV and in JSON.
    assert rows[0]["value.val_loss"] == "0.3" and rows[0]["value.seconds"] == "12.5"
    assert document["trials"][0]["values"] == {"val_loss": 0.3, "seconds": 12.5}
    # Without recorded names, objectives are numbered.
    unnamed = optuna.create_study(directions=["minimize", "maximize"])
    assert objective_names(unnamed) == ["objective 0", "objective 1"]


def test_cli_formats_parse_and_jq_reads_the_json(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study_in(storage)
    runner = CliRunner()

    as_json = runner.invoke(cli, ["trials", "--storage", storage, "--format", "json"])
    as_csv = runner.invoke(cli, ["trials", "--storage", storage, "--format", "csv"])
    table = runner.invoke(cli, ["trials", "--storage", storage])

    # Each format is on stdout alone, and parses.
    assert as_json.exit_code == 0 and len(json.loads(as_json.output)["trials"]) == 4
    assert as_csv.exit_code == 0 and len(list(csv.DictReader(io.StringIO(as_csv.output)))) == 4
    # The table stays the default.
    assert table.exit_code == 0 and "PRUNED" in table.output and "{" not in table.output
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    # jq reads the document as it is.
    numbers = subprocess.run(
        ["jq", "-c", '[.trials[] | select(.state == "COMPLETE") | .number]'],
        input=as_json.output,
        capture_output=True,
        text=True,
        check=True,
    )
    assert numbers.stdout.strip() == "[0]"
