"""The progress bar of `tune`: what it says, that lines printed during it stay whole, and
that it shows only on a terminal (a real pseudo-terminal for the end-to-end run)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import optuna
import pytest
from helpers import REAL_FLAGS, orchestrate_env
from optuna.trial import TrialState
from rich.console import Console

from orchestrator.progress import TuneProgress, best_text, running_text, shown_on

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def study_with(values: list[float | None]) -> optuna.Study:
    study = optuna.create_study(study_name="bar")
    for value in values:
        state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(value=value, state=state))
    return study


def pieces_of(screen: str) -> list[str]:
    """What a terminal would show, line by line: escape codes removed, and split at each
    carriage return too, since each redraw of the bar starts with one."""
    text = ANSI.sub("", screen)
    return [p.strip() for p in re.split(r"\r\n|\r|\n", text) if p.strip()]


def test_the_bar_shows_trials_done_the_best_value_and_running_trials() -> None:
    study = study_with([0.5, None])
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140)

    with TuneProgress(console) as progress:
        progress.begin(study, total=5)
        progress.trial_started(2)
        progress.trial_started(3)
        console.print("trial 2 COMPLETE val_loss 0.25")
        study.add_trial(optuna.trial.create_trial(value=0.25))
        progress.trial_finished(study, study.trials[-1])
    lines = pieces_of(out.getvalue())

    # The last picture of the bar: 3 of 5 trials, the new best, trial 3 still running.
    assert "3/5" in lines[-1] and "best val_loss 0.25 (trial 2)" in lines[-1]
    assert "running 1 (trial 3)" in lines[-1]
    # A line printed while the bar shows is printed whole, above it.
    assert "trial 2 COMPLETE val_loss 0.25" in lines


def test_the_texts_for_no_best_several_objectives_and_many_running() -> None:
    pareto = optuna.create_study(directions=["minimize", "minimize"])
    pareto.add_trial(optuna.trial.create_trial(values=[0.1, 3.0]))
    pareto.add_trial(optuna.trial.create_trial(values=[0.2, 1.0]))

    # Before the first completed trial, the bar says so.
    assert best_text(study_with([None])) == "no completed trial yet"
    # With several objectives, the size of the Pareto front.
    assert best_text(pareto) == "Pareto front: 2 trials"
    # Many running trials are counted and the first few named.
    assert running_text(set(range(6))) == "running 6 (trial 0, 1, 2, 3, ...)"
    assert running_text(set()) == ""


def test_no_bar_off_a_terminal() -> None:
    piped = Console(file=io.StringIO())

    # Piped or redirected, tune writes only its lines.
    with shown_on(piped) as progress:
        assert progress is None


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_tune_on_a_terminal_shows_the_bar_above_whole_lines(
    real_trainer: Path, data_dir: Path, tmp_path: Path
) -> None:
    args = ["-v", "tune", "--study", "tty", "--trials", "3", "--epochs", "2", "--seed", "1"]
    args += ["--pruner", "none", "--data-dir", str(data_dir), *REAL_FLAGS]
    # stderr is a real terminal, 140 columns wide; stdout stays a pipe.
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=tmp_path,
        env=orchestrate_env({"RUST_TRAINER": str(real_trainer), "TERM": "xterm"}),
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    stdout, _ = process.communicate(timeout=60)
    screen = b"".join(chunks).decode(errors="replace")
    pieces = pieces_of(screen)
    best = optuna.load_study(
        study_name="tty", storage="sqlite:///" + str(tmp_path / "orchestrate.db")
    ).best_trial

    assert process.returncode == 0, screen[-3000:]
    # The bar counted the trials to 3 of 3 and showed the best val_loss as it went.
    bars = [p for p in pieces if p.startswith("trials ")]
    assert any("1/3" in bar for bar in bars) and "3/3" in bars[-1]
    assert f"best val_loss {best.value:.4g} (trial {best.number})" in bars[-1]
    assert any("running 1 (trial " in bar for bar in bars)
    # Each trial's line and Optuna's -v record came out whole, never mixed with a bar.
    for number in range(3):
        lines = [p for p in pieces if p.startswith(f"trial {number} COMPLETE val_loss")]
        assert len(lines) == 1 and "━" not in lines[0], pieces
        assert any(
            p.startswith(f"INFO optuna.study.study: Trial {number} finished") for p in pieces
        )
    # stdout, a pipe, has the summary only.
    assert "ran 3 trials" in stdout and "━" not in stdout
