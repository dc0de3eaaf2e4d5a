"""A tiny study tuned with the real trainer, for the tests of what comes after tuning
(final models, provenance, replay)."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import run_orchestrate

# Two trials of two epochs on 300 examples, one thread: about ten seconds on two cores.
TINY_TUNE = (
    "--trials", "2", "--epochs", "2", "--train-limit", "300", "--val-fraction", "0.02",
    "--threads", "1", "--sampler", "random", "--pruner", "none", "--seed", "0",
)  # fmt: skip


def tune_tiny_study(folder: Path, data_dir: Path, study: str = "tiny") -> str:
    """Tunes `study` in folder/studies.db; returns the storage URL."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder / 'studies.db'}"
    args = ["tune", "--study", study, "--storage", storage, "--data-dir", str(data_dir)]
    completed = run_orchestrate([*args, *TINY_TUNE], cwd=folder)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return storage


def copy_storage(storage: str, folder: Path) -> str:
    """A copy of an SQLite storage, for a test that changes it."""
    source = Path(storage.removeprefix("sqlite:///"))
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.parent.glob(source.name + "*"):
        shutil.copy(path, folder / path.name)
    return f"sqlite:///{folder / source.name}"
