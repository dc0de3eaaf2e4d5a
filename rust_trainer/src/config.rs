//! Turns raw command-line arguments into a validated configuration.
//!
//! Every rule that involves a value's range or two flags at once lives here, so that a bad
//! run fails before any data is read, with a message naming the flag and the value.

use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{DatasetKind, ModelKind, OptimizerKind, TrainArgs};
use crate::data::augment::AugmentKind;
use crate::error::usage;
use crate::schedule::ScheduleKind;

/// The device asked for on the command line, before CUDA's presence is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceRequest {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    usage(format!("--device ({text}) must be one of auto, cpu, cuda or cuda:N"))
                }),
        }
    }
}

/// Every resolved hyperparameter; echoed whole in the `start` event.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub model: ModelKind,
    pub dataset: DatasetKind,
    pub data_dir: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub schedule: ScheduleKind,
    pub warmup_epochs: usize,
    pub step_size: usize,
    pub gamma: f64,
    pub milestones: Vec<usize>,
    pub min_lr: f64,
    pub restart_epochs: usize,
    pub restart_mult: usize,
    pub patience: Option<usize>,
    pub min_delta: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub no_decay_norm_bias: bool,
    pub dropout: f64,
    pub label_smoothing: f64,
    pub clip_grad_norm: Option<f64>,
    pub augment: AugmentKind,
    pub conv1: i64,
    pub conv2: i64,
    pub hidden: i64,
    pub width: f64,
    pub val_fraction: f64,
    pub split_seed: u64,
    pub train_limit: Option<usize>,
    pub seed: u64,
    pub device: String,
    pub threads: usize,
    pub eval_test: bool,
    pub eval_batch_size: usize,
    pub checkpoint: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub amp: bool,
    pub channels_last: bool,
    #[serde(skip)]
    pub device_request: DeviceRequest,
    #[serde(skip)]
    pub quiet: bool,
}

impl Config {
    pub fn from_args(args: TrainArgs) -> anyhow::Result<Self> {
        let device_request = DeviceRequest::parse(&args.device)?;
        let dropout = args.dropout.unwrap_or(match args.model {
            ModelKind::Cnn => 0.5,
            ModelKind::Resnet18 | ModelKind::Resnet34 | ModelKind::Resnet50 => 0.0,
        });
        let ranged = [
            ("epochs", Some(args.epochs as f64)),
            ("batch_size", Some(args.batch_size as f64)),
            ("eval_batch_size", Some(args.eval_batch_size as f64)),
            ("lr", Some(args.lr)),
            ("momentum", Some(args.momentum)),
            ("weight_decay", Some(args.weight_decay)),
            ("dropout", Some(dropout)),
            ("label_smoothing", Some(args.label_smoothing)),
            ("clip_grad_norm", args.clip_grad_norm),
            ("width", Some(args.width)),
            ("conv1", Some(args.conv1 as f64)),
            ("conv2", Some(args.conv2 as f64)),
            ("hidden", Some(args.hidden as f64)),
            ("val_fraction", Some(args.val_fraction)),
            ("train_limit", args.train_limit.map(|n| n as f64)),
            ("threads", args.threads.map(|n| n as f64)),
            ("step_size", Some(args.step_size as f64)),
            ("gamma", Some(args.gamma)),
            ("min_lr", Some(args.min_lr)),
            ("restart_epochs", Some(args.restart_epochs as f64)),
            ("restart_mult", Some(args.restart_mult as f64)),
            ("patience", args.patience.map(|n| n as f64)),
            ("min_delta", Some(args.min_delta)),
        ];
        for (name, value) in ranged {
            if let Some(value) = value {
                check_range(name, value)?;
            }
        }
        check(!args.nesterov || args.momentum > 0.0, || {
            "--nesterov needs a --momentum greater than 0".to_string()
        })?;
        check(args.warmup_epochs < args.epochs, || {
            format!(
                "--warmup-epochs ({}) must be less than --epochs ({})",
                args.warmup_epochs, args.epochs
            )
        })?;
        check(args.warmup_epochs == 0 || args.schedule != ScheduleKind::Onecycle, || {
            "--warmup-epochs does not combine with --schedule onecycle, which warms up by itself"
                .to_string()
        })?;
        check(args.milestones.windows(2).all(|w| w[0] < w[1]), || {
            format!("--milestones ({:?}) must increase", args.milestones)
        })?;
        check(args.min_lr >= 0.0 && args.min_lr < args.lr, || {
            format!(
                "--min-lr ({}) must be at least 0 and less than --lr ({})",
                args.min_lr, args.lr
            )
        })?;
        check(args.restart_mult >= 1, || {
            format!("--restart-mult ({}) must be at least 1", args.restart_mult)
        })?;
        if let Some(patience) = args.patience {
            check(patience >= 1, || format!("--patience ({patience}) must be at least 1"))?;
            check(args.val_fraction > 0.0, || {
                format!(
                    "--patience ({patience}) stops on val_loss, but --val-fraction 0 leaves no \
                     validation set; drop --patience, or give --val-fraction above 0"
                )
            })?;
        }
        let threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));

        Ok(Self {
            model: args.model,
            dataset: args.dataset,
            data_dir: args.data_dir,
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            optimizer: args.optimizer,
            schedule: args.schedule,
            warmup_epochs: args.warmup_epochs,
            step_size: args.step_size,
            gamma: args.gamma,
            milestones: args.milestones,
            min_lr: args.min_lr,
            restart_epochs: args.restart_epochs,
            restart_mult: args.restart_mult,
            patience: args.patience,
            min_delta: args.min_delta,
            momentum: args.momentum,
            nesterov: args.nesterov,
            weight_decay: args.weight_decay,
            no_decay_norm_bias: args.no_decay_norm_bias,
            dropout,
            label_smoothing: args.label_smoothing,
            clip_grad_norm: args.clip_grad_norm,
            augment: args.augment.resolve(args.dataset),
            conv1: args.conv1,
            conv2: args.conv2,
            hidden: args.hidden,
            width: args.width,
            val_fraction: args.val_fraction,
            split_seed: args.split_seed,
            train_limit: args.train_limit,
            seed: args.seed,
            device: args.device,
            threads,
            eval_test: args.eval_test,
            eval_batch_size: args.eval_batch_size,
            checkpoint: args.checkpoint,
            resume: args.resume,
            amp: args.amp,
            channels_last: args.channels_last,
            device_request,
            quiet: args.quiet,
        })
    }
}

