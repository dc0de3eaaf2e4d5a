"""Samplers and pruners by name: plain dicts from a lowercase name to a factory.

The CLI takes its `--sampler` and `--pruner` choices from these dicts and its help from
each factory's docstring, so a new entry here is all it takes to offer one more. Each
factory builds its Optuna class through `_construct`, which lays `--sampler-args` or
`--pruner-args` (a JSON object of keyword arguments) over the defaults chosen here and
refuses a keyword the class does not take, listing the ones it does.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial

from orchestrator.errors import ArgumentsError
from orchestrator.space import FloatParam, SearchSpace

# A local copy of OptunaHub's registry (its `package` folder) to load `auto` from, for
# machines without network access to GitHub.
OPTUNAHUB_REGISTRY_ENV = "ORCHESTRATE_OPTUNAHUB_REGISTRY"
AUTO_SAMPLER_PACKAGE = "samplers/auto_sampler"


@dataclass(frozen=True)
class SamplerSettings:
    seed: int | None
    space: SearchSpace
    # Trials drawn at random before a model-based sampler (TPE, GP) starts modelling.
    startup_trials: int = 10
    # Keyword arguments from --sampler-args, over the defaults chosen here.
    args: Mapping[str, object] = field(default_factory=dict)
    # More than one objective (--objectives): the samplers that model a Pareto front learn
    # that a diverged trial is infeasible.
    multi_objective: bool = False


@dataclass(frozen=True)
class PrunerSettings:
    epochs: int
    startup_trials: int = 5
    warmup_epochs: int = 0
    # Keyword arguments from --pruner-args, over the defaults chosen here.
    args: Mapping[str, object] = field(default_factory=dict)


SamplerFactory = Callable[[SamplerSettings], optuna.samplers.BaseSampler]
PrunerFactory = Callable[[PrunerSettings], optuna.pruners.BasePruner]
_Built = TypeVar("_Built")


def parse_args_json(text: str | None, option: str) -> dict[str, object]:
    """The keyword arguments of `--sampler-args` or `--pruner-args`: a JSON object."""
    if text is None:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArgumentsError(
            f"{option} {text!r} is not valid JSON ({err}); give an object of keyword "
            f"""arguments, like {option} '{{"n_startup_trials": 20}}'"""
        ) from None
    if not isinstance(parsed, dict):
        raise ArgumentsError(
            f"{option} must be a JSON object of keyword arguments, but got {text!r}; "
            f"""e.g. {option} '{{"n_startup_trials": 20}}'"""
        )
    return parsed


def diverged_constraint(trial: FrozenTrial) -> tuple[float]:
    """A constraint a diverged trial violates, so samplers that honour constraints rank it
    below every trial that trained (multi-objective studies cannot prune it)."""
    return (1.0 if trial.user_attrs.get("fail_reason") == "diverged" else 0.0,)


def _construct(
    cls: Callable[..., _Built],
    option: str,
    args: Mapping[str, object],
    reserved: Mapping[str, str] | None = None,
    **defaults: Any,
) -> _Built:
    """`cls(**defaults, **args)`, naming a keyword `cls` does not take, and the ones it does."""
    name = getattr(cls, "__name__", str(cls))
    parameters = inspect.signature(cls).parameters
    accepted = [
        key
        for key, parameter in parameters.items()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and key not in (reserved or {})
    ]
    for key in args:
        if reserved and key in reserved:
            raise ArgumentsError(f"{option}: {key!r} is set by orchestrate; {reserved[key]}")
        if key not in accepted:
            raise ArgumentsError(
                f"{option}: {name} takes no keyword {key!r}; it accepts: {', '.join(accepted)}"
            )
    try:
        with warnings.catch_warnings():
            # Optuna marks several of these experimental; the warning would only be noise.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # NOTE: Optuna 5 deprecates constraints_func for Trial.set_constraint (removal in
            # 7); it stays while pyproject accepts Optuna 4, which has no set_constraint.
            warnings.filterwarnings("ignore", "`constraints_func` has been deprecated")
            return cls(**{**defaults, **args})
    except (TypeError, ValueError) as err:
        raise ArgumentsError(
            f"{option} {json.dumps(dict(args))}: {name} refused them: {err}"
        ) from None


_SEED = {"seed": "use --seed, which also seeds every trial"}


def tpe_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Tree-structured Parzen estimator; random for the first --sampler-startup-trials."""
    # constant_liar: trials running elsewhere count as bad guesses, so parallel workers
    # spread out instead of proposing the same point.
    extra = {"constraints_func": diverged_constraint} if settings.multi_objective else {}
    return _construct(
        optuna.samplers.TPESampler,
        "--sampler-args",
        settings.args,
        _SEED,
        seed=settings.seed,
        n_startup_trials=settings.startup_trials,
        constant_liar=True,
        **extra,
    )


