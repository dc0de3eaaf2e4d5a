"""Optuna studies over the Rust trainer: one trainer process per trial.

The package builds and finds the `rust-trainer` binary, runs it, reads its JSON Lines
events as they arrive, and keeps every trial in an Optuna storage.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("rust-trainer-orchestrate")
except metadata.PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0.0.0+checkout"
