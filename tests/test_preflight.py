"""What tune checks before it creates a study: the trainer, the data folder, the space."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.errors import DataNotFound, SpaceError, TrainerNotFound
from orchestrator.preflight import check_data, check_trainer, check_warmup, data_dir_for
from orchestrator.space import builtin_space, cnn_space

FakeTrainer = Callable[..., Path]


def test_the_data_dir_is_the_last_one_the_trainer_would_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUST_TRAINER_DATA_DIR", "/from/env")

    # --data-dir after `--` wins, as the trainer takes a flag's last value ...
    assert data_dir_for(tmp_path, ["--data-dir", "/later"]) == Path("/later")
    assert data_dir_for(tmp_path, ["--data-dir=/later"]) == Path("/later")
    # ... then tune's own --data-dir, then the variable the trainer reads.
    assert data_dir_for(tmp_path, []) == tmp_path
    assert data_dir_for(None, []) == Path("/from/env")
    monkeypatch.delenv("RUST_TRAINER_DATA_DIR")
    assert data_dir_for(None, []) == Path("data")


@pytest.mark.parametrize("layout", ["root", "dataset folder", "gzip"])
def test_mnist_is_found_where_the_trainer_looks(tmp_path: Path, layout: str) -> None:
    folder = tmp_path if layout == "dataset folder" else tmp_path / "mnist"
    folder.mkdir(exist_ok=True)
    name = "train-images-idx3-ubyte" + (".gz" if layout == "gzip" else "")
    (folder / name).touch()

    # The root or the dataset folder itself, raw or compressed: no complaint.
    check_data("mnist", tmp_path)


def test_a_folder_without_the_dataset_is_named_with_what_to_do(tmp_path: Path) -> None:
    # The message names the flag, the folder and the file, and how to get the data.
    with pytest.raises(DataNotFound) as error:
        check_data("mnist", tmp_path)
    assert f"--data-dir {tmp_path} holds no mnist files" in str(error.value)
    assert "train-images-idx3-ubyte" in str(error.value)
    assert "orchestrate data download" in str(error.value)
    # CIFAR-10 is looked for by its first batch file.
    with pytest.raises(DataNotFound, match=r"data_batch_1\.bin"):
        check_data("cifar10", tmp_path)


def test_a_trainer_that_accepts_the_space_passes(fake_trainer: FakeTrainer) -> None:
    # The fake describes the flags of the built-in CNN space.
    check_trainer(fake_trainer(), cnn_space(), ["--val-fraction", "0.2"])


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["--epochs", "5"],
            r"--epochs after `--` would change what the study records; .*"
            r"orchestrate tune --epochs",
        ),
        (["--train-limit=100"], r"--train-limit after `--` would change"),
        (["--lr", "0.01"], r"--lr after `--` is set by the space 'cnn', whose value would win"),
    ],
)
def test_a_flag_tune_or_the_space_sets_is_refused_after_the_double_dash(
    fake_trainer: FakeTrainer, extra: list[str], words: str
) -> None:
    # Either value would silently lose to the other; the message says where it belongs.
    with pytest.raises(SpaceError, match=words):
        check_trainer(fake_trainer(), cnn_space(), extra)


def test_a_dataset_the_trainer_does_not_know_is_refused(real_trainer: Path) -> None:
    # Every trial would fail on it: the message names the value and the trainer's choices.
    with pytest.raises(SpaceError, match=r"--dataset 'cifar100' is not one .* mnist, cifar10"):
        check_trainer(real_trainer, cnn_space(), [], "cifar100")
    check_trainer(real_trainer, cnn_space(), [], "cifar10")


def test_an_unknown_flag_after_the_double_dash_is_refused(fake_trainer: FakeTrainer) -> None:
    # Every trial would fail on it; the message names it.
    with pytest.raises(SpaceError, match="'--widht' after `--` is not one"):
        check_trainer(fake_trainer(), cnn_space(), ["--widht", "0.5"])


def test_a_trainer_that_cannot_describe_itself_is_not_found(tmp_path: Path) -> None:
    broken = tmp_path / "rust-trainer"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    broken.chmod(0o755)

    # A binary that cannot even describe its flags cannot run a trial.
    with pytest.raises(TrainerNotFound, match="did not describe its flags"):
        check_trainer(broken, cnn_space(), [])


@pytest.mark.parametrize("extra", [["--val-fraction", "0"], ["--val-fraction=0.0"]])
def test_no_validation_set_after_the_double_dash_is_refused(
    fake_trainer: FakeTrainer, extra: list[str]
) -> None:
    # Trials are scored on the validation set: the message names the flag and the way out.
    with pytest.raises(SpaceError, match="leaves no validation set") as error:
        check_trainer(fake_trainer(), cnn_space(), ["--val-fraction", "0.1", *extra])
    assert "orchestrate final" in str(error.value)
    # The last value counts, as in the trainer: a later non-zero fraction is fine.
    check_trainer(fake_trainer(), cnn_space(), [*extra, "--val-fraction", "0.1"])


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--conv1", "abc"], r"--conv1 'abc' after `--` takes an integer"),
        (["--conv1=1.5"], r"--conv1 '1.5' after `--` takes an integer"),
        (["--warmup-epochs", "-1"], r"--warmup-epochs -1 after `--` is outside .* \[0, inf\]"),
        (["--label-smoothing", "1"], r"--label-smoothing 1 after `--` is outside .*\[0, 1\)"),
        (["--clip-grad-norm", "x"], r"--clip-grad-norm 'x' after `--` takes a number"),
        (["--augment", "mixup"], r"--augment 'mixup' .* choices: auto, none, shift, crop-flip"),
        (["--milestones", "3,x"], r"--milestones '3,x' .* integers in \[0, inf\] separated"),
        (["--milestones", "3,-1"], r"--milestones '3,-1' .* integers in \[0, inf\] separated"),
        (["--split-seed", "-3"], r"--split-seed -3 after `--` is outside .* \[0, inf\]"),
        (["--conv1", "99999999999999999999999"], r"takes an integer \(64-bit\)"),
        (["--width", "inf"], r"--width 'inf' after `--` takes a finite number"),
        (["--conv1"], r"--conv1 after `--` needs a value"),
        (["--conv1", "--nesterov"], r"--conv1 after `--` needs a value"),
        (["--nesterov=true"], r"--nesterov after `--` is a switch"),
        (["bogus"], r"'bogus' after `--` is not a flag with its value"),
        (["-h"], r"'-h' after `--` is not a flag with its value"),
        (["--help"], r"'--help' after `--` is not one `rust-trainer train` accepts"),
    ],
)
def test_a_value_the_trainer_would_refuse_after_the_double_dash_is_refused(
    real_trainer: Path, extra: list[str], words: str
) -> None:
    # Every trial would fail on it (or print help and no result): the flag and value named.
    with pytest.raises(SpaceError, match=words):
        check_trainer(real_trainer, cnn_space(), extra)


def test_values_the_trainer_takes_after_the_double_dash_pass(real_trainer: Path) -> None:
    # Switches without a value, negative numbers, lists, choices, both spellings; the
    # trainer's description comes back for tune's other checks.
    extra = ["--nesterov", "--split-seed", "3", "--milestones", "2,4", "--augment=shift"]
    extra += ["--min-lr", "-0", "--gamma=0.5"]
    described = check_trainer(real_trainer, cnn_space(), [*extra, "--conv1", "+8"])
    assert described["flags_from_stdin"].kind == "bool"
    # --val-fraction after `--` is the study's own unless tune was given one too.
    check_trainer(real_trainer, cnn_space(), ["--val-fraction", "0.2"])
    with pytest.raises(SpaceError, match=r"override tune's own --val-fraction 0.1"):
        check_trainer(real_trainer, cnn_space(), ["--val-fraction", "0.2"], val_fraction=0.1)


def test_a_warmup_as_long_as_the_training_is_refused() -> None:
    resnet = builtin_space("resnet18")

    # The built-in ResNet space may sample one epoch of warm-up: one epoch of training is
    # too few for it, two are enough; the message names the space and the way out.
    with pytest.raises(SpaceError, match=r"warmup_epochs up to 1, .*\(--epochs 2 or more\)"):
        check_warmup(resnet, [], epochs=1)
    check_warmup(resnet, [], epochs=2)
    # The same for a warm-up given after `--`; the CNN space has none of its own.
    with pytest.raises(SpaceError, match=r"--warmup-epochs after `--` is 3, .* \(3\)"):
        check_warmup(cnn_space(), ["--warmup-epochs", "3"], epochs=3)
    check_warmup(cnn_space(), ["--warmup-epochs", "2"], epochs=3)
