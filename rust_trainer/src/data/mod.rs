//! Datasets as tensors on the training device, split into train, validation and test.
//!
//! The training file is split once with its own seed (`--split-seed`), independent of the
//! training seed, so every trial of a study validates on the same examples. The test file is
//! read only when asked for.

pub mod mnist;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::cli::DatasetKind;
use crate::config::Config;
use crate::error::usage;

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
        (
            self.images.index_select(0, indices),
            self.labels.index_select(0, indices),
        )
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
}

/// Sizes of the validation and training parts of `total` examples.
pub fn split_sizes(total: usize, val_fraction: f64) -> (usize, usize) {
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
    match config.dataset {
        DatasetKind::Mnist => load_mnist(config, device),
    }
}

fn load_mnist(config: &Config, device: Device) -> anyhow::Result<Splits> {
    let dir = mnist::locate(&config.data_dir)?;
    let shape = [1, mnist::ROWS as i64, mnist::COLS as i64];
    let stats = Normalisation {
        mean: &[mnist::MEAN],
        std: &[mnist::STD],
    };
    let raw = mnist::load(&dir, "train")?;

    let (val_size, train_size) = split_sizes(raw.count, config.val_fraction);
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
    let (val_idx, train_idx) = split_indices(raw.count, val_size, config.split_seed);

    let all = RawTensors::new(&raw.images, &raw.labels, raw.count, shape, device);
    let train = all.select(&train_idx[..train_size], &stats);
    let val = all.select(&val_idx, &stats);
    drop(all);

    let test = if config.eval_test {
        let raw = mnist::load(&dir, "t10k")?;
        let all = RawTensors::new(&raw.images, &raw.labels, raw.count, shape, device);
        Some(all.select(&(0..raw.count as i64).collect::<Vec<_>>(), &stats))
    } else {
        None
    };

    Ok(Splits {
        train,
        val,
        test,
        shape,
        classes: mnist::CLASSES as i64,
    })
}

/// Per-channel mean and standard deviation of pixels scaled to [0, 1].
struct Normalisation<'a> {
    mean: &'a [f64],
    std: &'a [f64],
}

/// A whole file's bytes on the device, before any example is picked or converted.
struct RawTensors {
    images: Tensor,
    labels: Tensor,
}

impl RawTensors {
    fn new(images: &[u8], labels: &[u8], count: usize, shape: [i64; 3], device: Device) -> Self {
        let [channels, height, width] = shape;
        let images = Tensor::from_slice(images)
            .view([count as i64, channels, height, width])
            .to_device(device);
        let labels = Tensor::from_slice(labels).to_device(device);
        Self { images, labels }
    }

    /// The examples at `indices`, as normalised float images and int64 labels.
    fn select(&self, indices: &[i64], stats: &Normalisation<'_>) -> Dataset {
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
        let _ = images.g_sub_(&per_channel(stats.mean));
        let _ = images.g_div_(&per_channel(stats.std));
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
}
