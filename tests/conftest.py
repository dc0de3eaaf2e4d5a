"""Shared fixtures: the real trainer and MNIST, fake trainers, and running `orchestrate`.

Tests marked `real` run the built trainer on the real MNIST files in
`../shared/datasets` (or $RUST_TRAINER_DATA_DIR). The `real_trainer` fixture builds the
trainer with `orchestrate build` when `target/release/rust-trainer` is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import MARKER_ENV, REPO, run_orchestrate

from orchestrator.build import built_binary

FAKE_PRELUDE = """\
import argparse, json, math, os, signal, subprocess, sys, time

def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)

if "--flags-from-stdin" in sys.argv:
    # Started ahead of its trial, as the real trainer is: the rest of the command follows.
    sys.argv.remove("--flags-from-stdin")
    _line = sys.stdin.readline()
    if not _line:
        emit("error", kind="usage",
             message="--flags-from-stdin: stdin closed before a line of flags arrived")
        sys.exit(2)
    sys.argv += json.loads(_line)

if sys.argv[1:2] == ["info"]:
    # As many GPUs as the test says, so the GPU slots can be exercised without one.
    print(json.dumps({"version": "0.0.0-fake", "cuda_available": True,
                      "cuda_device_count": int(os.environ.get("FAKE_GPUS", "0"))}))
    sys.exit(0)

if sys.argv[1:2] == ["describe"]:
    # What tune checks a space against: the flags this fake reads, as the trainer says.
    _described = [(n, "float") for n in ("lr", "dropout", "weight_decay", "momentum")]
    _described += [(n, "int") for n in ("epochs", "batch_size", "seed", "threads")]
    _described += [("train_limit", "int"), ("val_fraction", "float"), ("device", "string")]
    _described += [("data_dir", "path"), ("model", "choice"), ("dataset", "choice")]
    _described += [("optimizer", "choice"), ("flags_from_stdin", "bool")]
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


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch) -> str:
    """A value of MARKER_ENV that every process this test starts inherits (see
    `helpers.marked_processes`)."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARKER_ENV, value)
    return value


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free localhost port, for this test session.

    It uses the server binaries of Debian's `postgresql` package and runs as the `postgres`
    user when the tests run as root (the server refuses root). Yields the URL of its
    `postgres` database; trust authentication, so no password.
    """
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdb:
        pytest.fail(
            "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb); install them "
            "with `apt-get install -y postgresql` (as .ci/run does)"
        )
    bin_dir = initdb[-1].parent
    root = Path(tempfile.mkdtemp(prefix="orchestrate-pg-"))
    user = "postgres" if os.geteuid() == 0 else None
    if user is not None:
        owner = pwd.getpwnam(user)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        completed = subprocess.run(
            args, user=user, capture_output=True, text=True, timeout=120, cwd=root
        )
        assert completed.returncode == 0, f"{args[0]} failed: {completed.stderr[-2000:]}"

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
        "--no-sync", "-E", "UTF8")  # fmt: skip
    options = f"-p {port} -k {root} -h 127.0.0.1 -c fsync=off -c max_connections=200"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
        "-w", "-t", "60", "start")  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new, empty database on the session's server, dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# What the wrapped trainer can be told to do, besides training as asked (`ok`).
WRAPPER_BEHAVIOURS = ("ok", "noisy", "crash", "oom", "diverge", "data", "bad-output")


@pytest.fixture
def wrapped_trainer(real_trainer: Path, tmp_path: Path) -> Path:
    """The real trainer behind a script that takes one more flag, `--behaviour`, to make it
    fail in each way a trainer can: aborted by a signal (crash), short of memory (a 3 GiB
    address space and a 1.25 GB layer), diverging (lr 1e6), reading a missing folder,
    printing a malformed event, or printing 1 MiB on stderr and a stray stdout line first.
    `describe` adds the flag to the trainer's own description, so tune accepts it."""
    path = tmp_path / "wrapped-trainer"
    path.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""\
            import json, os, resource, signal, subprocess, sys, time
            REAL = {str(real_trainer)!r}
            args = sys.argv[1:]
            if args[:1] == ["describe"]:
                described = json.loads(subprocess.run(
                    [REAL, "describe"], capture_output=True, text=True, check=True).stdout)
                described["flags"].append({{"name": "behaviour", "flag": "--behaviour",
                    "type": "choice", "choices": {list(WRAPPER_BEHAVIOURS)!r}}})
                print(json.dumps(described))
                sys.exit(0)
            behaviour = "ok"
            if "--behaviour" in args:
                at = args.index("--behaviour")
                behaviour = args[at + 1]
                del args[at : at + 2]
            command = [REAL, *args]
            if behaviour == "noisy":
                sys.stderr.write("x" * (1 << 20) + "\\n")
                sys.stderr.flush()
                print("warming up (not an event)", flush=True)
            elif behaviour == "crash":
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                trainer = os.getpid()
                if os.fork() == 0:
                    time.sleep(0.5)
                    os.kill(trainer, signal.SIGABRT)
                    os._exit(0)
            elif behaviour == "oom":
                resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
                command += ["--hidden", "100000"]
            elif behaviour == "diverge":
                command += ["--optimizer", "sgd", "--lr", "1e6"]
            elif behaviour == "data":
                command += ["--data-dir", "/nonexistent/datasets"]
            elif behaviour == "bad-output":
                child = subprocess.Popen(command)
                time.sleep(1.5)
                print('{{"event": "epoch", "epoch": "one"}}', flush=True)
                sys.exit(child.wait())
            os.execv(REAL, command)
            """
        )
    )
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def real_study(
    real_trainer: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, str]:
    """A five-trial study of the real trainer on MNIST with two completed trials and three
    pruned after epoch 1 (random sampler, seed 1, median pruner after two trials), for the
    commands that read a study; returns its folder, storage URL and name."""
    from helpers import REAL_FLAGS

    cwd = tmp_path_factory.mktemp("real-study")
    storage = f"sqlite:///{cwd / 'real.db'}"
    args = ["tune", "--study", "real", "--storage", storage, "--trials", "5", "--epochs", "2"]
    args += ["--sampler", "random", "--seed", "1", "--pruner", "median"]
    args += ["--pruner-startup-trials", "2", "--data-dir", str(data_dir), *REAL_FLAGS]
    completed = run_orchestrate(args, cwd=cwd, env={"RUST_TRAINER": str(real_trainer)})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return cwd, storage, "real"
