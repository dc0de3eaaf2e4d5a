"""The reference for the trainer benchmarks: the same CNN (or ResNet-18) trained by PyTorch
eager in Python, with the same data on the device, batch size, optimizer, threads and seed.

It speaks a subset of `rust-trainer train`'s flags and prints the same `epoch` and `result`
events, so one benchmark script can run either program and read the figures the same way.
The models start as the trainer's do (PyTorch's default layer initialisation for the CNN,
torchvision's for the ResNet), and pixels are normalised per channel with the training
file's own mean and standard deviation, as the trainer does. Augmentation is not
implemented: run the trainer with `--augment none` against it.
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


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.downsample(x))


class ResNet18(nn.Module):
    """The trainer's CIFAR ResNet-18: 3x3 stem, no max-pool, torchvision's names and init."""

    def __init__(self, channels: int, classes: int, width: float, dropout: float) -> None:
        super().__init__()
        base = max(1, round(64 * width))
        self.conv1 = nn.Conv2d(channels, base, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        c_in, stages = base, []
        for index, multiple in enumerate((1, 2, 4, 8)):
            planes = base * multiple
            stride = 1 if index == 0 else 2
            stages.append(
                nn.Sequential(BasicBlock(c_in, planes, stride), BasicBlock(planes, planes, 1))
            )
            c_in = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(c_in, classes)
        self.dropout = dropout
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(F.dropout(x, self.dropout, self.training))


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


def cifar10(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = data_dir / "cifar-10-batches-bin"
    if not folder.is_dir():
        folder = data_dir / "cifar10" / "cifar-10-batches-bin"
    raw = np.concatenate(
        [
            np.fromfile(folder / f"data_batch_{n}.bin", dtype=np.uint8).reshape(-1, 3073)
            for n in range(1, 6)
        ]
    )
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].copy()


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", choices=["cnn", "resnet18"], default="cnn")
    parser.add_argument("--dataset", choices=["mnist", "cifar10"], default="mnist")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float)
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

    images, labels = mnist(args.data_dir) if args.dataset == "mnist" else cifar10(args.data_dir)
    # The trainer's normalisation: per channel, over the whole training file.
    pixels = images.reshape(len(images), images.shape[1], -1).transpose(1, 0, 2)
    pixels = pixels.reshape(images.shape[1], -1) / 255.0
    mean, std = pixels.mean(axis=1), pixels.std(axis=1)
    order = np.random.default_rng(0).permutation(len(labels))
    val_count = max(1, round(len(labels) * args.val_fraction))
    val_idx, train_idx = order[:val_count], order[val_count:]
    if args.train_limit:
        train_idx = train_idx[: args.train_limit]

    def to_device(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # np.take gives NCHW-contiguous images. (Fancy indexing of MNIST's N x 1 x 28 x 28
        # view would give a channel stride of 1, which libtorch reads as channels-last; the
        # CNN is then run channels-last below, on purpose, as the trainer does on the CPU.)
        x = torch.from_numpy(np.ascontiguousarray(np.take(images, idx, axis=0)))
        x = x.to(device).float().div_(255)
        x = (x - torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)) / (
            torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        )
        return x, torch.from_numpy(labels[idx].astype(np.int64)).to(device)

    train_x, train_y = to_device(train_idx)
    val_x, val_y = to_device(val_idx)
    channels, side = images.shape[1], images.shape[2]
    model: nn.Module
    if args.model == "cnn":
        model = Cnn(channels, side, 0.5 if args.dropout is None else args.dropout)
        if device.type == "cpu":
            train_x = train_x.contiguous(memory_format=torch.channels_last)
            val_x = val_x.contiguous(memory_format=torch.channels_last)
    else:
        model = ResNet18(channels, 10, args.width, args.dropout or 0.0)
    model = model.to(device)
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
        train_loss = float(total)  # waits for the device, as the trainer does
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
            train_loss=train_loss / len(train_y),
            val_loss=val_loss,
            val_accuracy=correct / len(val_y),
            seconds=time.perf_counter() - epoch_started,
            samples_per_second=len(train_y) / train_seconds,
        )
    emit("result", status="completed", val_loss=best, first_step_seconds=first_step)


if __name__ == "__main__":
    main()
