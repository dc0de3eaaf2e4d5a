"""Benchmark 1: the trainer against the same CNN in PyTorch eager, on the CPU.

Both programs train the classic MNIST CNN with the same data on the device, batch size,
optimizer (Adam, lr 1e-3), threads and seed; the runs alternate (ours, theirs, ours, ...)
so drift in the machine's speed hits both. Figures, medians over --runs pairs:

- steady-state epoch time: training seconds of epochs 2 and later (validation excluded);
- cold start: a whole process that loads MNIST and takes a single optimizer step;
- val_accuracy after the same epochs, to show speed is not bought with worse training.

Goals: epoch time ratio (ours / PyTorch) <= 0.85 at batch size 64; cold start ratio <= 0.5.

    python benchmarks/trainer_vs_pytorch.py [--runs 5] [--train-limit 20000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import data_dir, median, record, run_events, trainer

REFERENCE = Path(__file__).resolve().parent / "torch_reference.py"


def commands(flags: list[str]) -> tuple[list[str], list[str]]:
    ours = [str(trainer()), "train", "--quiet", "--optimizer", "adam", *flags]
    theirs = [sys.executable, str(REFERENCE), *flags]
    return ours, theirs


def epoch_seconds(events: list[dict[str, object]], train_size: int) -> list[float]:
    """Training-only seconds of every epoch after the first."""
    epochs = [e for e in events if e["event"] == "epoch"][1:]
    return [train_size / float(e["samples_per_second"]) for e in epochs]  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    shared = ["--data-dir", str(data_dir()), "--batch-size", str(args.batch_size)]
    shared += ["--threads", str(args.threads), "--seed", "0", "--lr", "0.001"]
    steady = [*shared, "--epochs", str(args.epochs), "--train-limit", str(args.train_limit)]
    cold = [*shared, "--epochs", "1", "--train-limit", str(args.batch_size)]
    cold += ["--val-fraction", "0.001"]

    figures: dict[str, list[float]] = {
        k: [] for k in ("ours", "theirs", "cold_ours", "cold_theirs")
    }
    accuracy: dict[str, list[float]] = {"ours": [], "theirs": []}
    for run in range(args.runs):
        for name, command in zip(("ours", "theirs"), commands(steady), strict=True):
            events, _ = run_events(command)
            figures[name].append(median(epoch_seconds(events, args.train_limit)))
            last = [e for e in events if e["event"] == "epoch"][-1]
            accuracy[name].append(float(last["val_accuracy"]))  # type: ignore[arg-type]
        for name, command in zip(("cold_ours", "cold_theirs"), commands(cold), strict=True):
            _, wall = run_events(command)
            figures[name].append(wall)
        print(
            f"run {run + 1}/{args.runs}: "
            + ", ".join(f"{k} {v[-1]:.3f}" for k, v in figures.items())
        )

    epoch_ratio = median([a / b for a, b in zip(figures["ours"], figures["theirs"], strict=True)])
    cold_ratio = median(
        [a / b for a, b in zip(figures["cold_ours"], figures["cold_theirs"], strict=True)]
    )
    verdict = lambda ratio, goal: "met" if ratio <= goal else "MISSED"  # noqa: E731
    record(
        "Trainer against PyTorch eager (MNIST CNN, CPU)",
        [
            f"- command: `python benchmarks/trainer_vs_pytorch.py --runs {args.runs} "
            f"--train-limit {args.train_limit} --epochs {args.epochs} --batch-size "
            f"{args.batch_size} --threads {args.threads}`",
            f"- steady-state training epoch ({args.train_limit} examples, batch "
            f"{args.batch_size}): ours {median(figures['ours']):.2f} s, PyTorch "
            f"{median(figures['theirs']):.2f} s, "
            f"ratio {epoch_ratio:.3f} (goal <= 0.85: {verdict(epoch_ratio, 0.85)})",
            f"- cold start (process start to one optimizer step, whole process): ours "
            f"{median(figures['cold_ours']):.2f} s, PyTorch "
            f"{median(figures['cold_theirs']):.2f} s, ratio {cold_ratio:.3f} (goal <= 0.5: "
            f"{verdict(cold_ratio, 0.5)})",
            f"- val_accuracy after {args.epochs} epochs: ours {median(accuracy['ours']):.4f}, "
            f"PyTorch {median(accuracy['theirs']):.4f}",
        ],
    )


if __name__ == "__main__":
    main()
