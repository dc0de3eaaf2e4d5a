//! The training loop: one process, one model, one set of hyperparameters.
//!
//! The data stay on the training device; each batch is an index selection from a permutation
//! drawn on that device, and losses are summed there too, so the host waits for the device
//! only at the end of an epoch (and every few dozen batches, to notice divergence early).

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};

use crate::cli::OptimizerKind;
use crate::config::{Config, DeviceRequest};
use crate::data::{self, Dataset};
use crate::error::device;
use crate::events::{Epoch, Event, EventWriter, Outcome, Start, Status};
use crate::models;

/// How many batches pass between two checks of the running loss for non-finite values.
const DIVERGENCE_CHECK_EVERY: usize = 32;

/// Set from a signal handler: 0 while training may go on, else the exit code to end with.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicUsize>);

impl Stop {
    pub fn new(flag: Arc<AtomicUsize>) -> Self {
        Self(flag)
    }

    /// The exit code asked for, once a stop has been requested.
    pub fn requested(&self) -> Option<u8> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            code => Some(u8::try_from(code).unwrap_or(1)),
        }
    }
}

/// Finds the device asked for, or says why it cannot be had.
pub fn resolve_device(request: DeviceRequest) -> anyhow::Result<Device> {
    match request {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Auto => Ok(Device::cuda_if_available()),
        DeviceRequest::Cuda(index) => {
            if !tch::Cuda::is_available() {
                return Err(device(format!(
                    "--device cuda:{index} was asked for but CUDA is not available (no GPU, no \
                     driver, or a CPU-only libtorch); use --device cpu or --device auto"
                )));
            }
            let count = tch::Cuda::device_count() as usize;
            if index >= count {
                return Err(device(format!(
                    "--device cuda:{index} was asked for but only {count} CUDA device(s) exist"
                )));
            }
            Ok(Device::Cuda(index))
        }
    }
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index}"),
        _ => "cpu".to_string(),
    }
}

fn optimizer(vs: &nn::VarStore, config: &Config) -> anyhow::Result<nn::Optimizer> {
    let (lr, wd) = (config.lr, config.weight_decay);
    let opt = match config.optimizer {
        OptimizerKind::Sgd => nn::Sgd {
            momentum: config.momentum,
            dampening: 0.0,
            wd,
            nesterov: config.nesterov,
        }
        .build(vs, lr)?,
        OptimizerKind::Adam => nn::Adam::default().wd(wd).build(vs, lr)?,
        OptimizerKind::Adamw => nn::AdamW::default().wd(wd).build(vs, lr)?,
    };
    Ok(opt)
}

