//! The models the trainer knows, built from the configuration.

pub mod cnn;
pub mod resnet;

use tch::nn;

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
