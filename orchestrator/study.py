"""Tuning: the objective that runs one trainer process per trial, and `tune`.

A study remembers the settings its trials share (model, dataset, epochs, train limit,
validation fraction, seed, search space, grid or not) in its user attributes; a later
`tune` with the same study name resumes it and refuses settings that would make its trials
incomparable. `--trials N` is the total: finished trials count toward it (complete, pruned,
and failed with a reason of the trainer's), so a rerun runs only the missing ones. Trials
that ended for the orchestrator's sake (interrupted, a lost worker, a grid point another
worker took) do not count, and their parameters go back in the queue.

Several workers (threads with `--n-jobs`, processes, machines) may share a study: each
stops starting trials once the finished trials and those running anywhere reach the total.
A grid study puts every point in the study's queue when it is created; Optuna hands each
queued trial to exactly one worker, so no point runs twice.

A diverged trial is recorded PRUNED, not FAIL, with a penalty as its value at the epoch
where it diverged: twice the worse of ln(10) (the loss of a uniform guess over the ten
classes) and its last finite val_loss. Samplers ignore FAIL trials but rank PRUNED ones
below every completed trial, so the region where training diverges is learned as bad.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator import objectives as objectives_mod
from orchestrator import preflight, provenance
from orchestrator.enqueue import enqueue_once
from orchestrator.errors import ArgumentsError, Interrupted, StudyMismatch
from orchestrator.events import EpochEvent, StartEvent
from orchestrator.interrupt import Interrupter, SecondSignal
from orchestrator.parallel import (
    CUDA_VISIBLE_DEVICES,
    SlotPool,
    available_cores,
    visible_gpus,
)
from orchestrator.registry import PRUNERS, SAMPLERS, PrunerSettings, SamplerSettings
from orchestrator.runner import (
    FLAGS_FROM_STDIN,
    Failure,
    Prestarted,
    RunOutcome,
    TrainerProcess,
    command_line,
)
from orchestrator.space import SearchSpace, Value
from orchestrator.storage import (
    Heartbeat,
    fail_stale_trials,
    open_storage,
    set_trial_user_attrs,
)
from orchestrator.trainer import trainer_info

if TYPE_CHECKING:
    from orchestrator.progress import TuneWatcher

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
SETTINGS_ATTR = "settings"
_COMPARED = (
    "model",
    "dataset",
    "epochs",
    "train_limit",
    "val_fraction",
    "seed",
    "space",
    "extra",
    "grid",
    "objectives",
)
# Reasons for a FAIL that say nothing about the parameters: such trials do not count
# toward --trials (a trial without any reason lost its worker, and was queued again).
UNCOUNTED_REASONS = frozenset({"interrupted", "grid exhausted"})
BRUTEFORCE_DONE = "the bruteforce sampler has tried every combination"
# With several objectives, each trial's val_loss per epoch ({"1": 0.31, ...}).
CURVE_ATTR = "val_loss_by_epoch"
BRUTEFORCE_DONE_ATTR = "orchestrate:bruteforce-done"
# A diverged trial's value: at least twice the loss of a uniform guess over 10 classes.
DIVERGED_FLOOR = 2 * math.log(10)
# How long a worker waits for the worker that created a grid study to queue its points.
_GRID_WAIT_SECONDS = 30.0


def default_threads() -> int:
    """The CPU cores this process may run on."""
    return available_cores()


class TrialFailed(Exception):
    """The trial gave no usable result; the study records it as FAIL and goes on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class TrainerFlags:
    """The trainer flags every trial of a study shares."""

    model: str = "cnn"
    dataset: str = "mnist"
    epochs: int = 3
    train_limit: int | None = None
    val_fraction: float | None = None
    device: str = "auto"
    data_dir: Path | None = None
    threads: int = field(default_factory=available_cores)
    # Further trainer flags, the same for every trial (`tune ... -- --width 0.25`).
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, but got epochs={self.epochs}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, but got threads={self.threads}")
        if self.train_limit is not None and self.train_limit < 1:
            raise ValueError(f"train_limit must be positive, but got {self.train_limit}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), but got {self.val_fraction}")

    def flags(self) -> list[str]:
        flags = ["--model", self.model, "--dataset", self.dataset, "--epochs", str(self.epochs)]
        if self.train_limit is not None:
            flags += ["--train-limit", str(self.train_limit)]
        if self.val_fraction is not None:
            flags += ["--val-fraction", repr(self.val_fraction)]
        flags += ["--device", self.device]
        if self.data_dir is not None:
            # Absolute, so that the recorded command re-runs from any folder.
            flags += ["--data-dir", str(self.data_dir.absolute())]
        return [*flags, "--threads", str(self.threads), *self.extra]


