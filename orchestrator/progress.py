"""The progress bar `tune` shows on a terminal: trials done of the total, the best value
so far, and the trials running now.

The bar lives at the bottom of stderr; everything else (each finished trial's line,
log records, Optuna's own messages with -v) is printed above it through the same rich
console, so lines are never cut by a redraw. Off a terminal there is no bar, and the
per-trial lines are all `tune` writes, as before.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.export import objective_names
from orchestrator.study import counts_toward_total

Objective = Callable[[optuna.Trial], float | list[float]]


class TuneWatcher(Protocol):
    """What `study.tune` tells about its progress, besides each finished trial."""

    def begin(self, study: optuna.Study, total: int) -> None: ...

    def watching(self, objective: Objective) -> Objective: ...

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None: ...


class TuneProgress:
    """A rich progress bar for one `tune` run; a context manager that shows it.

    Optuna calls back from its worker threads with --n-jobs, so the state is locked.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._started = False
        self._handlers: list[tuple[logging.StreamHandler, object]] = []  # type: ignore[type-arg]
        self._progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TextColumn("{task.fields[running]}"),
            TimeElapsedColumn(),
            console=console,
            # Optuna's log records and the trainer's messages through print() stay above.
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._task = self._progress.add_task("tune", total=None, best="", running="")

    def __enter__(self) -> TuneProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._started:
            _back_from_proxy(self._handlers)
            self._progress.stop()

    def begin(self, study: optuna.Study, total: int) -> None:
        """The study as this run finds it: trials already done and the best so far."""
        done = sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False))
        self._progress.update(
            self._task, total=total, completed=min(done, total), best=best_text(study)
        )
        # Shown only now, once the checks before the first trial have passed: an error
        # found by them is then printed alone, with no empty bar above it.
        self._progress.start()
        self._handlers = _onto_proxy()
        self._started = True

    def watching(self, objective: Objective) -> Objective:
        """The objective, telling the bar when each trial starts."""

        def run(trial: optuna.Trial) -> float | list[float]:
            self.trial_started(trial.number)
            return objective(trial)

        return run

    def trial_started(self, number: int) -> None:
        with self._lock:
            self._running.add(number)
            running = running_text(self._running)
        self._progress.update(self._task, running=running)

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        done = sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False))
        with self._lock:
            self._running.discard(trial.number)
            running = running_text(self._running)
        total = self._progress.tasks[0].total
        completed = min(done, int(total)) if total is not None else done
        self._progress.update(
            self._task, completed=completed, best=best_text(study), running=running
        )


def best_text(study: optuna.Study) -> str:
    """`best val_loss 0.0912 (trial 3)`, or the Pareto front's size with several
    objectives, or nothing before the first completed trial."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return "no completed trial yet"
    names = objective_names(study)
    if len(names) > 1:
        return f"Pareto front: {len(study.best_trials)} trials"
    best = study.best_trial
    return f"best {names[0]} {best.value:.4g} (trial {best.number})"


def running_text(numbers: set[int]) -> str:
    if not numbers:
        return ""
    shown = ", ".join(str(n) for n in sorted(numbers)[:4])
    more = ", ..." if len(numbers) > 4 else ""
    return f"running {len(numbers)} (trial {shown}{more})"


@contextmanager
def shown_on(console: Console) -> Iterator[TuneProgress | None]:
    """A progress bar on `console` when it is a terminal, else None."""
    if not console.is_terminal or console.is_dumb_terminal:
        yield None
        return
    with TuneProgress(console) as progress:
        yield progress


def _onto_proxy() -> list[tuple[logging.StreamHandler, object]]:  # type: ignore[type-arg]
    """Points log handlers that write to the real stderr at rich's proxy for it (set while
    the bar shows), so their records print above the bar instead of through it."""
    proxy = sys.stderr
    real = getattr(proxy, "rich_proxied_file", None)
    if real is None:
        return []
    moved = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is real:
            moved.append((handler, handler.setStream(proxy)))
    return moved


def _back_from_proxy(moved: list[tuple[logging.StreamHandler, object]]) -> None:  # type: ignore[type-arg]
    for handler, stream in moved:
        handler.setStream(stream)
