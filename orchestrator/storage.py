"""Opening Optuna storages and studies, with errors that name the URL and the study.

Three kinds of storage, chosen by the URL:

- `sqlite:///orchestrate.db` (the default): an SQLite file, shared by the processes of one
  machine. Every transaction starts with BEGIN IMMEDIATE and waits up to a minute for the
  file's lock, so concurrent workers queue up instead of failing with "database is locked",
  and Optuna's check-then-set steps (taking a queued trial) stay atomic. The file is in
  write-ahead-log mode with synchronous=NORMAL, which makes a commit about seven times
  faster (a power cut may lose the last few). Opening the file (Optuna creates its tables
  then) is retried when another worker is doing the same.
- `postgresql://user@host/db` (any SQLAlchemy URL): a database server that workers on many
  machines share. Workers that start together create the tables one at a time.
- `journal:///studies.log`: Optuna's journal file, one append-only log with a file lock.
  Like SQLite's, three slashes start a relative path and four an absolute one.

On the database storages a running trial beats every `Heartbeat.interval` seconds. A trial
whose beat is older than the grace period lost its worker (a SIGKILL, a lost machine): the
next worker records it as FAIL and queues the same parameters again as a new trial. The
journal storage has no heartbeat. Commands that only read (`best`, `trials`) refuse a file
that does not exist rather than creating an empty one.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import sqlite3
import time
import warnings
import weakref
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.pool
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, make_url

from orchestrator.errors import StorageError, StudyNotFound

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///orchestrate.db"
STORAGE_ENV = "ORCHESTRATE_STORAGE"
JOURNAL_SCHEME = "journal://"

# How long an SQLite transaction waits for another process's lock before giving up.
SQLITE_BUSY_SECONDS = 60
_SQLITE_OPEN_ATTEMPTS = 5
# The SQLite engines whose transactions begin IMMEDIATE: those of open_storage, once Optuna
# has set up the file (its set-up nests two connections, which IMMEDIATE would deadlock).
_IMMEDIATE_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
# The PostgreSQL advisory lock that workers hold while creating Optuna's tables.
_SCHEMA_LOCK = zlib.crc32(b"orchestrate: optuna schema")


@dataclass(frozen=True)
class Heartbeat:
    """How a running trial proves its worker is alive, and what happens when it stops."""

    interval: int = 30
    # A trial is stale after this long without a beat; by default four intervals.
    grace: int | None = None
    # How many times one set of parameters is queued again after a lost worker.
    max_retry: int = 3

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ValueError(f"the heartbeat interval must be >= 1 s, but got {self.interval}")
        if self.grace is not None and self.grace <= self.interval:
            raise ValueError(
                f"the heartbeat grace ({self.grace} s) must exceed the interval "
                f"({self.interval} s)"
            )

    @property
    def grace_seconds(self) -> int:
        return self.grace if self.grace is not None else 4 * self.interval


def open_storage(
    url: str, *, create: bool, heartbeat: Heartbeat | None = None
) -> optuna.storages.BaseStorage:
    """Opens the storage at `url`; with `create`, a missing file (and its folder) is made.

    `heartbeat` turns on heartbeats and the retry of stale trials (database storages only).
    """
    if url.startswith("journal:"):
        return _open_journal(url, create=create)

    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        if create:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        elif not sqlite_file.is_file():
            raise StorageError(f"storage {url}: the SQLite file {sqlite_file} does not exist")

    sqlite = url.startswith("sqlite:")
    engine_kwargs: dict[str, Any]
    if sqlite_file is not None:
        engine_kwargs = {"creator": functools.partial(_sqlite_connection, sqlite_file)}
    elif sqlite:
        engine_kwargs = {"connect_args": {"isolation_level": None}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    retry: Any = None
    with warnings.catch_warnings():
        # Heartbeats are marked experimental, which is no news to a user of this tool.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat is not None:
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry)

        def make() -> optuna.storages.RDBStorage:
            with _schema_lock(url):
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat.interval if heartbeat else None,
                    grace_period=heartbeat.grace_seconds if heartbeat else None,
                    heartbeat_stale_trial_callback=retry,
                )

        try:
            storage: optuna.storages.RDBStorage = _retried(
                make, attempts=_SQLITE_OPEN_ATTEMPTS if sqlite else 1
            )
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
            raise StorageError(f"cannot open storage {url}: {_reason(err)}") from err
        except (ImportError, ValueError) as err:
            raise StorageError(f"cannot open storage {url}: {_first_line(err)}") from err

    if sqlite:
        _IMMEDIATE_ENGINES.add(storage.engine)
    return storage


def set_trial_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Sets several user attributes of a running trial, in one transaction on SQLite and
    PostgreSQL (Optuna's API takes one attribute a call, and so one transaction each: a
    dozen of them per trial were most of what the orchestrator spent between two trials).
    Other storages get one call an attribute."""
    if not attrs:
        return
    backend = _rdb_backend(trial.storage)
    if backend is None or backend.engine.name not in ("sqlite", "postgresql"):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    rows = [
        {"trial_id": trial._trial_id, "key": key, "value_json": json.dumps(value)}
        for key, value in attrs.items()
    ]
    table = models.TrialUserAttributeModel
    dialect = sqlite_dialect if backend.engine.name == "sqlite" else postgresql_dialect
    insert = dialect.insert(table).values(rows)
    upsert = insert.on_conflict_do_update(
        index_elements=[table.trial_id, table.key],
        set_={"value_json": insert.excluded.value_json},
    )
    with _create_scoped_session(backend.scoped_session, True) as session:
        # As Optuna's own setter: a finished trial's attributes stay as they are.
        found = models.TrialModel.find_or_raise_by_id(trial._trial_id, session)
        backend.check_trial_is_updatable(trial._trial_id, found.state)
        session.execute(upsert)
    # What trial.user_attrs shows, as Optuna's setter keeps it.
    trial._cached_frozen_trial.user_attrs.update(attrs)


