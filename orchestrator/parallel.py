"""Trials side by side on one machine: the CPU cores and the GPUs shared between them.

`--n-jobs N` runs N trials at a time, each one trainer process on a thread of Optuna's own.
Each trial gets `cores // N` CPU threads, so N trainers never ask for more threads than the
machine has, and, when the trainer sees several GPUs, a GPU of its own from a `SlotPool`
(through CUDA_VISIBLE_DEVICES), shared by at most `--trials-per-gpu` trials at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


def available_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_trial(n_jobs: int, cores: int) -> int:
    """The trainer's --threads for each of `n_jobs` trials running at once on `cores`."""
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be at least 1, but got n_jobs={n_jobs}")
    return max(1, cores // n_jobs)


def visible_gpus(count: int, environ: Mapping[str, str]) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value for each of the `count` GPUs the trainer sees.

    When CUDA_VISIBLE_DEVICES already narrows the choice, its entries are the names to
    hand out (the trainer counted only those); otherwise the GPUs are 0 to count - 1.
    """
    listed = [part.strip() for part in environ.get(CUDA_VISIBLE_DEVICES, "").split(",")]
    listed = [part for part in listed if part]
    if listed:
        return listed[:count]
    return [str(index) for index in range(count)]


class SlotPool:
    """Hands out devices to trials, at most `per_device` trials on each at a time.

    `slot()` gives the least busy device (the first listed on a tie) and blocks while every
    device is full. Safe to use from any number of threads.
    """

    def __init__(self, devices: Sequence[str], per_device: int = 1) -> None:
        if not devices:
            raise ValueError("a slot pool needs at least one device, but got none")
        if len(set(devices)) != len(devices):
            raise ValueError(f"each device may be listed once, but got {list(devices)}")
        if per_device < 1:
            raise ValueError(f"per_device must be at least 1, but got per_device={per_device}")
        self._per_device = per_device
        self._busy = dict.fromkeys(devices, 0)
        self._changed = threading.Condition()

    @property
    def capacity(self) -> int:
        """How many trials may hold a slot at once."""
        return len(self._busy) * self._per_device

    def busy(self) -> dict[str, int]:
        """How many trials each device holds now."""
        with self._changed:
            return dict(self._busy)

    @contextmanager
    def slot(self) -> Iterator[str]:
        """Holds a slot for the `with` block and yields its device."""
        with self._changed:
            device = min(self._busy, key=self._busy.__getitem__)
            while self._busy[device] >= self._per_device:
                self._changed.wait()
                device = min(self._busy, key=self._busy.__getitem__)
            self._busy[device] += 1
        try:
            yield device
        finally:
            with self._changed:
                self._busy[device] -= 1
                self._changed.notify()
