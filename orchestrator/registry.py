"""Samplers and pruners by name: plain dicts from a lowercase name to a factory.

The CLI takes its `--sampler` and `--pruner` choices from these dicts and its help from
each factory's docstring, so a new entry here is all it takes to offer one more.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from orchestrator.space import SearchSpace


@dataclass(frozen=True)
class SamplerSettings:
    seed: int | None
    space: SearchSpace
    # Trials drawn at random before a model-based sampler (TPE, GP) starts modelling.
    startup_trials: int = 10


@dataclass(frozen=True)
class PrunerSettings:
    epochs: int
    startup_trials: int = 5
    warmup_epochs: int = 0


SamplerFactory = Callable[[SamplerSettings], optuna.samplers.BaseSampler]
PrunerFactory = Callable[[PrunerSettings], optuna.pruners.BasePruner]


def tpe_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Tree-structured Parzen estimator; random for the first --sampler-startup-trials."""
    # constant_liar: trials running elsewhere count as bad guesses, so parallel workers
    # spread out instead of proposing the same point.
    return optuna.samplers.TPESampler(
        seed=settings.seed, n_startup_trials=settings.startup_trials, constant_liar=True
    )


def random_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Independent uniform (or log-uniform) draws."""
    return optuna.samplers.RandomSampler(seed=settings.seed)


def grid_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Every combination of the space's grid points, in random order; stops when done."""
    # `tune` queues the points when it creates the study and each worker takes the next
    # one, so no point runs twice; this sampler only backs that queue.
    return optuna.samplers.GridSampler(settings.space.grid(), seed=settings.seed)


def cmaes_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """CMA-ES on the numeric parameters; categorical ones are drawn at random."""
    return optuna.samplers.CmaEsSampler(seed=settings.seed, warn_independent_sampling=False)


def qmc_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Scrambled Sobol quasi-random points: even coverage without a model."""
    with warnings.catch_warnings():
        # Marked experimental since Optuna 3.0; the warning would only be noise here.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(
            seed=settings.seed, scramble=True, warn_independent_sampling=False
        )


def gp_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """Gaussian-process Bayesian optimisation; random for the first --sampler-startup-trials."""
    return optuna.samplers.GPSampler(
        seed=settings.seed,
        n_startup_trials=settings.startup_trials,
        warn_independent_sampling=False,
    )


def nsga2_sampler(settings: SamplerSettings) -> optuna.samplers.BaseSampler:
    """NSGA-II genetic algorithm, in generations of 16 trials."""
    return optuna.samplers.NSGAIISampler(seed=settings.seed, population_size=16)


SAMPLERS: dict[str, SamplerFactory] = {
    "tpe": tpe_sampler,
    "random": random_sampler,
    "grid": grid_sampler,
    "cmaes": cmaes_sampler,
    "qmc": qmc_sampler,
    "gp": gp_sampler,
    "nsga2": nsga2_sampler,
}


def median_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Stops a trial worse than the median of earlier trials at the same epoch."""
    return optuna.pruners.MedianPruner(
        n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_epochs
    )


def percentile_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Stops a trial outside the best 25% of earlier trials at the same epoch."""
    return optuna.pruners.PercentilePruner(
        25.0, n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_epochs
    )


def successive_halving_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Asynchronous successive halving: the best third goes on at epochs 1, 3, 9 and so on."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


def hyperband_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Hyperband: successive halving in several brackets, up to --epochs."""
    return optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=settings.epochs, reduction_factor=3
    )


def none_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """Never prunes: every trial trains all its epochs."""
    return optuna.pruners.NopPruner()


PRUNERS: dict[str, PrunerFactory] = {
    "median": median_pruner,
    "percentile": percentile_pruner,
    "successive-halving": successive_halving_pruner,
    "hyperband": hyperband_pruner,
    "none": none_pruner,
}


def describe(registry: dict[str, SamplerFactory] | dict[str, PrunerFactory]) -> str:
    """One line per entry, `name: first line of its docstring`, for the CLI's help."""
    return "; ".join(
        f"{name}: {(factory.__doc__ or '').strip().splitlines()[0].removesuffix('.')}"
        for name, factory in registry.items()
    )
