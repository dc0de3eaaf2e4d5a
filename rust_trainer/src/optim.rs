//! The optimizers, written on tensors so that their state can be checkpointed and restored
//! exactly (libtorch's own optimizers keep theirs out of reach of tch).
//!
//! The update rules are PyTorch's: SGD with momentum and Nesterov, Adam (weight decay added
//! to the gradient), AdamW (decoupled weight decay) and RMSprop. Weight decay is applied
//! here, per parameter, never as a penalty summed into the loss; with
//! `decay_norm_and_bias == false` one-dimensional parameters (biases, BatchNorm's scale and
//! shift) are left undecayed.

use std::collections::HashMap;

use anyhow::Context;
use tch::{nn, Kind, Tensor};

use crate::cli::OptimizerKind;

#[derive(Debug, Clone)]
pub struct OptimSettings {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub decay_norm_and_bias: bool,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;
const RMSPROP_ALPHA: f64 = 0.99;

#[derive(Debug)]
struct Param {
    name: String,
    value: Tensor,
    decay: bool,
    /// Per-parameter state: momentum buffer; Adam's first and second moments; RMSprop's
    /// square average and momentum buffer.
    slots: Vec<Tensor>,
}

#[derive(Debug)]
pub struct Optimizer {
    settings: OptimSettings,
    params: Vec<Param>,
    steps: i64,
}

impl Optimizer {
    /// Takes every trainable variable of `vs`, in name order.
    pub fn new(vs: &nn::VarStore, settings: OptimSettings) -> Self {
        let mut variables: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let slot_count = match settings.kind {
            OptimizerKind::Sgd => usize::from(settings.momentum > 0.0),
            OptimizerKind::Adam | OptimizerKind::Adamw => 2,
            OptimizerKind::Rmsprop => 1 + usize::from(settings.momentum > 0.0),
        };
        let params = variables
            .into_iter()
            .map(|(name, value)| {
                let slots = (0..slot_count).map(|_| value.zeros_like().detach()).collect();
                let decay = settings.decay_norm_and_bias || value.dim() > 1;
                Param { name, value, decay, slots }
            })
            .collect();
        Self { settings, params, steps: 0 }
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.settings.lr = lr;
    }

    pub fn zero_grad(&mut self) {
        for param in &mut self.params {
            param.value.zero_grad();
        }
    }

    /// Scales all gradients down so that their joint L2 norm is at most `max_norm`, without
    /// waiting for the device.
    pub fn clip_grad_norm(&self, max_norm: f64) {
        tch::no_grad(|| {
            let grads: Vec<Tensor> =
                self.params.iter().map(|p| p.value.grad()).filter(Tensor::defined).collect();
            let Some(first) = grads.first() else { return };
            let mut total = Tensor::zeros([], (Kind::Float, first.device()));
            for grad in &grads {
                total += grad.to_kind(Kind::Float).square().sum(Kind::Float);
            }
            let scale = (total.sqrt() + 1e-6).reciprocal().multiply_scalar(max_norm).clamp_max(1.0);
            for mut grad in grads {
                let _ = grad.g_mul_(&scale.to_kind(grad.kind()));
            }
        });
    }

