from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from helpers import REAL_FLAGS, fake_data, start_orchestrate, trainer_processes, wait_until
from optuna.trial import TrialState

from orchestrator.errors import StorageError, StudyNotFound
from orchestrator.storage import journal_file, load_study, open_storage, set_trial_user_attrs

FakeTrainer = Callable[..., Path]


def test_tune_creates_the_sqlite_file_and_its_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'studies.db'}"

    open_storage(url, create=True)

    # A storage that will be written may be created, folder included.
    assert (tmp_path / "new" / "studies.db").is_file()


def test_reading_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"

    # A read-only command names the missing file instead of making an empty one.
    with pytest.raises(StorageError, match=r"typo\.db does not exist"):
        open_storage(url, create=False)
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://host/db"])
def test_a_bad_url_is_a_storage_error(url: str) -> None:
    # The message names the URL.
    with pytest.raises(StorageError, match=r"storage URL|cannot open storage"):
        open_storage(url, create=True)


def test_an_unknown_study_lists_the_existing_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    for name in ("cnn-mnist", "cnn-fast"):
        optuna.create_study(study_name=name, storage=url)

    # The error names the study and the storage, and lists what is there.
    with pytest.raises(StudyNotFound, match=r"no study 'cnn' in .*cnn-fast, cnn-mnist"):
        load_study("cnn", url)
    # A known name loads.
    assert load_study("cnn-fast", url).study_name == "cnn-fast"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("journal:///studies.log", "studies.log"),
        ("journal:///runs/studies.log", "runs/studies.log"),
        ("journal:////tmp/studies.log", "/tmp/studies.log"),
    ],
)
def test_journal_urls_name_a_file_like_sqlite_ones(url: str, path: str) -> None:
    # Three slashes start a relative path and four an absolute one, as for sqlite:///.
    assert journal_file(url) == Path(path)


@pytest.mark.parametrize("url", ["journal://studies.log", "journal:///", "journal:"])
def test_a_bad_journal_url_says_what_one_looks_like(url: str) -> None:
    # The message names the URL and shows the two forms.
    with pytest.raises(StorageError, match=r"not a journal URL; expected journal:///"):
        open_storage(url, create=True)


def test_a_journal_storage_is_created_and_kept(tmp_path: Path) -> None:
    url = f"journal:///{tmp_path / 'logs' / 'studies.log'}"

    study = optuna.create_study(study_name="j", storage=open_storage(url, create=True))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)

    # The file and its folder are made, and a reader finds the trials there.
    assert (tmp_path / "logs" / "studies.log").is_file()
    assert len(load_study("j", url).trials) == 2
    # A reader of a journal that does not exist is told so.
    with pytest.raises(StorageError, match=r"journal file .*none\.log does not exist"):
        open_storage(f"journal:///{tmp_path / 'none.log'}", create=False)


