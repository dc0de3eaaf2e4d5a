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
                    usage(format!(
                        "--device ({text}) must be one of auto, cpu, cuda or cuda:N"
                    ))
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
        check(args.epochs >= 1, || {
            format!("--epochs ({}) must be at least 1", args.epochs)
        })?;
        check(args.batch_size >= 1, || {
            format!("--batch-size ({}) must be at least 1", args.batch_size)
        })?;
        check(args.eval_batch_size >= 1, || {
            format!(
                "--eval-batch-size ({}) must be at least 1",
                args.eval_batch_size
            )
        })?;
        check(args.lr.is_finite() && args.lr > 0.0, || {
            format!("--lr ({}) must be a finite number greater than 0", args.lr)
        })?;
        check((0.0..1.0).contains(&args.momentum), || {
            format!("--momentum ({}) must be in [0, 1)", args.momentum)
        })?;
        check(!args.nesterov || args.momentum > 0.0, || {
            "--nesterov needs a --momentum greater than 0".to_string()
        })?;
        check(
            args.weight_decay.is_finite() && args.weight_decay >= 0.0,
            || format!("--weight-decay ({}) must be 0 or more", args.weight_decay),
        )?;
        let dropout = args.dropout.unwrap_or(match args.model {
            ModelKind::Cnn => 0.5,
            ModelKind::Resnet18 | ModelKind::Resnet34 | ModelKind::Resnet50 => 0.0,
        });
        check((0.0..1.0).contains(&dropout), || {
            format!("--dropout ({dropout}) must be in [0, 1)")
        })?;
        check((0.0..1.0).contains(&args.label_smoothing), || {
            format!(
                "--label-smoothing ({}) must be in [0, 1)",
                args.label_smoothing
            )
        })?;
        if let Some(norm) = args.clip_grad_norm {
            check(norm.is_finite() && norm > 0.0, || {
                format!("--clip-grad-norm ({norm}) must be a finite number greater than 0")
            })?;
        }
        check(
            args.width.is_finite() && args.width > 0.0 && args.width * 64.0 >= 1.0,
            || format!("--width ({}) must be at least 1/64", args.width),
        )?;
        check(args.warmup_epochs < args.epochs, || {
            format!(
                "--warmup-epochs ({}) must be less than --epochs ({})",
                args.warmup_epochs, args.epochs
            )
        })?;
        check(
            args.warmup_epochs == 0 || args.schedule != ScheduleKind::Onecycle,
            || {
                "--warmup-epochs does not combine with --schedule onecycle, which warms up by itself"
                .to_string()
            },
        )?;
        check(args.step_size >= 1, || {
            format!("--step-size ({}) must be at least 1", args.step_size)
        })?;
        check(args.gamma > 0.0 && args.gamma <= 1.0, || {
            format!("--gamma ({}) must be in (0, 1]", args.gamma)
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
        check(args.restart_epochs >= 1, || {
            format!(
                "--restart-epochs ({}) must be at least 1",
                args.restart_epochs
            )
        })?;
        check(args.restart_mult >= 1, || {
            format!("--restart-mult ({}) must be at least 1", args.restart_mult)
        })?;
        if let Some(patience) = args.patience {
            check(patience >= 1, || {
                format!("--patience ({patience}) must be at least 1")
            })?;
        }
        check(args.min_delta.is_finite() && args.min_delta >= 0.0, || {
            format!("--min-delta ({}) must be 0 or more", args.min_delta)
        })?;
        check(args.val_fraction > 0.0 && args.val_fraction < 1.0, || {
            format!("--val-fraction ({}) must be in (0, 1)", args.val_fraction)
        })?;
        for (flag, width) in [
            ("--conv1", args.conv1),
            ("--conv2", args.conv2),
            ("--hidden", args.hidden),
        ] {
            check(width >= 1, || {
                format!("{flag} ({width}) must be at least 1")
            })?;
        }
        if let Some(limit) = args.train_limit {
            check(limit >= 1, || {
                format!("--train-limit ({limit}) must be at least 1")
            })?;
        }
        let threads = match args.threads {
            Some(0) => return Err(usage("--threads (0) must be at least 1")),
            Some(threads) => threads,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };

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
    use clap::Parser;

    fn parse(extra: &[&str]) -> anyhow::Result<Config> {
        let argv = ["rust-trainer", "train"].iter().chain(extra);
        let Command::Train(args) = Cli::try_parse_from(argv)?.command else {
            unreachable!("the train subcommand was given")
        };
        Config::from_args(args)
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
        assert_eq!(
            message(&["--lr", "0"]),
            "--lr (0) must be a finite number greater than 0"
        );
        assert_eq!(
            message(&["--lr", "-1"]),
            "--lr (-1) must be a finite number greater than 0"
        );
        assert_eq!(
            message(&["--batch-size", "0"]),
            "--batch-size (0) must be at least 1"
        );
        assert_eq!(
            message(&["--dropout", "1"]),
            "--dropout (1) must be in [0, 1)"
        );
        assert_eq!(
            message(&["--val-fraction", "0"]),
            "--val-fraction (0) must be in (0, 1)"
        );
        assert_eq!(
            message(&["--val-fraction", "1.5"]),
            "--val-fraction (1.5) must be in (0, 1)"
        );
        assert_eq!(
            message(&["--epochs", "0"]),
            "--epochs (0) must be at least 1"
        );
        assert_eq!(
            message(&["--threads", "0"]),
            "--threads (0) must be at least 1"
        );
        assert_eq!(message(&["--conv2", "0"]), "--conv2 (0) must be at least 1");
        assert_eq!(
            message(&["--epochs", "10", "--warmup-epochs", "12"]),
            "--warmup-epochs (12) must be less than --epochs (10)"
        );
        assert_eq!(
            message(&["--gamma", "1.5"]),
            "--gamma (1.5) must be in (0, 1]"
        );
        assert_eq!(
            message(&["--milestones", "5,3"]),
            "--milestones ([5, 3]) must increase"
        );
        assert_eq!(
            message(&["--patience", "0"]),
            "--patience (0) must be at least 1"
        );
        assert_eq!(
            message(&["--label-smoothing", "1"]),
            "--label-smoothing (1) must be in [0, 1)"
        );
        assert_eq!(
            message(&["--clip-grad-norm", "-1"]),
            "--clip-grad-norm (-1) must be a finite number greater than 0"
        );
    }

    #[test]
    fn device_names_parse() {
        // Every documented spelling parses, anything else is a usage error naming the flag.
        assert_eq!(DeviceRequest::parse("cpu").unwrap(), DeviceRequest::Cpu);
        assert_eq!(
            DeviceRequest::parse("cuda").unwrap(),
            DeviceRequest::Cuda(0)
        );
        assert_eq!(
            DeviceRequest::parse("cuda:3").unwrap(),
            DeviceRequest::Cuda(3)
        );
        let err = DeviceRequest::parse("gpu").unwrap_err();
        assert!(err.to_string().starts_with("--device (gpu)"), "{err}");
    }
}
