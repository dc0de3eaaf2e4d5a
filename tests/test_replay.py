"""`orchestrate replay`: a trial's recorded command run again and compared, epoch by epoch,
with what the study recorded; with the real trainer, and a storage tampered with by hand
to make the replay differ."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from helpers import run_orchestrate
from tuned import copy_storage, tune_tiny_study

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, real_trainer: Path, data_dir: Path) -> str:
    return tune_tiny_study(tmp_path_factory.mktemp("tuned"), data_dir)


@contextmanager
def _database(storage: str) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(storage.removeprefix("sqlite:///"))
    # `with connection` commits; `closing` closes, so the replay's process sees the change.
    with closing(connection), connection:
        yield connection


def _trial_id(connection: sqlite3.Connection, number: int) -> int:
    row = connection.execute("SELECT trial_id FROM trials WHERE number = ?", (number,)).fetchone()
    return int(row[0])


def _set_attr(storage: str, number: int, key: str, value: object) -> None:
    with _database(storage) as connection:
        connection.execute(
            "UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND key = ?",
            (json.dumps(value), _trial_id(connection, number), key),
        )


def _attr(storage: str, number: int, key: str) -> object:
    with _database(storage) as connection:
        row = connection.execute(
            "SELECT value_json FROM trial_user_attributes WHERE trial_id = ? AND key = ?",
            (_trial_id(connection, number), key),
        ).fetchone()
    return json.loads(row[0])


def _replay(storage: str, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["replay", "0", "--study", "tiny", "--storage", storage, *extra]
    return run_orchestrate(args, cwd=folder)


def test_a_replay_matches_the_recorded_trial(tuned: str, tmp_path: Path) -> None:
    completed = _replay(copy_storage(tuned, tmp_path), tmp_path)

    # Same binary, seed and threads on the CPU: every value matches, and it exits 0.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "epoch 1 val_loss" in completed.stdout and "epoch 2 val_loss" in completed.stdout
    assert "DIFFERS" not in completed.stdout and "match: every value" in completed.stdout
    # Nothing about the binary differs, so nothing is warned about.
    assert "warning" not in completed.stderr
    # The replay's own events are kept beside the study's runs.
    assert (tmp_path / "runs" / "tiny" / "replay-trial-0000" / "events.jsonl").is_file()


def test_a_changed_seed_makes_the_replay_differ(tuned: str, tmp_path: Path) -> None:
    storage = copy_storage(tuned, tmp_path)
    argv = _attr(storage, 0, "argv")
    assert isinstance(argv, list)
    argv[argv.index("--seed") + 1] = "7"
    _set_attr(storage, 0, "argv", argv)

    completed = _replay(storage, tmp_path)
    # Another seed trains another model: the values differ and the replay exits 1.
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert "DIFFERS" in completed.stdout
    assert "differs from the recorded values" in completed.stderr


def test_a_changed_record_differs_beyond_the_tolerance_only(tuned: str, tmp_path: Path) -> None:
    storage = copy_storage(tuned, tmp_path)
    with _database(storage) as connection:
        connection.execute(
            "UPDATE trial_intermediate_values SET intermediate_value = intermediate_value + 0.01 "
            "WHERE trial_id = ? AND step = 1",
            (_trial_id(connection, 0),),
        )

    strict = _replay(storage, tmp_path)
    # Only the changed epoch differs.
    assert strict.returncode == 1, strict.stderr[-3000:]
    lines = strict.stdout.splitlines()
    differing = [line.strip() for line in lines if "DIFFERS" in line]
    assert len(differing) == 1 and differing[0].startswith("epoch 1 val_loss")

    loose = _replay(storage, tmp_path, "--tolerance", "0.02")
    # A tolerance wider than the change accepts it.
    assert loose.returncode == 0, loose.stderr[-3000:]


def test_another_binary_is_warned_about(tuned: str, tmp_path: Path) -> None:
    storage = copy_storage(tuned, tmp_path)
    _set_attr(storage, 0, "trainer_sha256", "0" * 64)
    _set_attr(storage, 0, "libtorch_version", "1.0.0")

    completed = _replay(storage, tmp_path)
    # The numbers still match, but the user hears that the binary and libtorch changed.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "is not the binary that ran trial 0" in completed.stderr
    assert "libtorch" in completed.stderr and "1.0.0" in completed.stderr


def test_a_trial_without_provenance_exits_2(tuned: str, tmp_path: Path) -> None:
    storage = copy_storage(tuned, tmp_path)
    with _database(storage) as connection:
        connection.execute(
            "DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = 'argv'",
            (_trial_id(connection, 0),),
        )

    completed = _replay(storage, tmp_path)
    # An older study's trial has no exact command to replay: a usage error that says so.
    assert completed.returncode == 2
    assert "no recorded provenance" in completed.stderr
    assert not (tmp_path / "runs" / "tiny" / "replay-trial-0000").exists()


def test_a_trial_that_recorded_no_epoch_is_refused_before_running(
    tuned: str, tmp_path: Path
) -> None:
    storage = copy_storage(tuned, tmp_path)
    with _database(storage) as connection:
        trial_id = _trial_id(connection, 0)
        connection.execute("UPDATE trials SET state = 'FAIL' WHERE trial_id = ?", (trial_id,))
        for table in ("trial_values", "trial_intermediate_values"):
            connection.execute(f"DELETE FROM {table} WHERE trial_id = ?", (trial_id,))

    completed = _replay(storage, tmp_path)

    # Nothing to compare with: a usage error naming the trial, and no training run at all.
    assert completed.returncode == 2
    assert "trial 0 (FAIL) recorded no val_loss" in completed.stderr
    assert not (tmp_path / "runs" / "tiny" / "replay-trial-0000").exists()
