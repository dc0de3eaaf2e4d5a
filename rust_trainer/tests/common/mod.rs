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