    /// One update of every parameter that has a gradient.
    ///
    /// The updates are PyTorch's single-tensor forms, in place: the state and the parameter
    /// are updated where they lie, with at most two temporaries per parameter (the gradient
    /// with weight decay added, and Adam's and RMSprop's denominator), where a naive
    /// transcription allocates six or more. Products with the learning rate go through
    /// `addcmul_`/`addcdiv_` with a zero-dimensional tensor, since tch's in-place ops take no
    /// `alpha`/`value` scalar.
    pub fn step(&mut self) {
        self.steps += 1;
        let s = &self.settings;
        let (lr, t) = (s.lr, self.steps as i32);
        let Some(first) = self.params.first() else { return };
        let options = (first.value.kind(), first.value.device());
        let neg_lr = Tensor::full([], -lr, options);
        tch::no_grad(|| {
            for param in &mut self.params {
                let grad = param.value.grad();
                if !grad.defined() {
                    continue;
                }
                let wd = if param.decay { s.weight_decay } else { 0.0 };
                let value = &mut param.value;
                match s.kind {
                    OptimizerKind::Sgd => {
                        let grad = if wd > 0.0 { &grad + &*value * wd } else { grad };
                        match param.slots.first_mut() {
                            Some(buf) => {
                                let _ = buf.g_mul_scalar_(s.momentum);
                                let _ = buf.g_add_(&grad);
                                if s.nesterov {
                                    // value -= lr * (grad + momentum * buf)
                                    let _ = value.addcmul_(&grad, &neg_lr);
                                    let neg_lr_momentum =
                                        Tensor::full([], -lr * s.momentum, options);
                                    let _ = value.addcmul_(buf, &neg_lr_momentum);
                                } else {
                                    let _ = value.addcmul_(buf, &neg_lr);
                                }
                            }
                            None => {
                                let _ = value.addcmul_(&grad, &neg_lr);
                            }
                        }
                    }
                    OptimizerKind::Adam | OptimizerKind::Adamw => {
                        let grad = match s.kind {
                            OptimizerKind::Adam if wd > 0.0 => &grad + &*value * wd,
                            _ => grad,
                        };
                        if s.kind == OptimizerKind::Adamw && wd > 0.0 {
                            let _ = value.g_mul_scalar_(1.0 - lr * wd);
                        }
                        let [m, v] = &mut param.slots[..] else { unreachable!("two slots") };
                        let _ = m.lerp_(&grad, 1.0 - BETA1);
                        let _ = v.g_mul_scalar_(BETA2);
                        let _ = v.addcmul_(&grad, &(&grad * (1.0 - BETA2)));
                        // value -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps), with the step's
                        // sign and size folded into the denominator for `addcdiv_`.
                        let correction1 = 1.0 - BETA1.powi(t);
                        let root2 = (1.0 - BETA2.powi(t)).sqrt();
                        let mut denominator = v.sqrt();
                        let _ = denominator.g_add_scalar_(EPS * root2);
                        let _ = denominator.g_mul_scalar_(-correction1 / (lr * root2));
                        let _ = value.addcdiv_(m, &denominator);
                    }
                    OptimizerKind::Rmsprop => {
                        let grad = if wd > 0.0 { &grad + &*value * wd } else { grad };
                        let (square_avg, rest) = param.slots.split_first_mut().expect("a slot");
                        let _ = square_avg.g_mul_scalar_(RMSPROP_ALPHA);
                        let _ = square_avg.addcmul_(&grad, &(&grad * (1.0 - RMSPROP_ALPHA)));
                        let mut average = square_avg.sqrt();
                        let _ = average.g_add_scalar_(EPS);
                        match rest.first_mut() {
                            Some(buf) => {
                                let _ = buf.g_mul_scalar_(s.momentum);
                                let _ = buf.addcdiv_(&grad, &average);
                                let _ = value.addcmul_(buf, &neg_lr);
                            }
                            None => {
                                let _ = average.g_mul_scalar_(-1.0 / lr);
                                let _ = value.addcdiv_(&grad, &average);
                            }
                        }
                    }
                }
            }
        });
    }

    /// The whole state as named tensors: `<param>.<slot>` and `steps`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut named = vec![("steps".to_string(), Tensor::from(self.steps))];
        for param in &self.params {
            for (index, slot) in param.slots.iter().enumerate() {
                named.push((format!("{}.{index}", param.name), slot.shallow_clone()));
            }
        }
        named
    }

