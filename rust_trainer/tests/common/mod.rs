//! Helpers shared by the integration tests: the built binary and the real datasets.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The real datasets: `RUST_TRAINER_DATA_DIR`, else `shared/datasets` beside the checkout.
pub fn datasets() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUST_TRAINER_DATA_DIR") {
        return PathBuf::from(dir);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets");
    assert!(
        dir.join("mnist").is_dir(),
        "the real MNIST files are needed: set RUST_TRAINER_DATA_DIR or place them in {}",
        dir.display()
    );
    dir
}

pub fn trainer() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rust-trainer"));
    command.env_remove("RUST_TRAINER_DATA_DIR");
    command
}

/// A small, quick training run on real MNIST; `extra` flags come last and win.
pub fn train(extra: &[&str]) -> Output {
    let data_dir = datasets();
    let mut args = vec![
        "train",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--train-limit",
        "1000",
        "--val-fraction",
        "0.02",
        "--epochs",
        "1",
        "--threads",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    trainer().args(&args).output().expect("the trainer starts")
}

/// Every stdout line parsed as JSON; panics on a line that is not.
pub fn events(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

pub fn find<'a>(events: &'a [Value], name: &str) -> Option<&'a Value> {
    events.iter().find(|event| event["event"] == name)
}

/// A copy of the MNIST folder in a temporary directory, for tests that break a file.
pub fn mnist_copy() -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(datasets().join("mnist")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    copy
}

/// A balanced CIFAR-10 subset (100 training and 20 test images per class) in the official
/// binary layout: `RUST_TRAINER_CIFAR_DIR`, else made once under the build folder from the
/// shared JPEG archive by its `to_binary.py` (which needs numpy and Pillow).
pub fn cifar_subset() -> PathBuf {
    static MADE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        if let Some(dir) = std::env::var_os("RUST_TRAINER_CIFAR_DIR") {
            return PathBuf::from(dir);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cifar10-subset");
        let marker = root.join("cifar-10-batches-bin/test_batch.bin");
        if !marker.is_file() {
            let script = datasets().join("cifar10/to_binary.py");
            let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
            let status = Command::new(&python)
                .arg(&script)
                .arg(&root)
                .args(["--train-per-class", "100", "--test-per-class", "20"])
                .status()
                .unwrap_or_else(|e| panic!("running {python} {}: {e}", script.display()));
            assert!(status.success(), "{} failed; it needs numpy and Pillow", script.display());
        }
        root
    })
    .clone()
}

/// A short run on the CIFAR-10 subset; `extra` flags come last and win.
pub fn train_cifar(extra: &[&str]) -> Output {
    let data_dir = cifar_subset();
    let mut args = vec![
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--epochs",
        "1",
        "--threads",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    trainer().args(&args).output().expect("the trainer starts")
}

pub fn epoch_values(events: &[Value], field: &str) -> Vec<f64> {
    events.iter().filter(|e| e["event"] == "epoch").map(|e| e[field].as_f64().unwrap()).collect()
}
