"""What the benchmark scripts share: running a command, a scratch folder, the machine's
description, and appending a dated entry to RESULTS.md."""

from __future__ import annotations

import atexit
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
# The benchmarks that run `orchestrate` use this checkout's package, installed or not.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def trainer() -> Path:
    return Path(os.environ.get("RUST_TRAINER", REPO / "target" / "release" / "rust-trainer"))


def scratch_folder(prefix: str) -> Path:
    """A folder for a benchmark's studies and trial logs, removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def data_dir() -> Path:
    return Path(os.environ.get("RUST_TRAINER_DATA_DIR", REPO.parent / "shared" / "datasets"))


def run_events(command: list[str]) -> tuple[list[dict[str, object]], float]:
    """Runs `command`; returns its JSON events and its wall time in seconds."""
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({completed.returncode}):\n{completed.stderr}")
    events = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    return events, wall


def load_average() -> float:
    """The 1-minute load average: how busy the machine was around a measurement."""
    return os.getloadavg()[0]


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def versions() -> str:
    import torch

    info = json.loads(
        subprocess.run([str(trainer()), "info"], capture_output=True, text=True).stdout
    )
    return (
        f"rust-trainer {info['version']} (libtorch {info['libtorch']}), torch {torch.__version__}"
    )


def _loads() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def record(title: str, lines: list[str], write: bool = True) -> None:
    """Prints one dated section and, with `write`, appends it to RESULTS.md."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = [f"## {title} ({stamp})", "", f"- machine: {machine()}", f"- versions: {versions()}"]
    section.append(f"- load average (1, 5, 15 min) when recorded: {_loads()}")
    section += [*lines, ""]
    text = "\n".join(section)
    print(text)
    if not write:
        return
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nNewest last; each entry says how it was run.\n\n"
        )
    with RESULTS.open("a") as out:
        out.write(text + "\n")
