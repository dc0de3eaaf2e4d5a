"""Search spaces: what a trial samples, and how sampled values become trainer flags.

A space is a tuple of parameters (float, int or categorical) plus fixed values. A
parameter or a fixed value may carry a condition on other sampled values (`when`): it is
sampled, or passed, only when every named parameter was sampled with the given value
(momentum only for SGD). Parents are sampled before the parameters that depend on them.
Every float and int parameter may carry a few grid points, used only by the grid sampler,
which needs a finite set; the grid holds only the combinations whose conditions hold.
Spaces come built in per model (the TOML files in `orchestrator/spaces/`, printed by
`orchestrate space show MODEL`), or from a TOML file:

    [params.lr]
    type = "float"
    low = 1e-4
    high = 3e-2
    log = true
    grid = [1e-3, 3e-3, 1e-2]

    [params.optimizer]
    type = "categorical"
    choices = ["sgd", "adam"]

    [params.momentum]
    type = "float"
    low = 0.8
    high = 0.99
    when = { optimizer = "sgd" }

    [fixed.nesterov]
    value = true
    when = { optimizer = "sgd" }

A parameter named `batch_size` becomes the flag `--batch-size`; a boolean becomes a bare
flag when true and is left out when false.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
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


Condition: TypeAlias = tuple[tuple[str, Value], ...]


@dataclass(frozen=True)
class FloatParam:
    name: str
    low: float
    high: float
    log: bool = False
    grid: tuple[float, ...] = ()
    # Sampled only when each named parameter was sampled with the given value.
    when: Condition = ()

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

    def check(self, value: object) -> str | None:
        """Why `value` is not a point of this parameter, or None when it is."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number in [{self.low:g}, {self.high:g}]"
        return (
            None
            if self.low <= value <= self.high
            else f"must lie in [{self.low:g}, {self.high:g}]"
        )


@dataclass(frozen=True)
class IntParam:
    name: str
    low: int
    high: int
    log: bool = False
    grid: tuple[int, ...] = ()
    when: Condition = ()

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

    def check(self, value: object) -> str | None:
        """Why `value` is not a point of this parameter, or None when it is."""
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer in [{self.low}, {self.high}]"
        return None if self.low <= value <= self.high else f"must lie in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class CategoricalParam:
    name: str
    choices: tuple[Value, ...]
    when: Condition = ()

    def __post_init__(self) -> None:
        if not self.choices:
            raise SpaceError(f"{self.name!r} needs at least one choice, but got none")
        if len(set(self.choices)) != len(self.choices):
            raise SpaceError(f"{self.name!r} lists a choice twice: {list(self.choices)}")

    def suggest(self, trial: optuna.Trial) -> Value:
        return cast(Value, trial.suggest_categorical(self.name, self.choices))

    def grid_points(self) -> tuple[Value, ...]:
        return self.choices

    def check(self, value: object) -> str | None:
        """Why `value` is not a point of this parameter, or None when it is."""
        # `True == 1` in Python: a choice matches only a value of its own type.
        if any(same_value(value, choice) for choice in self.choices):
            return None
        return f"must be one of {list(self.choices)}"


Param: TypeAlias = FloatParam | IntParam | CategoricalParam


