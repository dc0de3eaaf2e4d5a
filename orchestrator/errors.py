"""Errors the user can act on. The CLI prints them without a traceback and picks the exit
code; nothing below the CLI decides how the program ends."""

from __future__ import annotations


class OrchestratorError(Exception):
    """A problem stated in words the user can act on."""


class NotACheckout(OrchestratorError):
    """The package is not running from a source checkout, so there is nothing to build."""


class BuildFailed(OrchestratorError):
    """cargo could not build the trainer."""


class TrainerNotFound(OrchestratorError):
    """No trainer binary where the lookup searched."""


class StorageError(OrchestratorError):
    """The storage URL cannot be opened."""


class StudyNotFound(OrchestratorError):
    """The storage holds no study of that name."""


class StudyMismatch(OrchestratorError):
    """An existing study was created with settings this command contradicts."""


class SpaceError(OrchestratorError):
    """A search space is invalid, or none exists for the model."""


class NoCompletedTrial(OrchestratorError):
    """The study has no completed trial to report."""


class NothingToReport(OrchestratorError):
    """The study has no completed trial, so a report would have nothing to show."""


class DashboardError(OrchestratorError):
    """The dashboard cannot listen where asked (a port in use, a bad host)."""


class DataError(OrchestratorError):
    """A dataset could not be fetched, or a file failed its check."""


class DataNotFound(OrchestratorError):
    """The trainer's --data-dir does not hold the dataset."""


class Interrupted(OrchestratorError):
    """SIGINT, SIGTERM or SIGHUP stopped the study; the exit code is the shell's 128 + N."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TrialNotUsable(OrchestratorError):
    """The trial asked for cannot be used: unknown, not completed, no recorded command, or
    a study with several objectives and no trial named."""


class RunsFailed(OrchestratorError):
    """Some trainer runs of `final` failed; the others were reported and recorded."""


class ReplayDiffers(OrchestratorError):
    """A replayed trial's metrics differ from the recorded ones beyond the tolerance."""


class ReplayFailed(OrchestratorError):
    """A replayed trial's process did not give a result to compare."""


class ArgumentsError(OrchestratorError):
    """Options that do not fit together, or arguments a sampler or pruner does not take."""