def _rdb_backend(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The database storage under Optuna's caching wrapper, if that is what `storage` is."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def journal_file(url: str) -> Path:
    """The file of a `journal:///relative` or `journal:////absolute` URL."""
    rest = url[len(JOURNAL_SCHEME) :] if url.startswith(JOURNAL_SCHEME) else ""
    if not rest.startswith("/") or rest == "/":
        raise StorageError(
            f"{url!r} is not a journal URL; expected journal:///relative/file.log or "
            "journal:////absolute/file.log"
        )
    return Path(rest[1:])


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


def fail_stale_trials(study: optuna.Study) -> None:
    """Records the trials of dead workers as FAIL now (Optuna does so before each trial)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _open_journal(url: str, *, create: bool) -> optuna.storages.BaseStorage:
    path = journal_file(url)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise StorageError(f"storage {url}: the journal file {path} does not exist")
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as err:
        raise StorageError(f"cannot open storage {url}: {err}") from err


class _schema_lock:
    """Holds a PostgreSQL advisory lock while Optuna creates its tables: CREATE TABLE from
    workers that start together would otherwise race. Other databases need nothing."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: Engine | None = None
        self._connection: Connection | None = None

    def __enter__(self) -> None:
        if not self._url.startswith("postgresql"):
            return
        self._engine = sqlalchemy.create_engine(self._url, poolclass=sqlalchemy.pool.NullPool)
        self._connection = self._engine.connect()
        self._connection.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({_SCHEMA_LOCK})"))

    def __exit__(self, *exc: object) -> None:
        if self._connection is not None:
            self._connection.close()  # closing the session releases its advisory locks
        if self._engine is not None:
            self._engine.dispose()


@event.listens_for(Engine, "begin")
def _begin_immediate(connection: Connection) -> None:
    # Takes SQLite's write lock at the start, so a transaction never has to upgrade a read
    # lock later (which fails at once, whatever the busy timeout, when another writer
    # waits) and what it read stays true until it commits.
    if connection.engine in _IMMEDIATE_ENGINES:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _retried(
    make: Callable[[], optuna.storages.RDBStorage], attempts: int
) -> optuna.storages.RDBStorage:
    """Runs `make`, again after a short pause when it fails on a database error: workers
    that open a new SQLite file together race to create its tables, and the losers find
    them made on the next try."""
    for attempt in range(1, attempts + 1):
        try:
            return make()
        except (sqlalchemy.exc.DBAPIError, optuna.exceptions.StorageInternalError):
            if attempt == attempts:
                raise
            logger.debug("opening the storage failed (attempt %d); trying again", attempt)
            time.sleep(random.uniform(0.1, 0.5) * attempt)
    raise AssertionError("unreachable")


def _sqlite_connection(path: Path) -> sqlite3.Connection:
    # isolation_level None: the driver begins no transaction of its own; _begin_immediate
    # does. SQLAlchemy shares connections between threads through its pool.
    connection = sqlite3.connect(
        path, timeout=SQLITE_BUSY_SECONDS, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as err:
        raise StorageError(
            f"{url!r} is not a storage URL; expected for example {DEFAULT_STORAGE}, "
            "postgresql://user@host/db or journal:///studies.log"
        ) from err
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _reason(err: BaseException) -> str:
    # Optuna wraps the driver's error in a generic one; the driver's says what happened.
    cause = err.__cause__ if isinstance(err, optuna.exceptions.StorageInternalError) else err
    if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.orig is not None:
        return _first_line(cause.orig)
    return _first_line(cause or err)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
