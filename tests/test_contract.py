"""Checking search spaces against what the real trainer says it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.contract import FlagSpec, check_space, describe_trainer
from orchestrator.errors import SpaceError, TrainerNotFound
from orchestrator.space import (
    BUILTIN_SPACES,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    SearchSpace,
)


@pytest.fixture(scope="module")
def flags(real_trainer: Path) -> dict[str, FlagSpec]:
    return describe_trainer(real_trainer)


@pytest.mark.real
def test_the_trainer_describes_its_flags(flags: dict[str, FlagSpec]) -> None:
    # Types, ranges and choices come from the trainer itself.
    assert flags["lr"].kind == "float" and flags["lr"].low == 0 and flags["lr"].low_open
    assert flags["batch_size"].kind == "int"
    assert "onecycle" in flags["schedule"].choices
    assert flags["nesterov"].kind == "bool"


@pytest.mark.real
@pytest.mark.parametrize("model", sorted(BUILTIN_SPACES))
def test_every_builtin_space_fits_the_trainer(model: str, flags: dict[str, FlagSpec]) -> None:
    # No built-in space asks for anything the trainer would reject.
    check_space(BUILTIN_SPACES[model](), flags)


@pytest.mark.real
@pytest.mark.parametrize(
    ("param", "words"),
    [
        (
            FloatParam("learning_rate", 1e-4, 1e-1, log=True),
            r"'learning_rate' is not a flag.*'lr'",
        ),
        (FloatParam("dropout", 0.0, 1.5), r"'dropout'.*1\.5 is outside.*\[0, 1\)"),
        (FloatParam("batch_size", 16, 256), r"'batch_size' is a float parameter.*integer"),
        (CategoricalParam("optimizer", ("sgd", "lamb")), r"'lamb' is not a --optimizer choice"),
        (IntParam("patience", 0, 5), r"'patience': the bound 0 is outside"),
        (FloatParam("momentum", 0.5, 1.0, grid=(0.9, 1.0)), r"'momentum'.*1\.0 is outside"),
    ],
)
def test_spaces_the_trainer_would_reject_name_the_parameter(
    param: FloatParam | IntParam | CategoricalParam, words: str, flags: dict[str, FlagSpec]
) -> None:
    # Each problem stops the study before any trial, naming the parameter and the rule.
    with pytest.raises(SpaceError, match=words):
        check_space(SearchSpace(name="bad", params=(param,)), flags)


@pytest.mark.real
def test_fixed_values_are_checked_too(flags: dict[str, FlagSpec]) -> None:
    space = SearchSpace(
        name="fixed",
        params=(FloatParam("lr", 1e-3, 1e-1, log=True),),
        fixed=(FixedParam("nesterov", True), FixedParam("schedule", "linear")),
    )
    # A switch takes true; an unknown schedule is refused with the choices listed.
    with pytest.raises(SpaceError, match=r"'linear' is not a --schedule choice \(constant,"):
        check_space(space, flags)


def test_a_binary_that_cannot_describe_itself_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "not-a-trainer"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    # Not JSON: the message says to rebuild.
    with pytest.raises(TrainerNotFound, match="orchestrate build"):
        describe_trainer(fake)
