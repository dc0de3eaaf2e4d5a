"""Benchmark 5: trials per hour with `--n-jobs 2` against `--n-jobs 1` on this machine.

Both studies run the same trials: the MNIST CNN for one epoch on --train-limit examples
(Adam, batch 64), with only the learning rate sampled (it changes no work), random
sampler, no pruner, SQLite storage. `orchestrate` gives each of the N jobs `cores // N`
trainer threads, so on 2 cores `--n-jobs 1` runs one 2-thread trainer at a time and
`--n-jobs 2` two 1-thread trainers. The two settings alternate, --runs times each.

Trials per hour = trials / the time from the first trial's start to the last trial's end
(Optuna's own timestamps; the command's start-up of about a second is left out and shown
apart). Goal: ratio (n-jobs 2 / n-jobs 1) >= 1.8.

To explain the ratio, one trainer's epoch is also timed at 1 and at 2 threads: when one
trial already uses both cores well (speed-up S from 1 to 2 threads), two 1-thread trials
side by side can be at most 2 / S times faster than one 2-thread trial.

    python benchmarks/parallel_scaling.py [--trials 16] [--runs 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from common import REPO, data_dir, load_average, median, record, run_events, trainer

SPACE = """
[params.lr]
type = "float"
low = 1e-3
high = 3e-3
log = true
"""


def study_rate(work: Path, n_jobs: int, run: int, args: argparse.Namespace) -> tuple[float, float]:
    """Runs one study; returns trials per hour (first start to last end) and its wall time."""
    name = f"jobs{n_jobs}-run{run}"
    storage = f"sqlite:///{work / 'studies.db'}"
    command = [sys.executable, "-m", "orchestrator", "tune", "--study", name]
    command += ["--storage", storage, "--runs-dir", str(work), "--space", str(work / "space.toml")]
    command += ["--sampler", "random", "--pruner", "none", "--seed", str(run)]
    command += ["--trials", str(args.trials), "--epochs", "1"]
    command += ["--train-limit", str(args.train_limit), "--val-fraction", "0.02"]
    command += ["--n-jobs", str(n_jobs), "--trainer", str(trainer())]
    command += ["--data-dir", str(data_dir()), "--", "--optimizer", "adam", "--batch-size", "64"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started

    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    assert all(t.state.name == "COMPLETE" for t in trials), [t.state for t in trials]
    first = min(t.datetime_start for t in trials if t.datetime_start)
    last = max(t.datetime_complete for t in trials if t.datetime_complete)
    return len(trials) / (last - first).total_seconds() * 3600, wall


def epoch_seconds(threads: int, train_limit: int) -> float:
    command = [str(trainer()), "train", "--quiet", "--data-dir", str(data_dir())]
    command += ["--epochs", "1", "--train-limit", str(train_limit), "--val-fraction", "0.02"]
    command += ["--optimizer", "adam", "--batch-size", "64", "--threads", str(threads)]
    events, _ = run_events(command)
    epoch = next(e for e in events if e["event"] == "epoch")
    return train_limit / float(epoch["samples_per_second"])  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="tiny, printed, not recorded")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.runs, args.train_limit = 4, 1, 500

    work = Path(tempfile.mkdtemp(prefix="parallel-scaling-"))
    (work / "space.toml").write_text(SPACE)
    rates: dict[int, list[float]] = {1: [], 2: []}
    walls: dict[int, list[float]] = {1: [], 2: []}
    speedups: list[float] = []
    loads = [load_average()]
    for run in range(args.runs):
        for n_jobs in (1, 2):
            rate, wall = study_rate(work, n_jobs, run, args)
            rates[n_jobs].append(rate)
            walls[n_jobs].append(wall)
        speedups.append(epoch_seconds(1, args.train_limit) / epoch_seconds(2, args.train_limit))
        loads.append(load_average())
        print(
            f"run {run + 1}: {rates[1][-1]:.0f} and {rates[2][-1]:.0f} trials/hour, "
            f"2-thread speed-up {speedups[-1]:.2f}",
            flush=True,
        )

    ratios = [b / a for a, b in zip(rates[1], rates[2], strict=True)]
    ratio, speedup = median(ratios), median(speedups)
    record(
        "Parallel trials (--n-jobs 2 against --n-jobs 1, MNIST CNN)",
        [
            f"- command: `python benchmarks/parallel_scaling.py --trials {args.trials} "
            f"--runs {args.runs} --train-limit {args.train_limit}`",
            "- load average (1 min) at the start and after each pair: "
            + ", ".join(f"{x:.2f}" for x in loads),
            f"- {args.trials} one-epoch trials on {args.train_limit} examples a study; "
            f"`--n-jobs 1`: {median(rates[1]):.0f} trials/hour (2 threads a trial), "
            f"`--n-jobs 2`: {median(rates[2]):.0f} trials/hour (1 thread a trial); whole "
            f"commands {median(walls[1]):.1f} s and {median(walls[2]):.1f} s",
            f"- ratio {ratio:.2f} (per run {', '.join(f'{r:.2f}' for r in ratios)}; goal >= 1.8: "
            f"{'met' if ratio >= 1.8 else 'MISSED'})",
            f"- one trainer's training epoch, 1 thread against 2: speed-up {speedup:.2f}, so "
            f"at most {2 / speedup:.2f} could be gained from running two trials side by side",
        ],
        not args.quick,
    )


if __name__ == "__main__":
    main()
