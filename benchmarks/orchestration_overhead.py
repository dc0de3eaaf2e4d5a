"""Benchmark 3: what the orchestrator costs around the trainer processes.

Runs `orchestrate tune` in this process (the CLI's own entry, so nothing differs from the
command) on a study of --trials very short trials (the MNIST CNN, 1 epoch, --train-limit
64, 1% validation split: one optimizer step each), with the default TPE sampler, median
pruner and SQLite storage, and measures:

- study wall time: from before `import orchestrator` (so optuna's and the orchestrator's
  imports count) to the CLI's return; the interpreter's own start (~20 ms) is outside;
- trainer time: each trial's user attribute `seconds`, which the runner measures from just
  before it spawns the trainer process to just after the process has exited (spawn to
  exit, stdout and stderr drained); the trainer's own `seconds` (its `result` event, from
  its `main` to the result) is shown beside it to separate process and libtorch start-up;
- overhead = (study wall time - sum of trainer times) / study wall time; goal <= 0.03;
- sampler and storage time per trial, by timing every call into the sampler's methods and
  the RDB storage's (storage calls made by the sampler count as sampler time), summed
  between one trainer start and the next; medians over the trials around trial 20 and
  around the last trial, and their ratio.

    python benchmarks/orchestration_overhead.py [--trials 200] [--quick]
"""

from __future__ import annotations

import time

IMPORT_STARTED = time.perf_counter()

import argparse  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import optuna  # noqa: E402
from common import data_dir, load_average, median, record, trainer  # noqa: E402

from orchestrator import cli as orchestrate_cli  # noqa: E402
from orchestrator.runner import TrainerProcess  # noqa: E402


class Clock:
    """Time spent inside the sampler and the storage, and a snapshot at each trainer start."""

    def __init__(self) -> None:
        self.sampler = 0.0
        self.storage = 0.0
        self._depth = 0  # nested calls (a sampler reading the storage) count once
        self.starts: list[tuple[float, float, float]] = []

    def timed(self, kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self._depth -= 1
                if kind == "sampler":
                    self.sampler += elapsed
                else:
                    self.storage += elapsed

        return wrapper


def instrument(clock: Clock) -> None:
    sampler_methods = (
        "infer_relative_search_space",
        "sample_relative",
        "sample_independent",
        "before_trial",
        "after_trial",
    )
    for name in sampler_methods:
        cls = optuna.samplers.TPESampler
        setattr(cls, name, clock.timed("sampler", getattr(cls, name)))
    rdb = optuna.storages.RDBStorage
    for name in dir(optuna.storages.BaseStorage):
        if not name.startswith("_") and callable(getattr(rdb, name, None)):
            setattr(rdb, name, clock.timed("storage", getattr(rdb, name)))

    enter = TrainerProcess.__enter__

    def entering(process: TrainerProcess) -> TrainerProcess:
        clock.starts.append((time.perf_counter(), clock.sampler, clock.storage))
        return enter(process)

    TrainerProcess.__enter__ = entering


def window(values: list[float], centre: int, half: int) -> list[float]:
    """The values of trials centre-half .. centre+half-1 (trial numbers from 1)."""
    low = max(0, centre - half - 1)
    return values[low : low + 2 * half]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="30 trials, printed, not recorded")
    args = parser.parse_args()
    if args.quick:
        args.trials = 30

    work = Path(tempfile.mkdtemp(prefix="orchestration-overhead-"))
    storage = f"sqlite:///{work / 'study.db'}"
    tune = ["tune", "--study", "overhead", "--storage", storage, "--runs-dir", str(work)]
    tune += ["--trials", str(args.trials), "--epochs", "1", "--train-limit", "64"]
    tune += ["--val-fraction", "0.01", "--seed", "0", "--trainer", str(trainer())]
    tune += ["--data-dir", str(data_dir())]
    clock = Clock()
    instrument(clock)
    load_before = load_average()
    try:
        orchestrate_cli.cli.main(args=tune, prog_name="orchestrate", standalone_mode=False)
    except SystemExit as exit_:
        if exit_.code:
            raise
    wall = time.perf_counter() - IMPORT_STARTED
    load_after = load_average()

    study = optuna.load_study(study_name="overhead", storage=storage)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    spawn_to_exit = [float(t.user_attrs["seconds"]) for t in trials]
    inside = []
    for t in trials:
        events = Path(str(t.user_attrs["trial_dir"])) / "events.jsonl"
        lines = [json.loads(x) for x in events.read_text().splitlines() if x.startswith("{")]
        inside.append(float(next(e["seconds"] for e in lines if e["event"] == "result")))
    trainer_total = sum(spawn_to_exit)
    overhead = (wall - trainer_total) / wall

    # Per trial: sampler and storage time from one trainer start to the next.
    marks = [*clock.starts, (time.perf_counter(), clock.sampler, clock.storage)]
    pairs = list(itertools.pairwise(marks))
    per_trial = [(b[1] - a[1]) + (b[2] - a[2]) for a, b in pairs]
    between = [(b[0] - a[0]) - s for (a, b), s in zip(pairs, spawn_to_exit, strict=True)]
    early, late = 20, args.trials
    half = 5
    early_cost = median(window(per_trial, early, half))
    late_cost = median(window(per_trial, late - half + 1, half))
    early_between = median(window(between, early, half))
    late_between = median(window(between, late - half + 1, half))
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1

    record(
        f"Orchestration overhead ({args.trials} one-step trials, TPE, SQLite)",
        [
            f"- command: `python benchmarks/orchestration_overhead.py --trials {args.trials}`",
            f"- load average (1 min) before and after: {load_before:.2f}, {load_after:.2f}",
            f"- trials: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}",
            f"- study wall time {wall:.1f} s; trainer processes (spawn to exit) "
            f"{trainer_total:.1f} s in all, median {median(spawn_to_exit):.3f} s a trial, of "
            f"which the trainer's own `seconds` median {median(inside):.3f} s",
            f"- overhead (wall - trainer time) / wall = {overhead:.3f} (goal <= 0.03: "
            f"{'met' if overhead <= 0.03 else 'MISSED'})",
            f"- sampler + storage time a trial, median of trials {early - half}-"
            f"{early + half - 1}: {early_cost * 1e3:.1f} ms; of trials "
            f"{late - 2 * half + 1}-{late}: {late_cost * 1e3:.1f} ms (ratio "
            f"{late_cost / early_cost:.2f})",
            f"- all orchestrator time between trainer processes, same windows: "
            f"{early_between * 1e3:.1f} ms and {late_between * 1e3:.1f} ms",
            f"- sampler {clock.sampler:.1f} s and storage {clock.storage:.1f} s in all; "
            f"start-up before the first trainer {marks[0][0] - IMPORT_STARTED:.2f} s",
        ],
        write=not args.quick,
    )


if __name__ == "__main__":
    main()
