from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import REAL_FLAGS, orchestrate_env, process_gone

from orchestrator.errors import TrainerNotFound
from orchestrator.events import EpochEvent, ResultEvent, StartEvent
from orchestrator.runner import Prestarted, RunOutcome, TrainerProcess

FakeTrainer = Callable[..., Path]


def run(
    command: list[str], log_dir: Path | None = None, *, timeout: float | None = None
) -> RunOutcome:
    with TrainerProcess(command, log_dir=log_dir, timeout=timeout) as process:
        return process.wait()


def test_a_normal_run_is_read_and_logged(fake_trainer: FakeTrainer, tmp_path: Path) -> None:
    trainer = fake_trainer("print('loading', file=sys.stderr); train()")
    log_dir = tmp_path / "trial-0000"

    outcome = run([str(trainer), "train", "--epochs", "2", "--lr", "0.01"], log_dir)

    # Every event arrives, in order, and the run counts as a result.
    assert isinstance(outcome.start, StartEvent)
    assert [e.epoch for e in outcome.epochs] == [1, 2]
    assert isinstance(outcome.result, ResultEvent)
    assert outcome.failure() is None and outcome.returncode == 0
    # The folder holds the exact command, every stdout line, and stderr.
    assert (log_dir / "command.txt").read_text().split() == [
        str(trainer),
        "train",
        "--epochs",
        "2",
        "--lr",
        "0.01",
    ]
    assert len((log_dir / "events.jsonl").read_text().splitlines()) == 4
    assert (log_dir / "stderr.log").read_text() == "loading\n"


