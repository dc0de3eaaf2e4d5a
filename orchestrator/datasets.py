"""Fetching and checking the datasets the trainer reads.

Downloads come from the usual public mirrors and are checked before anything is written
under the destination: MNIST by the MD5 of each file's uncompressed content (so a copy that
was recompressed still verifies), CIFAR-10 by the MD5 of the official binary archive. The
trainer is pointed at the result with `--data-dir` or `RUST_TRAINER_DATA_DIR`.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import DataError

logger = logging.getLogger(__name__)

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# MD5 of each file's uncompressed bytes, as released.
MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_FILES = (
    *(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test_batch.bin",
    "batches.meta.txt",
)
CIFAR10_RECORD = 3073

DATASETS = ("mnist", "cifar10")


@dataclass(frozen=True)
class FileCheck:
    path: Path
    ok: bool
    detail: str


def _md5(stream_path: Path, *, uncompress: bool) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    opener = gzip.open if uncompress else open
    with opener(stream_path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(name: str, mirrors: tuple[str, ...], target: Path) -> None:
    """Downloads `name` from the first mirror that answers into `target`."""
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        logger.info("fetching %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:
                shutil.copyfileobj(response, out)
            return
        except (urllib.error.URLError, OSError, ValueError) as error:
            failures.append(f"{url}: {error}")
    raise DataError(f"could not download {name}; tried " + "; ".join(failures))


def download_mnist(dest: Path, mirrors: tuple[str, ...] = MNIST_MIRRORS) -> Path:
    """Fetches the four MNIST files into `dest/mnist`, each checked before it is kept."""
    folder = dest / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for stem, md5 in MNIST_FILES.items():
        target = folder / f"{stem}.gz"
        if target.is_file() and _md5(target, uncompress=True) == md5:
            logger.info("%s is already here and verified", target)
            continue
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            partial = Path(scratch) / target.name
            _fetch(target.name, mirrors, partial)
            try:
                found = _md5(partial, uncompress=True)
            except (OSError, EOFError) as error:
                raise DataError(f"{target.name} from the mirror is not gzip ({error})") from None
            if found != md5:
                raise DataError(
                    f"{target.name} failed its checksum (MD5 of the content {found}, expected "
                    f"{md5}); nothing was written"
                )
            partial.replace(target)
    return folder


def download_cifar10(dest: Path, mirrors: tuple[str, ...] = CIFAR10_MIRRORS) -> Path:
    """Fetches the official binary archive, checks it, and unpacks its batch files."""
    folder = dest / "cifar10" / "cifar-10-batches-bin"
    if all(check.ok for check in verify_cifar10(folder)):
        logger.info("%s is already here and complete", folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        archive = Path(scratch) / CIFAR10_ARCHIVE
        _fetch(CIFAR10_ARCHIVE, mirrors, archive)
        found = _md5(archive, uncompress=False)
        if found != CIFAR10_ARCHIVE_MD5:
            raise DataError(
                f"{CIFAR10_ARCHIVE} failed its checksum (MD5 {found}, expected "
                f"{CIFAR10_ARCHIVE_MD5}); nothing was written"
            )
        try:
            with tarfile.open(archive) as tar:
                for name in CIFAR10_FILES:
                    member = tar.getmember(f"cifar-10-batches-bin/{name}")
                    source = tar.extractfile(member)
                    if source is None:
                        raise DataError(f"{CIFAR10_ARCHIVE}: {name} is not a regular file")
                    with source, (folder / name).open("wb") as out:
                        shutil.copyfileobj(source, out)
        except (tarfile.TarError, KeyError) as error:
            raise DataError(f"{CIFAR10_ARCHIVE} is not the expected archive ({error})") from None
    return folder


def verify_mnist(folder: Path) -> list[FileCheck]:
    """Checks each MNIST file found in `folder` (raw or .gz) against its content MD5."""
    checks = []
    for stem, md5 in MNIST_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            checks.append(FileCheck(candidates[1], False, "missing"))
            continue
        try:
            found = _md5(path, uncompress=path.suffix == ".gz")
        except (OSError, EOFError) as error:
            checks.append(FileCheck(path, False, f"unreadable ({error})"))
            continue
        detail = "ok" if found == md5 else f"MD5 {found}, expected {md5}"
        checks.append(FileCheck(path, found == md5, detail))
    return checks


def verify_cifar10(folder: Path) -> list[FileCheck]:
    """Checks that each CIFAR-10 batch file is present and a whole number of records.

    The batches carry no checksum of their own (only the archive does), so this checks their
    shape: 10,000 records of 3073 bytes, labels 0 to 9.
    """
    checks = []
    for name in CIFAR10_FILES[:-1]:
        path = folder / name
        if not path.is_file():
            checks.append(FileCheck(path, False, "missing"))
            continue
        data = path.read_bytes()
        if len(data) % CIFAR10_RECORD:
            checks.append(FileCheck(path, False, f"{len(data)} bytes is not whole records"))
            continue
        labels = data[::CIFAR10_RECORD]
        if max(labels, default=0) > 9:
            checks.append(FileCheck(path, False, "a label is outside 0..9"))
            continue
        records = len(data) // CIFAR10_RECORD
        note = "ok" if records == 10000 else f"ok ({records} records: a subset)"
        checks.append(FileCheck(path, True, note))
    return checks


def locate(dataset: str, data_dir: Path) -> Path:
    """The folder holding `dataset`'s files under `data_dir`, as the trainer resolves it."""
    if dataset == "mnist":
        candidates = [data_dir, data_dir / "mnist"]
        marker = "train-images-idx3-ubyte"
        for candidate in candidates:
            if any((candidate / name).is_file() for name in (marker, f"{marker}.gz")):
                return candidate
    else:
        candidates = [
            data_dir,
            data_dir / "cifar-10-batches-bin",
            data_dir / "cifar10" / "cifar-10-batches-bin",
        ]
        for candidate in candidates:
            if (candidate / "data_batch_1.bin").is_file():
                return candidate
    return candidates[-1]
