"""One trainer process, owned from start to end.

`TrainerProcess` starts the trainer in a process group of its own, reads its events line
by line as they arrive, drains stderr on a thread (so no amount of output can fill a pipe
and stall the process), ends the whole group on request, on a time limit or on leaving
the `with` block, and says why a run failed. On Linux the trainer is also asked to receive
SIGTERM when the orchestrator dies (PR_SET_PDEATHSIG), so not even a SIGKILLed
orchestrator leaves it running. It knows nothing about Optuna: the study's objective and
`orchestrate train` both drive it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from orchestrator.errors import TrainerNotFound
from orchestrator.events import (
    EpochEvent,
    ErrorEvent,
    Event,
    MalformedEvent,
    ResultEvent,
    StartEvent,
    parse_line,
)

logger = logging.getLogger(__name__)

FailReason = Literal[
    "crashed",
    "diverged",
    "data error",
    "device",
    "out of memory",
    "usage error",
    "interrupted",
    "bad output",
    "no result",
    "timeout",
]

# The trainer's exit codes (DESIGN.md), by what they mean for a trial.
_EXIT_REASONS: Mapping[int, FailReason] = {
    2: "usage error",
    3: "data error",
    4: "diverged",
    5: "device",
    129: "interrupted",
    130: "interrupted",
    143: "interrupted",
}

# libtorch's words for an exhausted device or host: CUDA's, and the CPU allocator's.
_OUT_OF_MEMORY = re.compile(
    r"out of memory|can't allocate memory|cannot allocate memory|cudaErrorMemoryAllocation",
    re.IGNORECASE,
)

# The trainer flag that makes it read the rest of its command from stdin (`Prestarted`).
FLAGS_FROM_STDIN = "--flags-from-stdin"
STDERR_TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Looked up once, in the parent: between fork and exec the child may not load libraries.
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _load_prctl()


@dataclass(frozen=True)
class Failure:
    """Why a run did not give a usable result."""

    reason: FailReason
    message: str


@dataclass(frozen=True)
class RunOutcome:
    """What one finished trainer process did."""

    command: tuple[str, ...]
    returncode: int
    seconds: float
    start: StartEvent | None
    epochs: tuple[EpochEvent, ...]
    result: ResultEvent | None
    error: ErrorEvent | None
    malformed: str | None
    timed_out: bool
    stderr_tail: tuple[str, ...]
    # Whether the orchestrator itself sent SIGKILL (after the grace period).
    killed: bool = False
    # Whether a process started ahead (`Prestarted`) ran it, handed its flags on stdin;
    # whether one was there for it but had exited, or would not read them, so that a new
    # one ran it: a trainer that does not take its flags that way (a wrapper script).
    prestarted: bool = False
    prestart_lost: bool = False
    # Whether a process started ahead began training with other values than the trial's:
    # its flags on stdin never reached the trainer (the caller ended it at its start).
    flags_ignored: bool = False

    @property
    def flags_never_read(self) -> bool:
        """Whether a process started ahead ended on a usage error about the flags it was to
        read on stdin, before it began, or began with other values: the trial's own flags
        never reached a trainer (a wrapper that closes, reads or drops its stdin, or a
        trainer built before the flag)."""
        if self.flags_ignored:
            return True
        if not self.prestarted or self.returncode != 2 or self.start is not None:
            return False
        said = self.error.message if self.error is not None else "\n".join(self.stderr_tail)
        return FLAGS_FROM_STDIN in said

    @property
    def exit_code(self) -> int | None:
        """The exit status, or None when a signal ended the process."""
        return self.returncode if self.returncode >= 0 else None

    @property
    def signal(self) -> int | None:
        """The number of the signal that ended the process, if one did."""
        return -self.returncode if self.returncode < 0 else None

    def failure(self, *, validation: bool = True) -> Failure | None:
        """The reason this run cannot count as a result, or None when it can.

        With `validation` (a trial) the result must carry a val_loss; without it (a final
        model trained on everything) a run with no validation set is a result too.
        """
        if self.timed_out:
            return Failure("timeout", "the process ran past its time limit and was ended")
        if self.malformed is not None:
            return Failure("bad output", self.malformed)

        said = self.error.message if self.error is not None else None
        if self.signal is not None:
            message = f"ended by signal {_signal_name(self.signal)}"
            if self.signal == signal.SIGKILL and not self.killed:
                # Not ours; the kernel's out-of-memory killer is the usual sender.
                message += " from outside the orchestrator (the out-of-memory killer sends it)"
            return Failure("crashed", message)
        if self.returncode != 0:
            reason = _EXIT_REASONS.get(self.returncode, "crashed")
            if reason in ("device", "crashed") and self._out_of_memory(said):
                reason = "out of memory"
            return Failure(reason, said or f"exited with code {self.returncode}")

        if self.result is None:
            return Failure("no result", "exited with code 0 without a result event")
        if self.result.status == "diverged":
            return Failure("diverged", said or "the result event says diverged")
        if validation and not self.result.validated:
            return Failure(
                "usage error",
                "the run had no validation set (--val-fraction 0), so it has no val_loss to "
                "tune on; give --val-fraction above 0",
            )
        if self.result.validated and math.isnan(self.result.val_loss):
            return Failure("no result", "the result event has no finite val_loss")
        return None

    def _out_of_memory(self, said: str | None) -> bool:
        # Exit 5 is a device problem; one whose message mentions memory is an exhausted one.
        # The CPU allocator's failure reaches us as an internal error (exit 1) in its own words.
        text = said if said is not None else "\n".join(self.stderr_tail)
        if self.returncode == 5 and "memory" in text.lower():
            return True
        return _OUT_OF_MEMORY.search(text) is not None


class Prestarted:
    """A trainer process started before its trial is known: `PREFIX... --flags-from-stdin`.

    Loading libtorch takes the trainer about half a second before it reads any flag; a
    process started ahead does that while the orchestrator records one trial and samples
    the next, and `TrainerProcess` then hands it the rest of the command on stdin. Until
    then it has printed nothing and holds nothing, so discarding it loses nothing.
    """

    def __init__(self, prefix: Sequence[str]) -> None:
        self.prefix = tuple(prefix)
        self.started_at = time.monotonic()
        self.proc = _popen([*self.prefix, FLAGS_FROM_STDIN], stdin=subprocess.PIPE, env=None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def hand_over(self, rest: Sequence[str]) -> bool:
        """Writes the rest of the command; False when the process is gone (nothing sent)."""
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(list(rest)).encode() + b"\n")
            stdin.close()
        except OSError:  # it died after alive() said otherwise
            return False
        return True

    def discard(self) -> None:
        """Ends the process and closes its pipes; it is still waiting for its flags."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class TrainerProcess:
    """Runs one trainer command; use it as a context manager.

    With `log_dir`, the command goes to `command.txt`, every stdout line to
    `events.jsonl` and stderr to `stderr.log` in that folder; without it, stderr is the
    caller's stderr and nothing is written. `env` adds variables to the inherited
    environment (CUDA_VISIBLE_DEVICES); they lead the recorded command line. `prestarted`,
    a process started with the start of `command` (and no `env`), runs the command instead
    of a new process when it is still alive; its time counts from its own start.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_dir: Path | None = None,
        timeout: float | None = None,
        grace_seconds: float = 5.0,
        env: Mapping[str, str] | None = None,
        prestarted: Prestarted | None = None,
    ) -> None:
        self.command = tuple(command)
        self.env = dict(env or {})
        self._prestarted = prestarted
        self._log_dir = log_dir
        self._timeout = timeout
        self._grace_seconds = grace_seconds

        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._events_log: IO[bytes] | None = None
        self._stderr_log: IO[bytes] | None = None
        self._stderr_thread: threading.Thread | None = None
        self._stderr_tail = bytearray()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

        self._start: StartEvent | None = None
        self._epochs: list[EpochEvent] = []
        self._result: ResultEvent | None = None
        self._error: ErrorEvent | None = None
        self._malformed: str | None = None
        self._timed_out = False
        self._killed = False
        self._adopted = False
        self._spare_lost = False
        self._non_events = 0

    @property
    def command_line(self) -> str:
        """The command as a shell line, with its environment variables in front."""
        return command_line(self.command, self.env)

    def __enter__(self) -> TrainerProcess:
        try:
            if self._log_dir is not None:
                self._log_dir.mkdir(parents=True, exist_ok=True)
                (self._log_dir / "command.txt").write_text(self.command_line + "\n")
                self._events_log = (self._log_dir / "events.jsonl").open("wb")
                self._stderr_log = (self._log_dir / "stderr.log").open("wb")
        except BaseException:
            if self._prestarted is not None:
                self._prestarted.discard()
            self._close_logs()
            raise

        logger.debug("starting %s", self.command_line)
        self._proc = self._adopt()
        try:
            if self._proc is None:
                self._started_at = time.monotonic()
                self._proc = _popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    stderr=subprocess.PIPE if self._log_dir is not None else None,
                )
        except OSError as err:
            self._close_logs()
            raise TrainerNotFound(f"cannot start {self.command[0]}: {err.strerror}") from err
        except BaseException:
            self._close_logs()
            raise

        if self._proc.stderr is not None:
            self._stderr_thread = threading.Thread(
                target=self._drain_stderr,
                args=(self._proc.stderr,),
                name=f"stderr-{self._proc.pid}",
                daemon=True,
            )
            self._stderr_thread.start()
        if self._timeout is not None:
            self._timer = threading.Timer(self._timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Whatever happened in the block, no process of this group may outlive it.
        try:
            self.end()
        finally:
            self._finish_io()

    def _adopt(self) -> subprocess.Popen[bytes] | None:
        """The prestarted process, given the rest of the command, when it can run it."""
        spare, self._prestarted = self._prestarted, None
        if spare is None:
            return None
        head, rest = self.command[: len(spare.prefix)], self.command[len(spare.prefix) :]
        # Its stderr is a pipe: only a run that keeps logs drains one.
        usable = head == spare.prefix and not self.env and self._log_dir is not None
        if not (usable and spare.alive() and spare.hand_over(rest)):
            # Gone before it had its flags, or not reading them (see RunOutcome).
            self._spare_lost = usable
            spare.discard()
            return None
        self._started_at = spare.started_at
        self._adopted = True
        return spare.proc

    @property
    def adopted(self) -> bool:
        """Whether a process started ahead runs the command, handed it on stdin."""
        return self._adopted

    @property
    def pid(self) -> int:
        return self._running().pid

    def events(self) -> Iterator[Event]:
        """Yields each event as its line arrives, until stdout closes.

        A malformed event ends the process: its output can no longer be trusted.
        """
        stdout = self._running().stdout
        assert stdout is not None
        if self._malformed is not None:
            return
        for raw in iter(stdout.readline, b""):
            if self._events_log is not None:
                self._events_log.write(raw)
                self._events_log.flush()

            line = raw.decode("utf-8", errors="replace").strip()
            try:
                event = parse_line(line)
            except MalformedEvent as err:
                self._malformed = f"malformed event: {err}"
                logger.warning("%s; ending the process", self._malformed)
                self.end()
                return
            if event is None:
                self._note_non_event(line)
                continue

            self._remember(event)
            yield event

    def wait(self) -> RunOutcome:
        """Reads whatever events are left, waits for the exit, and says what happened."""
        for _ in self.events():
            pass
        proc = self._running()
        returncode = proc.wait()
        seconds = time.monotonic() - self._started_at
        self.end()
        self._finish_io()

        return RunOutcome(
            command=self.command,
            returncode=returncode,
            seconds=seconds,
            start=self._start,
            epochs=tuple(self._epochs),
            result=self._result,
            error=self._error,
            malformed=self._malformed,
            timed_out=self._timed_out,
            stderr_tail=self.stderr_tail(),
            killed=self._killed,
            prestarted=self._adopted,
            prestart_lost=self._spare_lost,
        )

    def send_signal(self, sig: int) -> None:
        """Sends `sig` to the whole process group (for example SIGINT, to stop it)."""
        self._signal_group(sig)

    def end(self) -> None:
        """Ends the process group: SIGTERM, a grace period, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(self._grace_seconds)
            except subprocess.TimeoutExpired:
                logger.debug("process %d ignored SIGTERM; killing its group", proc.pid)
                self._killed = True
                self._signal_group(signal.SIGKILL)
                proc.wait()
        # Children the trainer may have started share its group and may linger after it.
        self._signal_group(signal.SIGKILL)

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> tuple[str, ...]:
        """The last lines the process wrote to stderr (empty when stderr was not captured)."""
        with self._lock:
            text = self._stderr_tail.decode("utf-8", errors="replace")
        return tuple(text.splitlines()[-lines:])

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("the trainer process was not started; use it in a `with` block")
        return self._proc

    def _remember(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self._start = event
        elif isinstance(event, EpochEvent):
            self._epochs.append(event)
        elif isinstance(event, ResultEvent):
            self._result = event
        else:
            self._error = event

    def _note_non_event(self, line: str) -> None:
        if not line:
            return
        self._non_events += 1
        if self._non_events == 1:
            logger.warning("the trainer printed a line that is not an event: %.200s", line)
        else:
            logger.debug("not an event: %.200s", line)

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        # A group that is already gone has nothing left to end.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _on_timeout(self) -> None:
        self._timed_out = True
        logger.warning("the trainer ran past %s s; ending it", self._timeout)
        self.end()

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        try:
            while chunk := os.read(stream.fileno(), 65536):
                if self._stderr_log is not None:
                    self._stderr_log.write(chunk)
                    self._stderr_log.flush()
                with self._lock:
                    self._stderr_tail += chunk
                    del self._stderr_tail[:-_TAIL_BYTES]
        except (OSError, ValueError):
            pass  # the pipe or the log was closed under us: the run is over

    def _finish_io(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._stderr_thread is not None:
            # Only a process that left the group can still hold the pipe open after end().
            self._stderr_thread.join(timeout=self._grace_seconds)
            self._stderr_thread = None
        if self._proc is not None:
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()
        self._close_logs()

    def _close_logs(self) -> None:
        for log in (self._events_log, self._stderr_log):
            if log is not None:
                log.close()


def _popen(
    command: Sequence[str],
    *,
    stdin: int,
    env: Mapping[str, str] | None,
    stderr: int | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, **env} if env else None,
        # Its own process group, so that ending it also ends anything it started.
        start_new_session=True,
        preexec_fn=_die_with(os.getpid()) if _PRCTL is not None else None,
    )


def command_line(command: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """A command as one shell line, re-runnable by hand: `VAR=value program args`."""
    prefix = [f"{name}={shlex.quote(value)}" for name, value in (env or {}).items()]
    return " ".join([*prefix, shlex.join(command)])


def _die_with(parent: int) -> Callable[[], None]:
    """What the child runs before exec: SIGTERM for it when the orchestrator dies.

    The kernel sends the signal when the thread that started the child ends; each trial's
    thread waits for its trainer, so that is when the orchestrator itself is gone.
    """

    def preexec() -> None:
        assert _PRCTL is not None
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        # The parent may have died before the request took effect: then nobody would ask.
        if os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)

    return preexec


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
