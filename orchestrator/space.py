"""Search spaces: what a trial samples, and how sampled values become trainer flags.

A space is a tuple of parameters (float, int or categorical) plus fixed values that some
condition on the sampled ones switches on (momentum only for SGD). Every float and int
parameter may carry a few grid points, used only by the grid sampler, which needs a
finite set. Spaces come built in per model, or from a TOML file:

    [params.lr]
    type = "float"
    low = 1e-4
    high = 3e-2
    log = true
    grid = [1e-3, 3e-3, 1e-2]

    [params.optimizer]
    type = "categorical"
    choices = ["sgd", "adam"]

    [fixed.momentum]
    value = 0.9
    when = { optimizer = "sgd" }

A parameter named `batch_size` becomes the flag `--batch-size`; a boolean becomes a bare
flag when true and is left out when false.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

from orchestrator.errors import SpaceError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    import optuna

Value: TypeAlias = bool | int | float | str

# Flags every trial of a study shares; a space may not sample or fix them.
RESERVED = frozenset(
    {"model", "dataset", "data_dir", "epochs", "train_limit", "device", "threads", "seed"}
)
# The grid sampler enumerates an int range without explicit points up to this size.
_MAX_IMPLICIT_GRID = 16


@dataclass(frozen=True)
class FloatParam:
    name: str
    low: float
    high: float
    log: bool = False
    grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_range(self.name, self.low, self.high, self.log, self.grid)

    def suggest(self, trial: optuna.Trial) -> Value:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def grid_points(self) -> tuple[Value, ...]:
        if not self.grid:
            raise SpaceError(
                f"the grid sampler needs grid points for {self.name!r}, but it has none; "
                "add `grid = [...]` to the parameter"
            )
        return self.grid


@dataclass(frozen=True)
class IntParam:
    name: str
    low: int
    high: int
    log: bool = False
    grid: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_range(self.name, self.low, self.high, self.log, self.grid)

    def suggest(self, trial: optuna.Trial) -> Value:
        return trial.suggest_int(self.name, self.low, self.high, log=self.log)

    def grid_points(self) -> tuple[Value, ...]:
        if self.grid:
            return self.grid
        if self.high - self.low < _MAX_IMPLICIT_GRID:
            return tuple(range(self.low, self.high + 1))
        raise SpaceError(
            f"the grid sampler needs grid points for {self.name!r} "
            f"({self.low}..{self.high} is too many values); add `grid = [...]`"
        )


@dataclass(frozen=True)
class CategoricalParam:
    name: str
    choices: tuple[Value, ...]

    def __post_init__(self) -> None:
        if not self.choices:
            raise SpaceError(f"{self.name!r} needs at least one choice, but got none")
        if len(set(self.choices)) != len(self.choices):
            raise SpaceError(f"{self.name!r} lists a choice twice: {list(self.choices)}")

    def suggest(self, trial: optuna.Trial) -> Value:
        return cast(Value, trial.suggest_categorical(self.name, self.choices))

    def grid_points(self) -> tuple[Value, ...]:
        return self.choices


Param: TypeAlias = FloatParam | IntParam | CategoricalParam


@dataclass(frozen=True)
class FixedParam:
    """A value passed to every trial whose sampled values match all of `when`."""

    name: str
    value: Value
    when: tuple[tuple[str, Value], ...] = ()

    def applies(self, sampled: Mapping[str, Value]) -> bool:
        return all(sampled.get(key) == value for key, value in self.when)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    params: tuple[Param, ...]
    fixed: tuple[FixedParam, ...] = ()

    def __post_init__(self) -> None:
        names = [p.name for p in self.params] + [f.name for f in self.fixed]
        for name in names:
            if not name.isidentifier():
                raise SpaceError(f"a parameter name must be an identifier, but got {name!r}")
            if name in RESERVED:
                raise SpaceError(
                    f"{name!r} is set for the whole study (--{_flag(name)}), "
                    "so a search space may not sample or fix it"
                )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SpaceError(f"{self.name}: each parameter may appear once, but got {duplicates}")

        sampled = {p.name for p in self.params}
        for fixed in self.fixed:
            unknown = [key for key, _ in fixed.when if key not in sampled]
            if unknown:
                raise SpaceError(
                    f"{fixed.name!r} depends on {unknown}, which the space does not sample"
                )

    def sample(self, trial: optuna.Trial) -> dict[str, Value]:
        """Samples every parameter for `trial`; fixed values are not part of the result."""
        return {param.name: param.suggest(trial) for param in self.params}

    def values(self, sampled: Mapping[str, Value]) -> dict[str, Value]:
        """The sampled values plus the fixed ones that apply to them."""
        fixed = {f.name: f.value for f in self.fixed if f.applies(sampled)}
        return {**sampled, **fixed}

    def flags(self, sampled: Mapping[str, Value]) -> list[str]:
        """Trainer flags for a sampled point, fixed values included."""
        flags: list[str] = []
        for name, value in self.values(sampled).items():
            if isinstance(value, bool):
                flags += [f"--{_flag(name)}"] if value else []
            else:
                flags += [f"--{_flag(name)}", _format(value)]
        return flags

    def grid(self) -> dict[str, list[Value]]:
        """The grid sampler's search space: each parameter's grid points."""
        return {param.name: list(param.grid_points()) for param in self.params}

    def describe(self) -> dict[str, object]:
        """A JSON-ready description, stored with a study to notice a changed space."""
        return {
            "name": self.name,
            "params": [_describe(param) for param in self.params],
            "fixed": [
                {"name": f.name, "value": f.value, "when": dict(f.when)} for f in self.fixed
            ],
        }


def cnn_space() -> SearchSpace:
    """The built-in space for the MNIST CNN.

    The schedule is left out on purpose: pruners compare trials epoch by epoch, and a
    one-cycle trial, still warming up at epoch 1, would lose to a constant-lr one there and
    be pruned before it overtakes it. Fix the schedule for the whole study instead
    (`tune ... -- --schedule onecycle`).
    """
    return SearchSpace(
        name="cnn",
        params=(
            FloatParam("lr", 1e-4, 3e-2, log=True, grid=(1e-3, 3e-3, 1e-2)),
            # Batches under 64 cost a CPU trial half again as long for little gain.
            CategoricalParam("batch_size", (64, 128, 256)),
            CategoricalParam("optimizer", ("sgd", "adam", "adamw")),
            FloatParam("weight_decay", 1e-6, 1e-2, log=True, grid=(1e-6, 1e-5, 1e-4)),
            FloatParam("dropout", 0.0, 0.6, grid=(0.0, 0.25, 0.5)),
        ),
        fixed=(FixedParam("momentum", 0.9, when=(("optimizer", "sgd"),)),),
    )


def resnet_space() -> SearchSpace:
    """The built-in space for the ResNets: SGD with Nesterov momentum, as they are trained.

    The cosine schedule gets one epoch of warm-up (one-cycle warms up by itself), so a
    ResNet study needs --epochs 2 or more.
    """
    return SearchSpace(
        name="resnet",
        params=(
            FloatParam("lr", 1e-3, 0.4, log=True, grid=(0.01, 0.05, 0.1)),
            CategoricalParam("batch_size", (64, 128, 256)),
            FloatParam("momentum", 0.8, 0.98, grid=(0.85, 0.9, 0.95)),
            FloatParam("weight_decay", 1e-5, 1e-3, log=True, grid=(5e-5, 1e-4, 5e-4)),
            CategoricalParam("schedule", ("cosine", "onecycle")),
            FloatParam("label_smoothing", 0.0, 0.2, grid=(0.0, 0.1)),
        ),
        fixed=(
            FixedParam("optimizer", "sgd"),
            FixedParam("nesterov", True),
            FixedParam("no_decay_norm_bias", True),
            FixedParam("warmup_epochs", 1, when=(("schedule", "cosine"),)),
        ),
    )


BUILTIN_SPACES: dict[str, Callable[[], SearchSpace]] = {
    "cnn": cnn_space,
    "resnet18": resnet_space,
    "resnet34": resnet_space,
    "resnet50": resnet_space,
}


def builtin_space(model: str) -> SearchSpace:
    """The built-in space for `model`."""
    factory = BUILTIN_SPACES.get(model)
    if factory is None:
        raise SpaceError(
            f"there is no built-in search space for --model {model} "
            f"(built in: {', '.join(sorted(BUILTIN_SPACES))}); pass one with --space FILE"
        )
    return factory()


def load_space(path: Path) -> SearchSpace:
    """Reads a search space from a TOML file (the module docstring shows the layout)."""
    try:
        document = tomllib.loads(path.read_text())
    except OSError as err:
        raise SpaceError(f"cannot read the search space {path}: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise SpaceError(f"{path} is not valid TOML: {err}") from err

    unknown = set(document) - {"params", "fixed"}
    if unknown:
        raise SpaceError(f"{path}: unknown tables {sorted(unknown)}; expected params, fixed")
    try:
        params = tuple(
            _param_from_toml(name, table)
            for name, table in _tables(document.get("params", {}), "params")
        )
        fixed = tuple(
            _fixed_from_toml(name, table)
            for name, table in _tables(document.get("fixed", {}), "fixed")
        )
        if not params:
            raise SpaceError("the [params] table samples nothing")
        return SearchSpace(name=path.stem, params=params, fixed=fixed)
    except SpaceError as err:
        raise SpaceError(f"{path}: {err}") from err


def _tables(section: object, where: str) -> list[tuple[str, Mapping[str, object]]]:
    if not isinstance(section, dict):
        raise SpaceError(f"[{where}] must be a table of tables")
    tables: list[tuple[str, Mapping[str, object]]] = []
    for name, table in section.items():
        if not isinstance(table, dict):
            raise SpaceError(f"[{where}.{name}] must be a table, but got {table!r}")
        tables.append((name, table))
    return tables


def _param_from_toml(name: str, table: Mapping[str, object]) -> Param:
    kind = table.get("type")
    allowed = {"type", "low", "high", "log", "grid"}
    if kind == "float":
        _no_extra_keys(name, table, allowed)
        return FloatParam(
            name,
            _number(name, table, "low"),
            _number(name, table, "high"),
            log=_flag_value(name, table, "log"),
            grid=tuple(float(v) for v in _list(name, table, "grid", (int, float))),
        )
    if kind == "int":
        _no_extra_keys(name, table, allowed)
        return IntParam(
            name,
            _integer(name, table, "low"),
            _integer(name, table, "high"),
            log=_flag_value(name, table, "log"),
            grid=tuple(int(v) for v in _list(name, table, "grid", (int,))),
        )
    if kind == "categorical":
        _no_extra_keys(name, table, {"type", "choices"})
        choices = _list(name, table, "choices", (bool, int, float, str))
        return CategoricalParam(name, tuple(choices))
    raise SpaceError(
        f"[params.{name}] type must be one of 'float', 'int', 'categorical', but got {kind!r}"
    )


def _fixed_from_toml(name: str, table: Mapping[str, object]) -> FixedParam:
    _no_extra_keys(name, table, {"value", "when"})
    value = table.get("value")
    if not isinstance(value, (bool, int, float, str)):
        raise SpaceError(f"[fixed.{name}] value must be a number, string or boolean")
    when = table.get("when", {})
    if not isinstance(when, dict) or not all(
        isinstance(v, (bool, int, float, str)) for v in when.values()
    ):
        raise SpaceError(f"[fixed.{name}] when must be a table of parameter = value")
    return FixedParam(name, value, when=tuple(sorted(when.items())))


def _no_extra_keys(name: str, table: Mapping[str, object], allowed: set[str]) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise SpaceError(f"[params.{name}] has unknown keys {extra}; allowed: {sorted(allowed)}")


def _number(name: str, table: Mapping[str, object], key: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"[params.{name}] {key} must be a number, but got {value!r}")
    return float(value)


def _integer(name: str, table: Mapping[str, object], key: str) -> int:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpaceError(f"[params.{name}] {key} must be an integer, but got {value!r}")
    return value


def _flag_value(name: str, table: Mapping[str, object], key: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise SpaceError(f"[params.{name}] {key} must be true or false, but got {value!r}")
    return value


def _list(
    name: str, table: Mapping[str, object], key: str, types: tuple[type, ...]
) -> Sequence[Value]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, types) for v in value):
        kinds = " or ".join(t.__name__ for t in types)
        raise SpaceError(f"[params.{name}] {key} must be a list of {kinds}, but got {value!r}")
    if bool not in types and any(isinstance(v, bool) for v in value):
        raise SpaceError(f"[params.{name}] {key} may not hold booleans, but got {value!r}")
    return value


def _check_range(name: str, low: float, high: float, log: bool, grid: Sequence[float]) -> None:
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise SpaceError(f"{name!r} needs finite low <= high, but got low={low}, high={high}")
    if log and low <= 0:
        raise SpaceError(f"{name!r} is on a log scale, so low must be > 0, but got low={low}")
    outside = [point for point in grid if not low <= point <= high]
    if outside:
        raise SpaceError(f"{name!r} grid points must lie in [{low}, {high}], but got {outside}")


def _describe(param: Param) -> dict[str, object]:
    if isinstance(param, CategoricalParam):
        return {"name": param.name, "type": "categorical", "choices": list(param.choices)}
    kind = "float" if isinstance(param, FloatParam) else "int"
    return {
        "name": param.name,
        "type": kind,
        "low": param.low,
        "high": param.high,
        "log": param.log,
        "grid": list(param.grid),
    }


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _format(value: Value) -> str:
    # repr() of a float is the shortest text that reads back as the same float.
    return repr(value) if isinstance(value, float) else str(value)
