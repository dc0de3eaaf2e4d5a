"""Building the trainer from a source checkout with cargo.

libtorch comes from this Python's `torch` wheel (`LIBTORCH_USE_PYTORCH=1`), so the build
must see this interpreter first on PATH, as the crate's build scripts ask `python` for
torch's location.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

from orchestrator.errors import BuildFailed, NotACheckout

logger = logging.getLogger(__name__)

BINARY_NAME = "rust-trainer"
CRATE = "rust-trainer"

Profile = Literal["release", "debug"]


def repo_root() -> Path:
    """The source checkout this package was imported from."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "Cargo.toml").is_file() or not (root / "rust_trainer").is_dir():
        raise NotACheckout(
            f"{root} is not a source checkout (no Cargo.toml and rust_trainer/ there); "
            "`orchestrate build` works from a git clone, or install with `pip install .`"
        )
    return root


def built_binary(root: Path, profile: Profile = "release") -> Path:
    """Where cargo puts the trainer for `profile`, honouring CARGO_TARGET_DIR."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = root / target
    return target / profile / BINARY_NAME


def build_env() -> dict[str, str]:
    """The environment cargo runs in: libtorch from this Python's torch wheel."""
    env = dict(os.environ)
    env["LIBTORCH_USE_PYTORCH"] = "1"
    env["VIRTUAL_ENV"] = sys.prefix
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def cargo_command(profile: Profile) -> list[str]:
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    command = [cargo, "build", "-p", CRATE]
    if profile == "release":
        command.insert(2, "--release")
    return command


def build_trainer(profile: Profile = "release") -> Path:
    """Builds the trainer with cargo, streaming its output to stderr; returns the binary."""
    root = repo_root()
    command = cargo_command(profile)
    if not Path(command[0]).is_file():
        raise BuildFailed("cargo was not found on PATH; install Rust from https://rustup.rs")

    logger.info("running %s in %s", shlex.join(command), root)
    # cargo's own stdout (rarely used) joins stderr: our stdout carries only the path.
    completed = subprocess.run(command, cwd=root, env=build_env(), stdout=sys.stderr)
    if completed.returncode != 0:
        raise BuildFailed(f"cargo build failed with exit code {completed.returncode}")

    binary = built_binary(root, profile)
    if not binary.is_file():
        raise BuildFailed(f"cargo build succeeded but {binary} does not exist")
    if profile == "release":
        refresh_installed_copy(binary)
    return binary


def installed_copy() -> Path:
    """Where `pip install` (editable or not) puts the trainer: beside this interpreter."""
    return Path(sys.executable).parent / BINARY_NAME


def refresh_installed_copy(binary: Path, installed: Path | None = None) -> bool:
    """Replaces an installed trainer with a fresh build; True when it did.

    An editable install copies the binary once, and the trainer lookup prefers the installed
    copy, so without this a rebuild would go unused. A missing copy stays missing: installing
    is pip's job. The copy lands under a temporary name and is renamed over the old one, so a
    trainer that is running keeps its file and a reader never sees half a binary.
    """
    installed = installed or installed_copy()
    if not installed.is_file() or installed.resolve() == binary.resolve():
        return False

    staging = installed.with_name(f".{installed.name}.new")
    shutil.copy2(binary, staging)
    os.replace(staging, installed)
    logger.info("updated the installed trainer %s", installed)
    return True
