//! MNIST in the IDX format, raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
//! dimensions), one big-endian `u32` per dimension, then the values. Both the images and the
//! labels are unsigned bytes (type code 0x08).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use flate2::read::GzDecoder;

use super::RawSplit;
use crate::error::data;

pub const ROWS: usize = 28;
pub const COLS: usize = 28;
pub const CLASSES: u8 = 10;

/// The folder holding the MNIST files: `dir` itself, or `dir/mnist`.
pub fn locate(dir: &Path) -> anyhow::Result<PathBuf> {
    let candidates = [dir.to_path_buf(), dir.join("mnist")];
    for candidate in &candidates {
        if find(candidate, "train-images-idx3-ubyte").is_some() {
            return Ok(candidate.clone());
        }
    }
    Err(data(format!(
        "no MNIST files (train-images-idx3-ubyte[.gz]) in {} or {}; point --data-dir \
         (or RUST_TRAINER_DATA_DIR) at the folder that holds them, or fetch them with \
         `orchestrate data download`",
        candidates[0].display(),
        candidates[1].display()
    )))
}

/// Reads the training or the test split (`prefix` is `train` or `t10k`).
pub fn load(dir: &Path, prefix: &str) -> anyhow::Result<RawSplit> {
    let images_path = require(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = require(dir, &format!("{prefix}-labels-idx1-ubyte"))?;

    let (dims, images) = read_idx(&images_path, 3)?;
    if dims[1..] != [ROWS, COLS] {
        return Err(data(format!(
            "{}: images are {}x{}, expected {ROWS}x{COLS}",
            images_path.display(),
            dims[1],
            dims[2]
        )));
    }

    let (label_dims, labels) = read_idx(&labels_path, 1)?;
    if label_dims[0] != dims[0] {
        return Err(data(format!(
            "{} holds {} labels but {} holds {} images",
            labels_path.display(),
            label_dims[0],
            images_path.display(),
            dims[0]
        )));
    }
    if let Some(position) = labels.iter().position(|&label| label >= CLASSES) {
        return Err(data(format!(
            "{}: label {} at record {position} is outside 0..{CLASSES}",
            labels_path.display(),
            labels[position]
        )));
    }

    Ok(RawSplit { images, labels, count: dims[0], shape: [1, ROWS as i64, COLS as i64] })
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(stem), dir.join(format!("{stem}.gz"))].into_iter().find(|path| path.is_file())
}

fn require(dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    find(dir, stem).ok_or_else(|| {
        data(format!("missing MNIST file {stem} (or {stem}.gz) in {}", dir.display()))
    })
}

/// Reads an IDX file of unsigned bytes with `rank` dimensions; returns the dimensions and data.
pub fn read_idx(path: &Path, rank: usize) -> anyhow::Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    let fail = |what: String| data(format!("{}: {what}", path.display()));

    let expected_magic = [0, 0, 0x08, rank as u8];
    if bytes.len() >= 4 && bytes[..4] != expected_magic {
        return Err(fail(format!(
            "bad magic number {:02x?}, expected {expected_magic:02x?} (an IDX file of {rank} \
             dimension(s) of unsigned bytes)",
            &bytes[..4]
        )));
    }
    let header_len = 4 + 4 * rank;
    if bytes.len() < header_len {
        return Err(fail(format!(
            "file is truncated ({} bytes, its header needs {header_len})",
            bytes.len()
        )));
    }

    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|chunk| u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize)
        .collect();
    let expected = dims.iter().product::<usize>();
    let body = &bytes[header_len..];
    if body.len() < expected {
        return Err(fail(format!(
            "file is truncated: dimensions {dims:?} need {expected} bytes of data, found {}",
            body.len()
        )));
    }
    if body.len() > expected {
        return Err(fail(format!(
            "{} unexpected bytes after the {expected} bytes that dimensions {dims:?} describe",
            body.len() - expected
        )));
    }
    Ok((dims, body.to_vec()))
}