@dataclass(frozen=True)
class TuneConfig:
    trainer: Path
    study_name: str
    storage: str
    trials: int
    space: SearchSpace
    flags: TrainerFlags = field(default_factory=TrainerFlags)
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None
    runs_dir: Path = Path("runs")
    trial_timeout: float | None = None
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0
    sampler_startup_trials: int = 10
    # The whole study: no trial starts after this many seconds.
    timeout: float | None = None
    # Trials at a time in this process, and how many of them may share one GPU.
    n_jobs: int = 1
    trials_per_gpu: int = 1
    # Seconds between a running trial's heartbeats (database storages); None turns them off.
    heartbeat: int | None = 30
    # Keyword arguments for the sampler's and the pruner's constructors.
    sampler_args: Mapping[str, object] = field(default_factory=dict)
    pruner_args: Mapping[str, object] = field(default_factory=dict)
    # Known points tried first, each queued once per study (`--enqueue`).
    enqueue: tuple[Mapping[str, Value], ...] = ()
    # What the study optimises (objectives.DIRECTIONS); several make a Pareto front.
    objectives: tuple[str, ...] = objectives_mod.DEFAULT
    # Start each trial's trainer process while the previous trial is being recorded and the
    # next one sampled (`rust-trainer train --flags-from-stdin`); not with a GPU pool. None:
    # when the trainer is a binary, not a script (a wrapper that may read its command line).
    prestart: bool | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be at least 1, but got trials={self.trials}")
        if self.n_jobs < 1:
            raise ValueError(f"n_jobs must be at least 1, but got n_jobs={self.n_jobs}")
        if self.trials_per_gpu < 1:
            raise ValueError(
                f"trials_per_gpu must be at least 1, but got trials_per_gpu={self.trials_per_gpu}"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be positive, but got timeout={self.timeout}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, but got {self.sampler}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {sorted(PRUNERS)}, but got {self.pruner}")
        unknown = [name for name in self.objectives if name not in objectives_mod.DIRECTIONS]
        if unknown or not self.objectives:
            raise ValueError(f"objectives must be some of {list(objectives_mod.DIRECTIONS)}")

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


@dataclass(frozen=True)
class TuneSummary:
    study_name: str
    storage: str
    seed: int
    finished_before: int
    ran: int
    states: dict[str, int]
    best: FrozenTrial | None
    stop_reason: str | None = None


class Objective:
    """One trial: sample a point, run the trainer on it, report each epoch, return val_loss."""

    def __init__(
        self,
        *,
        trainer: Path,
        flags: TrainerFlags,
        space: SearchSpace,
        seed: int,
        study_dir: Path,
        timeout: float | None = None,
        interrupter: Interrupter | None = None,
        gpus: SlotPool | None = None,
        grid: bool = False,
        beat: Callable[[int], None] | None = None,
        objectives: tuple[str, ...] = objectives_mod.DEFAULT,
        prestart: bool = False,
        spares: int = 1,
        trials: int | None = None,
    ) -> None:
        self.trainer = trainer
        self.flags = flags
        self.space = space
        self.seed = seed
        self.study_dir = study_dir
        self.timeout = timeout
        self.interrupter = interrupter or Interrupter()
        self.gpus = gpus
        self.grid = grid
        self.beat = beat
        self.objectives = objectives
        # With `prestart`, each finished trial starts the process of a trial to come (at
        # most `spares` wait at once); they run without a GPU slot's CUDA_VISIBLE_DEVICES.
        self._prestart = prestart and gpus is None
        self._max_spares = spares
        self._spares: list[Prestarted] = []
        self._spares_lock = threading.Lock()
        self._gave_up_prestart = False
        # How many trials this run may start (`trials`), and the numbers of those it has:
        # none is started ahead for a trial that cannot come.
        self._trials = trials
        self.begun: set[int] = set()

    def command(self, sampled: dict[str, Value]) -> list[str]:
        """The exact trainer command for a sampled point."""
        return [*self._shared_command(), "--seed", str(self.seed), *self.space.flags(sampled)]

    def _shared_command(self) -> list[str]:
        """The start of every trial's command: what a process started ahead is given."""
        return [str(self.trainer), "train", *self.flags.flags()]

    def close(self) -> None:
        """Ends the processes started for trials that will not come."""
        with self._spares_lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.discard()

    def _take_spare(self) -> Prestarted | None:
        with self._spares_lock:
            return self._spares.pop() if self._spares else None

    def _start_spare(self) -> None:
        if not self._prestart or self.interrupter.interrupted:
            return
        with self._spares_lock:
            limit = self._max_spares
            if self._trials is not None:
                limit = min(limit, self._trials - len(self.begun))
            if len(self._spares) >= limit:
                return
        try:
            spare = Prestarted(self._shared_command())
        except OSError as err:
            # The next trial starts its own process, and says what is wrong with it.
            logger.debug("could not start a trainer ahead: %s", err)
            return
        with self._spares_lock:
            self._spares.append(spare)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        with self._spares_lock:
            self.begun.add(trial.number)
        if self.interrupter.interrupted:
            _end_early(trial, "interrupted", "the study was stopped before this trial started")
        if self.grid and not _from_queue(trial):
            # The queue was empty when this worker asked: every point is taken.
            _end_early(trial, "grid exhausted", "another worker took the grid's last point")

        sampled = self.space.sample(trial)
        if self.beat is not None:
            # Optuna's heartbeat thread beats first from its own thread; a trial with no
            # beat at all is never found stale. Beating here, before the trainer starts,
            # means a worker killed while its trainer runs always leaves a stale trial.
            self.beat(trial._trial_id)
        trial_dir = self.study_dir / f"trial-{trial.number:04d}"
        with self._gpu() as gpu:
            if self.interrupter.interrupted:
                # The signal came while this trial waited for a GPU: it never started.
                _end_early(trial, "interrupted", "the study was stopped before it started")
            env = {CUDA_VISIBLE_DEVICES: gpu} if gpu is not None else {}
            command = self.command(sampled)
            # Before the process starts, so that a trial that fails has them too.
            _set_user_attrs(
                trial,
                command=command_line(command, env),
                **provenance.run_attrs(self.trainer, command, env),
                trial_dir=str(trial_dir),
                **({"cuda_visible_devices": gpu} if gpu is not None else {}),
            )
            spare = self._take_spare() if gpu is None else None
            try:
                expected = {"seed": self.seed, **self.space.values(sampled)}
                outcome = self._run(trial, command, trial_dir, env, spare, expected)
                if outcome.prestart_lost or outcome.flags_never_read:
                    self._give_up_prestart(trial.number)
                if outcome.flags_never_read and not self.interrupter.interrupted:
                    # It stopped before training on the trial's flags: nothing of it ran.
                    outcome = self._run(trial, command, trial_dir, env, None, expected)
            except KeyboardInterrupt:
                # Only where the interrupter could not take the signal (not the main thread).
                trial.set_user_attr("fail_reason", "interrupted")
                raise
            finally:
                # Its libtorch loads while Optuna records this trial and samples the next.
                self._start_spare()

        failure = outcome.failure()
        if failure is not None and self.interrupter.interrupted:
            signum = self.interrupter.signal or signal.SIGINT
            failure = Failure("interrupted", f"stopped by {signal.Signals(signum).name}")
        if failure is not None and failure.reason == "diverged":
            return self._diverged(trial, outcome, failure)
        if failure is not None:
            self._record_failure(trial, outcome, failure)
            raise TrialFailed(failure.reason, failure.message)

        result = outcome.result
        assert result is not None  # failure() is None only with a result
        _set_user_attrs(
            trial,
            status=result.status,
            val_accuracy=_json_float(result.val_accuracy),
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            seconds=round(outcome.seconds, 3),
            parameters=outcome.start.parameters if outcome.start else None,
            # With other objectives the value is something else; reports still show val_loss.
            **(
                {"val_loss": _json_float(result.val_loss)}
                if self.objectives != objectives_mod.DEFAULT
                else {}
            ),
        )
        values = objectives_mod.values(self.objectives, result, outcome.start)
        return values if len(values) > 1 else values[0]

    def _give_up_prestart(self, number: int) -> None:
        """Starts no more processes ahead: one of them was gone, or could not read its
        flags on stdin, when its trial came (which then ran in a process started for it)."""
        with self._spares_lock:
            if self._gave_up_prestart:
                return
            self._gave_up_prestart = True
        self._prestart = False
        self.close()
        logger.warning(
            "The trainer process started ahead of trial %d had exited, or could not read "
            "its flags on stdin (%s), when the trial came; the trial ran in a process "
            "started for it, and so will every trial after it in this run. If %s is a "
            "wrapper script, --no-prestart says so from the start.",
            number,
            FLAGS_FROM_STDIN,
            self.trainer,
        )

    @contextmanager
    def _gpu(self) -> Iterator[str | None]:
        if self.gpus is None:
            yield None
            return
        with self.gpus.slot() as device:
            yield device

    def _run(
        self,
        trial: optuna.Trial,
        command: list[str],
        trial_dir: Path,
        env: dict[str, str],
        spare: Prestarted | None,
        expected: Mapping[str, Value],
    ) -> RunOutcome:
        """Runs the trial's trainer, reporting each epoch; `expected`, the values its
        `start` event must echo when a process started ahead runs it."""
        started = time.monotonic()
        best: EpochEvent | None = None
        start: StartEvent | None = None
        process = TrainerProcess(
            command, log_dir=trial_dir, timeout=self.timeout, env=env, prestarted=spare
        )
        curve: dict[str, float | None] = {}
        with process, self.interrupter.tracking(process):
            for event in process.events():
                if isinstance(event, StartEvent):
                    start = event
                    if process.adopted and _differs(event.config, expected):
                        # Its flags on stdin were lost on the way (a wrapper dropped them):
                        # it would train on the shared flags alone.
                        process.end()
                        return dataclasses.replace(process.wait(), flags_ignored=True)
                if not isinstance(event, EpochEvent) or math.isnan(event.val_loss):
                    continue
                if best is None or event.val_loss < best.val_loss:
                    best = event

                if len(self.objectives) > 1:
                    # Optuna neither records nor prunes per epoch with several objectives;
                    # the curve is kept as an attribute for the report's learning curves.
                    curve[str(event.epoch)] = _json_float(event.val_loss)
                    trial.set_user_attr(CURVE_ATTR, curve)
                    continue
                value = objectives_mod.epoch_value(
                    self.objectives[0], event.val_loss, event.val_accuracy
                )
                trial.report(value, step=event.epoch)
                # After the last epoch the work is done: pruning then would only discard it.
                if event.epoch < event.epochs and trial.should_prune():
                    process.end()
                    ended = process.wait()
                    _set_user_attrs(
                        trial,
                        status="pruned",
                        fail_reason="pruned",
                        stderr_tail="\n".join(ended.stderr_tail),
                        val_accuracy=_json_float(best.val_accuracy),
                        best_epoch=best.epoch,
                        epochs_run=event.epoch,
                        seconds=round(time.monotonic() - started, 3),
                        parameters=start.parameters if start else None,
                    )
                    raise optuna.TrialPruned(
                        f"Pruned at epoch {event.epoch} with val_loss {event.val_loss:.6g}."
                    )
            return process.wait()

    def _diverged(self, trial: optuna.Trial, outcome: RunOutcome, failure: Failure) -> list[float]:
        """Reports the penalty at the epoch where training diverged and prunes the trial; with
        several objectives, which Optuna cannot prune, it completes with penalty values."""
        epoch, penalty = divergence_penalty(outcome.epochs)
        _set_user_attrs(trial, penalty=penalty, diverged_at_epoch=epoch)
        if len(self.objectives) > 1:
            start = outcome.start
            values = objectives_mod.diverged_values(
                self.objectives,
                penalty,
                seconds=outcome.seconds,
                parameters=start.parameters if start is not None else None,
            )
            ending = (
                f"diverged at epoch {epoch}; recorded COMPLETE with the penalty values {values} "
                "and a violated constraint"
            )
            self._record_failure(trial, outcome, failure, ending=ending)
            return values

        # val_accuracy's worst is 0, val_loss's the penalty.
        reported = 0.0 if self.objectives[0] == "val_accuracy" else penalty
        trial.report(reported, step=epoch)
        ending = f"diverged at epoch {epoch}; recorded PRUNED with the penalty {reported:.4g}"
        self._record_failure(trial, outcome, failure, ending=ending)
        raise optuna.TrialPruned(
            f"Diverged at epoch {epoch}: reported the penalty {reported:.6g} instead."
        )

    def _record_failure(
        self,
        trial: optuna.Trial,
        outcome: RunOutcome,
        failure: Failure,
        ending: str = "failed",
    ) -> None:
        tail = "\n".join(outcome.stderr_tail)
        exit_text = (
            f"exit code {outcome.exit_code}"
            if outcome.exit_code is not None
            else f"signal {outcome.signal}"
        )
        _set_user_attrs(
            trial,
            fail_reason=failure.reason,
            fail_message=_clip(failure.message),
            stderr_tail=tail,
            epochs_run=len(outcome.epochs),
            seconds=round(outcome.seconds, 3),
            **(
                {"exit_code": outcome.exit_code}
                if outcome.exit_code is not None
                else {"signal": outcome.signal}
            ),
        )

        logger.warning(
            "Trial %d %s (%s: %s; %s) with parameters %s.%s",
            trial.number,
            ending,
            failure.reason,
            _clip(failure.message, 500),
            exit_text,
            trial.params,
            "\n  stderr: " + "\n  stderr: ".join(outcome.stderr_tail) if tail else "",
        )


def divergence_penalty(epochs: Sequence[EpochEvent]) -> tuple[int, float]:
    """The epoch where training diverged, and the value a diverged trial reports there."""
    last = epochs[-1] if epochs else None
    if last is None:
        epoch = 1
    elif math.isfinite(last.val_loss):
        epoch = last.epoch + 1
    else:
        epoch = last.epoch
    finite = [e.val_loss for e in epochs if math.isfinite(e.val_loss)]
    return epoch, max(DIVERGED_FLOOR, 2 * finite[-1]) if finite else DIVERGED_FLOOR


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Whether a trial is one of the --trials the study should have."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state != TrialState.FAIL:
        return False
    reason = trial.user_attrs.get("fail_reason")
    return reason is not None and reason not in UNCOUNTED_REASONS


@dataclass(frozen=True)
class _Progress:
    counted: int
    running: int
    waiting: int


def _prestarts(config: TuneConfig, *, takes_stdin: bool) -> bool:
    """Whether trainers start ahead of their trials: as asked, or by default when the
    trainer is not a script. A wrapper script could read or add flags on its command line,
    where the flags handed on stdin never appear. `takes_stdin`: whether the trainer's
    `describe` lists --flags-from-stdin (a build from before it does not)."""
    if not takes_stdin:
        if config.prestart:
            raise ArgumentsError(
                f"--prestart: {config.trainer} does not take {FLAGS_FROM_STDIN} (its "
                "`describe` does not list it: a build from before it?); rebuild it with "
                "`orchestrate build`, or leave --prestart out"
            )
        return False
    if config.prestart is not None:
        return config.prestart
    try:
        with Path(config.trainer).open("rb") as trainer:
            return trainer.read(2) != b"#!"
    except OSError:
        return False


def _progress(study: optuna.Study) -> _Progress:
    trials = study.get_trials(deepcopy=False)
    return _Progress(
        counted=sum(counts_toward_total(t) for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
    )


def _differs(config: Mapping[str, object], expected: Mapping[str, Value]) -> bool:
    """Whether a `start` event's config shows another value than `expected` for a name it
    echoes (choices are echoed with `_` where the flag's value has `-`)."""
    for name, value in expected.items():
        if name not in config:
            continue
        echoed = config[name]
        if isinstance(value, bool) or isinstance(echoed, bool):
            same = echoed is value
        elif isinstance(value, int | float):
            same = isinstance(echoed, int | float) and float(echoed) == float(value)
        else:
            same = str(echoed).replace("-", "_") == str(value).replace("-", "_")
        if not same:
            return True
    return False


class _AfterEachTrial:
    """Optuna's callback after each trial: queue an interrupted trial's parameters again,
    and stop starting trials when interrupted, when the finished and running trials reach
    the total, or when a grid's queue is empty."""

    def __init__(self, total: int, grid: bool, interrupter: Interrupter) -> None:
        self.total = total
        self.grid = grid
        self.interrupter = interrupter
        # The trials it was called for (not one that a second signal ended).
        self.seen: set[int] = set()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.seen.add(trial.number)
        if trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") == "interrupted":
            _queue_again(study, trial)
        if self.interrupter.interrupted:
            study.stop()
            return
        progress = _progress(study)
        enough = progress.counted + progress.running >= self.total
        if enough or (self.grid and progress.waiting == 0):
            study.stop()


def _queue_again(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queues a trial's parameters as a new trial, as Optuna's heartbeat retry does."""
    if not trial.params:
        return  # stopped before it sampled anything: there is nothing to repeat
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={"failed_trial": history[0], "retry_history": history},
        )
    )


def tune(
    config: TuneConfig,
    on_trial: Callable[[FrozenTrial], None] | None = None,
    watcher: TuneWatcher | None = None,
) -> TuneSummary:
    """Runs the trials the study still lacks to reach `config.trials` counted trials;
    `watcher` (a progress bar) hears when the run begins and each trial starts and ends.

    Everything that can be checked without running a trial is checked before the storage
    is touched: the trainer, the data folder and the space.
    """
    # Each trial records the trainer's facts; `info` and the hash run once, here, where a
    # failure is usage, and beside `describe` (each call loads libtorch, about half a second).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        facts = pool.submit(provenance.trainer_facts, config.trainer)
        described = preflight.check_trainer(
            config.trainer,
            config.space,
            config.flags.extra,
            config.flags.dataset,
            val_fraction=config.flags.val_fraction,
        )
        facts.result()
    prestart = _prestarts(config, takes_stdin="flags_from_stdin" in described)
    data_dir = preflight.data_dir_for(config.flags.data_dir, config.flags.extra)
    preflight.check_data(config.flags.dataset, data_dir)
    preflight.check_warmup(config.space, config.flags.extra, config.flags.epochs)
    grid = config.space.grid() if config.sampler == "grid" else None
    if grid is not None and config.enqueue:
        raise ArgumentsError(
            "--enqueue cannot be used with --sampler grid, which queues every grid point "
            "itself; add the configurations' values as grid points instead"
        )
    # Built and tried once here, on a study in memory, so that bad --sampler-args (a keyword
    # it does not take, or a value of the wrong type) stop tune before any study exists.
    _try_sampler(config)
    pruner = _pruner(config)
    gpus = _gpu_pool(config)

    _quiet_optuna_failure_logs()
    heartbeat = Heartbeat(config.heartbeat) if config.heartbeat is not None else None
    storage = open_storage(config.storage, create=True, heartbeat=heartbeat)
    study, created = _create_or_load(config, storage)
    seed = _settle_settings(study, config, created, grid)
    fail_stale_trials(study)
    enqueue_once(study, config.enqueue)

    before = _progress(study)
    missing = config.trials - before.counted - before.running
    first_number = len(study.get_trials(deepcopy=False))
    study.sampler = _sampler(config, seed + first_number)
    study.pruner = pruner

    stop_reason = _why_nothing_to_do(before, missing, grid is not None)
    done = study._storage.get_study_system_attrs(study._study_id).get(BRUTEFORCE_DONE_ATTR)
    if config.sampler == "bruteforce" and done:
        stop_reason = stop_reason or BRUTEFORCE_DONE
    interrupter = Interrupter()
    started = time.monotonic()
    if stop_reason is None:
        trial_objective = Objective(
            trainer=config.trainer,
            flags=config.flags,
            space=config.space,
            seed=seed,
            study_dir=config.runs_dir.absolute() / _safe_name(config.study_name),
            timeout=config.trial_timeout,
            interrupter=interrupter,
            gpus=gpus,
            grid=grid is not None,
            beat=_heartbeat_of(storage),
            objectives=config.objectives,
            prestart=prestart,
            spares=config.n_jobs,
            trials=missing,
        )
        objective = _Reseeding(
            trial_objective,
            first_number=first_number if config.n_jobs == 1 else None,
            make_sampler=lambda sampler_seed: _sampler(config, sampler_seed),
            seed=seed,
        )
        after_each = _AfterEachTrial(config.trials, grid is not None, interrupter)
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [after_each]
        if on_trial is not None:
            callbacks.append(lambda _study, trial: on_trial(trial))
        run_trial: Callable[[optuna.Trial], float | list[float]] = objective
        if watcher is not None:
            watcher.begin(study, config.trials)
            run_trial = watcher.watching(objective)
            callbacks.append(watcher.trial_finished)
        try:
            with interrupter.handling_signals():
                study.optimize(
                    run_trial,
                    n_trials=missing,
                    timeout=config.timeout,
                    n_jobs=config.n_jobs,
                    catch=(TrialFailed,),
                    callbacks=callbacks,
                )
        except SecondSignal:
            # The trainers are killed and Optuna has recorded the trial FAIL, but without
            # running the callbacks: queue its parameters again and report it here.
            for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                if trial.number in trial_objective.begun - after_each.seen:
                    _queue_again(study, trial)
                    if on_trial is not None:
                        on_trial(trial)
        finally:
            trial_objective.close()

    after = _progress(study)
    if interrupter.signal is not None:
        name = signal.Signals(interrupter.signal).name
        raise Interrupted(
            interrupter.signal,
            f"interrupted by {name}: running trials were ended and recorded as FAIL "
            f"(interrupted); the study has {after.counted} of {config.trials} trials; run "
            "the same command again to resume",
        )
    ran = after.counted - before.counted
    if stop_reason is None and after.counted < config.trials:
        if grid is not None and after.waiting == 0:
            stop_reason = "the grid is exhausted"
        elif config.timeout is not None and time.monotonic() - started >= config.timeout:
            stop_reason = f"the --timeout of {config.timeout:g} s was reached"
        elif config.sampler == "bruteforce" and ran < missing:
            stop_reason = BRUTEFORCE_DONE
            # Asked again, the sampler would run one more (repeated) combination to notice.
            study._storage.set_study_system_attr(study._study_id, BRUTEFORCE_DONE_ATTR, True)

    return TuneSummary(
        study_name=config.study_name,
        storage=config.storage,
        seed=seed,
        finished_before=before.counted,
        ran=ran,
        states=state_counts(study),
        best=_best_trial(study),
        stop_reason=stop_reason,
    )


class _Reseeding:
    """Wraps the objective: a worker whose first trial is not the one it expected (another
    worker took that number) re-seeds its sampler from the trial it got, so workers started
    together with one --seed do not propose the same points."""

    def __init__(
        self,
        objective: Objective,
        *,
        first_number: int | None,
        make_sampler: Callable[[int], optuna.samplers.BaseSampler],
        seed: int,
    ) -> None:
        self.objective = objective
        self._first_number = first_number
        self._make_sampler = make_sampler
        self._seed = seed
        self._lock = threading.Lock()

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        with self._lock:
            expected, self._first_number = self._first_number, None
        if expected is not None and trial.number != expected:
            trial.study.sampler = self._make_sampler(self._seed + trial.number)
        return self.objective(trial)


def _heartbeat_of(storage: optuna.storages.BaseStorage) -> Callable[[int], None] | None:
    """The storage's way to record a trial's heartbeat, when it keeps heartbeats."""
    if isinstance(storage, optuna.storages.RDBStorage) and storage.heartbeat_interval:
        beat: Callable[[int], None] = storage.record_heartbeat
        return beat
    return None


def _try_sampler(config: TuneConfig) -> None:
    sampler = _sampler(config, config.seed)
    if config.sampler in ("grid", "auto"):
        return  # the grid is checked with the space; auto's module is loaded by _sampler
    directions: list[Literal["minimize", "maximize"]] = ["minimize"] * max(
        1, len(config.objectives)
    )
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = optuna.create_study(sampler=sampler, directions=directions).ask()
            config.space.sample(trial)
    except Exception as err:  # any failure here is one every trial would hit
        raise ArgumentsError(
            f"--sampler {config.sampler} failed on its first draw with --sampler-args "
            f"{json.dumps(dict(config.sampler_args))}: {type(err).__name__}: {err}; check "
            "the values' types against the sampler's documentation"
        ) from None
    finally:
        optuna.logging.set_verbosity(verbosity)


def _sampler(config: TuneConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    return SAMPLERS[config.sampler](
        SamplerSettings(
            seed,
            config.space,
            startup_trials=config.sampler_startup_trials,
            args=config.sampler_args,
            multi_objective=config.multi_objective,
        )
    )


def _pruner(config: TuneConfig) -> optuna.pruners.BasePruner:
    if config.multi_objective and config.pruner != "none":
        raise ArgumentsError(
            f"--pruner {config.pruner} cannot prune a study with several --objectives"
        )
    return PRUNERS[config.pruner](
        PrunerSettings(
            epochs=config.flags.epochs,
            startup_trials=config.pruner_startup_trials,
            warmup_epochs=config.pruner_warmup_epochs,
            args=config.pruner_args,
        )
    )


def _gpu_pool(config: TuneConfig) -> SlotPool | None:
    """One slot per GPU (times --trials-per-gpu) when several trials share this machine."""
    if config.n_jobs == 1 or config.flags.device not in ("auto", "cuda"):
        return None
    count = trainer_info(config.trainer).get("cuda_device_count")
    if not isinstance(count, int) or count < 1:
        return None
    pool = SlotPool(visible_gpus(count, os.environ), per_device=config.trials_per_gpu)
    if pool.capacity < config.n_jobs:
        logger.warning(
            "--n-jobs %d with %d GPU(s) and --trials-per-gpu %d: at most %d trials run at once",
            config.n_jobs,
            count,
            config.trials_per_gpu,
            pool.capacity,
        )
    return pool


def _create_or_load(
    config: TuneConfig, storage: optuna.storages.BaseStorage
) -> tuple[optuna.Study, bool]:
    """The study, and whether this worker created it (and so must store its settings)."""
    try:
        study = optuna.create_study(
            study_name=config.study_name,
            storage=storage,
            directions=objectives_mod.directions(config.objectives),
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=config.study_name, storage=storage), False


def _end_early(trial: optuna.Trial, reason: str, message: str) -> None:
    _set_user_attrs(trial, fail_reason=reason, fail_message=message)
    raise TrialFailed(reason, message)


def _from_queue(trial: optuna.Trial) -> bool:
    """Whether the trial was taken from the study's queue (its parameters are given)."""
    if trial.params:
        return True
    for frozen in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == trial.number:
            return "fixed_params" in frozen.system_attrs
    return False


def _settle_settings(
    study: optuna.Study,
    config: TuneConfig,
    created: bool,
    grid: dict[str, list[Value]] | None,
) -> int:
    """Stores the study's shared settings (and queues a grid), or checks them on resume;
    returns the seed."""
    wanted_directions = objectives_mod.directions(config.objectives)
    if list(study.directions) != wanted_directions:
        recorded = ",".join(objectives_mod.objectives_of(study))
        raise StudyMismatch(
            f"study {config.study_name!r} in {config.storage} optimises {recorded} "
            f"({', '.join(d.name.lower() for d in study.directions)}), but this command asks "
            f"for --objectives {','.join(config.objectives)}; give the study's objectives, "
            "or choose another --study name"
        )

    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None and not created and grid is not None:
        stored = _wait_for_settings(study)
    seed = config.seed
    if isinstance(stored, dict) and seed is None and isinstance(stored.get("seed"), int):
        seed = stored["seed"]
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
        logger.info("study %r uses seed %d (pass --seed to choose one)", study.study_name, seed)

    wanted: dict[str, object] = {
        "model": config.flags.model,
        "dataset": config.flags.dataset,
        "epochs": config.flags.epochs,
        "train_limit": config.flags.train_limit,
        "val_fraction": config.flags.val_fraction,
        "seed": seed,
        "space": config.space.describe(),
        "extra": list(config.flags.extra),
        "grid": grid is not None,
        "objectives": list(config.objectives),
    }
    if not isinstance(stored, dict):
        if grid is not None:
            _queue_grid(study, config.space, seed)
        study.set_user_attr(objectives_mod.OBJECTIVES_ATTR, list(config.objectives))
        with warnings.catch_warnings():
            # Experimental in Optuna; names the values in Optuna's own tools (the dashboard).
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(config.objectives))
        # Last: other workers of a grid study wait for it, and then find the queue full.
        study.set_user_attr(SETTINGS_ATTR, wanted)
        return seed

    # Studies from before `extra`, `grid` and `objectives` existed had none of them.
    stored = {"extra": [], "grid": False, "objectives": list(objectives_mod.DEFAULT), **stored}
    different = [key for key in _COMPARED if stored.get(key) != wanted[key]]
    if different:
        details = "; ".join(
            f"{key}: study has {_short(stored.get(key))}, this command {_short(wanted[key])}"
            for key in different
        )
        raise StudyMismatch(
            f"study {config.study_name!r} in {config.storage} was created with other settings "
            f"({details}); its trials would not be comparable, so use another --study name"
        )
    return seed


def _wait_for_settings(study: optuna.Study) -> object:
    """The settings of a study another worker has just created, once they are stored."""
    deadline = time.monotonic() + _GRID_WAIT_SECONDS
    while time.monotonic() < deadline:
        stored = study.user_attrs.get(SETTINGS_ATTR)
        if stored is not None:
            return stored
        time.sleep(0.2)
    logger.warning(
        "study %r has no settings after %.0f s; storing this command's",
        study.study_name,
        _GRID_WAIT_SECONDS,
    )
    return None


def _queue_grid(study: optuna.Study, space: SearchSpace, seed: int) -> None:
    """Queues every point of the grid (only the combinations whose conditions hold), in an
    order shuffled by the seed."""
    points = space.grid_combinations()
    random.Random(seed).shuffle(points)
    for point in points:
        study.enqueue_trial(point, skip_if_exists=False)
    logger.info("study %r: queued the %d points of its grid", study.study_name, len(points))


def _why_nothing_to_do(before: _Progress, missing: int, grid: bool) -> str | None:
    if grid and before.waiting == 0:
        return "the grid is exhausted"
    if missing <= 0:
        if before.running:
            return (
                f"the study already has the requested number of trials ({before.counted} "
                f"finished, {before.running} running in other workers)"
            )
        return "the study already has the requested number of finished trials"
    return None


def state_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials the study holds in each state, by state name."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # A study with several objectives has a Pareto front instead (`orchestrate best`).
    return study.best_trial if complete and len(study.directions) == 1 else None


def _set_user_attrs(trial: optuna.Trial, **attrs: object) -> None:
    set_trial_user_attrs(trial, attrs)


def _json_float(value: float) -> float | None:
    # Storages keep user attributes as JSON, which has no NaN.
    return value if math.isfinite(value) else None


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "study"


def _clip(text: str, limit: int = 2000) -> str:
    # libtorch's messages carry a whole C++ backtrace; the start says what went wrong.
    return text if len(text) <= limit else text[: limit - 15] + " ... (clipped)"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _DropTrialFailedRecords(logging.Filter):
    """Optuna logs a caught failure with its traceback, then once more; the objective has
    already logged one WARNING with the reason and stderr tail, so those two go."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (TrialFailed, SecondSignal)):
            return False
        message = record.getMessage()
        if "because of the following error: TrialFailed(" in message:
            return False
        return not (message.startswith("Trial ") and message.endswith("failed with value None."))


def _quiet_optuna_failure_logs() -> None:
    optuna_logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _DropTrialFailedRecords) for f in optuna_logger.filters):
        optuna_logger.addFilter(_DropTrialFailedRecords())
