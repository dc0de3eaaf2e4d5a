//! CIFAR-10 in the official binary layout: `cifar-10-batches-bin/data_batch_1.bin` ..
//! `data_batch_5.bin` and `test_batch.bin`, each a run of 3073-byte records (one label byte,
//! then 1024 red, 1024 green and 1024 blue pixels, rows top to bottom).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::RawSplit;
use crate::error::data;

pub const SIDE: usize = 32;
pub const CHANNELS: usize = 3;
pub const CLASSES: u8 = 10;
const PIXELS: usize = CHANNELS * SIDE * SIDE;
const RECORD: usize = 1 + PIXELS;

pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";

/// The folder holding the batch files: `dir`, `dir/cifar-10-batches-bin` or
/// `dir/cifar10/cifar-10-batches-bin`.
pub fn locate(dir: &Path) -> anyhow::Result<PathBuf> {
    let candidates = [
        dir.to_path_buf(),
        dir.join("cifar-10-batches-bin"),
        dir.join("cifar10").join("cifar-10-batches-bin"),
    ];
    for candidate in &candidates {
        if candidate.join(TRAIN_FILES[0]).is_file() {
            return Ok(candidate.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(data(format!(
        "no CIFAR-10 binary files ({}) in {}; point --data-dir (or RUST_TRAINER_DATA_DIR) at \
         the folder that holds cifar-10-batches-bin/, or fetch it with \
         `orchestrate data download --dataset cifar10`",
        TRAIN_FILES[0],
        tried.join(", ")
    )))
}

/// Reads the five training batches, or the test batch.
pub fn load(dir: &Path, test: bool) -> anyhow::Result<RawSplit> {
    let files: &[&str] = if test { &[TEST_FILE] } else { &TRAIN_FILES };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in files {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(data(format!("missing CIFAR-10 file {}", path.display())));
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(data(format!(
                "{}: {} bytes is not a whole number of {RECORD}-byte records; the file is \
                 truncated or not a CIFAR-10 batch",
                path.display(),
                bytes.len()
            )));
        }
        for (index, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] >= CLASSES {
                return Err(data(format!(
                    "{}: label {} of record {index} is outside 0..{CLASSES}",
                    path.display(),
                    record[0]
                )));
            }
            labels.push(record[0]);
            images.extend_from_slice(&record[1..]);
        }
    }
    let count = labels.len();
    Ok(RawSplit { images, labels, count, shape: [CHANNELS as i64, SIDE as i64, SIDE as i64] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_batches(dir: &Path, records_per_file: usize) {
        for (file_index, name) in TRAIN_FILES.iter().chain([&TEST_FILE]).enumerate() {
            let mut bytes = Vec::new();
            for record in 0..records_per_file {
                bytes.push(((file_index + record) % 10) as u8);
                bytes.extend(std::iter::repeat_n(record as u8, PIXELS));
            }
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn reads_all_five_training_batches() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&dir).unwrap();
        write_batches(&dir, 4);
        // A root holding cifar-10-batches-bin/ resolves to it.
        assert_eq!(locate(root.path()).unwrap(), dir);

        let train = load(&dir, false).unwrap();
        // Five files of four records, every record 3072 pixels.
        assert_eq!(train.count, 20);
        assert_eq!(train.images.len(), 20 * PIXELS);
        assert_eq!(&train.labels[..4], &[0, 1, 2, 3]);
        assert_eq!(load(&dir, true).unwrap().count, 4);
    }

    #[test]
    fn truncated_batch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_batches(dir.path(), 2);
        let path = dir.path().join("data_batch_3.bin");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let err = load(dir.path(), false).unwrap_err();
        let text = format!("{err:#}");
        // A data error (exit 3) that names the broken file.
        assert_eq!(crate::error::ErrorKind::of(&err), crate::error::ErrorKind::Data);
        assert!(text.contains("data_batch_3.bin") && text.contains("not a whole number"), "{text}");
    }

    #[test]
    fn label_out_of_range_is_a_data_error() {
        let dir = tempfile::tempdir().unwrap();
        write_batches(dir.path(), 2);
        let path = dir.path().join("test_batch.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[RECORD] = 42;
        std::fs::write(&path, bytes).unwrap();
        let text = format!("{:#}", load(dir.path(), true).unwrap_err());
        assert!(text.contains("label 42 of record 1"), "{text}");
    }
}
