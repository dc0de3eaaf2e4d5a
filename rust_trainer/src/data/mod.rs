//! Datasets as tensors on the training device, split into train, validation and test.
//!
//! The training file is split once with its own seed (`--split-seed`), independent of the
//! training seed, so every trial of a study validates on the same examples. The test file is
//! read only when asked for. Pixels are normalised per channel with the mean and standard
//! deviation of the training file itself.

pub mod augment;
pub mod cifar;
pub mod mnist;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::cli::DatasetKind;
use crate::config::Config;
use crate::error::usage;

/// The raw bytes of one file (or set of files): `count` images of `shape` and their labels.
#[derive(Debug)]
pub struct RawSplit {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub count: usize,
    /// Channels, height and width of one image; pixels are stored channel by channel.
    pub shape: [i64; 3],
}

/// Images (N x C x H x W, normalised float) and labels (N, int64) on one device.
#[derive(Debug)]
pub struct Dataset {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Dataset {
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices` (an int64 tensor on the same device).
    pub fn select(&self, indices: &Tensor) -> (Tensor, Tensor) {
        (self.images.index_select(0, indices), self.labels.index_select(0, indices))
    }
}

/// Per-channel mean and standard deviation of pixels scaled to [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Normalisation {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalisation {
    /// Computes the statistics of every pixel in `raw`, channel by channel.
    pub fn of(raw: &RawSplit) -> Self {
        let channels = raw.shape[0] as usize;
        let plane = (raw.shape[1] * raw.shape[2]) as usize;
        let mut sums = vec![0u64; channels];
        let mut squares = vec![0u64; channels];
        for image in raw.images.chunks_exact(channels * plane) {
            for (channel, pixels) in image.chunks_exact(plane).enumerate() {
                for &pixel in pixels {
                    sums[channel] += u64::from(pixel);
                    squares[channel] += u64::from(pixel) * u64::from(pixel);
                }
            }
        }
        let n = (raw.count * plane) as f64;
        let mean: Vec<f64> = sums.iter().map(|&s| s as f64 / n / 255.0).collect();
        let std = squares
            .iter()
            .zip(&mean)
            .map(|(&q, &m)| (q as f64 / n / (255.0 * 255.0) - m * m).max(1e-12).sqrt())
            .collect();
        Self { mean, std }
    }
}

#[derive(Debug)]
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Option<Dataset>,
    /// Channels, height and width of one example.
    pub shape: [i64; 3],
    pub classes: i64,
    pub normalisation: Normalisation,
}

/// Sizes of the validation and training parts of `total` examples. A fraction of 0 holds
/// nothing out (a final model trained on everything); any other keeps both parts non-empty.
pub fn split_sizes(total: usize, val_fraction: f64) -> (usize, usize) {
    if val_fraction == 0.0 {
        return (0, total);
    }
    let val = ((total as f64) * val_fraction).round() as usize;
    let val = val.clamp(1, total.saturating_sub(1));
    (val, total - val)
}

/// A seeded permutation of `0..total`: the first `val` indices validate, the rest train.
pub fn split_indices(total: usize, val: usize, seed: u64) -> (Vec<i64>, Vec<i64>) {
    let mut order: Vec<i64> = (0..total as i64).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let train = order.split_off(val);
    (order, train)
}

pub fn load(config: &Config, device: Device) -> anyhow::Result<Splits> {
    let (train, test, classes) = match config.dataset {
        DatasetKind::Mnist => {
            let dir = mnist::locate(&config.data_dir)?;
            let test = config.eval_test.then(|| mnist::load(&dir, "t10k")).transpose()?;
            (mnist::load(&dir, "train")?, test, mnist::CLASSES)
        }
        DatasetKind::Cifar10 => {
            let dir = cifar::locate(&config.data_dir)?;
            let test = config.eval_test.then(|| cifar::load(&dir, true)).transpose()?;
            (cifar::load(&dir, false)?, test, cifar::CLASSES)
        }
    };
    let normalisation = Normalisation::of(&train);
    let shape = train.shape;

    let (val_size, train_size) = split_sizes(train.count, config.val_fraction);
    let train_size = match config.train_limit {
        Some(limit) if limit > train_size => {
            return Err(usage(format!(
                "--train-limit ({limit}) is more than the {train_size} training examples left \
                 after --val-fraction {} holds out {val_size}",
                config.val_fraction
            )))
        }
        Some(limit) => limit,
        None => train_size,
    };
    let (val_idx, train_idx) = split_indices(train.count, val_size, config.split_seed);

    let all = RawTensors::new(&train, device);
    let train_set = all.select(&train_idx[..train_size], &normalisation);
    let val_set = all.select(&val_idx, &normalisation);
    drop(all);
    let test_set = test.map(|raw| {
        let every: Vec<i64> = (0..raw.count as i64).collect();
        RawTensors::new(&raw, device).select(&every, &normalisation)
    });

    Ok(Splits {
        train: train_set,
        val: val_set,
        test: test_set,
        shape,
        classes: i64::from(classes),
        normalisation,
    })
}

/// A whole file's bytes on the device, before any example is picked or converted.
struct RawTensors {
    images: Tensor,
    labels: Tensor,
}

impl RawTensors {
    fn new(raw: &RawSplit, device: Device) -> Self {
        let [channels, height, width] = raw.shape;
        let images = Tensor::from_slice(&raw.images)
            .view([raw.count as i64, channels, height, width])
            .to_device(device);
        let labels = Tensor::from_slice(&raw.labels).to_device(device);
        Self { images, labels }
    }

    /// The examples at `indices`, as normalised float images and int64 labels.
    fn select(&self, indices: &[i64], stats: &Normalisation) -> Dataset {
        let device = self.images.device();
        let channels = self.images.size()[1];
        let indices = Tensor::from_slice(indices).to_device(device);
        let per_channel = |values: &[f64]| {
            Tensor::from_slice(values)
                .to_kind(Kind::Float)
                .to_device(device)
                .view([1, channels, 1, 1])
        };

        // Converted only after selection, and in place, so that the whole file never exists
        // as floats: a small --train-limit then costs little.
        let mut images = self.images.index_select(0, &indices).to_kind(Kind::Float);
        let _ = images.g_div_scalar_(255.0);
        let _ = images.g_sub_(&per_channel(&stats.mean));
        let _ = images.g_div_(&per_channel(&stats.std));
        let labels = self.labels.index_select(0, &indices).to_kind(Kind::Int64);
        Dataset { images, labels }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_follow_the_fraction() {
        // MNIST's 60,000 training examples at the default 0.1.
        assert_eq!(split_sizes(60_000, 0.1), (6_000, 54_000));
        // Both parts keep at least one example.
        assert_eq!(split_sizes(10, 0.01), (1, 9));
        assert_eq!(split_sizes(10, 0.99), (9, 1));
        // Zero holds nothing out: every example trains.
        assert_eq!(split_sizes(60_000, 0.0), (0, 60_000));
    }

    #[test]
    fn split_is_a_seeded_partition() {
        let (val, train) = split_indices(100, 10, 7);
        // The two parts are disjoint and cover every index.
        let mut all: Vec<i64> = val.iter().chain(&train).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(val.len(), 10);
        // The same seed gives the same split; another seed another one.
        assert_eq!(split_indices(100, 10, 7), (val.clone(), train));
        assert_ne!(split_indices(100, 10, 8).0, val);
    }

    #[test]
    fn normalisation_is_per_channel() {
        // Two 1x2 images of two channels: channel 0 holds 0 and 255, channel 1 always 51.
        let raw = RawSplit {
            images: vec![0, 255, 51, 51, 255, 0, 51, 51],
            labels: vec![0, 1],
            count: 2,
            shape: [2, 1, 2],
        };
        let stats = Normalisation::of(&raw);
        assert!((stats.mean[0] - 0.5).abs() < 1e-12 && (stats.std[0] - 0.5).abs() < 1e-12);
        assert!((stats.mean[1] - 0.2).abs() < 1e-12 && stats.std[1] < 1e-5);
    }
}