def test_an_sqlite_file_is_in_wal_mode_and_waits_for_locks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = open_storage(url, create=True)
    optuna.create_study(study_name="s", storage=storage)

    # Write-ahead log: commits without a sync each, readers beside the writer.
    with sqlite3.connect(tmp_path / "studies.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    # A writer that holds the lock makes the storage wait, not fail: it goes on once the
    # lock is released.
    blocker = sqlite3.connect(
        tmp_path / "studies.db", isolation_level=None, check_same_thread=False
    )
    blocker.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(1.0, blocker.execute, args=("COMMIT",))
    releaser.start()
    started = time.monotonic()
    optuna.load_study(study_name="s", storage=storage).enqueue_trial({"x": 1.0})
    releaser.join()
    assert time.monotonic() - started >= 0.9


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "journal"])
def test_several_user_attrs_are_set_at_once_and_overwrite_old_values(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'studies.db'}"
    elif kind == "journal":
        url = f"journal:///{tmp_path / 'studies.log'}"
    else:
        url = request.getfixturevalue("postgres_url")
    study = optuna.create_study(study_name="s", storage=open_storage(url, create=True))
    trial = study.ask()
    trial.set_user_attr("seconds", 1.0)
    values = {"seconds": 2.5, "argv": ["rust-trainer", "train"], "status": "ok", "gone": None}
    set_trial_user_attrs(trial, values)
    assert trial.user_attrs == values
    study.tell(trial, 0.5)

    # What another process reads back from the storage, not this trial's own copy.
    assert load_study("s", url).trials[0].user_attrs == values
    # As with Optuna's own setter, a finished trial's attributes cannot change.
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_trial_user_attrs(trial, {"seconds": 3.0})
    assert study.trials[0].user_attrs["seconds"] == 2.5


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_workers_started_together_on_a_new_file_run_each_grid_point_once(
    fake_trainer: FakeTrainer, tmp_path: Path, marker: str, kind: str
) -> None:
    # Four tune processes, started at once on a storage that does not exist yet, share a
    # grid of sixteen points: they race to create the tables, the study and the queue.
    space = tmp_path / "grid.toml"
    space.write_text(
        '[params.lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-1\nlog = true\n'
        "grid = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 6e-2, 1e-1]\n\n"
        '[params.optimizer]\ntype = "categorical"\nchoices = ["sgd", "adam"]\n'
    )
    url = f"{kind}:///{tmp_path / 'shared.store'}"
    args = ["tune", "--storage", url, "--trainer", str(fake_trainer()), "--space", str(space)]
    args += ["--sampler", "grid", "--trials", "16", "--seed", "0", "--pruner", "none"]
    args += ["--data-dir", str(fake_data(tmp_path))]
    results = _workers(4, args, tmp_path)
    trials = load_study("cnn-mnist", url).trials

    _check_workers(results)
    # Sixteen trials with parameters, each a different point, all complete; numbers have
    # no gaps.
    points = [(t.params["lr"], t.params["optimizer"]) for t in trials if t.params]
    assert len(points) == len(set(points)) == 16
    assert all(t.state == TrialState.COMPLETE for t in trials if t.params)
    assert [t.number for t in trials] == list(range(len(trials)))
    # A worker that asked for a trial just as another took the last point got none: its
    # trial ran nothing, sampled nothing and says why.
    for trial in [t for t in trials if not t.params]:
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["fail_reason"] == "grid exhausted"
    assert not trainer_processes(marker)


