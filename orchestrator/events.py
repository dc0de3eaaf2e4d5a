"""The trainer's event stream: one frozen dataclass per event, and the parser for one line.

The trainer prints JSON Lines on stdout, one object per line with an `"event"` key
(DESIGN.md lists the fields). A non-finite float arrives as `null`; it is read here as
`math.nan`, so every float field stays a `float`. A run without a validation set
(`--val-fraction 0`, a final model) has no `val_loss` or `val_accuracy` at all: they read
as `math.nan` too, with `validated` False to tell the two apart. Extra keys are ignored, so
the trainer may add fields without breaking older orchestrators; an event name this module
does not know is skipped for the same reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast, get_args

Status = Literal["completed", "early_stopped", "diverged", "stopped"]
ErrorKind = Literal["usage", "data", "device", "diverged", "internal"]


class MalformedEvent(ValueError):
    """A line is a JSON object with an `"event"` key, but its fields break the contract."""


@dataclass(frozen=True)
class StartEvent:
    version: str
    model: str
    dataset: str
    device: str
    threads: int
    parameters: int
    train_size: int
    val_size: int
    config: Mapping[str, object]


@dataclass(frozen=True)
class EpochEvent:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    samples_per_second: float
    # False when the run has no validation set: val_loss and val_accuracy are then NaN.
    validated: bool = True


@dataclass(frozen=True)
class ResultEvent:
    status: Status
    val_loss: float
    val_accuracy: float
    best_epoch: int | None
    epochs_run: int
    seconds: float
    test_loss: float | None = None
    test_accuracy: float | None = None
    checkpoint: str | None = None
    # False when the run has no validation set: val_loss and val_accuracy are then NaN.
    validated: bool = True


@dataclass(frozen=True)
class ErrorEvent:
    kind: ErrorKind
    message: str


Event: TypeAlias = StartEvent | EpochEvent | ResultEvent | ErrorEvent


def parse_line(line: str) -> Event | None:
    """Reads one stdout line of the trainer.

    Returns None for a line that is not an event (not JSON, not an object, no `"event"`
    key, or an event name this version does not know). Raises `MalformedEvent` for an
    event whose fields break the contract.
    """
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "event" not in obj:
        return None

    fields = _Fields(obj)
    name = obj["event"]
    if name == "start":
        return StartEvent(
            version=fields.text("version"),
            model=fields.text("model"),
            dataset=fields.text("dataset"),
            device=fields.text("device"),
            threads=fields.integer("threads"),
            parameters=fields.integer("parameters"),
            train_size=fields.integer("train_size"),
            val_size=fields.integer("val_size"),
            config=fields.mapping("config"),
        )
    if name == "epoch":
        return EpochEvent(
            epoch=fields.integer("epoch"),
            epochs=fields.integer("epochs"),
            train_loss=fields.number("train_loss"),
            val_loss=fields.optional_number("val_loss"),
            val_accuracy=fields.optional_number("val_accuracy"),
            lr=fields.number("lr"),
            seconds=fields.number("seconds"),
            samples_per_second=fields.number("samples_per_second"),
            validated=fields.validated(),
        )
    if name == "result":
        return ResultEvent(
            status=cast(Status, fields.choice("status", get_args(Status))),
            val_loss=fields.optional_number("val_loss"),
            val_accuracy=fields.optional_number("val_accuracy"),
            best_epoch=fields.optional_int("best_epoch"),
            epochs_run=fields.integer("epochs_run"),
            seconds=fields.number("seconds"),
            test_loss=fields.optional_float("test_loss"),
            test_accuracy=fields.optional_float("test_accuracy"),
            checkpoint=fields.optional_str("checkpoint"),
            validated=fields.validated(),
        )
    if name == "error":
        return ErrorEvent(
            kind=cast(ErrorKind, fields.choice("kind", get_args(ErrorKind))),
            message=fields.text("message"),
        )
    if isinstance(name, str):
        return None
    raise MalformedEvent(f"the event name must be a string, but got event={name!r}")


class _Fields:
    """Typed reads of one event's fields; each failure names the event and the field."""

    def __init__(self, obj: Mapping[str, object]) -> None:
        self._obj = obj
        self._name = obj.get("event")

    def _get(self, key: str) -> object:
        if key not in self._obj:
            raise MalformedEvent(f"{self._name!r} event has no {key!r} field")
        return self._obj[key]

    def _wrong(self, key: str, expected: str, value: object) -> MalformedEvent:
        return MalformedEvent(
            f"{self._name!r} event field {key!r} must be {expected}, but got {value!r}"
        )

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        return value

    def number(self, key: str) -> float:
        # null stands for a non-finite value (NaN or infinity) in the trainer's output.
        value = self._get(key)
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._wrong(key, "a number or null", value)
        return float(value)

    def optional_number(self, key: str) -> float:
        # Absent when the run has no validation set; `validated()` says which.
        return self.number(key) if key in self._obj else math.nan

    def validated(self) -> bool:
        # Both validation fields are present, or neither: one alone breaks the contract.
        present = ["val_loss" in self._obj, "val_accuracy" in self._obj]
        if present[0] != present[1]:
            missing = "val_accuracy" if present[0] else "val_loss"
            raise MalformedEvent(f"{self._name!r} event has no {missing!r} field")
        return present[0]

    def choice(self, key: str, choices: tuple[object, ...]) -> str:
        value = self.text(key)
        if value not in choices:
            raise self._wrong(key, f"one of {', '.join(map(repr, choices))}", value)
        return value

    def mapping(self, key: str) -> Mapping[str, object]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self._wrong(key, "an object", value)
        return cast(Mapping[str, object], value)

    def optional_int(self, key: str) -> int | None:
        return None if self._obj.get(key) is None else self.integer(key)

    def optional_float(self, key: str) -> float | None:
        return None if key not in self._obj else self.number(key)

    def optional_str(self, key: str) -> str | None:
        return None if self._obj.get(key) is None else self.text(key)
