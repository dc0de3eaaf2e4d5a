//! The training loop: one process, one model, one set of hyperparameters.
//!
//! The data stay on the training device; each batch is an index selection from a permutation
//! drawn on that device, and losses are summed there too, so the host waits for the device
//! only at the end of an epoch (and every few dozen batches, to notice divergence early).

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Reduction, Tensor};

use crate::checkpoint::{self, Progress};
use crate::config::{Config, DeviceRequest};
use crate::data::{self, Dataset};
use crate::error::device;
use crate::events::{BestValidation, Epoch, Event, EventWriter, Outcome, Start, Status};
use crate::models;
use crate::optim::{OptimSettings, Optimizer};
use crate::schedule::Schedule;

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
        (loss.double_value(&[]) / total, correct.double_value(&[]) / total)
    })
}

/// What one epoch of training saw.
enum EpochPass {
    Finished { train_loss: f64 },
    Diverged,
    Stopped,
}

/// Everything a training step needs besides the model and its optimizer.
struct StepPlan<'a> {
    config: &'a Config,
    schedule: &'a Schedule,
    amp: bool,
    channels_last: bool,
}

fn train_epoch(
    model: &dyn ModuleT,
    opt: &mut Optimizer,
    train: &Dataset,
    plan: &StepPlan<'_>,
    first_step: usize,
    stop: &Stop,
) -> EpochPass {
    let config = plan.config;
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
        let len = (config.batch_size as i64).min(total - start);
        let (xs, ys) = train.select(&order.narrow(0, start, len));
        let mut xs = config.augment.apply(&xs);
        if plan.channels_last {
            xs = to_channels_last(&xs);
        }

        opt.set_lr(plan.schedule.lr_at(first_step + batch));
        opt.zero_grad();
        let logits = tch::autocast(plan.amp, || model.forward_t(&xs, true));
        let loss = logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
            &ys,
            None,
            Reduction::Mean,
            -100,
            config.label_smoothing,
        );
        loss.backward();
        if let Some(max_norm) = config.clip_grad_norm {
            opt.clip_grad_norm(max_norm);
        }
        opt.step();
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

extern "C" {
    fn rust_trainer_set_autocast_bf16() -> std::os::raw::c_int;
}

/// Makes CUDA autocast compute in bfloat16 rather than libtorch's default float16.
fn use_bf16_autocast() -> anyhow::Result<()> {
    // SAFETY: a plain C function with no arguments; it catches every C++ exception.
    let failed = unsafe { rust_trainer_set_autocast_bf16() } != 0;
    anyhow::ensure!(!failed, "--amp: libtorch refused bfloat16 autocast on CUDA");
    Ok(())
}

