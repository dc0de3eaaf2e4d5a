//! Command-line definitions only: every flag, its default and its help line.
//!
//! Checking the values against each other happens in `config`, which turns these raw
//! arguments into a validated [`crate::config::Config`] before any work starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(name = "rust-trainer", version, about, long_about = None)]
/// Trains deep-learning models on libtorch and reports JSON Lines events on stdout.
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train one model with one set of hyperparameters; events go to stdout as JSON Lines.
    ///
    /// A flag given twice takes its last value, so a recorded command can be re-run with
    /// one flag changed by appending it.
    #[command(allow_negative_numbers = true, args_override_self = true)]
    Train(TrainArgs),
    /// Print the libtorch version and whether CUDA is available, as one JSON object.
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Two 5x5 convolutions with max-pooling, then two linear layers.
    Cnn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// 28x28 grey digits in IDX files (raw or gzip-compressed).
    Mnist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Stochastic gradient descent, with --momentum and --nesterov.
    Sgd,
    /// Adam; --weight-decay is added to the gradient (L2).
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Model to train.
    #[arg(long, value_enum, default_value_t = ModelKind::Cnn)]
    pub model: ModelKind,

    /// Dataset to train on.
    #[arg(long, value_enum, default_value_t = DatasetKind::Mnist)]
    pub dataset: DatasetKind,

    /// Folder holding the dataset's files, or a root holding a `mnist/` folder.
    #[arg(long, env = "RUST_TRAINER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Number of passes over the training set.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,

    /// Examples per optimizer step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,

    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,

    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    pub optimizer: OptimizerKind,

    /// Momentum of sgd (ignored by the other optimizers).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,

    /// Use Nesterov momentum with sgd.
    #[arg(long)]
    pub nesterov: bool,

    /// Weight decay, applied by the optimizer.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,

    /// Dropout probability before the last layer, in [0, 1).
    #[arg(long, default_value_t = 0.5)]
    pub dropout: f64,

    /// Output channels of the CNN's first convolution.
    #[arg(long, default_value_t = 32)]
    pub conv1: i64,

    /// Output channels of the CNN's second convolution.
    #[arg(long, default_value_t = 64)]
    pub conv2: i64,

    /// Width of the CNN's hidden linear layer.
    #[arg(long, default_value_t = 1024)]
    pub hidden: i64,

    /// Share of the training set held out for validation, in (0, 1).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,

    /// Seed of the train/validation split; keep it fixed so that trials are comparable.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,

    /// Train on the first N training examples after the split (a fidelity knob).
    #[arg(long, value_name = "N")]
    pub train_limit: Option<usize>,

    /// Seed of initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Device: auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,

    /// CPU threads for libtorch [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Evaluate the best epoch's model once on the test set at the end.
    #[arg(long)]
    pub eval_test: bool,

    /// Examples per batch when evaluating; does not change any reported value.
    #[arg(long, default_value_t = 1000)]
    pub eval_batch_size: usize,

    /// Print no progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}
