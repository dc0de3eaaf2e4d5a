from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
from helpers import REAL_FLAGS, REPO

from orchestrator.errors import SpaceError
from orchestrator.space import (
    BUILTIN_SPACES,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    SearchSpace,
    Value,
    builtin_space,
    builtin_text,
    cnn_space,
    load_space,
    parse_space,
)


def test_the_cnn_space_samples_the_issue_s_parameters() -> None:
    space = cnn_space()

    # lr and weight_decay on a log scale, batch size and optimizer categorical, dropout linear.
    names = {p.name: p for p in space.params}
    assert set(names) == {"lr", "batch_size", "optimizer", "weight_decay", "dropout", "momentum"}
    assert isinstance(names["lr"], FloatParam) and names["lr"].log
    assert isinstance(names["weight_decay"], FloatParam) and names["weight_decay"].log
    assert names["batch_size"] == CategoricalParam("batch_size", (64, 128, 256))
    assert names["optimizer"] == CategoricalParam("optimizer", ("sgd", "adam", "adamw"))


def test_flags_use_kebab_case() -> None:
    space = cnn_space()
    point: dict[str, Value] = {
        "lr": 0.001,
        "batch_size": 64,
        "optimizer": "sgd",
        "weight_decay": 1e-05,
    }

    # Names become flags; floats are written so that they read back exactly.
    assert space.flags({**point, "dropout": 0.1, "momentum": 0.95}) == [
        "--lr", "0.001", "--batch-size", "64", "--optimizer", "sgd",
        "--weight-decay", "1e-05", "--dropout", "0.1", "--momentum", "0.95",
    ]  # fmt: skip


@pytest.mark.parametrize("seed", range(8))
def test_the_cnn_space_samples_momentum_only_for_sgd(seed: int) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trials = [study.ask() for _ in range(6)]

    for trial in trials:
        sampled = cnn_space().sample(trial)
        # SGD trials sample a momentum; Adam and AdamW trials have none, not even in Optuna.
        assert ("momentum" in sampled) == (sampled["optimizer"] == "sgd")
        assert ("momentum" in trial.params) == (sampled["optimizer"] == "sgd")


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
            lambda: SearchSpace("s", (), (FixedParam("flags_from_stdin", True),)),
            "how tune itself hands a trial its flags",
        ),
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
    # Warm-up is sampled with cosine only: one-cycle would reject it.
    warmup = next(p for p in space.params if p.name == "warmup_epochs")
    assert warmup.when == (("schedule", "cosine"),)
    grid = space.grid_combinations()
    assert {p.get("warmup_epochs") for p in grid if p["schedule"] == "cosine"} == {0, 1}
    assert all("warmup_epochs" not in p for p in grid if p["schedule"] == "onecycle")
    assert "--nesterov" in space.flags({"schedule": "cosine"})


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
    flags = space.flags({**point, "dropout": 0.6, "momentum": 0.99})

    command = [str(real_trainer), "train", "--data-dir", str(data_dir), "--epochs", "1"]
    completed = subprocess.run(
        [*command, *REAL_FLAGS, *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )

    # The trainer takes them all and trains.
    assert completed.returncode == 0, completed.stderr[-2000:]


def _conditional_space(tmp_path: Path, text: str) -> SearchSpace:
    path = tmp_path / "cond.toml"
    path.write_text(text.replace("\n        ", "\n"))
    return load_space(path)


def test_a_conditional_parameter_is_sampled_after_its_parent(tmp_path: Path) -> None:
    # Declared before its parent: the space still samples the parent first.
    space = _conditional_space(
        tmp_path,
        """
        [params.momentum]
        type = "float"
        low = 0.8
        high = 0.99
        when = { optimizer = "sgd" }

        [params.optimizer]
        type = "categorical"
        choices = ["sgd", "adam"]
        """,
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))

    points = [space.sample(study.ask()) for _ in range(12)]

    # The parent comes first in the sampling order, and momentum appears with sgd alone.
    assert [p.name for p in space.order] == ["optimizer", "momentum"]
    assert {p["optimizer"] for p in points} == {"sgd", "adam"}
    assert all(("momentum" in p) == (p["optimizer"] == "sgd") for p in points)


def test_conditions_chain_through_an_unsampled_parent(tmp_path: Path) -> None:
    space = _conditional_space(
        tmp_path,
        """
        [params.optimizer]
        type = "categorical"
        choices = ["sgd", "adam"]

        [params.nesterov]
        type = "categorical"
        choices = [true, false]
        when = { optimizer = "sgd" }

        [params.momentum]
        type = "float"
        low = 0.8
        high = 0.99
        grid = [0.9, 0.95]
        when = { nesterov = true }
        """,
    )

    grid = space.grid_combinations()

    # The grid holds only valid combinations: adam alone, sgd without Nesterov, and sgd
    # with Nesterov at each momentum; no point twice.
    assert sorted(grid, key=repr) == sorted(
        [
            {"optimizer": "adam"},
            {"optimizer": "sgd", "nesterov": False},
            {"optimizer": "sgd", "nesterov": True, "momentum": 0.9},
            {"optimizer": "sgd", "nesterov": True, "momentum": 0.95},
        ],
        key=repr,
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '[params.momentum]\ntype = "float"\nlow = 0.8\nhigh = 0.9\n'
            'when = { optimiser = "sgd" }',
            r"'momentum' depends on \['optimiser'\], which the space does not sample",
        ),
        (
            '[params.a]\ntype = "categorical"\nchoices = [1, 2]\nwhen = { b = 1 }\n'
            '[params.b]\ntype = "categorical"\nchoices = [1, 2]\nwhen = { a = 1 }',
            r"\['a', 'b'\] depend on each other in a cycle",
        ),
        (
            '[params.a]\ntype = "categorical"\nchoices = [1, 2]\nwhen = { a = 1 }',
            r"\['a'\] depend on each other in a cycle",
        ),
        (
            '[params.o]\ntype = "categorical"\nchoices = ["sgd"]\n'
            '[params.m]\ntype = "float"\nlow = 0.1\nhigh = 0.9\nwhen = { o = "adam" }',
            r"'m' depends on o = 'adam', which o never takes",
        ),
        (
            '[params.o]\ntype = "categorical"\nchoices = ["sgd"]\n'
            '[params.m]\ntype = "float"\nlow = 0.1\nhigh = 0.9\nwhen = "sgd"',
            r"\[params.m\] when must be a table",
        ),
    ],
)
def test_bad_conditions_name_the_parameter(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)

    # An unknown or cyclic parent, or a value the parent never takes, names what is wrong.
    with pytest.raises(SpaceError, match=words):
        load_space(path)


@pytest.mark.parametrize("model", sorted(BUILTIN_SPACES))
def test_the_builtin_spaces_are_the_packaged_toml_files(model: str) -> None:
    text = builtin_text(model)

    # The shipped file is what `space show` prints and what --model picks, and it explains
    # itself in comments.
    assert text.startswith("# The built-in search space")
    assert parse_space(text, name=builtin_space(model).name, source="x") == builtin_space(model)
    assert (REPO / "orchestrator" / "spaces").is_dir()
