"""`orchestrate dashboard`: optuna-dashboard serves a real study on 127.0.0.1, stops on
Ctrl-C, and a port in use is a usage error."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from helpers import run_orchestrate, start_orchestrate, wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def study_names_at(port: int) -> list[str] | None:
    """The studies the dashboard's API lists, or None while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as reply:
            body = json.load(reply)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return [summary["study_name"] for summary in body["study_summaries"]]


@pytest.mark.real
@pytest.mark.timeout(300)
def test_real_dashboard_lists_the_study_and_stops_on_ctrl_c(
    real_study: tuple[Path, str, str],
) -> None:
    cwd, storage, name = real_study
    port = free_port()
    process = start_orchestrate(
        ["dashboard", "--study", name, "--storage", storage, "--port", str(port)], cwd=cwd
    )
    try:
        answered = wait_until(lambda: study_names_at(port) is not None, within=60, every=0.2)
        names = study_names_at(port)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()

    # The API answered on the chosen port, on the loopback address, with the study.
    assert answered, err[-3000:]
    assert names == [name]
    # It said where to look, and Ctrl-C ended it normally.
    assert f"http://127.0.0.1:{port}/dashboard/studies/" in err
    assert process.returncode == 0, err[-3000:]


def test_a_port_in_use_exits_2_naming_it(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="s", storage=storage)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = run_orchestrate(
            ["dashboard", "--storage", storage, "--port", str(port)], cwd=tmp_path, timeout=60
        )

    # A usage error: exit 2, naming the flag and value, and what to do.
    assert completed.returncode == 2
    assert f"--port {port} is already in use on 127.0.0.1" in completed.stderr
    assert "choose a free one with --port" in completed.stderr


def test_an_unknown_study_exits_2(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="s", storage=storage)
    completed = run_orchestrate(
        ["dashboard", "--storage", storage, "--study", "nope", "--port", str(free_port())],
        cwd=tmp_path,
        timeout=60,
    )

    # The message lists the studies there are.
    assert completed.returncode == 2
    assert "no study 'nope'" in completed.stderr and "studies there: s" in completed.stderr
