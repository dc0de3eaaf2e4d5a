"""Trials side by side: the thread split, the GPU slot pool, and --n-jobs with the real
trainer."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from helpers import fake_data, marked_processes, run_orchestrate, trainer_processes, wait_until
from optuna.trial import TrialState

from orchestrator.parallel import SlotPool, available_cores, threads_per_trial, visible_gpus
from orchestrator.space import cnn_space
from orchestrator.study import TrainerFlags, TuneConfig, tune

FakeTrainer = Callable[..., Path]


@pytest.mark.parametrize(
    ("n_jobs", "cores", "threads"), [(1, 8, 8), (2, 8, 4), (3, 8, 2), (2, 2, 1), (4, 2, 1)]
)
def test_threads_are_split_between_the_trials(n_jobs: int, cores: int, threads: int) -> None:
    # Each trial gets its share of the cores, and at least one thread.
    assert threads_per_trial(n_jobs, cores) == threads


@pytest.mark.parametrize(
    ("environ", "count", "gpus"),
    [
        ({}, 3, ["0", "1", "2"]),
        ({"CUDA_VISIBLE_DEVICES": "2,5"}, 2, ["2", "5"]),
        ({"CUDA_VISIBLE_DEVICES": " 3 , 1,"}, 2, ["3", "1"]),
        ({"CUDA_VISIBLE_DEVICES": ""}, 1, ["0"]),
    ],
)
def test_the_gpus_to_hand_out_respect_cuda_visible_devices(
    environ: dict[str, str], count: int, gpus: list[str]
) -> None:
    # A narrowed CUDA_VISIBLE_DEVICES names the GPUs; otherwise they are numbered.
    assert visible_gpus(count, environ) == gpus


def test_the_pool_hands_out_the_least_busy_device() -> None:
    pool = SlotPool(["0", "1"], per_device=2)

    with pool.slot() as first, pool.slot() as second, pool.slot() as third:
        # Spread over the devices before any is shared; the first listed wins a tie.
        assert (first, second, third) == ("0", "1", "0")
        assert pool.busy() == {"0": 2, "1": 1}
    # Every slot comes back.
    assert pool.busy() == {"0": 0, "1": 0} and pool.capacity == 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("per_device", [1, 2])
def test_the_pool_never_puts_more_trials_on_a_device_than_allowed(per_device: int) -> None:
    pool = SlotPool(["0", "1", "2"], per_device=per_device)
    lock = threading.Lock()
    holding: dict[str, int] = {"0": 0, "1": 0, "2": 0}
    most: dict[str, int] = dict(holding)

    def trial() -> None:
        with pool.slot() as device:
            with lock:
                holding[device] += 1
                most[device] = max(most[device], holding[device])
            time.sleep(0.01)
            with lock:
                holding[device] -= 1

    threads = [threading.Thread(target=trial) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Sixty trials asking at once: each device was used, and never
    # by more than per_device trials at once.
    assert most == {"0": per_device, "1": per_device, "2": per_device}
    assert pool.busy() == {"0": 0, "1": 0, "2": 0}


@pytest.mark.timeout(30)
def test_a_full_pool_makes_the_next_trial_wait() -> None:
    pool = SlotPool(["0"])
    got: list[str] = []
    release = threading.Event()

    def holder() -> None:
        with pool.slot():
            release.wait()

    def waiter() -> None:
        with pool.slot() as device:
            got.append(device)

    first = threading.Thread(target=holder)
    first.start()
    assert wait_until(lambda: pool.busy() == {"0": 1}, within=5)
    second = threading.Thread(target=waiter)
    second.start()
    time.sleep(0.2)
    # The second trial waits while the only slot is held ...
    assert got == []
    release.set()
    first.join()
    second.join()
    # ... and gets it once it is given back.
    assert got == ["0"]


@pytest.mark.parametrize(
    ("devices", "per_device", "words"),
    [([], 1, "at least one device"), (["0", "0"], 1, "listed once"), (["0"], 0, "per_device")],
)
def test_a_bad_pool_is_refused(devices: list[str], per_device: int, words: str) -> None:
    # The message names the rule and the value.
    with pytest.raises(ValueError, match=words):
        SlotPool(devices, per_device)


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_n_jobs_2_runs_two_trainers_at_a_time_with_the_cores_split(
    real_trainer: Path, data_dir: Path, tmp_path: Path, marker: str
) -> None:
    # No --threads: each trial gets the cores divided by --n-jobs.
    args = ["tune", "--trials", "4", "--n-jobs", "2", "--epochs", "2", "--seed", "0"]
    args += ["--sampler", "random", "--pruner", "none", "--data-dir", str(data_dir)]
    args += ["--train-limit", "1000", "--val-fraction", "0.02"]
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        # The process table, every 20 ms, while the study runs.
        while not done.is_set():
            seen.append(len(trainer_processes(marker)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        completed = run_orchestrate(args, cwd=tmp_path, env={"RUST_TRAINER": str(real_trainer)})
    finally:
        done.set()
        watcher.join()
    trials = optuna.load_study(
        study_name="cnn-mnist", storage=f"sqlite:///{tmp_path / 'orchestrate.db'}"
    ).trials

    # The four trials complete.
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    # Two trainers ran side by side, and never more than two.
    assert max(seen) == 2
    # Each trial's recorded command has its share of the cores, and the trainer used it.
    share = threads_per_trial(2, available_cores())
    for trial in trials:
        command = shlex.split(trial.user_attrs["command"])
        assert command[command.index("--threads") + 1] == str(share)
        start = (Path(trial.user_attrs["trial_dir"]) / "events.jsonl").read_text()
        assert f'"threads":{share},' in start.splitlines()[0]
    # Their run times overlap in pairs.
    first, second = sorted(trials, key=lambda t: t.number)[:2]
    assert first.datetime_start and second.datetime_start and first.datetime_complete
    assert second.datetime_start < first.datetime_complete
    # Nothing is left running.
    assert not [pid for pid, _ in marked_processes(marker)]


@pytest.mark.timeout(120)
def test_each_parallel_trial_gets_a_gpu_slot_of_its_own(
    fake_trainer: FakeTrainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two GPUs as the trainer reports them, two trials allowed on each, four at a time.
    monkeypatch.setenv("FAKE_GPUS", "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    log = tmp_path / "gpus.log"
    trainer = fake_trainer(
        f"""
        gpu = os.environ["CUDA_VISIBLE_DEVICES"]
        open({str(log)!r}, "a").write(f"{{gpu}} +1 {{time.monotonic()}}\\n")
        start()
        time.sleep(0.3)
        epoch(1)
        open({str(log)!r}, "a").write(f"{{gpu}} -1 {{time.monotonic()}}\\n")
        result()
        """
    )
    cfg = TuneConfig(
        trainer=trainer,
        study_name="gpus",
        storage=f"sqlite:///{tmp_path / 'studies.db'}",
        trials=8,
        space=cnn_space(),
        flags=TrainerFlags(epochs=1, threads=1, data_dir=fake_data(tmp_path)),
        sampler="random",
        pruner="none",
        seed=0,
        runs_dir=tmp_path / "runs",
        n_jobs=4,
        trials_per_gpu=2,
    )

    tune(cfg)
    trials = optuna.load_study(study_name="gpus", storage=cfg.storage).trials
    events = sorted(
        (float(at), int(change), gpu)
        for gpu, change, at in (line.split() for line in log.read_text().splitlines())
    )
    busy = {"0": 0, "1": 0}
    most = dict(busy)
    for _, change, gpu in events:
        busy[gpu] += change
        most[gpu] = max(most[gpu], busy[gpu])

    # Every trial ran on one of the two GPUs, and says which, in its re-runnable command too.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    for trial in trials:
        gpu = trial.user_attrs["cuda_visible_devices"]
        assert gpu in ("0", "1")
        assert trial.user_attrs["command"].startswith(f"CUDA_VISIBLE_DEVICES={gpu} ")
        command_txt = Path(trial.user_attrs["trial_dir"]) / "command.txt"
        assert command_txt.read_text().strip() == trial.user_attrs["command"]
    # Both GPUs were used, never by more than two trials at once.
    assert most == {"0": 2, "1": 2}
