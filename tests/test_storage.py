from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from orchestrator.errors import StorageError, StudyNotFound
from orchestrator.storage import load_study, open_storage


def test_tune_creates_the_sqlite_file_and_its_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'studies.db'}"

    open_storage(url, create=True)

    # A storage that will be written may be created, folder included.
    assert (tmp_path / "new" / "studies.db").is_file()


def test_reading_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"

    # A read-only command names the missing file instead of making an empty one.
    with pytest.raises(StorageError, match=r"typo\.db does not exist"):
        open_storage(url, create=False)
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://host/db"])
def test_a_bad_url_is_a_storage_error(url: str) -> None:
    # The message names the URL.
    with pytest.raises(StorageError, match=r"storage URL|cannot open storage"):
        open_storage(url, create=True)


def test_an_unknown_study_lists_the_existing_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    for name in ("cnn-mnist", "cnn-fast"):
        optuna.create_study(study_name=name, storage=url)

    # The error names the study and the storage, and lists what is there.
    with pytest.raises(StudyNotFound, match=r"no study 'cnn' in .*cnn-fast, cnn-mnist"):
        load_study("cnn", url)
    # A known name loads.
    assert load_study("cnn-fast", url).study_name == "cnn-fast"
