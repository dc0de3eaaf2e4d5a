"""Benchmark 5: trials per hour with `--n-jobs 2` against `--n-jobs 1` on this machine.

Both studies run the same trials: the MNIST CNN for one epoch on --train-limit examples
(Adam, batch 64), with only the learning rate sampled (it changes no work), random
sampler, no pruner, SQLite storage. Two pairs of studies, alternating, --runs times each:

- as a user runs them: `orchestrate` gives each of the N jobs `cores // N` trainer threads,
  so on 2 cores `--n-jobs 1` runs one 2-thread trainer at a time and `--n-jobs 2` two
  1-thread trainers (the goal's figure);
- the same work a trial (`--threads 1` in both): what running trials side by side gains
  when a trial's own speed does not change with N, that is, how well the orchestrator
  itself scales (its workers share one process, one storage and one GIL).

Trials per hour = trials / the time from the first trial's start to the last trial's end
(Optuna's own timestamps; the command's start-up of about a second is left out and shown
apart). Goal: ratio (n-jobs 2 / n-jobs 1) >= 1.8.

To explain the first ratio, one trainer's epoch is also timed at 1 and at 2 threads: when
one trial already uses both cores well (speed-up S from 1 to 2 threads), two 1-thread
trials side by side can be at most 2 / S times faster than one 2-thread trial.

    python benchmarks/parallel_scaling.py [--trials 16] [--runs 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from common import (
    REPO,
    data_dir,
    load_average,
    median,
    record,
    run_events,
    scratch_folder,
    trainer,
)

SPACE = """
[params.lr]
type = "float"
low = 1e-3
high = 3e-3
log = true
"""


def study_rate(
    work: Path, n_jobs: int, threads: int | None, run: int, args: argparse.Namespace
) -> tuple[float, float]:
    """Runs one study; returns trials per hour (first start to last end) and its wall time.
    `threads` None leaves the trainer threads to tune (cores // n_jobs)."""
    name = f"jobs{n_jobs}-threads{threads or 'auto'}-run{run}"
    storage = f"sqlite:///{work / 'studies.db'}"
    command = [sys.executable, "-m", "orchestrator", "tune", "--study", name]
    command += ["--storage", storage, "--runs-dir", str(work), "--space", str(work / "space.toml")]
    command += ["--sampler", "random", "--pruner", "none", "--seed", str(run)]
    command += ["--trials", str(args.trials), "--epochs", "1"]
    command += ["--train-limit", str(args.train_limit), "--val-fraction", "0.02"]
    command += ["--n-jobs", str(n_jobs), "--trainer", str(trainer())]
    if threads is not None:
        command += ["--threads", str(threads)]
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

    work = scratch_folder("parallel-scaling-")
    (work / "space.toml").write_text(SPACE)
    settings = {"default": None, "1 thread a trial": 1}
    rates: dict[tuple[str, int], list[float]] = {(k, n): [] for k in settings for n in (1, 2)}
    walls: dict[tuple[str, int], list[float]] = {key: [] for key in rates}
    speedups: list[float] = []
    loads = [load_average()]
    for run in range(args.runs):
        for kind, threads in settings.items():
            for n_jobs in (1, 2):
                rate, wall = study_rate(work, n_jobs, threads, run, args)
                rates[kind, n_jobs].append(rate)
                walls[kind, n_jobs].append(wall)
        speedups.append(epoch_seconds(1, args.train_limit) / epoch_seconds(2, args.train_limit))
        loads.append(load_average())
        print(
            f"run {run + 1}: "
            + "; ".join(
                f"{kind}: {rates[kind, 1][-1]:.0f} and {rates[kind, 2][-1]:.0f} trials/hour"
                for kind in settings
            )
            + f"; 2-thread speed-up {speedups[-1]:.2f}",
            flush=True,
        )

    def ratios(kind: str) -> list[float]:
        return [b / a for a, b in zip(rates[kind, 1], rates[kind, 2], strict=True)]

    ratio, speedup = median(ratios("default")), median(speedups)
    fixed = median(ratios("1 thread a trial"))
    record(
        "Parallel trials (--n-jobs 2 against --n-jobs 1, MNIST CNN)",
        [
            f"- command: `python benchmarks/parallel_scaling.py --trials {args.trials} "
            f"--runs {args.runs} --train-limit {args.train_limit}`",
            "- load average (1 min) at the start and after each run: "
            + ", ".join(f"{x:.2f}" for x in loads),
            f"- {args.trials} one-epoch trials on {args.train_limit} examples a study; as a "
            f"user runs them, `--n-jobs 1`: {median(rates['default', 1]):.0f} trials/hour (2 "
            f"threads a trial), `--n-jobs 2`: {median(rates['default', 2]):.0f} trials/hour "
            f"(1 thread a trial); whole commands {median(walls['default', 1]):.1f} s and "
            f"{median(walls['default', 2]):.1f} s",
            f"- ratio {ratio:.2f} (per run {', '.join(f'{r:.2f}' for r in ratios('default'))}; "
            f"goal >= 1.8: {'met' if ratio >= 1.8 else 'MISSED'})",
            f"- one trainer's training epoch, 1 thread against 2: speed-up {speedup:.2f}, so "
            f"at most {2 / speedup:.2f} could be gained from running two trials side by side",
            f"- the same work a trial (`--threads 1` in both): "
            f"{median(rates['1 thread a trial', 1]):.0f} and "
            f"{median(rates['1 thread a trial', 2]):.0f} trials/hour, ratio {fixed:.2f} (per "
            f"run {', '.join(f'{r:.2f}' for r in ratios('1 thread a trial'))}): how the "
            "orchestrator scales when a trial's speed does not depend on --n-jobs",
        ],
        not args.quick,
    )


if __name__ == "__main__":
    main()
