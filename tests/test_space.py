from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
from helpers import REAL_FLAGS

from orchestrator.errors import SpaceError
from orchestrator.space import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    SearchSpace,
    Value,
    builtin_space,
    cnn_space,
    load_space,
)


def test_the_cnn_space_samples_the_issue_s_parameters() -> None:
    space = cnn_space()

    # lr and weight_decay on a log scale, batch size and optimizer categorical, dropout linear.
    names = {p.name: p for p in space.params}
    assert set(names) == {"lr", "batch_size", "optimizer", "weight_decay", "dropout"}
    assert isinstance(names["lr"], FloatParam) and names["lr"].log
    assert isinstance(names["weight_decay"], FloatParam) and names["weight_decay"].log
    assert names["batch_size"] == CategoricalParam("batch_size", (64, 128, 256))
    assert names["optimizer"] == CategoricalParam("optimizer", ("sgd", "adam", "adamw"))


def test_flags_use_kebab_case_and_momentum_only_for_sgd() -> None:
    space = cnn_space()
    point: dict[str, Value] = {
        "lr": 0.001,
        "batch_size": 64,
        "optimizer": "sgd",
        "weight_decay": 1e-05,
    }

    # Names become flags; floats are written so that they read back exactly.
    assert space.flags({**point, "dropout": 0.1}) == [
        "--lr", "0.001", "--batch-size", "64", "--optimizer", "sgd",
        "--weight-decay", "1e-05", "--dropout", "0.1", "--momentum", "0.9",
    ]  # fmt: skip
    # Adam gets no momentum flag.
    assert "--momentum" not in space.flags({**point, "optimizer": "adam", "dropout": 0.1})


def test_booleans_become_bare_flags() -> None:
    space = SearchSpace("s", (CategoricalParam("nesterov", (True, False)),))

    # True gives the flag alone, False leaves it out.
    assert space.flags({"nesterov": True}) == ["--nesterov"]
    assert space.flags({"nesterov": False}) == []


def test_the_grid_uses_grid_points_and_choices() -> None:
    grid = cnn_space().grid()

    # Floats use their few grid points; categorical parameters all their choices.
    assert grid["lr"] == [1e-3, 3e-3, 1e-2]
    assert grid["batch_size"] == [64, 128, 256]
    # An int range small enough is enumerated.
    assert SearchSpace("s", (IntParam("hidden", 1, 3),)).grid() == {"hidden": [1, 2, 3]}


def test_a_float_without_grid_points_cannot_be_gridded() -> None:
    space = SearchSpace("s", (FloatParam("lr", 1e-4, 1e-1, log=True),))

    # The error names the parameter and the fix.
    with pytest.raises(SpaceError, match=r"grid points for 'lr'.*grid = "):
        space.grid()


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: FloatParam("lr", 0.0, 1.0, log=True), "low must be > 0, but got low=0.0"),
        (lambda: FloatParam("lr", 1.0, 0.1), "low <= high, but got low=1.0, high=0.1"),
        (lambda: FloatParam("dropout", 0.0, 0.6, grid=(0.9,)), r"got \[0.9\]"),
        (lambda: CategoricalParam("optimizer", ()), "at least one choice"),
        (lambda: SearchSpace("s", (IntParam("epochs", 1, 3),)), "set for the whole study"),
        (
            lambda: SearchSpace("s", (IntParam("a", 1, 2),), (FixedParam("b", 1, (("c", 1),)),)),
            r"depends on \['c'\]",
        ),
    ],
)
def test_invalid_spaces_say_what_is_wrong(build: object, words: str) -> None:
    # Each rule's message gives the rule and the value that broke it.
    with pytest.raises(SpaceError, match=words):
        build()  # type: ignore[operator]


def test_unknown_model_has_no_builtin_space() -> None:
    # The message lists what is built in and points at --space.
    with pytest.raises(SpaceError, match=r"no built-in search space for --model vgg.*--space"):
        builtin_space("vgg")


def test_resnets_share_an_sgd_space_with_warmup_for_cosine() -> None:
    space = builtin_space("resnet18")
    names = {param.name for param in space.params}
    # The issue's list: lr, weight decay, momentum, schedule, label smoothing, batch size.
    assert {"lr", "weight_decay", "momentum", "schedule", "label_smoothing", "batch_size"} <= names
    assert builtin_space("resnet50") == space
    # Warm-up comes with cosine only: one-cycle would reject it.
    cosine = space.flags({"schedule": "cosine"})
    onecycle = space.flags({"schedule": "onecycle"})
    assert "--warmup-epochs" in cosine and "--warmup-epochs" not in onecycle
    assert "--nesterov" in cosine


def test_a_toml_space_loads(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text(
        """
        [params.lr]
        type = "float"
        low = 1e-4
        high = 1e-1
        log = true
        grid = [1e-3, 1e-2]

        [params.optimizer]
        type = "categorical"
        choices = ["sgd", "adam"]

        [params.hidden]
        type = "int"
        low = 64
        high = 512
        log = true

        [fixed.momentum]
        value = 0.8
        when = { optimizer = "sgd" }
        """.replace("\n        ", "\n")
    )

    space = load_space(path)

    # Every table becomes its frozen dataclass, named after the file.
    assert space == SearchSpace(
        "small",
        (
            FloatParam("lr", 1e-4, 1e-1, log=True, grid=(1e-3, 1e-2)),
            CategoricalParam("optimizer", ("sgd", "adam")),
            IntParam("hidden", 64, 512, log=True),
        ),
        (FixedParam("momentum", 0.8, (("optimizer", "sgd"),)),),
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[params.lr]\ntype = 'float'\nlow = 'a'\nhigh = 1", "low must be a number"),
        ("[params.lr]\ntype = 'normal'", "type must be one of"),
        ("[params.lr]\ntype = 'float'\nlow = 0.1\nhigh = 1\nstep = 2", r"unknown keys \['step'\]"),
        ("[space]\n", r"unknown tables \['space'\]"),
        ("[fixed.momentum]\nvalue = 0.9", "samples nothing"),
        ("[params.lr\n", "not valid TOML"),
    ],
)
def test_a_bad_toml_space_names_the_file_and_the_problem(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)

    # The message starts with the file, then says what is wrong in it.
    with pytest.raises(SpaceError, match=f"{path}.*{words}"):
        load_space(path)


def test_sampling_records_only_sampled_values() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()

    sampled = cnn_space().sample(trial)

    # The trial's params are the sampled values; fixed ones stay out of the study.
    assert sampled == trial.params
    assert "momentum" not in trial.params


@pytest.mark.real
def test_the_trainer_accepts_every_flag_the_cnn_space_gives(
    real_trainer: Path, data_dir: Path
) -> None:
    space = cnn_space()
    # One point with every choice at its largest, sgd so that momentum is passed too.
    point: dict[str, Value] = {
        "lr": 0.03,
        "batch_size": 256,
        "optimizer": "sgd",
        "weight_decay": 0.01,
    }
    flags = space.flags({**point, "dropout": 0.6})

    command = [str(real_trainer), "train", "--data-dir", str(data_dir), "--epochs", "1"]
    completed = subprocess.run(
        [*command, *REAL_FLAGS, *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )

    # The trainer takes them all and trains.
    assert completed.returncode == 0, completed.stderr[-2000:]
