"""Checks `tune` makes before it creates anything: a study that cannot run a single trial
should fail at once, with a message that says what to fix, and leave no study behind.

- the trainer runs and describes its flags (`rust-trainer describe`), and accepts the
  space (`contract.check_space`: names, types, ranges, choices) and every flag after `--`;
- the data folder holds the dataset (the file the trainer reads first);
- the grid sampler has grid points for every parameter (`SearchSpace.grid`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from orchestrator import datasets
from orchestrator.contract import FlagSpec, check_space, describe_trainer
from orchestrator.errors import DataNotFound, SpaceError
from orchestrator.runner import FLAGS_FROM_STDIN
from orchestrator.space import (
    RESERVED,
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpace,
)

DATA_DIR_ENV = "RUST_TRAINER_DATA_DIR"
# The trainer's own default for --data-dir.
DEFAULT_DATA_DIR = Path("data")
# The file each dataset's loader opens first (raw or .gz for MNIST).
_MARKERS = {"mnist": "train-images-idx3-ubyte", "cifar10": "data_batch_1.bin"}
# Trainer flags that tune's own options set for every trial (--data-dir may follow `--`).
TUNE_SETS = RESERVED - {"data_dir"}
# An integer as the trainer's parser reads one.
_INT = re.compile(r"[+-]?[0-9]+")


def check_trainer(
    trainer: Path,
    space: SearchSpace,
    extra: Iterable[str],
    dataset: str | None = None,
    *,
    val_fraction: float | None = None,
) -> dict[str, FlagSpec]:
    """The trainer must run, and accept every flag a trial would give it; returns its flags
    as `describe` gave them. `val_fraction`: tune's own --val-fraction, when given."""
    flags = describe_trainer(trainer)
    check_space(space, flags)
    by_flag = {spec.flag: spec for spec in flags.values()}
    tokens = list(extra)
    set_by_space = {p.name for p in space.params} | {f.name for f in space.fixed}
    for spec, value in _flags_and_values(tokens, by_flag):
        flag = spec.flag
        # A flag that tune sets or the space samples would be overridden (or would
        # override) without a word, and the study's record would no longer say what ran.
        name = flag.removeprefix("--").replace("-", "_")
        if flag == FLAGS_FROM_STDIN:
            raise SpaceError(
                f"{flag} after `--` is how tune itself hands a trial its flags; leave it out"
            )
        if name == "val_fraction" and val_fraction is not None:
            raise SpaceError(
                f"{flag} after `--` would override tune's own --val-fraction {val_fraction:g}, "
                "which the study records; give it once, to tune"
            )
        if name in TUNE_SETS:
            raise SpaceError(
                f"{flag} after `--` would change what the study records; give it to tune "
                f"itself (orchestrate tune {flag} ...)"
            )
        if name in set_by_space:
            raise SpaceError(
                f"{flag} after `--` is set by the space {space.name!r}, whose value would "
                "win; fix it in a space file ([fixed.NAME] value = ...) or leave it out"
            )
        _check_value(spec, value)

    # tune's own choices are checked here too: a wrong one would fail every trial.
    choices = flags["dataset"].choices if "dataset" in flags else ()
    if dataset is not None and choices and dataset not in choices:
        raise SpaceError(
            f"--dataset {dataset!r} is not one the trainer knows; use one of {', '.join(choices)}"
        )

    # Trials are scored on the validation set; without one every trial would fail.
    fraction = last_value(tokens, "--val-fraction")
    if fraction is not None and _is_zero(fraction):
        raise SpaceError(
            f"--val-fraction {fraction} after `--` leaves no validation set, and trials are "
            "scored on it; drop it (training on all the data is what `orchestrate final` does)"
        )
    return flags


def check_warmup(space: SearchSpace, extra: Iterable[str], epochs: int) -> None:
    """The trainer needs fewer warm-up epochs than --epochs: a space (or a flag after `--`)
    that can ask for as many would fail those trials one by one."""
    largest: list[tuple[float, str]] = []
    for param in space.params:
        if param.name == "warmup_epochs" and isinstance(param, IntParam | FloatParam):
            largest.append((param.high, f"the space {space.name!r} samples warmup_epochs up to"))
        elif param.name == "warmup_epochs" and isinstance(param, CategoricalParam):
            numbers = [c for c in param.choices if isinstance(c, int | float)]
            if numbers:
                largest.append((max(numbers), f"the space {space.name!r} offers warmup_epochs"))
    for fixed in space.fixed:
        if fixed.name == "warmup_epochs" and isinstance(fixed.value, int | float):
            largest.append((fixed.value, f"the space {space.name!r} fixes warmup_epochs at"))
    given = last_value(list(extra), "--warmup-epochs")
    if given is not None and _is_int(given):
        largest.append((int(given), "--warmup-epochs after `--` is"))
    for value, what in largest:
        if value >= epochs:
            raise SpaceError(
                f"{what} {value:g}, but the trainer needs fewer warm-up epochs than --epochs "
                f"({epochs}); train for more epochs (--epochs {int(value) + 1} or more) or "
                "lower the warm-up"
            )