/// Mean cross-entropy and accuracy of `model` over `data`, in eval mode and without gradients.
pub fn evaluate(model: &dyn ModuleT, data: &Dataset, batch_size: usize) -> (f64, f64) {
    let total = data.len();
    let device = data.labels.device();
    tch::no_grad(|| {
        let mut loss = Tensor::zeros([], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut start = 0;
        while start < total {
            let len = (batch_size as i64).min(total - start);
            let xs = data.images.narrow(0, start, len);
            let ys = data.labels.narrow(0, start, len);
            let logits = model.forward_t(&xs, false);
            let batch_loss =
                logits.cross_entropy_loss::<Tensor>(&ys, None, Reduction::Sum, -100, 0.0);
            loss += batch_loss.to_kind(Kind::Double);
            correct += logits.argmax(-1, false).eq_tensor(&ys).sum(Kind::Int64);
            start += len;
        }
        let total = total as f64;
        (
            loss.double_value(&[]) / total,
            correct.double_value(&[]) / total,
        )
    })
}

/// What one epoch of training saw: the mean loss, or `None` when it went non-finite.
enum EpochPass {
    Finished { train_loss: f64 },
    Diverged,
    Stopped,
}

fn train_epoch(
    model: &dyn ModuleT,
    opt: &mut nn::Optimizer,
    train: &Dataset,
    batch_size: usize,
    stop: &Stop,
) -> EpochPass {
    let total = train.len();
    let device = train.labels.device();
    let order = Tensor::randperm(total, (Kind::Int64, device));
    let mut loss_sum = Tensor::zeros([], (Kind::Double, device));

    let mut start = 0;
    let mut batch = 0;
    while start < total {
        if stop.requested().is_some() {
            return EpochPass::Stopped;
        }
        let len = (batch_size as i64).min(total - start);
        let (xs, ys) = train.select(&order.narrow(0, start, len));
        let loss = model.forward_t(&xs, true).cross_entropy_for_logits(&ys);
        opt.backward_step(&loss);
        loss_sum += loss.detach().to_kind(Kind::Double) * (len as f64);

        start += len;
        batch += 1;
        if batch % DIVERGENCE_CHECK_EVERY == 0 && !loss_sum.double_value(&[]).is_finite() {
            return EpochPass::Diverged;
        }
    }

    let train_loss = loss_sum.double_value(&[]) / total as f64;
    if train_loss.is_finite() {
        EpochPass::Finished { train_loss }
    } else {
        EpochPass::Diverged
    }
}

/// Trains as configured, writing `start`, `epoch` and `result` events; returns the result.
pub fn run<W: Write>(
    config: &Config,
    events: &mut EventWriter<W>,
    stop: &Stop,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    tch::set_num_threads(config.threads as i32);
    let device = resolve_device(config.device_request)?;
    tch::manual_seed(config.seed as i64);
    if let Device::Cuda(_) = device {
        tch::Cuda::manual_seed_all(config.seed);
        tch::Cuda::cudnn_set_benchmark(true);
    }

    let splits = data::load(config, device)?;
    let vs = nn::VarStore::new(device);
    let model = models::build(&vs.root(), config, splits.shape, splits.classes);
    let mut opt = optimizer(&vs, config)?;
    // With --eval-test the best epoch's weights are kept aside, to be tested at the end.
    let mut best = config.eval_test.then(|| {
        let best_vs = nn::VarStore::new(device);
        let best_model = models::build(&best_vs.root(), config, splits.shape, splits.classes);
        (best_vs, best_model)
    });

    let parameters = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    events.emit(&Event::Start(Start {
        version: env!("CARGO_PKG_VERSION"),
        model: config.model,
        dataset: config.dataset,
        device: device_name(device),
        threads: config.threads,
        parameters,
        train_size: splits.train.len(),
        val_size: splits.val.len(),
        config,
    }))?;

    let mut outcome = Outcome {
        status: Status::Completed,
        val_loss: None,
        val_accuracy: None,
        best_epoch: None,
        epochs_run: 0,
        seconds: 0.0,
        test_loss: None,
        test_accuracy: None,
        checkpoint: None,
    };
    for epoch in 1..=config.epochs {
        let epoch_started = Instant::now();
        let pass = train_epoch(
            model.as_ref(),
            &mut opt,
            &splits.train,
            config.batch_size,
            stop,
        );
        let train_seconds = epoch_started.elapsed().as_secs_f64();
        let train_loss = match pass {
            EpochPass::Finished { train_loss } => train_loss,
            EpochPass::Diverged => {
                outcome.status = Status::Diverged;
                break;
            }
            EpochPass::Stopped => {
                outcome.status = Status::Stopped;
                break;
            }
        };

        let (val_loss, val_accuracy) =
            evaluate(model.as_ref(), &splits.val, config.eval_batch_size);
        if !val_loss.is_finite() {
            outcome.status = Status::Diverged;
            break;
        }
        outcome.epochs_run = epoch;
        if outcome
            .val_loss
            .is_none_or(|best_loss| val_loss < best_loss)
        {
            outcome.val_loss = Some(val_loss);
            outcome.val_accuracy = Some(val_accuracy);
            outcome.best_epoch = Some(epoch);
            if let Some((best_vs, _)) = best.as_mut() {
                best_vs.copy(&vs)?;
            }
        }

        let record = Epoch {
            epoch,
            epochs: config.epochs,
            train_loss,
            val_loss,
            val_accuracy,
            lr: config.lr,
            seconds: epoch_started.elapsed().as_secs_f64(),
            samples_per_second: splits.train.len() as f64 / train_seconds,
        };
        if !config.quiet {
            eprintln!(
                "epoch {epoch}/{}: train_loss {train_loss:.4}  val_loss {val_loss:.4}  \
                 val_accuracy {val_accuracy:.4}  {:.1}s  {:.0} samples/s",
                config.epochs, record.seconds, record.samples_per_second
            );
        }
        events.emit(&Event::Epoch(&record))?;
        if stop.requested().is_some() {
            outcome.status = Status::Stopped;
            break;
        }
    }

    let finished = matches!(outcome.status, Status::Completed | Status::EarlyStopped);
    if let (true, Some((_, best_model)), Some(test)) =
        (finished, best.as_ref(), splits.test.as_ref())
    {
        let (test_loss, test_accuracy) =
            evaluate(best_model.as_ref(), test, config.eval_batch_size);
        outcome.test_loss = Some(test_loss);
        outcome.test_accuracy = Some(test_accuracy);
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    events.emit(&Event::Result(&outcome))?;
    Ok(outcome)
}
