//! The models the trainer knows, built from the configuration, and the initialisations they
//! share with PyTorch.
//!
//! tch's layers start from its own defaults (Kaiming-uniform weights with a ReLU gain, whose
//! bound is sqrt(6) times PyTorch's; zero convolution biases; BatchNorm scales drawn from
//! U(0, 1)). The models here start as the same PyTorch modules do instead, so a run and its
//! PyTorch counterpart differ only in their random draws.

pub mod cnn;
pub mod resnet;

use tch::nn::{self, Init};

use crate::cli::ModelKind;
use crate::config::Config;

pub use cnn::{Cnn, CnnWidths};

/// Builds the configured model under `vs` for examples of `shape` and `classes` outputs.
pub fn build(
    vs: &nn::Path,
    config: &Config,
    shape: [i64; 3],
    classes: i64,
) -> Box<dyn nn::ModuleT> {
    match config.model {
        ModelKind::Cnn => {
            let widths =
                CnnWidths { conv1: config.conv1, conv2: config.conv2, hidden: config.hidden };
            Box::new(Cnn::new(vs, shape, classes, widths, config.dropout))
        }
        ModelKind::Resnet18 => {
            Box::new(resnet::resnet18(vs, shape[0], classes, config.width, config.dropout))
        }
        ModelKind::Resnet34 => {
            Box::new(resnet::resnet34(vs, shape[0], classes, config.width, config.dropout))
        }
        ModelKind::Resnet50 => {
            Box::new(resnet::resnet50(vs, shape[0], classes, config.width, config.dropout))
        }
    }
}

/// PyTorch's default for `nn.Conv2d` and `nn.Linear` weights and biases:
/// `kaiming_uniform_(a = sqrt(5))`, which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub(crate) fn pytorch_default(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// A convolution initialised as PyTorch's `nn.Conv2d` is; `config` gives the rest.
pub(crate) fn conv2d(
    vs: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    config: nn::ConvConfig,
) -> nn::Conv2D {
    let init = pytorch_default(c_in / config.groups * kernel * kernel);
    nn::conv2d(vs, c_in, c_out, kernel, nn::ConvConfig { ws_init: init, bs_init: init, ..config })
}

/// A linear layer initialised as PyTorch's `nn.Linear` is.
pub(crate) fn linear(vs: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let init = pytorch_default(c_in);
    nn::linear(vs, c_in, c_out, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn layers_start_within_pytorchs_bounds() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _conv = conv2d(&vs.root() / "conv", 32, 64, 5, Default::default());
        let _fc = linear(&vs.root() / "fc", 1024, 10);
        let variables = vs.variables();
        for (name, fan_in) in [
            ("conv.weight", 800.0),
            ("conv.bias", 800.0),
            ("fc.weight", 1024.0),
            ("fc.bias", 1024.0),
        ] {
            let values = &variables[name];
            let largest = values.abs().max().double_value(&[]);
            let bound = 1.0 / f64::sqrt(fan_in);
            // U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the draws fill that range: the
            // largest of n draws falls below q * bound with probability q^n, so this
            // lower limit fails once in 10^9 runs whatever the tensor's size.
            let draws = values.numel() as f64;
            let lower = bound * 1e-9_f64.powf(1.0 / draws);
            assert!(
                largest <= bound && largest > lower,
                "{name}: {largest} not in ({lower}, {bound}]"
            );
        }
    }
}
