"""Provenance: what ran a trial, recorded so that it can be re-run and checked later.

Each trial records, before its process starts (so a failed trial has them too), the
trainer's version, the libtorch version it links, the SHA-256 of the binary, and the
command both as an argv list (`argv`, what `orchestrate replay` runs) and as a shell line
(`command`). The trainer's facts come from `rust-trainer info` and a hash of the file,
worked out once per binary and process, and again only when the file changes.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.trainer import trainer_info

# The trial user attributes this module writes; reports leave them out of plain text.
ATTRS = (
    "argv",
    "env",
    "trainer_version",
    "libtorch_version",
    "trainer_sha256",
    "trainer_path",
)


@dataclass(frozen=True)
class TrainerFacts:
    """The facts about one trainer binary that make a run reproducible."""

    path: str
    version: str
    libtorch: str
    sha256: str

    def attrs(self) -> dict[str, object]:
        return {
            "trainer_path": self.path,
            "trainer_version": self.version,
            "libtorch_version": self.libtorch,
            "trainer_sha256": self.sha256,
        }


_cache: dict[tuple[str, int, int], TrainerFacts] = {}
_lock = threading.Lock()


def trainer_facts(trainer: Path) -> TrainerFacts:
    """Version, libtorch and hash of `trainer`, cached while the file stays the same."""
    path = trainer.resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    # Parallel trials ask at once; one `info` and one hash is enough.
    with _lock:
        if key not in _cache:
            info = trainer_info(path)
            _cache[key] = TrainerFacts(
                path=str(path),
                version=str(info.get("version", "unknown")),
                libtorch=str(info.get("libtorch", "unknown")),
                sha256=sha256_of(path),
            )
        return _cache[key]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_attrs(
    trainer: Path, argv: Sequence[str], env: Mapping[str, str] | None = None
) -> dict[str, object]:
    """Every provenance attribute of one run of `argv` (whose first item is `trainer`)."""
    return {**trainer_facts(trainer).attrs(), "argv": list(argv), **_env_attr(env)}


def _env_attr(env: Mapping[str, str] | None) -> dict[str, object]:
    return {"env": dict(env)} if env else {}


def recorded_argv(attrs: Mapping[str, object]) -> list[str] | None:
    """The argv a trial recorded, or None for a trial from before provenance existed."""
    argv = attrs.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return list(argv)
    return None


def argv_from_command(command: str) -> list[str]:
    """The argv of a recorded shell line, without its leading `VAR=value` assignments."""
    words = shlex.split(command)
    while words and "=" in words[0] and not words[0].startswith(("-", os.sep)):
        words.pop(0)
    return words