def random_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Independent uniform (or log-uniform) draws."""
    return _construct(
        optuna.samplers.RandomSampler, "--sampler-args", settings.args, _SEED, seed=settings.seed
    )


def grid_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Every combination of the space's grid points, in random order; stops when done."""
    # `tune` queues the points when it creates the study and each worker takes the next
    # one, so no point runs twice; this sampler only backs that queue.
    return _construct(
        optuna.samplers.GridSampler,
        "--sampler-args",
        settings.args,
        {**_SEED, "search_space": "give grid points in the space file"},
        search_space=settings.space.grid(),
        seed=settings.seed,
    )


def bruteforce_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Every combination of int and categorical values, conditional ones included, once."""
    continuous = [p.name for p in settings.space.params if isinstance(p, FloatParam)]
    if continuous:
        raise ArgumentsError(
            f"--sampler bruteforce enumerates every value, but {continuous} "
            f"{'is a continuous float' if len(continuous) == 1 else 'are continuous floats'}; "
            'make them type = "categorical" or "int" in the space file, or use --sampler grid '
            "with grid points"
        )
    return _construct(
        optuna.samplers.BruteForceSampler,
        "--sampler-args",
        settings.args,
        _SEED,
        seed=settings.seed,
    )


def cmaes_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """CMA-ES on the numeric parameters; categorical ones are drawn at random."""
    if settings.multi_objective:
        raise ArgumentsError(
            "--sampler cmaes optimises one objective only; with several --objectives use "
            "nsga2 (the default then), tpe, gp, random, qmc or auto"
        )
    return _construct(
        optuna.samplers.CmaEsSampler,
        "--sampler-args",
        settings.args,
        _SEED,
        seed=settings.seed,
        warn_independent_sampling=False,
    )


def qmc_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Scrambled Sobol quasi-random points: even coverage without a model."""
    return _construct(
        optuna.samplers.QMCSampler,
        "--sampler-args",
        settings.args,
        _SEED,
        seed=settings.seed,
        scramble=True,
        warn_independent_sampling=False,
    )


def gp_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Gaussian-process Bayesian optimisation; random for the first --sampler-startup-trials."""
    extra = {"constraints_func": diverged_constraint} if settings.multi_objective else {}
    return _construct(
        optuna.samplers.GPSampler,
        "--sampler-args",
        settings.args,
        _SEED,
        seed=settings.seed,
        n_startup_trials=settings.startup_trials,
        warn_independent_sampling=False,
        **extra,
    )


def nsga2_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """NSGA-II genetic algorithm, in generations of 16 trials; the default with --objectives."""
    extra = {"constraints_func": diverged_constraint} if settings.multi_objective else {}
    return _construct(
        optuna.samplers.NSGAIISampler,
        "--sampler-args",
        settings.args,
        _SEED,
        seed=settings.seed,
        population_size=16,
        **extra,
    )


def auto_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """OptunaHub's AutoSampler, which picks a sampler for the space (needs optunahub)."""
    module = load_auto_sampler_module()
    sampler: optuna.samplers.BaseSampler = _construct(
        module.AutoSampler, "--sampler-args", settings.args, _SEED, seed=settings.seed
    )
    return sampler


def load_auto_sampler_module() -> ModuleType:
    """OptunaHub's `samplers/auto_sampler`: from the local registry in
    $ORCHESTRATE_OPTUNAHUB_REGISTRY, else from optunahub's cache, else from GitHub."""
    try:
        import optunahub
    except ImportError:
        raise ArgumentsError(
            "--sampler auto needs the optunahub package, which is not installed; install it "
            "with `pip install optunahub` (or `pip install '.[hub]'`), or choose another "
            "--sampler"
        ) from None

    local = os.environ.get(OPTUNAHUB_REGISTRY_ENV)
    try:
        if local:
            loaded: ModuleType = optunahub.load_local_module(
                AUTO_SAMPLER_PACKAGE, registry_root=local
            )
        else:
            loaded = optunahub.load_module(AUTO_SAMPLER_PACKAGE)
    except Exception as err:
        # git, HTTP and import failures all land here; each says why in its message.
        where = (
            f"the local registry {OPTUNAHUB_REGISTRY_ENV}={local}"
            if local
            else "GitHub (github.com/optuna/optunahub-registry)"
        )
        # git's own message (no network: "Could not resolve host") is on the last line.
        lines = [ln.removeprefix("stderr:").strip(" '") for ln in str(err).splitlines()]
        lines = [ln for ln in lines if ln]
        first_line = lines[-1] if lines else type(err).__name__
        raise ArgumentsError(
            f"--sampler auto could not load OptunaHub's {AUTO_SAMPLER_PACKAGE} from {where}: "
            f"{first_line}. Fetching it needs network access once (optunahub caches it); "
            f"without network, point {OPTUNAHUB_REGISTRY_ENV} at the `package` folder of a "
            "copy of optunahub-registry, or choose another --sampler"
        ) from None
    if not hasattr(loaded, "AutoSampler"):
        raise ArgumentsError(f"OptunaHub's {AUTO_SAMPLER_PACKAGE} has no AutoSampler")
    return loaded