/// The same tensor with an NHWC memory layout (shape unchanged), which cuDNN runs faster.
fn to_channels_last(xs: &Tensor) -> Tensor {
    xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// The seed of epoch `epoch`'s shuffling, augmentation and dropout: a function of the run's
/// seed and the epoch alone, so a resumed run draws what the uninterrupted one would have.
fn epoch_seed(seed: u64, epoch: usize) -> i64 {
    (seed as i64).wrapping_mul(1_000_003).wrapping_add(epoch as i64)
}

fn optim_settings(config: &Config) -> OptimSettings {
    OptimSettings {
        kind: config.optimizer,
        lr: config.lr,
        momentum: config.momentum,
        nesterov: config.nesterov,
        weight_decay: config.weight_decay,
        decay_norm_and_bias: !config.no_decay_norm_bias,
    }
}

fn schedule(config: &Config, steps_per_epoch: usize) -> Schedule {
    Schedule {
        kind: config.schedule,
        lr: config.lr,
        min_lr: config.min_lr,
        warmup_epochs: config.warmup_epochs,
        step_size: config.step_size,
        gamma: config.gamma,
        milestones: config.milestones.clone(),
        restart_epochs: config.restart_epochs,
        restart_mult: config.restart_mult,
        epochs: config.epochs,
        steps_per_epoch,
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
    let on_cuda = device.is_cuda();
    for (asked, flag) in [(config.amp, "--amp"), (config.channels_last, "--channels-last")] {
        if asked && !on_cuda {
            eprintln!("rust-trainer: warning: {flag} only applies on CUDA; ignored on the CPU");
        }
    }
    tch::manual_seed(config.seed as i64);
    if on_cuda {
        tch::Cuda::manual_seed_all(config.seed);
        tch::Cuda::cudnn_set_benchmark(true);
    }

    let splits = data::load(config, device)?;
    let mut vs = nn::VarStore::new(device);
    let model = models::build(&vs.root(), config, splits.shape, splits.classes);
    // The best epoch's weights are kept aside when they will be tested or saved.
    let keep_best = config.eval_test || config.checkpoint.is_some() || config.resume.is_some();
    let mut best = keep_best.then(|| {
        let best_vs = nn::VarStore::new(device);
        let best_model = models::build(&best_vs.root(), config, splits.shape, splits.classes);
        (best_vs, best_model)
    });
    let steps_per_epoch = (splits.train.len() as usize).div_ceil(config.batch_size);
    let schedule = schedule(config, steps_per_epoch);
    let mut opt = Optimizer::new(&vs, optim_settings(config));

    let mut progress = Progress {
        epoch: 0,
        best_epoch: None,
        best_val_loss: None,
        best_val_accuracy: None,
        stale_epochs: 0,
    };
    if let (Some(path), Some((best_vs, _))) = (&config.resume, best.as_mut()) {
        let (state, saved) = checkpoint::restore(path, config, &mut vs, best_vs)?;
        opt.load_state(&state)?;
        progress = saved;
    }
    let channels_last = config.channels_last && on_cuda;
    if channels_last {
        for (_, mut variable) in vs.variables() {
            if variable.dim() == 4 {
                tch::no_grad(|| variable.set_data(&to_channels_last(&variable)));
            }
        }
    }

    let parameters = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    events.emit(&Event::Start(Start {
        version: env!("CARGO_PKG_VERSION"),
        model: config.model,
        dataset: config.dataset,
        device: device_name(device),
        threads: config.threads,
        parameters,
        train_size: splits.train.len(),
        val_size: splits.val.len(),
        normalisation: &splits.normalisation,
        resumed_from_epoch: config.resume.as_ref().map(|_| progress.epoch),
        config,
    }))?;

    // Without a validation set (--val-fraction 0, a final model on all the training data)
    // every epoch's model counts as the best so far: the last one is tested and kept.
    let validating = !splits.val.is_empty();
    let best_validation = |progress: &Progress| {
        validating.then_some(BestValidation {
            val_loss: progress.best_val_loss,
            val_accuracy: progress.best_val_accuracy,
        })
    };
    let mut outcome = Outcome {
        status: Status::Completed,
        validation: best_validation(&progress),
        best_epoch: progress.best_epoch,
        epochs_run: progress.epoch,
        seconds: 0.0,
        test_loss: None,
        test_accuracy: None,
        checkpoint: None,
    };
    let amp = config.amp && on_cuda;
    if amp {
        use_bf16_autocast()?;
    }
    let plan = StepPlan { config, schedule: &schedule, amp, channels_last };
    for epoch in progress.epoch + 1..=config.epochs {
        let epoch_started = Instant::now();
        tch::manual_seed(epoch_seed(config.seed, epoch));
        let first_step = (epoch - 1) * steps_per_epoch;
        let pass = train_epoch(model.as_ref(), &mut opt, &splits.train, &plan, first_step, stop);
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

        let validation =
            validating.then(|| evaluate(model.as_ref(), &splits.val, config.eval_batch_size));
        if validation.is_some_and(|(val_loss, _)| !val_loss.is_finite()) {
            outcome.status = Status::Diverged;
            break;
        }
        let previous_best = progress.best_val_loss;
        let better = match validation {
            Some((val_loss, _)) => previous_best.is_none_or(|best_loss| val_loss < best_loss),
            None => true,
        };
        if better {
            progress.best_val_loss = validation.map(|(val_loss, _)| val_loss);
            progress.best_val_accuracy = validation.map(|(_, val_accuracy)| val_accuracy);
            progress.best_epoch = Some(epoch);
            if let Some((best_vs, _)) = best.as_mut() {
                best_vs.copy(&vs)?;
            }
        }
        let improved = match (validation, previous_best) {
            (Some((val_loss, _)), Some(best_loss)) => val_loss < best_loss - config.min_delta,
            _ => true,
        };
        progress.stale_epochs = if improved { 0 } else { progress.stale_epochs + 1 };
        progress.epoch = epoch;
        outcome.validation = best_validation(&progress);
        outcome.best_epoch = progress.best_epoch;
        outcome.epochs_run = epoch;

        let record = Epoch {
            epoch,
            epochs: config.epochs,
            train_loss,
            val_loss: validation.map(|(val_loss, _)| val_loss),
            val_accuracy: validation.map(|(_, val_accuracy)| val_accuracy),
            lr: schedule.lr_at(first_step),
            seconds: epoch_started.elapsed().as_secs_f64(),
            samples_per_second: splits.train.len() as f64 / train_seconds,
        };
        if !config.quiet {
            let validated = validation.map_or(String::new(), |(val_loss, val_accuracy)| {
                format!("  val_loss {val_loss:.4}  val_accuracy {val_accuracy:.4}")
            });
            eprintln!(
                "epoch {epoch}/{}: train_loss {train_loss:.4}{validated}  lr {:.3e}  {:.1}s  \
                 {:.0} samples/s",
                config.epochs, record.lr, record.seconds, record.samples_per_second
            );
        }
        if let (Some(path), Some((best_vs, _))) = (&config.checkpoint, best.as_ref()) {
            checkpoint::save(path, config, &vs, best_vs, opt.state(), &progress)?;
            outcome.checkpoint = Some(path.display().to_string());
        }
        events.emit(&Event::Epoch(&record))?;

        if stop.requested().is_some() {
            outcome.status = Status::Stopped;
            break;
        }
        if config.patience.is_some_and(|patience| progress.stale_epochs >= patience)
            && epoch < config.epochs
        {
            outcome.status = Status::EarlyStopped;
            break;
        }
    }

    // A signal that came during the last validation still stops the run before the test.
    if stop.requested().is_some() && outcome.status != Status::Diverged {
        outcome.status = Status::Stopped;
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
    if outcome.checkpoint.is_none() && config.resume.is_some() {
        outcome.checkpoint = config.checkpoint.as_ref().map(|p| p.display().to_string());
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    events.emit(&Event::Result(&outcome))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_autocast_can_be_selected_without_a_gpu() {
        // The setting is global and device-independent; libtorch accepts it anywhere.
        use_bf16_autocast().unwrap();
    }

    #[test]
    fn epoch_seeds_differ_by_epoch_and_run() {
        assert_ne!(epoch_seed(0, 1), epoch_seed(0, 2));
        assert_ne!(epoch_seed(1, 1), epoch_seed(2, 1));
        assert_eq!(epoch_seed(7, 3), epoch_seed(7, 3));
    }

    #[test]
    fn channels_last_keeps_shape_and_values() {
        let xs = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        let nhwc = to_channels_last(&xs);
        assert_eq!(nhwc.size(), xs.size());
        assert!(nhwc.equal(&xs));
        // Channels vary fastest in memory.
        assert_eq!(nhwc.stride(), vec![60, 1, 15, 3]);
    }
}
