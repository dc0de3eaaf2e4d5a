//! The classic MNIST CNN: two 5x5 convolutions, each followed by ReLU and 2x2 max-pooling,
//! then a hidden linear layer with dropout and the classifier.
//!
//! Parameter names follow PyTorch's (`conv1.weight`, `fc2.bias`, ...), so weights can be
//! exchanged with a PyTorch module of the same layout.

use tch::nn::{self, ModuleT};
use tch::Tensor;

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
            conv1: nn::conv2d(vs / "conv1", channels, widths.conv1, 5, Default::default()),
            conv2: nn::conv2d(vs / "conv2", widths.conv1, widths.conv2, 5, Default::default()),
            fc1: nn::linear(vs / "fc1", flat, widths.hidden, Default::default()),
            fc2: nn::linear(vs / "fc2", widths.hidden, classes, Default::default()),
            dropout,
        }
    }
}

impl ModuleT for Cnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
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
    use tch::{Device, Kind};

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