fn read_maybe_gz(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut plain = Vec::with_capacity(bytes.len() * 4);
    GzDecoder::new(bytes.as_slice()).read_to_end(&mut plain).map_err(|err| {
        data(format!(
            "{}: not a complete gzip stream ({err}); the file may be truncated",
            path.display()
        ))
    })?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn idx(rank: u8, dims: &[u32], values: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, 0x08, rank];
        for dim in dims {
            bytes.extend_from_slice(&dim.to_be_bytes());
        }
        bytes.extend_from_slice(values);
        bytes
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn write_split(dir: &Path, prefix: &str, count: u32, labels: &[u8], compress: bool) {
        let pixels = vec![7u8; count as usize * ROWS * COLS];
        let images = idx(3, &[count, ROWS as u32, COLS as u32], &pixels);
        let labels = idx(1, &[labels.len() as u32], labels);
        let (images, labels, ext) =
            if compress { (gz(&images), gz(&labels), ".gz") } else { (images, labels, "") };
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), labels).unwrap();
    }

    fn error_text(result: anyhow::Result<RawSplit>) -> String {
        let err = result.unwrap_err();
        // Every loader failure is a data error, so the process exits 3.
        assert_eq!(crate::error::ErrorKind::of(&err), crate::error::ErrorKind::Data);
        format!("{err:#}")
    }

    #[test]
    fn reads_raw_and_gzip_files_alike() {
        let raw = tempfile::tempdir().unwrap();
        let packed = tempfile::tempdir().unwrap();
        write_split(raw.path(), "train", 3, &[1, 2, 3], false);
        write_split(packed.path(), "train", 3, &[1, 2, 3], true);

        let a = load(raw.path(), "train").unwrap();
        let b = load(packed.path(), "train").unwrap();
        // Both encodings give the same records.
        assert_eq!(a.count, 3);
        assert_eq!(a.labels, vec![1, 2, 3]);
        assert_eq!(a.images.len(), 3 * ROWS * COLS);
        assert_eq!(a.images, b.images);
        assert_eq!(a.labels, b.labels);
    }

    #[test]
    fn finds_files_under_a_root_holding_mnist() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("mnist")).unwrap();
        write_split(&root.path().join("mnist"), "train", 1, &[0], true);
        // A root with a mnist/ folder resolves to that folder.
        assert_eq!(locate(root.path()).unwrap(), root.path().join("mnist"));
    }

    #[test]
    fn missing_folder_names_both_places() {
        let root = tempfile::tempdir().unwrap();
        let text = format!("{:#}", locate(root.path()).unwrap_err());
        // The message says where it looked and how to fix it.
        assert!(text.contains("--data-dir"), "{text}");
        assert!(text.contains(&root.path().join("mnist").display().to_string()), "{text}");
    }

    #[test]
    fn truncated_file_is_a_data_error() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 2, &[0, 1], false);
        let path = dir.path().join("train-images-idx3-ubyte");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let text = error_text(load(dir.path(), "train"));
        // The message names the file and says it is truncated.
        assert!(text.contains("train-images-idx3-ubyte"), "{text}");
        assert!(text.contains("truncated"), "{text}");
    }

    #[test]
    fn truncated_gzip_is_a_data_error() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 2, &[0, 1], true);
        let path = dir.path().join("train-labels-idx1-ubyte.gz");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let text = error_text(load(dir.path(), "train"));
        assert!(text.contains("train-labels-idx1-ubyte.gz"), "{text}");
    }

    #[test]
    fn wrong_magic_is_a_data_error() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 2, &[0, 1], false);
        // A labels file where the images should be: rank 1 instead of 3.
        std::fs::copy(
            dir.path().join("train-labels-idx1-ubyte"),
            dir.path().join("train-images-idx3-ubyte"),
        )
        .unwrap();
        let text = error_text(load(dir.path(), "train"));
        assert!(text.contains("bad magic number"), "{text}");
    }

    #[test]
    fn label_count_must_match_image_count() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 3, &[0, 1], false);
        let text = error_text(load(dir.path(), "train"));
        assert!(text.contains("holds 2 labels"), "{text}");
    }

    #[test]
    fn labels_must_be_digits() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 2, &[0, 12], false);
        let text = error_text(load(dir.path(), "train"));
        assert!(text.contains("label 12 at record 1"), "{text}");
    }
}
