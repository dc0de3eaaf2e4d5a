"""Opening Optuna storages and studies, with errors that name the URL and the study.

The default is an SQLite file in the current folder. Commands that only read (`best`,
`trials`) refuse a SQLite file that does not exist rather than creating an empty one.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from orchestrator.errors import StorageError, StudyNotFound

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///orchestrate.db"
STORAGE_ENV = "ORCHESTRATE_STORAGE"

# A trial whose process has not beaten for this long is stale (its orchestrator died), and
# the next `tune` on the study records it as FAIL.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


def open_storage(url: str, *, create: bool) -> optuna.storages.BaseStorage:
    """Opens the storage at `url`; with `create`, a missing SQLite file (and folder) is made."""
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        if create:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        elif not sqlite_file.is_file():
            raise StorageError(f"storage {url}: the SQLite file {sqlite_file} does not exist")

    try:
        with warnings.catch_warnings():
            # Heartbeats are marked experimental, which is no news to a user of this tool.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS if create else None,
                grace_period=GRACE_SECONDS if create else None,
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
        raise StorageError(f"cannot open storage {url}: {err}") from err


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return sorted(optuna.get_all_study_names(storage))


def load_study(name: str, url: str) -> optuna.Study:
    """Loads an existing study for reading; an unknown name lists the ones that exist."""
    storage = open_storage(url, create=False)
    names = study_names(storage)
    if name not in names:
        existing = ", ".join(names) if names else "none"
        raise StudyNotFound(f"no study {name!r} in {url} (studies there: {existing})")
    return optuna.load_study(study_name=name, storage=storage)


def _sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as err:
        raise StorageError(
            f"{url!r} is not a storage URL; expected for example {DEFAULT_STORAGE}"
        ) from err
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)
