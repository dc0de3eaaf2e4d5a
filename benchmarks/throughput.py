"""Benchmark 2: the trainer's throughput against the machine's limit, on the CPU.

Achieved FLOP/s = training samples per second x FLOPs per sample, where FLOPs per sample
are counted from the CNN's layer shapes (multiply-adds of the forward pass x 2, x 3 for
forward plus backward). Two references, measured or derived in the same run:

- the CPU's fp32 peak: cores x clock x FLOPs per cycle (2 FMA pipes x the vector width in
  fp32 lanes x 2), read from /proc/cpuinfo; override with --flops-per-cycle;
- a large fp32 matrix product through torch on the same threads, the practical ceiling.

Goal: achieved / peak >= 0.30 for the CNN.

    python benchmarks/throughput.py [--batch-size 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import data_dir, median, record, run_events, trainer


def cnn_training_flops(side: int = 28, channels: int = 1, classes: int = 10) -> float:
    conv1_side = side - 4
    conv2_side = conv1_side // 2 - 4
    flat_side = conv2_side // 2
    macs = conv1_side**2 * 32 * channels * 25
    macs += conv2_side**2 * 64 * 32 * 25
    macs += flat_side**2 * 64 * 1024 + 1024 * classes
    return macs * 2 * 3


def peak_flops(threads: int, flops_per_cycle: float | None) -> tuple[float, str]:
    flags, mhz = set(), 0.0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("cpu MHz") and not mhz:
            mhz = float(line.split(":", 1)[1])
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.exists():
        mhz = int(max_freq.read_text()) / 1000
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = flops_per_cycle or 2 * lanes * 2
    how = f"{threads} cores x {mhz:.0f} MHz x {per_cycle:g} FLOP/cycle"
    return threads * mhz * 1e6 * per_cycle, how


def matmul_flops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * size**3 / median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flops-per-cycle", type=float)
    args = parser.parse_args()

    command = [str(trainer()), "train", "--quiet", "--data-dir", str(data_dir())]
    command += ["--epochs", "2", "--train-limit", str(args.train_limit)]
    command += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    rates, matmuls = [], []
    for _ in range(args.runs):
        events, _ = run_events(command)
        rates.append(float([e for e in events if e["event"] == "epoch"][-1]["samples_per_second"]))  # type: ignore[arg-type]
        matmuls.append(matmul_flops(args.threads))

    per_sample = cnn_training_flops()
    achieved = median(rates) * per_sample
    peak, how = peak_flops(args.threads, args.flops_per_cycle)
    matmul = median(matmuls)
    record(
        "Trainer throughput against the CPU's limit (MNIST CNN)",
        [
            f"- command: `python benchmarks/throughput.py --batch-size {args.batch_size} "
            f"--train-limit {args.train_limit} --threads {args.threads} --runs {args.runs}`",
            f"- {median(rates):.0f} samples/s x {per_sample / 1e6:.1f} MFLOP/sample = "
            f"{achieved / 1e9:.1f} GFLOP/s",
            f"- fp32 peak {peak / 1e9:.1f} GFLOP/s ({how}): ratio {achieved / peak:.3f} "
            f"(goal >= 0.30: {'met' if achieved / peak >= 0.30 else 'MISSED'})",
            f"- torch 2048x2048 fp32 matmul on the same threads: {matmul / 1e9:.1f} GFLOP/s "
            f"(ratio to it {achieved / matmul:.3f})",
        ],
    )


if __name__ == "__main__":
    main()