def _flags_and_values(
    tokens: list[str], by_flag: dict[str, FlagSpec]
) -> Iterator[tuple[FlagSpec, str | None]]:
    """Each `--flag` after `--`, as the trainer describes it, with its value (None for a
    switch), read as the trainer's parser reads them; raises SpaceError for what it would
    refuse."""
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("--") or token == "--":
            raise SpaceError(
                f"{token!r} after `--` is not a flag with its value; only the trainer's "
                "--flags and their values go there (see `rust-trainer train --help`)"
            )
        flag, equals, attached = token.partition("=")
        spec = by_flag.get(flag)
        if spec is None:
            raise SpaceError(
                f"the trainer flag {token!r} after `--` is not one `rust-trainer train` "
                "accepts; see `rust-trainer describe` or `rust-trainer train --help`"
            )
        if spec.kind == "bool":
            if equals:
                raise SpaceError(f"{flag} after `--` is a switch: give it without a value")
            yield spec, None
        elif equals:
            yield spec, attached
        elif index < len(tokens) and not tokens[index].startswith("--"):
            yield spec, tokens[index]
            index += 1
        else:
            raise SpaceError(f"{flag} after `--` needs a value (see `rust-trainer describe`)")


def _check_value(spec: FlagSpec, value: str | None) -> None:
    """The value must parse as the flag's type and lie in its range or choices."""
    if value is None or spec.kind in ("path", "string"):
        return
    if spec.kind == "choice":
        if value not in spec.choices:
            raise SpaceError(
                f"{spec.flag} {value!r} after `--` is not one of its choices: "
                f"{', '.join(spec.choices)}"
            )
        return
    if spec.kind == "int_list":
        parts = value.split(",")
        if not all(_is_int(part) and spec.accepts(int(part)) for part in parts):
            raise SpaceError(
                f"{spec.flag} {value!r} after `--` takes integers in {spec.range_text()} "
                "separated by commas"
            )
        return
    if spec.kind == "int" and not _is_int(value):
        raise SpaceError(f"{spec.flag} {value!r} after `--` takes an integer (64-bit)")
    if spec.kind in ("int", "float"):
        try:
            number = float(value)
        except ValueError:
            raise SpaceError(f"{spec.flag} {value!r} after `--` takes a number") from None
        if not math.isfinite(number):
            raise SpaceError(f"{spec.flag} {value!r} after `--` takes a finite number")
        if not spec.accepts(number):
            raise SpaceError(
                f"{spec.flag} {value} after `--` is outside what it accepts {spec.range_text()}"
            )


def _is_int(text: str) -> bool:
    """An integer as the trainer's parser reads one, within 64 bits (signed, to be safe)."""
    return _INT.fullmatch(text) is not None and -(2**63) <= int(text) < 2**63


def last_value(tokens: list[str], flag: str) -> str | None:
    """The value the trainer will take for `flag`: the last `FLAG VALUE` or `FLAG=VALUE`."""
    chosen = None
    for index, token in enumerate(tokens):
        if token == flag and index + 1 < len(tokens):
            chosen = tokens[index + 1]
        elif token.startswith(f"{flag}="):
            chosen = token.split("=", 1)[1]
    return chosen


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False  # not a number: the trainer's own message names it


def data_dir_for(data_dir: Path | None, extra: Iterable[str]) -> Path:
    """The --data-dir the trainer will use: the last one passed, its variable, or its
    default."""
    given = last_value(list(extra), "--data-dir")
    chosen = Path(given) if given is not None else data_dir
    if chosen is not None:
        return chosen
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env) if from_env else DEFAULT_DATA_DIR


def check_data(dataset: str, data_dir: Path) -> None:
    """The folder the trainer will read must hold the dataset's first file."""
    marker = _MARKERS.get(dataset)
    if marker is None:
        return  # a dataset this check does not know: the trainer will say
    folder = datasets.locate(dataset, data_dir)
    names = (marker, f"{marker}.gz") if dataset == "mnist" else (marker,)
    if any((folder / name).is_file() for name in names):
        return
    raise DataNotFound(
        f"--data-dir {data_dir} holds no {dataset} files (looked for {marker} in "
        f"{data_dir} and its {dataset} folder); point --data-dir or {DATA_DIR_ENV} at the "
        f"folder that holds {dataset}/, or fetch it with "
        f"`orchestrate data download --dataset {dataset} --dest DIR`"
    )
