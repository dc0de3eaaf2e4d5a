"""Ending a study cleanly on Ctrl-C (SIGINT), SIGTERM or SIGHUP (its terminal closed).

The handler raises nothing: an exception at an arbitrary point could cut a storage write
in two or leave a trial RUNNING. It records the signal and sends SIGTERM to the process
group of every trainer that is running (SIGKILL on a second signal). Each trial then sees
its trainer end, records itself as FAIL with the reason `interrupted`, the study stops
starting trials, and `tune` raises `Interrupted` once Optuna's loop has returned. A
second signal is for when that takes too long: the trainers are killed and `SecondSignal`
is raised at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from orchestrator.runner import TrainerProcess

logger = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SecondSignal(KeyboardInterrupt):
    """A second signal: stop now. Optuna records the running trial as FAIL."""


class Interrupter:
    """The running trainers of one `tune`, and the signal that asked them to stop."""

    def __init__(self) -> None:
        # Reentrant: the handler runs in the main thread, which may hold the lock already.
        self._lock = threading.RLock()
        self._processes: dict[int, TrainerProcess] = {}
        self._signal: int | None = None
        self._count = 0

    @property
    def signal(self) -> int | None:
        """The first signal received, or None."""
        return self._signal

    @property
    def interrupted(self) -> bool:
        return self._signal is not None

    def interrupt(self, signum: int) -> None:
        """Stops every running trainer: SIGTERM the first time, SIGKILL after that."""
        with self._lock:
            if self._signal is None:
                self._signal = signum
            self._count += 1
            running = list(self._processes.values())
        name = signal.Signals(signum).name
        if self._count == 1:
            logger.warning(
                "%s: ending %d running trial(s); a second signal kills them at once",
                name,
                len(running),
            )
        for process in running:
            process.send_signal(signal.SIGTERM if self._count == 1 else signal.SIGKILL)

    @contextmanager
    def tracking(self, process: TrainerProcess) -> Iterator[None]:
        """Tracks a started process for the `with` block; one started after the signal is
        stopped at once."""
        key = id(process)
        with self._lock:
            self._processes[key] = process
            late = self._signal is not None
        if late:
            process.send_signal(signal.SIGTERM)
        try:
            yield
        finally:
            with self._lock:
                self._processes.pop(key, None)

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Routes SIGINT, SIGTERM and SIGHUP here for the `with` block.

        Only the main thread may install handlers; elsewhere this does nothing. A signal
        the process was started with ignored (SIGINT in a background job, SIGHUP under
        nohup) stays ignored.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        previous = {signum: signal.getsignal(signum) for signum in HANDLED}
        for signum, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(signum, self._handle)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.interrupt(signum)
        if self._count > 1:
            raise SecondSignal(signum)