    /// Restores a state written by [`Optimizer::state`] for the same model and optimizer.
    pub fn load_state(&mut self, named: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        let steps = named.get("steps").context("optimizer state has no `steps`")?;
        self.steps = steps.int64_value(&[]);
        for param in &mut self.params {
            for (index, slot) in param.slots.iter_mut().enumerate() {
                let key = format!("{}.{index}", param.name);
                let saved =
                    named.get(&key).with_context(|| format!("optimizer state lacks {key}"))?;
                tch::no_grad(|| slot.f_copy_(saved))
                    .with_context(|| format!("optimizer state {key} does not fit"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Minimises sum((w - 3)^2) from w = 0 and returns w after `steps` updates.
    fn descend(kind: OptimizerKind, lr: f64, momentum: f64, steps: usize) -> f64 {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().zeros("w", &[2]);
        let settings = OptimSettings {
            kind,
            lr,
            momentum,
            nesterov: false,
            weight_decay: 0.0,
            decay_norm_and_bias: true,
        };
        let mut opt = Optimizer::new(&vs, settings);
        for _ in 0..steps {
            opt.zero_grad();
            (&w - 3.0).square().sum(Kind::Float).backward();
            opt.step();
        }
        w.double_value(&[0])
    }

    #[test]
    fn every_optimizer_reaches_the_minimum() {
        for (kind, lr, momentum) in [
            (OptimizerKind::Sgd, 0.1, 0.0),
            (OptimizerKind::Sgd, 0.05, 0.9),
            (OptimizerKind::Adam, 0.1, 0.0),
            (OptimizerKind::Adamw, 0.1, 0.0),
            (OptimizerKind::Rmsprop, 0.01, 0.0),
            (OptimizerKind::Rmsprop, 0.01, 0.5),
        ] {
            let w = descend(kind, lr, momentum, 500);
            // A convex bowl with its floor at 3.
            assert!((w - 3.0).abs() < 1e-2, "{kind:?} momentum {momentum}: w = {w}");
        }
    }

    #[test]
    fn plain_sgd_step_matches_the_rule() {
        // One step from 0 with gradient 2 * (0 - 3) = -6 and lr 0.1 lands on 0.6.
        assert!((descend(OptimizerKind::Sgd, 0.1, 0.0, 1) - 0.6).abs() < 1e-6);
    }

    #[test]
    fn first_adam_step_moves_by_lr() {
        // Bias correction makes Adam's first step lr * sign(gradient).
        assert!((descend(OptimizerKind::Adam, 0.01, 0.0, 1) - 0.01).abs() < 1e-6);
    }

    #[test]
    fn norm_and_bias_can_be_spared_from_decay() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let weight = root.ones("weight", &[2, 2]);
        let bias = root.ones("bias", &[2]);
        let settings = OptimSettings {
            kind: OptimizerKind::Sgd,
            lr: 0.5,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.1,
            decay_norm_and_bias: false,
        };
        let mut opt = Optimizer::new(&vs, settings);
        opt.zero_grad();
        (weight.sum(Kind::Float) * 0.0 + bias.sum(Kind::Float) * 0.0).backward();
        opt.step();
        // With a zero gradient only decay moves a value: the matrix shrinks, the bias stays.
        assert!((weight.double_value(&[0, 0]) - 0.95).abs() < 1e-6);
        assert!((bias.double_value(&[0]) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn clipping_bounds_the_joint_norm() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().zeros("w", &[4]);
        let settings = OptimSettings {
            kind: OptimizerKind::Sgd,
            lr: 1.0,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            decay_norm_and_bias: true,
        };
        let opt = Optimizer::new(&vs, settings);
        (&w * 10.0).sum(Kind::Float).backward();
        opt.clip_grad_norm(1.0);
        // Gradient (10, 10, 10, 10) has norm 20; clipped to norm 1 it is 0.05 each.
        let norm = w.grad().square().sum(Kind::Float).sqrt().double_value(&[]);
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }

    #[test]
    fn state_round_trips() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().zeros("w", &[3]);
        let settings = OptimSettings {
            kind: OptimizerKind::Adam,
            lr: 0.1,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            decay_norm_and_bias: true,
        };
        let mut opt = Optimizer::new(&vs, settings.clone());
        (&w - 1.0).square().sum(Kind::Float).backward();
        opt.step();
        let saved: HashMap<String, Tensor> =
            opt.state().into_iter().map(|(k, v)| (k, v.copy())).collect();

        let mut restored = Optimizer::new(&vs, settings);
        restored.load_state(&saved).unwrap();
        // Step count and both moments come back equal.
        assert_eq!(restored.steps, 1);
        for (name, tensor) in restored.state() {
            assert!(tensor.equal(&saved[&name]), "{name}");
        }
    }
}
