"""The reference for the trainer benchmarks: the same CNN (or ResNet-18) trained by PyTorch
eager in Python, with the same data on the device, batch size, optimizer, threads and seed.

It speaks a subset of `rust-trainer train`'s flags and prints the same `epoch` and `result`
events, so one benchmark script can run either program and read the figures the same way.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Cnn(nn.Module):
    def __init__(self, channels: int, side: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        flat = 64 * (((side - 4) // 2 - 4) // 2) ** 2
        self.fc1 = nn.Linear(flat, 1024)
        self.fc2 = nn.Linear(1024, 10)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(F.dropout(x, self.dropout, self.training))


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = data_dir / "mnist" if (data_dir / "mnist").is_dir() else data_dir
    images = read_idx(folder / "train-images-idx3-ubyte.gz")
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz")
    return images[:, None, :, :], labels


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    images, labels = mnist(args.data_dir)
    order = np.random.default_rng(0).permutation(len(labels))
    val_count = max(1, round(len(labels) * args.val_fraction))
    val_idx, train_idx = order[:val_count], order[val_count:]
    if args.train_limit:
        train_idx = train_idx[: args.train_limit]

    def to_device(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images[idx]).to(device).float().div_(255)
        x = (x - 0.1307) / 0.3081
        return x, torch.from_numpy(labels[idx].astype(np.int64)).to(device)

    train_x, train_y = to_device(train_idx)
    val_x, val_y = to_device(val_idx)
    model = Cnn(1, 28, args.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    best = math.inf
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        permutation = torch.randperm(len(train_y), device=device)
        total = torch.zeros((), device=device, dtype=torch.float64)
        for start in range(0, len(train_y), args.batch_size):
            batch = permutation[start : start + args.batch_size]
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
            if epoch == 1 and start == 0:
                first_step = time.perf_counter() - started
        train_seconds = time.perf_counter() - epoch_started
        model.eval()
        with torch.no_grad():
            val_loss = 0.0
            correct = 0
            for start in range(0, len(val_y), 1000):
                logits = model(val_x[start : start + 1000])
                target = val_y[start : start + 1000]
                val_loss += F.cross_entropy(logits, target, reduction="sum").item()
                correct += int((logits.argmax(-1) == target).sum())
        val_loss /= len(val_y)
        best = min(best, val_loss)
        emit(
            "epoch",
            epoch=epoch,
            epochs=args.epochs,
            train_loss=float(total) / len(train_y),
            val_loss=val_loss,
            val_accuracy=correct / len(val_y),
            seconds=time.perf_counter() - epoch_started,
            samples_per_second=len(train_y) / train_seconds,
        )
    emit("result", status="completed", val_loss=best, first_step_seconds=first_step)


if __name__ == "__main__":
    main()