def test_ending_the_process_ends_its_whole_group(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    trainer = fake_trainer(
        f"""
        child = subprocess.Popen(["sleep", "600"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        start()
        epoch(1)
        time.sleep(600)
        """
    )

    with TrainerProcess([str(trainer), "train"], log_dir=tmp_path / "t") as process:
        for event in process.events():
            if isinstance(event, EpochEvent):
                # What the objective does on should_prune().
                process.end()
                break
        trainer_pid = process.pid

    # Neither the trainer nor the child it started outlives the trial.
    assert process_gone(trainer_pid)
    assert process_gone(int(pid_file.read_text()))


def test_a_process_that_ignores_sigterm_is_killed(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    trainer = fake_trainer(
        """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        start()
        time.sleep(600)
        """
    )

    with TrainerProcess([str(trainer), "train"], grace_seconds=0.5) as process:
        next(process.events())
        process.end()
        outcome = process.wait()

    # After the grace period SIGKILL ends it, and the run says which signal did.
    assert outcome.signal == signal.SIGKILL
    assert process_gone(process.pid)


@pytest.mark.timeout(60)
def test_a_stderr_flood_does_not_stall_the_run(fake_trainer: FakeTrainer, tmp_path: Path) -> None:
    # 1 MiB of stderr before the first event: more than any pipe buffer holds.
    trainer = fake_trainer(
        """
        for _ in range(16384):
            sys.stderr.write("x" * 63 + "\\n")
        sys.stderr.flush()
        train()
        """
    )

    outcome = run([str(trainer), "train"], tmp_path / "t")

    # The run finishes, all of stderr is in the log, and the tail holds its last lines.
    assert outcome.failure() is None
    assert (tmp_path / "t" / "stderr.log").stat().st_size == 16384 * 64
    assert outcome.stderr_tail == ("x" * 63,) * 20


def test_exit_zero_without_a_result_fails(fake_trainer: FakeTrainer) -> None:
    outcome = run([str(fake_trainer("start(); epoch(1)")), "train"])

    failure = outcome.failure()
    # A run that never says how it ended is not a result.
    assert failure is not None and failure.reason == "no result"


def test_a_non_zero_exit_fails_with_the_trainers_reason(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    trainer = fake_trainer(
        """
        print("reading train-images-idx3-ubyte.gz", file=sys.stderr)
        emit("error", kind="data", message="train-images-idx3-ubyte.gz: truncated")
        sys.exit(3)
        """
    )

    outcome = run([str(trainer), "train"], tmp_path / "t")
    failure = outcome.failure()

    # Exit code 3 means bad data; the trainer's own message is the reason's text.
    assert failure is not None
    assert (failure.reason, failure.message) == (
        "data error",
        "train-images-idx3-ubyte.gz: truncated",
    )
    assert outcome.exit_code == 3 and outcome.signal is None
    # The last lines of stderr come with it.
    assert outcome.stderr_tail == ("reading train-images-idx3-ubyte.gz",)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(2, "usage error"), (4, "diverged"), (5, "device"), (143, "interrupted"), (1, "crashed")],
)
def test_exit_codes_map_to_reasons(fake_trainer: FakeTrainer, code: int, reason: str) -> None:
    outcome = run([str(fake_trainer(f"sys.exit({code})")), "train"])

    failure = outcome.failure()
    # Each exit code of the contract has its reason; an unknown one is a crash.
    assert failure is not None and failure.reason == reason
    assert failure.message == f"exited with code {code}"


def test_a_signal_is_a_crash(fake_trainer: FakeTrainer) -> None:
    outcome = run([str(fake_trainer("start(); os.kill(os.getpid(), signal.SIGSEGV)")), "train"])

    failure = outcome.failure()
    # A process ended by a signal crashed, and the signal is named.
    assert outcome.signal == signal.SIGSEGV and outcome.exit_code is None
    assert failure is not None and failure.reason == "crashed" and "SIGSEGV" in failure.message


def test_a_malformed_event_fails_and_ends_the_process(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    trainer = fake_trainer(
        """
        start()
        emit("epoch", epoch="one")
        time.sleep(600)
        """
    )

    outcome = run([str(trainer), "train"], tmp_path / "t")
    failure = outcome.failure()

    # The trial fails as bad output, naming the field, without waiting for the sleep.
    assert failure is not None and failure.reason == "bad output"
    assert "'epoch' event field 'epoch' must be an integer" in failure.message
    # The offending line is kept in the log.
    assert '"epoch": "one"' in (tmp_path / "t" / "events.jsonl").read_text()


def test_a_line_that_is_not_an_event_is_kept_and_warned_about(
    fake_trainer: FakeTrainer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = fake_trainer("start(); print('warming up', flush=True); epoch(1); result()")

    with caplog.at_level(logging.WARNING):
        outcome = run([str(trainer), "train", "--epochs", "1"], tmp_path / "t")

    # A stray line does not fail the run ...
    assert outcome.failure() is None
    # ... but it is warned about and kept.
    assert "not an event: warming up" in caplog.text
    assert "warming up" in (tmp_path / "t" / "events.jsonl").read_text()


def test_a_run_past_its_time_limit_is_ended(fake_trainer: FakeTrainer) -> None:
    outcome = run([str(fake_trainer("start(); time.sleep(600)")), "train"], timeout=0.5)

    failure = outcome.failure()
    # The timer ends the group and the failure says why.
    assert failure is not None and failure.reason == "timeout"
    assert outcome.seconds < 30


def test_a_result_that_says_diverged_is_a_failure_even_with_exit_zero(
    fake_trainer: FakeTrainer,
) -> None:
    outcome = run([str(fake_trainer("start(); result('diverged')")), "train"])

    failure = outcome.failure()
    # The status is believed even when the exit code disagrees.
    assert failure is not None and failure.reason == "diverged"


@pytest.mark.real
def test_a_real_run_is_read_as_it_goes(real_trainer: Path, data_dir: Path, tmp_path: Path) -> None:
    command = [str(real_trainer), "train", "--data-dir", str(data_dir), "--epochs", "1"]
    outcome = run([*command, *REAL_FLAGS], tmp_path / "t")

    # The real trainer's events are all understood and the run is a result.
    assert outcome.failure() is None
    assert outcome.start is not None and outcome.start.train_size == 1000
    assert outcome.result is not None and outcome.result.epochs_run == 1
    # events.jsonl is exactly the trainer's stdout: JSON objects, one a line.
    lines = (tmp_path / "t" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["start", "epoch", "result"]


@pytest.mark.real
def test_a_real_run_on_missing_data_is_a_data_error(real_trainer: Path, tmp_path: Path) -> None:
    outcome = run([str(real_trainer), "train", "--data-dir", str(tmp_path), *REAL_FLAGS])

    failure = outcome.failure()
    # Missing files exit 3, with the trainer's message naming what is missing.
    assert outcome.exit_code == 3
    assert failure is not None and failure.reason == "data error"
    assert outcome.error is not None and outcome.error.kind == "data"


@pytest.mark.real
def test_a_real_run_ended_early_leaves_no_process(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    command = [str(real_trainer), "train", "--data-dir", str(data_dir), "--epochs", "50"]
    with TrainerProcess([*command, *REAL_FLAGS], log_dir=tmp_path / "t") as process:
        for event in process.events():
            if isinstance(event, EpochEvent):
                process.end()
                break
        outcome = process.wait()

    # SIGTERM stops the real trainer within the grace period: it says so and exits 143.
    assert outcome.exit_code == 143
    assert outcome.result is not None and outcome.result.status == "stopped"
    # Nothing of it is left running.
    assert process_gone(process.pid)


def test_a_trainer_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    not_executable = tmp_path / "rust-trainer"
    not_executable.write_text("")

    # The error names the file and the reason, instead of a traceback from Popen.
    with (
        pytest.raises(TrainerNotFound, match=f"cannot start {not_executable}: Permission denied"),
        TrainerProcess([str(not_executable), "train"]),
    ):
        pass


@pytest.mark.timeout(60)
def test_a_one_mib_line_on_stderr_or_stdout_does_not_stall_the_run(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    # One line of 1 MiB on each stream, before the first event and between events: far
    # more than a pipe holds, with no newline to end a read early.
    trainer = fake_trainer(
        """
        sys.stderr.write("e" * (1 << 20) + "\\n"); sys.stderr.flush()
        print("o" * (1 << 20), flush=True)
        start()
        sys.stderr.write("f" * (1 << 20)); sys.stderr.flush()
        epoch(1)
        result()
        """
    )

    outcome = run([str(trainer), "train", "--epochs", "1"], tmp_path / "t")

    # The run finishes and counts: the stdout line that is not an event is only kept.
    assert outcome.failure() is None and outcome.result is not None
    assert "o" * (1 << 20) in (tmp_path / "t" / "events.jsonl").read_text()
    # stderr is in the log whole; the tail in memory stays bounded.
    assert (tmp_path / "t" / "stderr.log").stat().st_size == 2 * (1 << 20) + 1
    assert sum(len(line) for line in outcome.stderr_tail) <= 64 * 1024


@pytest.mark.timeout(60)
def test_the_trainer_dies_with_its_orchestrator(fake_trainer: FakeTrainer, tmp_path: Path) -> None:
    pid_file = tmp_path / "trainer.pid"
    trainer = fake_trainer(
        f"""
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        start()
        time.sleep(600)
        """
    )
    # An orchestrator of its own, which the test then kills without warning.
    script = (
        "import sys, time\n"
        "from orchestrator.runner import TrainerProcess\n"
        f"with TrainerProcess([{str(trainer)!r}, 'train']) as process:\n"
        "    next(process.events())\n"
        "    print('running', flush=True)\n"
        "    time.sleep(600)\n"
    )
    orchestrator = subprocess.Popen(
        [sys.executable, "-c", script], env=orchestrate_env(), stdout=subprocess.PIPE, text=True
    )
    assert orchestrator.stdout is not None and orchestrator.stdout.readline() == "running\n"
    trainer_pid = int(pid_file.read_text())

    orchestrator.kill()
    orchestrator.wait()

    # The kernel sends the trainer SIGTERM when its parent dies: it does not run on.
    assert process_gone(trainer_pid, within=10)


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [
        (5, "CUDA out of memory. Tried to allocate 2.00 GiB", "out of memory"),
        (5, "CUDA was asked for with --device cuda but is not available", "device"),
        (1, "DefaultCPUAllocator: can't allocate memory: tried 8 bytes", "out of memory"),
        (1, "index out of range", "crashed"),
    ],
)  # fmt: skip
def test_out_of_memory_is_told_apart(
    fake_trainer: FakeTrainer, code: int, message: str, reason: str
) -> None:
    trainer = fake_trainer(f"emit('error', kind='device', message={message!r}); sys.exit({code})")

    failure = run([str(trainer), "train"]).failure()

    # A device or internal error that names exhausted memory is out of memory.
    assert failure is not None and failure.reason == reason
    assert failure.message == message


def test_a_sigkill_from_outside_is_a_crash_that_says_who_sends_one(
    fake_trainer: FakeTrainer,
) -> None:
    outcome = run([str(fake_trainer("start(); os.kill(os.getpid(), signal.SIGKILL)")), "train"])

    failure = outcome.failure()
    # The orchestrator did not send it, so the message points at the usual sender.
    assert failure is not None and failure.reason == "crashed"
    assert "SIGKILL from outside the orchestrator" in failure.message
    assert "out-of-memory killer" in failure.message


def test_a_prestarted_process_runs_the_command_it_is_handed(
    fake_trainer: FakeTrainer, tmp_path: Path
) -> None:
    trainer = fake_trainer()
    spare = Prestarted([str(trainer), "train", "--epochs", "2"])
    command = [str(trainer), "train", "--epochs", "2", "--lr", "0.01"]

    with TrainerProcess(command, log_dir=tmp_path / "t", prestarted=spare) as process:
        pid = process.pid
        outcome = process.wait()

    # The process started ahead ran the trial, with the flags it was handed on stdin.
    assert pid == spare.proc.pid
    assert outcome.failure() is None and [e.epoch for e in outcome.epochs] == [1, 2]
    assert outcome.start is not None and outcome.start.config["lr"] == 0.01
    # The log records the whole command, as a process started for it would have.
    assert (tmp_path / "t" / "command.txt").read_text().split() == command


@pytest.mark.parametrize("why", ["dead", "other command"])
def test_a_prestarted_process_that_cannot_run_it_is_replaced(
    fake_trainer: FakeTrainer, tmp_path: Path, why: str
) -> None:
    trainer = fake_trainer()
    spare = Prestarted([str(trainer), "train", "--epochs", "3" if why == "dead" else "9"])
    if why == "dead":
        spare.proc.kill()
        spare.proc.wait()

    command = [str(trainer), "train", "--epochs", "3", "--lr", "0.01"]
    with TrainerProcess(command, log_dir=tmp_path / "t", prestarted=spare) as process:
        pid = process.pid
        outcome = process.wait()

    # A new process runs the trial, and the unusable one is gone.
    assert pid != spare.proc.pid and spare.proc.returncode is not None
    assert outcome.failure() is None and len(outcome.epochs) == 3


def test_a_discarded_prestarted_process_ends_while_waiting(fake_trainer: FakeTrainer) -> None:
    spare = Prestarted([str(fake_trainer()), "train"])
    assert spare.alive()

    spare.discard()

    assert not spare.alive() and process_gone(spare.proc.pid)
