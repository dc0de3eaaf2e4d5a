"""What the trainer accepts, from `rust-trainer describe`, and checking a space against it.

The trainer publishes every flag of `train` with its type, range, choices and default. A
search space is checked against that before the first trial, so that a misspelt flag, a
range the trainer would reject or a choice it does not know stops `tune` at once, naming the
parameter, instead of failing fifty trials one by one.
"""

from __future__ import annotations

import difflib
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import SpaceError, TrainerNotFound
from orchestrator.space import CategoricalParam, FloatParam, IntParam, SearchSpace, Value


@dataclass(frozen=True)
class FlagSpec:
    name: str
    flag: str
    kind: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False

    def accepts(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def range_text(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def describe_trainer(trainer: Path) -> dict[str, FlagSpec]:
    """Runs `TRAINER describe` and returns its flags by name (`batch_size`)."""
    try:
        completed = subprocess.run(
            [str(trainer), "describe"], capture_output=True, text=True, timeout=60, check=True
        )
        description = json.loads(completed.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError) as error:
        raise TrainerNotFound(
            f"{trainer} did not describe its flags ({error}); is it a rust-trainer binary "
            "from this version? Rebuild it with `orchestrate build`"
        ) from None
    flags = {}
    for entry in description["flags"]:
        bounds = entry.get("range") or {}
        flags[entry["name"]] = FlagSpec(
            name=entry["name"],
            flag=entry["flag"],
            kind=entry["type"],
            choices=tuple(entry.get("choices") or ()),
            low=bounds.get("low"),
            low_open=bool(bounds.get("low_open")),
            high=bounds.get("high"),
            high_open=bool(bounds.get("high_open")),
        )
    return flags


def check_space(space: SearchSpace, flags: dict[str, FlagSpec]) -> None:
    """Raises SpaceError naming the first parameter the trainer would not accept."""
    for param in space.params:
        spec = _spec(param.name, flags)
        if isinstance(param, CategoricalParam):
            _check_values(spec, param.choices, what="choice")
        elif isinstance(param, FloatParam | IntParam):
            if spec.kind not in ("float", "int"):
                raise SpaceError(
                    f"{param.name!r} is sampled as a number, but {spec.flag} takes a {spec.kind}"
                )
            if spec.kind == "int" and isinstance(param, FloatParam):
                raise SpaceError(
                    f"{param.name!r} is a float parameter, but {spec.flag} takes an integer; "
                    'use type = "int"'
                )
            _check_values(spec, (param.low, param.high, *param.grid), what="bound")
    for fixed in space.fixed:
        _check_values(_spec(fixed.name, flags), (fixed.value,), what="fixed value")


def _spec(name: str, flags: dict[str, FlagSpec]) -> FlagSpec:
    spec = flags.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, list(flags), n=1) or [
            # Abbreviations both ways: learning_rate -> lr, wd -> weight_decay.
            known
            for known in flags
            if _initials(known) == name or _initials(name) == known
        ]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SpaceError(
            f"{name!r} is not a flag of the trainer (see `rust-trainer describe`){hint}"
        )
    return spec


def _initials(name: str) -> str:
    return "".join(word[0] for word in name.split("_") if word)


def _check_values(spec: FlagSpec, values: Iterable[Value], *, what: str) -> None:
    for value in values:
        if spec.kind == "bool":
            if not isinstance(value, bool):
                raise SpaceError(f"{spec.name!r}: {spec.flag} is a switch, so use true or false")
        elif spec.kind == "choice":
            if str(value) not in spec.choices:
                raise SpaceError(
                    f"{spec.name!r}: {value!r} is not a {spec.flag} choice "
                    f"({', '.join(spec.choices)})"
                )
        elif spec.kind in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SpaceError(f"{spec.name!r}: {spec.flag} takes a number, but got {value!r}")
            if spec.kind == "int" and float(value) != int(value):
                raise SpaceError(f"{spec.name!r}: {spec.flag} takes an integer, got {value!r}")
            if not spec.accepts(float(value)):
                raise SpaceError(
                    f"{spec.name!r}: the {what} {value!r} is outside what {spec.flag} accepts "
                    f"{spec.range_text()}"
                )
