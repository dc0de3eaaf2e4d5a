"""Shared fixtures: the real trainer and MNIST, fake trainers, and running `orchestrate`.

Tests marked `real` run the built trainer on the real MNIST files in
`../shared/datasets` (or $RUST_TRAINER_DATA_DIR). The `real_trainer` fixture builds the
trainer with `orchestrate build` when `target/release/rust-trainer` is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import REPO, run_orchestrate

from orchestrator.build import built_binary

FAKE_PRELUDE = """\
import argparse, json, math, os, signal, subprocess, sys, time

def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)

if sys.argv[1:2] == ["describe"]:
    # What tune checks a space against: the flags this fake reads, as the trainer says.
    _described = [(n, "float") for n in ("lr", "dropout", "weight_decay", "momentum")]
    _described += [(n, "int") for n in ("epochs", "batch_size", "seed", "threads")]
    _described += [("train_limit", "int"), ("val_fraction", "float"), ("device", "string")]
    _described += [("data_dir", "path"), ("model", "choice"), ("dataset", "choice")]
    _described += [("optimizer", "choice")]
    _choices = {"model": ["cnn", "resnet18"], "dataset": ["mnist", "cifar10"],
                "optimizer": ["sgd", "adam", "adamw", "rmsprop"]}
    print(json.dumps({"version": "0.0.0-fake", "flags": [
        {"name": n, "flag": "--" + n.replace("_", "-"), "type": t, "choices": _choices.get(n)}
        for n, t in _described]}))
    sys.exit(0)

_parser = argparse.ArgumentParser()
_parser.add_argument("command")
for _flag in ("--lr", "--dropout", "--weight-decay", "--momentum", "--val-fraction"):
    _parser.add_argument(_flag, type=float)
for _flag in ("--epochs", "--batch-size", "--seed", "--threads", "--train-limit"):
    _parser.add_argument(_flag, type=int)
for _flag in ("--model", "--dataset", "--optimizer", "--device", "--data-dir"):
    _parser.add_argument(_flag)
args, _ = _parser.parse_known_args()
EPOCHS = args.epochs or 3
LR = args.lr or 1e-3

def loss_at(epoch):
    # Best near lr = 3e-3; falls with each epoch; the same for the same flags.
    return abs(math.log10(LR) - math.log10(3e-3)) + 1.0 / epoch

def start():
    emit("start", version="0.0.0-fake", model=args.model or "cnn",
         dataset=args.dataset or "mnist", device="cpu", threads=1, parameters=1234,
         train_size=100, val_size=10, config={"lr": LR, "epochs": EPOCHS})

def epoch(n):
    emit("epoch", epoch=n, epochs=EPOCHS, train_loss=loss_at(n) + 0.1, val_loss=loss_at(n),
         val_accuracy=1 / (1 + loss_at(n)), lr=LR, seconds=0.01, samples_per_second=1e4)

def result(status="completed"):
    emit("result", status=status, val_loss=loss_at(EPOCHS),
         val_accuracy=1 / (1 + loss_at(EPOCHS)), best_epoch=EPOCHS, epochs_run=EPOCHS,
         seconds=0.01 * EPOCHS)

def train():
    start()
    for n in range(1, EPOCHS + 1):
        epoch(n)
    result()
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real: runs the built rust-trainer on the real MNIST files")


@pytest.fixture
def fake_trainer(tmp_path: Path) -> Callable[..., Path]:
    """Writes an executable Python script that acts as a trainer; `body` runs after a
    prelude with `emit`, `start`, `epoch`, `result`, `train` and the parsed `args`."""

    def make(body: str = "train()", name: str = "fake-trainer") -> Path:
        path = tmp_path / name
        path.write_text(f"#!{sys.executable}\n{FAKE_PRELUDE}\n{textwrap.dedent(body)}\n")
        path.chmod(0o755)
        return path

    return make


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Makes SIGINT raise KeyboardInterrupt here, even when the suite was started with
    SIGINT ignored (as a background job of a non-interactive shell is)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding `mnist/` with the real MNIST files."""
    path = Path(os.environ.get("RUST_TRAINER_DATA_DIR", REPO.parent / "shared" / "datasets"))
    if not (path / "mnist").is_dir() and not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"no MNIST under {path}; set RUST_TRAINER_DATA_DIR to the datasets folder")
    return path.resolve()


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """A balanced CIFAR-10 subset in the official binary layout: $RUST_TRAINER_CIFAR_DIR,
    else made once under target/ by the datasets' own `to_binary.py` (numpy and Pillow)."""
    if "RUST_TRAINER_CIFAR_DIR" in os.environ:
        return Path(os.environ["RUST_TRAINER_CIFAR_DIR"]).resolve()
    root = REPO / "target" / "cifar10-subset"
    if not (root / "cifar-10-batches-bin" / "test_batch.bin").is_file():
        shared = REPO.parent / "shared" / "datasets"
        script = Path(os.environ.get("RUST_TRAINER_DATA_DIR", shared)) / "cifar10" / "to_binary.py"
        args = ["--train-per-class", "100", "--test-per-class", "20"]
        completed = subprocess.run(
            [sys.executable, str(script), str(root), *args], capture_output=True, text=True
        )
        assert completed.returncode == 0, completed.stderr
    return root


@pytest.fixture(scope="session")
def real_trainer() -> Path:
    """target/release/rust-trainer (or under $CARGO_TARGET_DIR), built with `orchestrate
    build` when it is missing."""
    binary = built_binary(REPO)
    if not binary.is_file():
        completed = run_orchestrate(["build"], cwd=REPO, timeout=3600)
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert Path(completed.stdout.strip()) == binary
    return binary


@pytest.fixture
def in_tmp(tmp_path: Path) -> Iterator[Path]:
    """Runs the test in its own folder, so default storages and runs/ land there."""
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)
