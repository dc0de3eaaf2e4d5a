//! Command-line definitions only: every flag, its default and its help line.
//!
//! Checking the values against each other happens in `config`, which turns these raw
//! arguments into a validated [`crate::config::Config`] before any work starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::data::augment::AugmentKind;
use crate::schedule::ScheduleKind;

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
    Train(Box<TrainArgs>),
    /// Print the libtorch version and whether CUDA is available, as one JSON object.
    Info,
    /// Print every flag of `train` (type, range, default, help) as one JSON object.
    Describe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Two 5x5 convolutions with max-pooling, then two linear layers.
    Cnn,
    /// ResNet-18 (basic blocks, 2-2-2-2), CIFAR form.
    Resnet18,
    /// ResNet-34 (basic blocks, 3-4-6-3), CIFAR form.
    Resnet34,
    /// ResNet-50 (bottleneck blocks, 3-4-6-3), CIFAR form.
    Resnet50,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// 28x28 grey digits in IDX files (raw or gzip-compressed).
    Mnist,
    /// 32x32 colour images in the official binary layout (cifar-10-batches-bin/).
    Cifar10,
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
    /// RMSprop (alpha 0.99), with --momentum.
    Rmsprop,
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Model to train.
    #[arg(long, value_enum, default_value_t = ModelKind::Cnn)]
    pub model: ModelKind,

    /// Dataset to train on.
    #[arg(long, value_enum, default_value_t = DatasetKind::Mnist)]
    pub dataset: DatasetKind,

    /// Folder holding the dataset's files, or a root holding `mnist/` or `cifar10/`.
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

    /// Learning-rate schedule, evaluated before every batch.
    #[arg(long, value_enum, default_value_t = ScheduleKind::Constant)]
    pub schedule: ScheduleKind,

    /// Epochs of linear warm-up from 0 to --lr before the schedule starts.
    #[arg(long, default_value_t = 0)]
    pub warmup_epochs: usize,

    /// Epochs between two decays of the step schedule.
    #[arg(long, default_value_t = 30)]
    pub step_size: usize,

    /// Decay factor of the step and multistep schedules.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,

    /// Epochs (after warm-up) at which the multistep schedule decays, e.g. 30,60,80.
    #[arg(long, value_delimiter = ',', default_value = "30,60,80")]
    pub milestones: Vec<usize>,

    /// Floor of the cosine schedules.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,

    /// Length in epochs of the first period of cosine-restarts.
    #[arg(long, default_value_t = 10)]
    pub restart_epochs: usize,

    /// Growth factor of each next period of cosine-restarts.
    #[arg(long, default_value_t = 1)]
    pub restart_mult: usize,

    /// Stop after this many epochs without a val_loss better by more than --min-delta.
    #[arg(long, value_name = "EPOCHS")]
    pub patience: Option<usize>,

    /// Smallest drop of val_loss that counts as an improvement for --patience.
    #[arg(long, default_value_t = 0.0)]
    pub min_delta: f64,

    /// Momentum of sgd and rmsprop (ignored by the Adam family).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,

    /// Use Nesterov momentum with sgd.
    #[arg(long)]
    pub nesterov: bool,

    /// Weight decay, applied by the optimizer.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,

    /// Leave biases and BatchNorm parameters (all 1-D parameters) out of weight decay.
    #[arg(long)]
    pub no_decay_norm_bias: bool,

    /// Dropout probability before the last layer, in [0, 1) [default: 0.5 for cnn, 0 for
    /// the ResNets].
    #[arg(long)]
    pub dropout: Option<f64>,

    /// Label smoothing of the training loss, in [0, 1); val_loss is always unsmoothed.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,

    /// Clip the gradients' joint L2 norm to this value before each step.
    #[arg(long, value_name = "NORM")]
    pub clip_grad_norm: Option<f64>,

    /// Data augmentation on the training device.
    #[arg(long, value_enum, default_value_t = AugmentKind::Auto)]
    pub augment: AugmentKind,

    /// Output channels of the CNN's first convolution.
    #[arg(long, default_value_t = 32)]
    pub conv1: i64,

    /// Output channels of the CNN's second convolution.
    #[arg(long, default_value_t = 64)]
    pub conv2: i64,

    /// Width of the CNN's hidden linear layer.
    #[arg(long, default_value_t = 1024)]
    pub hidden: i64,

    /// Channel multiplier of the ResNets (64-128-256-512 at 1.0).
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,

    /// Share of the training set held out for validation, in [0, 1); 0 trains on all of it
    /// with no validation (a final model: epochs report no val_loss, the last one is kept).
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

    /// Evaluate the best epoch's model (the last one with --val-fraction 0) once on the test
    /// set at the end.
    #[arg(long)]
    pub eval_test: bool,

    /// Examples per batch when evaluating; does not change any reported value.
    #[arg(long, default_value_t = 1000)]
    pub eval_batch_size: usize,

    /// Keep the best epoch's model and the state to resume from in this file (safetensors;
    /// the run's metadata goes beside it, in PATH.json).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,

    /// Continue the run saved in this checkpoint, with the same flags.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,

    /// Mixed precision (bf16 autocast) on CUDA; ignored with a warning on the CPU.
    #[arg(long)]
    pub amp: bool,

    /// Channels-last memory layout on CUDA; ignored with a warning on the CPU.
    #[arg(long)]
    pub channels_last: bool,

    /// Print no progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,

    /// Read more flags from stdin before starting: one line, a JSON array of strings,
    /// appended to these. A process started ahead of its trial loads libtorch meanwhile.
    #[arg(long)]
    pub flags_from_stdin: bool,
}
