from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from helpers import REAL_FLAGS

from orchestrator.events import (
    EpochEvent,
    ErrorEvent,
    MalformedEvent,
    ResultEvent,
    StartEvent,
    parse_line,
)

# Lines as the trainer prints them (taken from a real run, config shortened).
START = (
    '{"event":"start","version":"0.1.0","model":"cnn","dataset":"mnist","device":"cpu",'
    '"threads":1,"parameters":1111946,"train_size":1000,"val_size":1200,'
    '"config":{"lr":0.001,"optimizer":"adam"}}'
)
EPOCH = (
    '{"event":"epoch","epoch":1,"epochs":2,"train_loss":3.9110054836273194,'
    '"val_loss":1.0326692835489908,"val_accuracy":0.7341666666666666,"lr":0.001,'
    '"seconds":0.894839632,"samples_per_second":1877.2795935}'
)
RESULT = (
    '{"event":"result","status":"completed","val_loss":0.34409988403320313,'
    '"val_accuracy":0.8941666666666667,"best_epoch":2,"epochs_run":2,"seconds":1.84}'
)
DIVERGED = (
    '{"event":"result","status":"diverged","val_loss":null,"val_accuracy":null,'
    '"best_epoch":null,"epochs_run":0,"seconds":5.17}'
)
ERROR = '{"event":"error","kind":"diverged","message":"training diverged: lower --lr"}'


def test_each_event_parses_into_its_dataclass() -> None:
    start = parse_line(START)
    # Every field of the start event arrives typed.
    assert start == StartEvent(
        version="0.1.0",
        model="cnn",
        dataset="mnist",
        device="cpu",
        threads=1,
        parameters=1111946,
        train_size=1000,
        val_size=1200,
        config={"lr": 0.001, "optimizer": "adam"},
    )

    epoch = parse_line(EPOCH)
    # Floats keep every printed digit: the objective's value must match a re-run exactly.
    assert isinstance(epoch, EpochEvent)
    assert epoch.val_loss == 1.0326692835489908

    result = parse_line(RESULT)
    # The result's optional test fields stay None without --eval-test.
    assert result == ResultEvent("completed", 0.34409988403320313, 0.8941666666666667, 2, 2, 1.84)

    # An error event carries its kind and message.
    assert parse_line(ERROR) == ErrorEvent("diverged", "training diverged: lower --lr")


def test_null_floats_read_as_nan() -> None:
    result = parse_line(DIVERGED)
    # A non-finite value is printed as null and read back as NaN; best_epoch may be null.
    assert isinstance(result, ResultEvent)
    assert math.isnan(result.val_loss) and math.isnan(result.val_accuracy)
    assert result.best_epoch is None


# With --val-fraction 0 (a final model) the validation fields are absent altogether.
UNVALIDATED_EPOCH = EPOCH.replace(
    '"val_loss":1.0326692835489908,"val_accuracy":0.7341666666666666,', ""
)
UNVALIDATED_RESULT = (
    '{"event":"result","status":"completed","best_epoch":2,"epochs_run":2,"seconds":1.84,'
    '"test_loss":0.2,"test_accuracy":0.93}'
)


def test_absent_validation_reads_as_nan_and_not_validated() -> None:
    epoch = parse_line(UNVALIDATED_EPOCH)
    result = parse_line(UNVALIDATED_RESULT)
    # No validation set: NaN values, told apart from a non-finite one by `validated`.
    assert isinstance(epoch, EpochEvent) and isinstance(result, ResultEvent)
    assert math.isnan(epoch.val_loss) and not epoch.validated
    assert math.isnan(result.val_accuracy) and not result.validated
    assert result.test_accuracy == 0.93 and result.best_epoch == 2
    # A run with validation says so; a null (diverged) value is still validated.
    assert isinstance(parse_line(EPOCH), EpochEvent)
    diverged = parse_line(DIVERGED)
    assert isinstance(diverged, ResultEvent) and diverged.validated


@pytest.mark.parametrize(
    "line",
    ["", "loading MNIST...", "[1, 2]", '"epoch"', '{"epoch": 1}', '{"event": "checkpoint"}'],
)
def test_lines_that_are_not_events_give_none(line: str) -> None:
    # Not JSON, not an object, no event key, or an event this version does not know.
    assert parse_line(line) is None


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"event": "epoch", "epoch": 1}', "no 'epochs' field"),
        (EPOCH.replace('"epoch":1', '"epoch":"1"'), "'epoch' must be an integer"),
        (EPOCH.replace('"epoch":1', '"epoch":true'), "'epoch' must be an integer"),
        (EPOCH.replace('"lr":0.001', '"lr":"fast"'), "'lr' must be a number or null"),
        (RESULT.replace('"completed"', '"finished"'), "'status' must be one of"),
        (ERROR.replace('"diverged"', '"oops"', 1), "'kind' must be one of"),
        (START.replace('"config":{', '"config":[{').replace("}}", "}]}"), "must be an object"),
        ('{"event": 3}', "event name must be a string"),
        (EPOCH.replace('"val_accuracy":0.7341666666666666,', ""), "no 'val_accuracy' field"),
        (RESULT.replace('"val_loss":0.34409988403320313,', ""), "no 'val_loss' field"),
    ],
)
def test_malformed_events_raise_naming_the_field(line: str, words: str) -> None:
    # An event that breaks the contract is an error that says which field is wrong.
    with pytest.raises(MalformedEvent, match=words):
        parse_line(line)


@pytest.mark.real
def test_every_line_of_a_real_run_parses(real_trainer: Path, data_dir: Path) -> None:
    completed = subprocess.run(
        [str(real_trainer), "train", "--data-dir", str(data_dir), "--epochs", "2", *REAL_FLAGS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = completed.stdout.splitlines()
    events = [parse_line(line) for line in lines]

    # stdout holds JSON objects only, each one a known event.
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert [type(e) for e in events] == [StartEvent, EpochEvent, EpochEvent, ResultEvent]
    # The result repeats the best epoch's val_loss.
    result = events[-1]
    assert isinstance(result, ResultEvent)
    assert result.val_loss == min(e.val_loss for e in events if isinstance(e, EpochEvent))
