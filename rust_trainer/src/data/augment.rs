//! Data augmentation on the training device, batch by batch.
//!
//! Each example of a batch gets its own random shift (zero padding, then a crop back to the
//! original size) and, for natural images, its own random horizontal flip. Everything is
//! tensor indexing, so a batch never leaves the device.

use clap::ValueEnum;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::cli::DatasetKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AugmentKind {
    /// none for MNIST, crop-flip for CIFAR-10.
    Auto,
    /// No augmentation.
    None,
    /// Random shifts of up to 2 pixels each way.
    Shift,
    /// Random 4-pixel-padded crops and horizontal flips.
    CropFlip,
}

impl AugmentKind {
    /// What `auto` means for a dataset: digits are not flipped, natural images are.
    pub fn resolve(self, dataset: DatasetKind) -> Self {
        match (self, dataset) {
            (Self::Auto, DatasetKind::Mnist) => Self::None,
            (Self::Auto, DatasetKind::Cifar10) => Self::CropFlip,
            (kind, _) => kind,
        }
    }

    pub fn apply(self, images: &Tensor) -> Tensor {
        match self {
            Self::Auto | Self::None => images.shallow_clone(),
            Self::Shift => random_crop(images, 2),
            Self::CropFlip => random_flip(&random_crop(images, 4)),
        }
    }
}

/// Pads each image by `pad` zeros on every side and crops it back at a random offset.
pub fn random_crop(images: &Tensor, pad: i64) -> Tensor {
    let [batch, channels, height, width] = images.size()[..] else {
        panic!("random_crop expects N x C x H x W images")
    };
    let device = images.device();
    let padded = images.constant_pad_nd([pad, pad, pad, pad]);
    let offsets = |n: i64| {
        let start = Tensor::randint(2 * pad + 1, [batch, 1], (Kind::Int64, device));
        start + Tensor::arange(n, (Kind::Int64, device)).view([1, n])
    };

    let rows = offsets(height)
        .view([batch, 1, height, 1])
        .expand([batch, channels, height, width + 2 * pad], false);
    let cropped_rows = padded.gather(2, &rows, false);
    let cols =
        offsets(width).view([batch, 1, 1, width]).expand([batch, channels, height, width], false);
    cropped_rows.gather(3, &cols, false)
}

/// Mirrors each image left to right with probability one half.
pub fn random_flip(images: &Tensor) -> Tensor {
    let batch = images.size()[0];
    let flip = Tensor::rand([batch, 1, 1, 1], (Kind::Float, images.device())).lt(0.5);
    images.flip([3]).where_self(&flip, images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn ramp(batch: i64) -> Tensor {
        Tensor::arange(batch * 2 * 6 * 6, (Kind::Float, Device::Cpu)).view([batch, 2, 6, 6]) + 1.0
    }

    #[test]
    fn crops_keep_the_shape_and_are_shifted_copies() {
        tch::manual_seed(1);
        let images = ramp(16);
        let out = random_crop(&images, 2);
        assert_eq!(out.size(), images.size());
        for i in 0..16 {
            let (original, shifted) = (images.get(i), out.get(i));
            // Each output equals its input shifted by some (dy, dx) in [-2, 2], zero-filled.
            let found = (-2..=2).any(|dy: i64| {
                (-2..=2).any(|dx: i64| {
                    let expected = original
                        .constant_pad_nd([2, 2, 2, 2])
                        .narrow(1, 2 + dy, 6)
                        .narrow(2, 2 + dx, 6);
                    expected.equal(&shifted)
                })
            });
            assert!(found, "example {i} is not a shifted copy");
        }
    }

    #[test]
    fn flips_mirror_some_images_and_keep_others() {
        tch::manual_seed(2);
        let images = ramp(64);
        let out = random_flip(&images);
        let mut flipped = 0;
        for i in 0..64 {
            let (a, b) = (images.get(i), out.get(i));
            // Every output is the input or its mirror image.
            if b.equal(&a.flip([2])) {
                flipped += 1;
            } else {
                assert!(b.equal(&a), "example {i} changed otherwise");
            }
        }
        // About half of 64 are flipped.
        assert!((16..=48).contains(&flipped), "{flipped} flipped");
    }

    #[test]
    fn auto_depends_on_the_dataset() {
        assert_eq!(AugmentKind::Auto.resolve(DatasetKind::Mnist), AugmentKind::None);
        assert_eq!(AugmentKind::Auto.resolve(DatasetKind::Cifar10), AugmentKind::CropFlip);
        assert_eq!(AugmentKind::Shift.resolve(DatasetKind::Cifar10), AugmentKind::Shift);
    }
}
