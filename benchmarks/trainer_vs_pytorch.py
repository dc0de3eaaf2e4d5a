"""Benchmark 1: the trainer against the same model in PyTorch eager.

Both programs train the same model with the same data on the device, batch size,
optimizer (Adam, lr 1e-3), threads and seed; the runs alternate (ours, theirs, ours, ...)
so drift in the machine's speed hits both. Two models: the classic MNIST CNN, and a
CIFAR-form ResNet-18 on a balanced CIFAR-10 subset (made once from the shared JPEG
archive by its `to_binary.py`; no augmentation in either program). Figures, medians over
--runs pairs:

- steady-state epoch time: training seconds of epochs 2 and later (validation excluded);
- cold start: a whole process that loads the data and takes a single optimizer step;
- val_accuracy after the same epochs, to show speed is not bought with worse training.

Goals on the CPU: CNN epoch time ratio (ours / PyTorch) <= 0.85 at batch size 64; cold
start ratio <= 0.5. `--device cuda` runs the same comparison on a GPU (the ResNet at
--width 1 on --cifar-per-class 1000 by default there).

    python benchmarks/trainer_vs_pytorch.py [--model cnn|resnet18|both] [--runs 3] [--quick]
    python benchmarks/trainer_vs_pytorch.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import REPO, data_dir, load_average, median, record, run_events, trainer

REFERENCE = Path(__file__).resolve().parent / "torch_reference.py"


@dataclass(frozen=True)
class Case:
    title: str
    flags: list[str]  # flags both programs take
    ours_only: list[str]  # flags the reference lacks the switch for (it never augments)
    train_size: int


def cifar_subset(per_class: int) -> Path:
    """A balanced CIFAR-10 subset in the official binary layout, made once under target/."""
    root = REPO / "target" / ("cifar10-subset" if per_class == 100 else f"cifar10-{per_class}")
    if not (root / "cifar-10-batches-bin" / "test_batch.bin").is_file():
        script = data_dir() / "cifar10" / "to_binary.py"
        per = ["--train-per-class", str(per_class), "--test-per-class", "20"]
        subprocess.run([sys.executable, str(script), str(root), *per], check=True)
    return root


def commands(case: Case, flags: list[str]) -> tuple[list[str], list[str]]:
    ours = [str(trainer()), "train", "--quiet", "--optimizer", "adam"]
    ours += [*case.flags, *case.ours_only, *flags]
    theirs = [sys.executable, str(REFERENCE), *case.flags, *flags]
    return ours, theirs


def epoch_seconds(events: list[dict[str, object]], train_size: int) -> list[float]:
    """Training-only seconds of every epoch after the first."""
    epochs = [e for e in events if e["event"] == "epoch"][1:]
    return [train_size / float(e["samples_per_second"]) for e in epochs]  # type: ignore[arg-type]


def verdict(ratio: float, goal: float | None) -> str:
    if goal is None:
        return "no goal set"
    return f"goal <= {goal}: {'met' if ratio <= goal else 'MISSED'}"


def compare(case: Case, args: argparse.Namespace, command_line: str) -> None:
    shared = ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    shared += ["--seed", "0", "--lr", "0.001", "--device", args.device]
    steady = [*shared, "--epochs", str(args.epochs)]
    cold = [*shared, "--epochs", "1", "--train-limit", str(args.batch_size)]
    cold += ["--val-fraction", "0.001"]

    figures: dict[str, list[float]] = {
        k: [] for k in ("ours", "theirs", "cold_ours", "cold_theirs")
    }
    accuracy: dict[str, list[float]] = {"ours": [], "theirs": []}
    loads = [load_average()]
    for run in range(args.runs):
        for name, command in zip(("ours", "theirs"), commands(case, steady), strict=True):
            events, _ = run_events(command)
            figures[name].append(median(epoch_seconds(events, case.train_size)))
            last = [e for e in events if e["event"] == "epoch"][-1]
            accuracy[name].append(float(last["val_accuracy"]))  # type: ignore[arg-type]
        for name, command in zip(("cold_ours", "cold_theirs"), commands(case, cold), strict=True):
            _, wall = run_events(command)
            figures[name].append(wall)
        loads.append(load_average())
        print(
            f"{case.title} run {run + 1}/{args.runs}: "
            + ", ".join(f"{k} {v[-1]:.3f}" for k, v in figures.items()),
            flush=True,
        )

    def ratio(ours: str, theirs: str) -> float:
        return median([a / b for a, b in zip(figures[ours], figures[theirs], strict=True)])

    on_cpu = args.device == "cpu"
    epoch_goal = 0.85 if on_cpu and case.title.startswith("MNIST CNN") else None
    cold_goal = 0.5 if on_cpu else None
    record(
        f"Trainer against PyTorch eager ({case.title}, {args.device})",
        [
            f"- command: `{command_line}`",
            "- load average (1 min) before and after each pair of runs: "
            + ", ".join(f"{x:.2f}" for x in loads),
            f"- steady-state training epoch ({case.train_size} examples, batch "
            f"{args.batch_size}, {args.threads} threads): ours {median(figures['ours']):.2f} s, "
            f"PyTorch {median(figures['theirs']):.2f} s, ratio {ratio('ours', 'theirs'):.3f} "
            f"({verdict(ratio('ours', 'theirs'), epoch_goal)})",
            f"- cold start (process start to one optimizer step, whole process): ours "
            f"{median(figures['cold_ours']):.2f} s, PyTorch "
            f"{median(figures['cold_theirs']):.2f} s, ratio "
            f"{ratio('cold_ours', 'cold_theirs'):.3f} "
            f"({verdict(ratio('cold_ours', 'cold_theirs'), cold_goal)})",
            f"- val_accuracy after {args.epochs} epochs: ours {median(accuracy['ours']):.4f}, "
            f"PyTorch {median(accuracy['theirs']):.4f}",
            "- per run (ours / PyTorch epoch seconds): "
            + ", ".join(
                f"{a:.2f}/{b:.2f}" for a, b in zip(figures["ours"], figures["theirs"], strict=True)
            ),
        ],
        write=not args.quick,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cnn", "resnet18", "both"], default="both")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=20000, help="MNIST examples")
    parser.add_argument("--cifar-per-class", type=int, help="default 100, 1000 on cuda")
    parser.add_argument("--width", type=float, help="ResNet width; default 0.25, 1 on cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="one short run, printed, not recorded"
    )
    args = parser.parse_args()
    on_cpu = args.device == "cpu"
    if args.quick:
        args.runs, args.train_limit, args.epochs = 1, 1000, 2
        args.cifar_per_class = args.cifar_per_class or 20
        args.width = args.width or 0.125
    per_class = args.cifar_per_class or (100 if on_cpu else 1000)
    width = args.width or (0.25 if on_cpu else 1.0)
    command_line = "python benchmarks/trainer_vs_pytorch.py " + " ".join(sys.argv[1:])

    cases = []
    if args.model in ("cnn", "both"):
        flags = ["--data-dir", str(data_dir()), "--train-limit", str(args.train_limit)]
        cases.append(Case("MNIST CNN", flags, [], args.train_limit))
    if args.model in ("resnet18", "both"):
        train_size = per_class * 10 - round(per_class * 10 * 0.1)
        flags = ["--model", "resnet18", "--dataset", "cifar10", "--width", str(width)]
        flags += ["--data-dir", str(cifar_subset(per_class))]
        title = f"ResNet-18 x{width:g}, CIFAR-10 {per_class} a class"
        cases.append(Case(title, flags, ["--augment", "none"], train_size))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    for case in cases:
        compare(case, args, command_line)


if __name__ == "__main__":
    main()