@dataclass(frozen=True)
class FixedParam:
    """A value passed to every trial whose sampled values match all of `when`."""

    name: str
    value: Value
    when: Condition = ()

    def applies(self, sampled: Mapping[str, Value]) -> bool:
        return _holds(self.when, sampled)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    params: tuple[Param, ...]
    fixed: tuple[FixedParam, ...] = ()
    # The parameters in sampling order, computed once so that a cycle is found at once.
    _order: tuple[Param, ...] = field(init=False, repr=False, compare=False)

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
            if name == "flags_from_stdin":
                raise SpaceError(
                    f"{name!r} is how tune itself hands a trial its flags, "
                    "so a search space may not sample or fix it"
                )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SpaceError(f"{self.name}: each parameter may appear once, but got {duplicates}")

        by_name = {p.name: p for p in self.params}
        for entry in (*self.params, *self.fixed):
            unknown = [key for key, _ in entry.when if key not in by_name]
            if unknown:
                raise SpaceError(
                    f"{entry.name!r} depends on {unknown}, which the space does not sample "
                    f"(it samples {sorted(by_name)})"
                )
            for key, value in entry.when:
                problem = by_name[key].check(value)
                if problem is not None:
                    raise SpaceError(
                        f"{entry.name!r} depends on {key} = {value!r}, which {key} never takes: "
                        f"it {problem}"
                    )
        object.__setattr__(self, "_order", _dependency_order(self.params))

    @property
    def order(self) -> tuple[Param, ...]:
        """The parameters in sampling order: each after the ones its condition names, and
        otherwise in the order they are declared."""
        return self._order

    def sample(self, trial: optuna.Trial) -> dict[str, Value]:
        """Samples every parameter whose condition holds for `trial`; fixed values are not
        part of the result."""
        sampled: dict[str, Value] = {}
        for param in self.order:
            if _holds(param.when, sampled):
                sampled[param.name] = param.suggest(trial)
        return sampled

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

    def grid_combinations(self) -> list[dict[str, Value]]:
        """Every point of the grid whose conditions hold: a conditional parameter varies only
        where its condition holds and is left out elsewhere, so no point runs twice."""
        points: list[dict[str, Value]] = [{}]
        for param in self.order:
            values = param.grid_points()
            points = [
                {**point, param.name: value} if _holds(param.when, point) else point
                for point in points
                for value in (values if _holds(param.when, point) else values[:1])
            ]
        return points

    def check_point(self, point: Mapping[str, object]) -> None:
        """Raises SpaceError unless `point` (a partial set of sampled values, as given to
        `--enqueue`) names only parameters of the space, with values they can take, and
        only where their conditions hold."""
        by_name = {p.name: p for p in self.params}
        unknown = sorted(set(point) - set(by_name))
        if unknown:
            raise SpaceError(
                f"{unknown} {'is' if len(unknown) == 1 else 'are'} not sampled by the space "
                f"{self.name!r} (it samples {sorted(by_name)})"
            )
        for name, value in point.items():
            param = by_name[name]
            problem = param.check(value)
            if problem is not None:
                raise SpaceError(f"{name} = {value!r}: it {problem}")
            for key, wanted in param.when:
                if key not in point:
                    # The sampler would draw the parent, and the value could be dropped.
                    raise SpaceError(
                        f"{name} is sampled only when {key} = {wanted!r}; give {key} too, "
                        f"e.g. {{{key!r}: {wanted!r}, {name!r}: {value!r}}}"
                    )
                if not same_value(point[key], wanted):
                    raise SpaceError(
                        f"{name} is sampled only when {key} = {wanted!r}, "
                        f"but {key} = {point[key]!r} here"
                    )

    def describe(self) -> dict[str, object]:
        """A JSON-ready description, stored with a study to notice a changed space."""
        return {
            "name": self.name,
            "params": [_describe(param) for param in self.params],
            "fixed": [
                {"name": f.name, "value": f.value, "when": dict(f.when)} for f in self.fixed
            ],
        }


def _holds(when: Condition, sampled: Mapping[str, Value]) -> bool:
    # A parent that was not sampled (its own condition failed) fails the condition too.
    return all(key in sampled and same_value(sampled[key], value) for key, value in when)


def same_value(a: object, b: object) -> bool:
    """Equal and of one kind: `True == 1` in Python, but not as a sampled value."""
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return a == b


def _dependency_order(params: Sequence[Param]) -> tuple[Param, ...]:
    """The parameters with each after its parents, otherwise in declaration order; a cycle
    is a SpaceError naming the parameters in it."""
    placed: dict[str, Param] = {}
    waiting = list(params)
    while waiting:
        ready = next(
            (p for p in waiting if all(key in placed for key, _ in p.when)),
            None,
        )
        if ready is None:
            cycle = sorted(p.name for p in waiting)
            raise SpaceError(
                f"the conditions (`when`) of {cycle} depend on each other in a cycle, so no "
                "order samples their parents first; remove one of the conditions"
            )
        placed[ready.name] = ready
        waiting.remove(ready)
    return tuple(placed.values())


# Each built-in space is a TOML file in orchestrator/spaces/, shipped with the package.
_BUILTIN_FILES = {"cnn": "cnn", "resnet18": "resnet", "resnet34": "resnet", "resnet50": "resnet"}


def builtin_text(name: str) -> str:
    """The TOML text of a built-in space, by model (`resnet18`) or file name (`resnet`)."""
    stem = _BUILTIN_FILES.get(name, name)
    if stem not in set(_BUILTIN_FILES.values()):
        known = sorted({*_BUILTIN_FILES, *_BUILTIN_FILES.values()})
        raise SpaceError(
            f"there is no built-in search space {name!r} (built in: {', '.join(known)}); "
            "`orchestrate space list` shows them, or pass your own with --space FILE"
        )
    return (resources.files("orchestrator") / "spaces" / f"{stem}.toml").read_text()