/// The values a numeric flag accepts. `Config` enforces them and `rust-trainer describe`
/// publishes them, so the orchestrator checks a search space against the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Range {
    pub low: Option<f64>,
    pub low_open: bool,
    pub high: Option<f64>,
    pub high_open: bool,
}

impl Range {
    pub(crate) const fn at_least(low: f64) -> Self {
        Self { low: Some(low), low_open: false, high: None, high_open: false }
    }

    const fn above(low: f64) -> Self {
        Self { low: Some(low), low_open: true, high: None, high_open: false }
    }

    const fn between(low: f64, low_open: bool, high: f64, high_open: bool) -> Self {
        Self { low: Some(low), low_open, high: Some(high), high_open }
    }

    pub fn contains(&self, value: f64) -> bool {
        let above_low = match self.low {
            Some(low) if self.low_open => value > low,
            Some(low) => value >= low,
            None => true,
        };
        let below_high = match self.high {
            Some(high) if self.high_open => value < high,
            Some(high) => value <= high,
            None => true,
        };
        value.is_finite() && above_low && below_high
    }

    /// "at least 1", "greater than 0", "in [0, 1)".
    pub fn describe(&self) -> String {
        match (self.low, self.high) {
            (Some(low), None) if self.low_open => format!("greater than {low}"),
            (Some(low), None) => format!("at least {low}"),
            (Some(low), Some(high)) => {
                let open = if self.low_open { '(' } else { '[' };
                let close = if self.high_open { ')' } else { ']' };
                format!("in {open}{low}, {high}{close}")
            }
            (None, Some(high)) if self.high_open => format!("less than {high}"),
            (None, Some(high)) => format!("at most {high}"),
            (None, None) => "a finite number".to_string(),
        }
    }
}

/// Every numeric flag with a range, by its name in `Config` (and in the `start` event).
pub const RANGES: &[(&str, Range)] = &[
    ("epochs", Range::at_least(1.0)),
    ("batch_size", Range::at_least(1.0)),
    ("eval_batch_size", Range::at_least(1.0)),
    ("lr", Range::above(0.0)),
    ("momentum", Range::between(0.0, false, 1.0, true)),
    ("weight_decay", Range::at_least(0.0)),
    ("dropout", Range::between(0.0, false, 1.0, true)),
    ("label_smoothing", Range::between(0.0, false, 1.0, true)),
    ("clip_grad_norm", Range::above(0.0)),
    ("width", Range::at_least(1.0 / 64.0)),
    ("conv1", Range::at_least(1.0)),
    ("conv2", Range::at_least(1.0)),
    ("hidden", Range::at_least(1.0)),
    ("val_fraction", Range::between(0.0, false, 1.0, true)),
    ("train_limit", Range::at_least(1.0)),
    ("threads", Range::at_least(1.0)),
    ("warmup_epochs", Range::at_least(0.0)),
    ("step_size", Range::at_least(1.0)),
    ("gamma", Range::between(0.0, true, 1.0, false)),
    ("min_lr", Range::at_least(0.0)),
    ("restart_epochs", Range::at_least(1.0)),
    ("restart_mult", Range::at_least(1.0)),
    ("patience", Range::at_least(1.0)),
    ("min_delta", Range::at_least(0.0)),
];

pub fn range_of(name: &str) -> Option<Range> {
    RANGES.iter().find(|(known, _)| *known == name).map(|(_, range)| *range)
}

fn check_range(name: &str, value: f64) -> anyhow::Result<()> {
    let range = range_of(name).unwrap_or(Range {
        low: None,
        low_open: false,
        high: None,
        high_open: false,
    });
    check(range.contains(value), || {
        format!("--{} ({value}) must be {}", name.replace('_', "-"), range.describe())
    })
}

