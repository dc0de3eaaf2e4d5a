"""Fetching and checking the datasets: real MNIST files served from a local mirror, damaged
copies, and the trainer reading what was downloaded."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import REAL_FLAGS, run_orchestrate

from orchestrator import datasets
from orchestrator.errors import DataError


def _mirror(tmp_path: Path, data_dir: Path) -> str:
    """A file:// mirror holding the real MNIST .gz files."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for stem in datasets.MNIST_FILES:
        name = f"{stem}.gz"
        (mirror / name).write_bytes((datasets.locate("mnist", data_dir) / name).read_bytes())
    return mirror.as_uri() + "/"


def test_real_mnist_verifies(data_dir: Path) -> None:
    checks = datasets.verify_mnist(datasets.locate("mnist", data_dir))
    # All four files, each matching the released content checksum.
    assert len(checks) == 4
    assert all(check.ok for check in checks), checks


def test_a_damaged_copy_fails_verification(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem in datasets.MNIST_FILES:
        source = datasets.locate("mnist", data_dir) / f"{stem}.gz"
        (folder / f"{stem}.gz").write_bytes(source.read_bytes())
    labels = folder / "train-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(content)))

    checks = {check.path.name: check for check in datasets.verify_mnist(folder)}
    # The changed label is caught by the checksum; the other files still pass.
    assert not checks["train-labels-idx1-ubyte.gz"].ok
    assert "expected a25bea73" in checks["train-labels-idx1-ubyte.gz"].detail
    assert checks["train-images-idx3-ubyte.gz"].ok


@pytest.mark.real
def test_download_from_a_mirror_then_train_on_it(
    tmp_path: Path, data_dir: Path, real_trainer: Path
) -> None:
    mirror = _mirror(tmp_path, data_dir)
    dest = tmp_path / "data"
    completed = run_orchestrate(
        ["data", "download", "--dataset", "mnist", "--dest", str(dest), "--mirror", mirror],
        cwd=tmp_path,
    )
    # The files land in DEST/mnist, verified.
    assert completed.returncode == 0, completed.stderr
    assert all(check.ok for check in datasets.verify_mnist(dest / "mnist"))

    trained = subprocess.run(
        [str(real_trainer), "train", "--data-dir", str(dest), "--epochs", "1", *REAL_FLAGS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # The trainer reads what was downloaded, through the root folder.
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["status"] == "completed"


def test_a_file_failing_its_checksum_is_not_kept(tmp_path: Path, data_dir: Path) -> None:
    mirror_uri = _mirror(tmp_path, data_dir)
    bad = tmp_path / "mirror" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20))
    dest = tmp_path / "data"

    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz failed its checksum"):
        datasets.download_mnist(dest, (mirror_uri,))
    # Files checked before the bad one are kept; the bad one and no partial file remain.
    kept = sorted(path.name for path in (dest / "mnist").iterdir())
    assert "t10k-labels-idx1-ubyte.gz" not in kept
    assert "train-images-idx3-ubyte.gz" in kept
    assert all(not name.startswith("tmp") for name in kept)


def test_an_unreachable_mirror_names_the_url(tmp_path: Path) -> None:
    missing = (tmp_path / "nowhere").as_uri() + "/"
    with pytest.raises(DataError, match=r"could not download train-images-idx3-ubyte.gz.*nowhere"):
        datasets.download_mnist(tmp_path / "data", (missing,))


def test_a_cifar_archive_with_the_wrong_checksum_is_refused(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        payload = b"\x01" + b"\x00" * 3072
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    (mirror / datasets.CIFAR10_ARCHIVE).write_bytes(buffer.getvalue())

    with pytest.raises(DataError, match="failed its checksum"):
        datasets.download_cifar10(tmp_path / "data", (mirror.as_uri() + "/",))
    # Nothing was unpacked.
    unpacked = tmp_path / "data" / "cifar10" / "cifar-10-batches-bin" / "data_batch_1.bin"
    assert not unpacked.exists()


def test_verify_exits_1_when_files_are_missing(tmp_path: Path) -> None:
    completed = run_orchestrate(
        ["data", "verify", "--dataset", "cifar10", "--data-dir", str(tmp_path)], cwd=tmp_path
    )
    # A missing dataset is reported file by file, and the exit code says so.
    assert completed.returncode == 1
    assert "data_batch_1.bin" in completed.stdout and "missing" in completed.stdout
    assert "cifar10: files missing or damaged" in completed.stderr
    # The message names the command that fetches the missing files.
    assert f"orchestrate data download --dataset cifar10 --dest {tmp_path}" in completed.stderr
