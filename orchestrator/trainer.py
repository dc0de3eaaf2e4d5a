"""Finding the trainer binary: the one lookup every command uses.

The order is: an explicit path (`--trainer`), the RUST_TRAINER environment variable, the
binary installed beside this Python (`pip install .` puts it there) or on PATH, and last
the release build of a source checkout. An explicit path or variable that points nowhere
is an error rather than a reason to look further: the user asked for that binary. An
installed binary older than the checkout's build still wins, with a warning: an editable
install copies the binary once, and only `orchestrate build` (not a bare `cargo build`)
refreshes that copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.build import BINARY_NAME, built_binary, repo_root
from orchestrator.errors import NotACheckout, TrainerNotFound

logger = logging.getLogger(__name__)

TRAINER_ENV = "RUST_TRAINER"


def find_trainer(explicit: Path | None = None) -> Path:
    """The absolute path of the trainer binary to run."""
    if explicit is not None:
        return _checked(explicit, "--trainer")
    from_env = os.environ.get(TRAINER_ENV)
    if from_env:
        return _checked(Path(from_env), TRAINER_ENV)

    looked: list[Path] = []
    installed = Path(sys.executable).parent / BINARY_NAME
    on_path = shutil.which(BINARY_NAME)
    candidates = [installed, *([Path(on_path)] if on_path else [])]
    built: Path | None = None
    with contextlib.suppress(NotACheckout):
        built = built_binary(repo_root())
        candidates.append(built)

    for candidate in candidates:
        if _is_executable(candidate):
            logger.debug("using the trainer at %s", candidate)
            if built is not None and candidate != built and _newer(built, candidate):
                logger.warning(
                    "using the installed trainer %s, which is older than this checkout's "
                    "build %s; run `orchestrate build` to refresh it, or pass --trainer "
                    "(or set %s)",
                    candidate,
                    built,
                    TRAINER_ENV,
                )
            return candidate.resolve()
        looked.append(candidate)

    raise TrainerNotFound(
        f"no {BINARY_NAME} binary found (looked at {', '.join(map(str, looked))}); "
        f"build it with `orchestrate build` in a checkout, install it with `pip install .`, "
        f"or point --trainer or {TRAINER_ENV} at one"
    )


def trainer_info(trainer: Path) -> dict[str, object]:
    """What `rust-trainer info` says about the binary: version, libtorch, CUDA."""
    completed = subprocess.run(
        [str(trainer), "info"], capture_output=True, text=True, check=False, timeout=60
    )
    if completed.returncode != 0:
        raise TrainerNotFound(
            f"{trainer} info failed with exit code {completed.returncode}: "
            f"{completed.stderr.strip()[-500:]}"
        )
    info = json.loads(completed.stdout)
    if not isinstance(info, dict):
        raise TrainerNotFound(f"{trainer} info printed {completed.stdout!r}, not a JSON object")
    return info


def _checked(path: Path, source: str) -> Path:
    if not _is_executable(path):
        raise TrainerNotFound(f"{source} points at {path}, which is not an executable file")
    return path.resolve()


def _newer(path: Path, than: Path) -> bool:
    try:
        return path.stat().st_mtime > than.stat().st_mtime
    except OSError:
        return False


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