def _workers(
    count: int, args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> list[tuple[int, str]]:
    """Runs `count` tune processes at once with the same arguments; their codes and stderr.
    Each one's output is read on a thread of its own, so no pipe fills up."""
    started = [start_orchestrate(args, cwd=cwd, env=env) for _ in range(count)]
    with ThreadPoolExecutor(count) as pool:
        outputs = list(pool.map(lambda worker: worker.communicate(timeout=280), started))
    return [
        (worker.returncode, stderr) for worker, (_, stderr) in zip(started, outputs, strict=True)
    ]


def _check_workers(results: list[tuple[int, str]]) -> None:
    for code, stderr in results:
        # Every worker ends well; none met a locked database.
        assert code == 0, stderr[-3000:]
        assert "database is locked" not in stderr


@pytest.mark.real
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_real_three_workers_share_one_study(
    real_trainer: Path,
    data_dir: Path,
    tmp_path: Path,
    marker: str,
    kind: str,
    request: pytest.FixtureRequest,
) -> None:
    url = (
        request.getfixturevalue("postgres_url")
        if kind == "postgresql"
        else f"{kind}:///{tmp_path / 'shared.store'}"
    )
    args = ["tune", "--storage", url, "--trials", "6", "--epochs", "1", "--seed", "0"]
    args += ["--sampler", "tpe", "--pruner", "none", "--data-dir", str(data_dir), *REAL_FLAGS]

    results = _workers(3, args, tmp_path, {"RUST_TRAINER": str(real_trainer)})
    trials = load_study("cnn-mnist", url).trials

    _check_workers(results)
    # The six requested trials complete (a worker may finish one it had started as the
    # total was reached), each a different point; nothing is left running or queued.
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 6 <= len(complete) == len(trials) <= 8
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)
    assert [t.number for t in trials] == list(range(len(trials)))
    # Each trial has its folder; no trainer outlives the workers.
    assert all((Path(t.user_attrs["trial_dir"]) / "events.jsonl").is_file() for t in trials)
    assert not trainer_processes(marker)


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_three_workers_on_a_postgresql_grid_run_each_point_once(
    real_trainer: Path, data_dir: Path, tmp_path: Path, marker: str, postgres_url: str
) -> None:
    space = tmp_path / "grid.toml"
    space.write_text(
        '[params.lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-1\nlog = true\n'
        "grid = [1e-3, 3e-3, 1e-2]\n\n"
        '[params.optimizer]\ntype = "categorical"\nchoices = ["sgd", "adam"]\n'
    )
    args = ["tune", "--storage", postgres_url, "--space", str(space), "--sampler", "grid"]
    args += ["--trials", "10", "--epochs", "1", "--seed", "0", "--pruner", "none"]
    args += ["--data-dir", str(data_dir), *REAL_FLAGS]

    results = _workers(3, args, tmp_path, {"RUST_TRAINER": str(real_trainer)})
    trials = load_study("cnn-mnist", postgres_url).trials

    _check_workers(results)
    # The grid's six points ran once each, then every worker stopped: no duplicate point,
    # nothing running or queued.
    points = [(t.params["lr"], t.params["optimizer"]) for t in trials if t.params]
    assert sorted(points) == sorted(
        (lr, optimizer) for lr in (1e-3, 3e-3, 1e-2) for optimizer in ("sgd", "adam")
    )
    assert all(t.state == TrialState.COMPLETE for t in trials if t.params)
    assert all(t.state.is_finished() for t in trials)
    assert not trainer_processes(marker)


@pytest.mark.real
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_real_killed_worker_trial_fails_by_heartbeat_and_runs_again(
    real_trainer: Path,
    data_dir: Path,
    tmp_path: Path,
    marker: str,
    kind: str,
    request: pytest.FixtureRequest,
) -> None:
    url = (
        request.getfixturevalue("postgres_url")
        if kind == "postgresql"
        else f"sqlite:///{tmp_path / 'studies.db'}"
    )
    args = ["tune", "--storage", url, "--trials", "2", "--epochs", "2", "--seed", "0"]
    args += ["--heartbeat", "1", "--pruner", "none", "--data-dir", str(data_dir), *REAL_FLAGS]
    env = {"RUST_TRAINER": str(real_trainer)}
    worker = start_orchestrate(args, cwd=tmp_path, env=env)
    assert wait_until(lambda: len(trainer_processes(marker)) == 1, within=60)

    # The worker dies at once, in the middle of its first trial.
    worker.kill()
    worker.wait()

    # Its trainer is told (SIGTERM, as the orchestrator's parent-death signal) and stops.
    assert wait_until(lambda: not trainer_processes(marker), within=15)
    # The storage still says RUNNING: nobody was left to say otherwise.
    killed = load_study("cnn-mnist", url).trials[0]
    assert killed.state == TrialState.RUNNING
    # Once four beats are missed, the next worker records the trial as FAIL and runs the
    # same parameters again.
    time.sleep(5)
    rerun = start_orchestrate(args, cwd=tmp_path, env=env)
    _, stderr = rerun.communicate(timeout=240)
    trials = load_study("cnn-mnist", url).trials

    assert rerun.returncode == 0, stderr[-3000:]
    assert trials[0].state == TrialState.FAIL and "fail_reason" not in trials[0].user_attrs
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state == TrialState.COMPLETE
    # The requested two trials completed; nothing stays RUNNING or queued.
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert all(t.state.is_finished() for t in trials)
    assert not trainer_processes(marker)