def builtin_names() -> dict[str, list[str]]:
    """Each built-in space's name with the models that use it by default."""
    names: dict[str, list[str]] = {}
    for model, stem in _BUILTIN_FILES.items():
        names.setdefault(stem, []).append(model)
    return names


def cnn_space() -> SearchSpace:
    """The built-in space for the MNIST CNN (orchestrator/spaces/cnn.toml)."""
    return parse_space(builtin_text("cnn"), name="cnn", source="built-in space cnn")


def resnet_space() -> SearchSpace:
    """The built-in space for the ResNets (orchestrator/spaces/resnet.toml)."""
    return parse_space(builtin_text("resnet"), name="resnet", source="built-in space resnet")


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
        text = path.read_text()
    except OSError as err:
        raise SpaceError(f"cannot read the search space {path}: {err.strerror}") from err
    return parse_space(text, name=path.stem, source=str(path))


def parse_space(text: str, *, name: str, source: str) -> SearchSpace:
    """A search space from TOML text; `source` names it in messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpaceError(f"{source} is not valid TOML: {err}") from err

    unknown = set(document) - {"params", "fixed"}
    if unknown:
        raise SpaceError(f"{source}: unknown tables {sorted(unknown)}; expected params, fixed")
    try:
        params = tuple(
            _param_from_toml(key, table)
            for key, table in _tables(document.get("params", {}), "params")
        )
        fixed = tuple(
            _fixed_from_toml(key, table)
            for key, table in _tables(document.get("fixed", {}), "fixed")
        )
        if not params:
            raise SpaceError("the [params] table samples nothing")
        return SearchSpace(name=name, params=params, fixed=fixed)
    except SpaceError as err:
        raise SpaceError(f"{source}: {err}") from err


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
    allowed = {"type", "low", "high", "log", "grid", "when"}
    when = _when(f"params.{name}", table)
    if kind == "float":
        _no_extra_keys(name, table, allowed)
        return FloatParam(
            name,
            _number(name, table, "low"),
            _number(name, table, "high"),
            log=_flag_value(name, table, "log"),
            grid=tuple(float(v) for v in _list(name, table, "grid", (int, float))),
            when=when,
        )
    if kind == "int":
        _no_extra_keys(name, table, allowed)
        return IntParam(
            name,
            _integer(name, table, "low"),
            _integer(name, table, "high"),
            log=_flag_value(name, table, "log"),
            grid=tuple(int(v) for v in _list(name, table, "grid", (int,))),
            when=when,
        )
    if kind == "categorical":
        _no_extra_keys(name, table, {"type", "choices", "when"})
        choices = _list(name, table, "choices", (bool, int, float, str))
        return CategoricalParam(name, tuple(choices), when=when)
    raise SpaceError(
        f"[params.{name}] type must be one of 'float', 'int', 'categorical', but got {kind!r}"
    )


def _fixed_from_toml(name: str, table: Mapping[str, object]) -> FixedParam:
    _no_extra_keys(name, table, {"value", "when"})
    value = table.get("value")
    if not isinstance(value, (bool, int, float, str)):
        raise SpaceError(f"[fixed.{name}] value must be a number, string or boolean")
    return FixedParam(name, value, when=_when(f"fixed.{name}", table))


def _when(where: str, table: Mapping[str, object]) -> Condition:
    when = table.get("when", {})
    if not isinstance(when, dict) or not all(
        isinstance(v, (bool, int, float, str)) for v in when.values()
    ):
        raise SpaceError(
            f"[{where}] when must be a table of parameter = value, "
            f'like when = {{ optimizer = "sgd" }}, but got {when!r}'
        )
    return tuple(sorted(when.items()))


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
    described: dict[str, object]
    if isinstance(param, CategoricalParam):
        described = {"name": param.name, "type": "categorical", "choices": list(param.choices)}
    else:
        described = {
            "name": param.name,
            "type": "float" if isinstance(param, FloatParam) else "int",
            "low": param.low,
            "high": param.high,
            "log": param.log,
            "grid": list(param.grid),
        }
    # Only when there is one, so that studies made before conditions existed still match.
    if param.when:
        described["when"] = dict(param.when)
    return described


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _format(value: Value) -> str:
    # repr() of a float is the shortest text that reads back as the same float.
    return repr(value) if isinstance(value, float) else str(value)