SAMPLERS: dict[str, SamplerFactory] = {
    "tpe": tpe_sampler,
    "random": random_sampler,
    "grid": grid_sampler,
    "bruteforce": bruteforce_sampler,
    "cmaes": cmaes_sampler,
    "qmc": qmc_sampler,
    "gp": gp_sampler,
    "nsga2": nsga2_sampler,
    "auto": auto_sampler,
}


def median_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Stops a trial worse than the median of earlier trials at the same epoch."""
    return _construct(
        optuna.pruners.MedianPruner,
        "--pruner-args",
        settings.args,
        n_startup_trials=settings.startup_trials,
        n_warmup_steps=settings.warmup_epochs,
    )


def percentile_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Stops a trial outside the best 25% of earlier trials at the same epoch."""
    return _construct(
        optuna.pruners.PercentilePruner,
        "--pruner-args",
        settings.args,
        percentile=25.0,
        n_startup_trials=settings.startup_trials,
        n_warmup_steps=settings.warmup_epochs,
    )


def successive_halving_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Asynchronous successive halving: the best third goes on at epochs 1, 3, 9 and so on."""
    return _construct(
        optuna.pruners.SuccessiveHalvingPruner,
        "--pruner-args",
        settings.args,
        min_resource=1,
        reduction_factor=3,
    )


def hyperband_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Hyperband: successive halving in several brackets, up to --epochs."""
    return _construct(
        optuna.pruners.HyperbandPruner,
        "--pruner-args",
        settings.args,
        min_resource=1,
        max_resource=settings.epochs,
        reduction_factor=3,
    )


def threshold_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Stops a trial whose val_loss is above --pruner-args' upper bound after an epoch."""
    if "upper" not in settings.args and "lower" not in settings.args:
        raise ArgumentsError(
            "--pruner threshold needs a bound: --pruner-args '{\"upper\": 1.0}' stops a trial "
            "whose val_loss is above 1.0 after any epoch (past --pruner-warmup-epochs)"
        )
    return _construct(
        optuna.pruners.ThresholdPruner,
        "--pruner-args",
        settings.args,
        n_warmup_steps=settings.warmup_epochs,
    )


def patient_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """The median pruner, but only once val_loss has not improved for `patience` epochs
    (--pruner-args '{"patience": 2}', default 1)."""
    wrapped = median_pruner(_without_args(settings))
    return _construct(
        optuna.pruners.PatientPruner,
        "--pruner-args",
        settings.args,
        {"wrapped_pruner": "it wraps the median pruner (--pruner-startup-trials, ...)"},
        wrapped_pruner=wrapped,
        patience=1,
    )


def wilcoxon_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Wilcoxon signed-rank test of a trial's val_loss per epoch against the best trial's
    (needs several epochs: with 4 or fewer it cannot reach p < 0.1)."""
    return _construct(optuna.pruners.WilcoxonPruner, "--pruner-args", settings.args)


def none_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Never prunes: every trial trains all its epochs."""
    return _construct(optuna.pruners.NopPruner, "--pruner-args", settings.args)


def _without_args(settings: PrunerSettings) -> PrunerSettings:
    """The settings without their --pruner-args, which belong to the wrapping pruner."""
    return PrunerSettings(settings.epochs, settings.startup_trials, settings.warmup_epochs)


PRUNERS: dict[str, PrunerFactory] = {
    "median": median_pruner,
    "percentile": percentile_pruner,
    "successive-halving": successive_halving_pruner,
    "hyperband": hyperband_pruner,
    "threshold": threshold_pruner,
    "patient": patient_pruner,
    "wilcoxon": wilcoxon_pruner,
    "none": none_pruner,
}


def describe(registry: dict[str, SamplerFactory] | dict[str, PrunerFactory]) -> str:
    """One line per entry, `name: first sentence of its docstring`, for the CLI's help."""
    return "; ".join(
        f"{name}: {' '.join((factory.__doc__ or '').split()).split('. ')[0].removesuffix('.')}"
        for name, factory in registry.items()
    )