fn check(rule_holds: bool, message: impl FnOnce() -> String) -> anyhow::Result<()> {
    if rule_holds {
        Ok(())
    } else {
        Err(usage(message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory, Parser};

    fn parse(extra: &[&str]) -> anyhow::Result<Config> {
        let argv = ["rust-trainer", "train"].iter().chain(extra);
        let Command::Train(args) = Cli::try_parse_from(argv)?.command else {
            unreachable!("the train subcommand was given")
        };
        Config::from_args(*args)
    }

    fn message(extra: &[&str]) -> String {
        format!("{:#}", parse(extra).unwrap_err())
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse(&[]).unwrap();
        // The defaults are the classic MNIST CNN trained with Adam.
        assert_eq!(config.batch_size, 64);
        assert_eq!(config.device_request, DeviceRequest::Auto);
        assert!(config.threads >= 1);
        // Model- and dataset-dependent defaults are resolved.
        assert_eq!(config.dropout, 0.5);
        assert_eq!(config.augment, AugmentKind::None);
        let resnet = parse(&["--model", "resnet18", "--dataset", "cifar10"]).unwrap();
        assert_eq!(resnet.dropout, 0.0);
        assert_eq!(resnet.augment, AugmentKind::CropFlip);
    }

    #[test]
    fn out_of_range_flags_name_the_flag_and_value() {
        // Each message names the flag and echoes the value that broke the rule.
        assert_eq!(message(&["--lr", "0"]), "--lr (0) must be greater than 0");
        assert_eq!(message(&["--lr", "-1"]), "--lr (-1) must be greater than 0");
        assert_eq!(message(&["--batch-size", "0"]), "--batch-size (0) must be at least 1");
        assert_eq!(message(&["--dropout", "1"]), "--dropout (1) must be in [0, 1)");
        assert_eq!(message(&["--val-fraction", "-0.1"]), "--val-fraction (-0.1) must be in [0, 1)");
        assert_eq!(message(&["--val-fraction", "1.5"]), "--val-fraction (1.5) must be in [0, 1)");
        assert_eq!(message(&["--epochs", "0"]), "--epochs (0) must be at least 1");
        assert_eq!(message(&["--threads", "0"]), "--threads (0) must be at least 1");
        assert_eq!(message(&["--conv2", "0"]), "--conv2 (0) must be at least 1");
        assert_eq!(
            message(&["--epochs", "10", "--warmup-epochs", "12"]),
            "--warmup-epochs (12) must be less than --epochs (10)"
        );
        assert_eq!(message(&["--gamma", "1.5"]), "--gamma (1.5) must be in (0, 1]");
        assert_eq!(message(&["--milestones", "5,3"]), "--milestones ([5, 3]) must increase");
        assert_eq!(message(&["--patience", "0"]), "--patience (0) must be at least 1");
        assert_eq!(message(&["--label-smoothing", "1"]), "--label-smoothing (1) must be in [0, 1)");
        assert_eq!(
            message(&["--clip-grad-norm", "-1"]),
            "--clip-grad-norm (-1) must be greater than 0"
        );
    }

    #[test]
    fn no_validation_set_and_early_stopping_exclude_each_other() {
        // --val-fraction 0 is a valid final run on all the training data...
        assert_eq!(parse(&["--val-fraction", "0"]).unwrap().val_fraction, 0.0);
        // ...but early stopping has no val_loss to watch; the message names both flags.
        assert_eq!(
            message(&["--val-fraction", "0", "--patience", "2"]),
            "--patience (2) stops on val_loss, but --val-fraction 0 leaves no validation set; \
             drop --patience, or give --val-fraction above 0"
        );
    }

    #[test]
    fn every_range_has_a_flag_and_describes_itself() {
        let train = Cli::command();
        let train = train.find_subcommand("train").unwrap();
        for (name, range) in RANGES {
            // Each range belongs to a real flag of `train`.
            let long = name.replace('_', "-");
            assert!(train.get_arguments().any(|a| a.get_long() == Some(long.as_str())), "{name}");
            assert!(!range.describe().is_empty());
        }
        assert_eq!(range_of("dropout").unwrap().describe(), "in [0, 1)");
        assert_eq!(range_of("gamma").unwrap().describe(), "in (0, 1]");
        assert!(!range_of("lr").unwrap().contains(f64::NAN));
    }

    #[test]
    fn device_names_parse() {
        // Every documented spelling parses, anything else is a usage error naming the flag.
        assert_eq!(DeviceRequest::parse("cpu").unwrap(), DeviceRequest::Cpu);
        assert_eq!(DeviceRequest::parse("cuda").unwrap(), DeviceRequest::Cuda(0));
        assert_eq!(DeviceRequest::parse("cuda:3").unwrap(), DeviceRequest::Cuda(3));
        let err = DeviceRequest::parse("gpu").unwrap_err();
        assert!(err.to_string().starts_with("--device (gpu)"), "{err}");
    }
}
