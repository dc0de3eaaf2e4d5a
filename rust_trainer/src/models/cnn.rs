//! The classic MNIST CNN: two 5x5 convolutions, each followed by ReLU and 2x2 max-pooling,
//! then a hidden linear layer with dropout and the classifier.
//!
//! Parameter names and initialisation follow PyTorch's (`conv1.weight`, `fc2.bias`, ...), so
//! weights can be exchanged with a PyTorch module of the same layout.
//!
//! On the CPU the convolutions run on channels-last (NHWC) activations: oneDNN's NHWC
//! convolutions and libtorch's channels-last max-pooling are vectorised over channels, and
//! measured 1.2 to 1.5 times faster per training step than NCHW for this network
//! (benchmarks/RESULTS.md). The input is laid out so once per batch; the convolutions keep
//! the layout they are given.

use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

/// Widths of the CNN's layers.
#[derive(Debug, Clone, Copy)]
pub struct CnnWidths {
    pub conv1: i64,
    pub conv2: i64,
    pub hidden: i64,
}

#[derive(Debug)]
pub struct Cnn {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
    dropout: f64,
}

/// Side of the feature map after both conv + pool stages on a `side` x `side` input.
fn features_side(side: i64) -> i64 {
    ((side - 4) / 2 - 4) / 2
}

impl Cnn {
    /// `shape` is one example's channels, height and width.
    pub fn new(
        vs: &nn::Path,
        shape: [i64; 3],
        classes: i64,
        widths: CnnWidths,
        dropout: f64,
    ) -> Self {
        let [channels, height, width] = shape;
        let flat = widths.conv2 * features_side(height) * features_side(width);
        Self {
            conv1: super::conv2d(vs / "conv1", channels, widths.conv1, 5, Default::default()),
            conv2: super::conv2d(vs / "conv2", widths.conv1, widths.conv2, 5, Default::default()),
            fc1: super::linear(vs / "fc1", flat, widths.hidden),
            fc2: super::linear(vs / "fc2", widths.hidden, classes),
            dropout,
        }
    }
}

/// The same values with channels varying fastest in memory (shape unchanged). The strides
/// are set explicitly: with one channel (MNIST) NCHW and NHWC memory are the same bytes, and
/// permuting alone would leave libtorch reading the tensor as NCHW.
fn channels_last(xs: &Tensor) -> Tensor {
    let nhwc = xs.permute([0, 2, 3, 1]).contiguous();
    let [n, h, w, c] = <[i64; 4]>::try_from(nhwc.size()).expect("a batch of images");
    nhwc.as_strided([n, c, h, w], [h * w * c, 1, w * c, c], None)
}

impl ModuleT for Cnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let xs = if xs.device() == Device::Cpu { channels_last(xs) } else { xs.shallow_clone() };
        xs.apply(&self.conv1)
            .relu()
            .max_pool2d_default(2)
            .apply(&self.conv2)
            .relu()
            .max_pool2d_default(2)
            .flatten(1, -1)
            .apply(&self.fc1)
            .relu()
            .dropout(self.dropout, train)
            .apply(&self.fc2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn output_is_one_logit_per_class() {
        let vs = nn::VarStore::new(Device::Cpu);
        let widths = CnnWidths { conv1: 4, conv2: 8, hidden: 16 };
        let model = Cnn::new(&vs.root(), [1, 28, 28], 10, widths, 0.5);
        let out =
            model.forward_t(&Tensor::zeros([3, 1, 28, 28], (Kind::Float, Device::Cpu)), false);
        // A batch of 3 gives 3 rows of 10 logits.
        assert_eq!(out.size(), vec![3, 10]);
    }

    #[test]
    fn cpu_activations_are_channels_last() {
        let xs = Tensor::randn([2, 3, 5, 7], (Kind::Float, Device::Cpu));
        let nhwc = channels_last(&xs);
        // Same shape and values, channels fastest in memory.
        assert_eq!(nhwc.size(), xs.size());
        assert!(nhwc.equal(&xs));
        assert_eq!(nhwc.stride(), vec![105, 1, 21, 3]);
        // One channel: the stride of the channel dimension still says channels-last.
        let grey = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu)).narrow(0, 1, 2);
        let grey_nhwc = channels_last(&grey);
        assert!(grey_nhwc.equal(&grey));
        assert_eq!(grey_nhwc.stride(), vec![784, 1, 28, 1]);
    }

    #[test]
    fn parameters_use_pytorch_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let widths = CnnWidths { conv1: 32, conv2: 64, hidden: 1024 };
        let _model = Cnn::new(&vs.root(), [1, 28, 28], 10, widths, 0.5);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        // The same keys as PyTorch's state_dict for this layout.
        let expected = [
            "conv1.bias",
            "conv1.weight",
            "conv2.bias",
            "conv2.weight",
            "fc1.bias",
            "fc1.weight",
            "fc2.bias",
            "fc2.weight",
        ];
        assert_eq!(names, expected);
        // fc1 takes 64 channels of 4x4 features on a 28x28 input.
        assert_eq!(vs.variables()["fc1.weight"].size(), vec![1024, 64 * 4 * 4]);
    }
}
