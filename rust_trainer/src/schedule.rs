//! Learning-rate schedules as pure functions of the optimizer step.
//!
//! Every schedule is evaluated before each batch, so those defined per step (cosine, cosine
//! with warm restarts, one-cycle, warm-up) move every batch, and those defined per epoch
//! (step, multi-step) change at epoch borders. Warm-up comes first; the schedule proper then
//! runs over the steps that remain, counting epochs from the end of warm-up.

use std::f64::consts::PI;

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The same lr throughout.
    Constant,
    /// Multiply by --gamma every --step-size epochs.
    Step,
    /// Multiply by --gamma at each of --milestones (epochs).
    Multistep,
    /// Cosine annealing from --lr to --min-lr over the run, per step.
    Cosine,
    /// Cosine annealing restarted every --restart-epochs, each period --restart-mult times
    /// longer than the last (SGDR), per step.
    CosineRestarts,
    /// One-cycle: up from --lr/25 to --lr over the first 30% of steps, then down to
    /// --lr/250000, both halves cosine, per step.
    Onecycle,
}

/// A schedule with all its settings, for runs of `steps_per_epoch` batches per epoch.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: usize,
    pub step_size: usize,
    pub gamma: f64,
    pub milestones: Vec<usize>,
    pub restart_epochs: usize,
    pub restart_mult: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
}

const ONECYCLE_PCT_START: f64 = 0.3;
const ONECYCLE_DIV: f64 = 25.0;
const ONECYCLE_FINAL_DIV: f64 = 1e4;

/// Cosine interpolation from `start` (at `fraction` 0) to `end` (at 1).
fn cosine(start: f64, end: f64, fraction: f64) -> f64 {
    end + (start - end) * (1.0 + (PI * fraction.clamp(0.0, 1.0)).cos()) / 2.0
}

impl Schedule {
    /// The learning rate of the batch at `step` (0-based, counted over the whole run).
    pub fn lr_at(&self, step: usize) -> f64 {
        let per_epoch = self.steps_per_epoch.max(1);
        let total = (self.epochs * per_epoch).max(1);
        let warmup = (self.warmup_epochs * per_epoch).min(total);
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }

        let step = step - warmup;
        let steps = (total - warmup).max(1);
        let epoch = step / per_epoch;
        let epochs_fraction = step as f64 / per_epoch as f64;
        match self.kind {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Step => self.lr * self.gamma.powi((epoch / self.step_size.max(1)) as i32),
            ScheduleKind::Multistep => {
                let passed = self.milestones.iter().filter(|&&m| m <= epoch).count();
                self.lr * self.gamma.powi(passed as i32)
            }
            ScheduleKind::Cosine => cosine(self.lr, self.min_lr, step as f64 / steps as f64),
            ScheduleKind::CosineRestarts => {
                let (mut start, mut period) = (0.0, self.restart_epochs.max(1) as f64);
                while epochs_fraction >= start + period {
                    start += period;
                    period *= self.restart_mult.max(1) as f64;
                }
                cosine(self.lr, self.min_lr, (epochs_fraction - start) / period)
            }
            ScheduleKind::Onecycle => {
                let initial = self.lr / ONECYCLE_DIV;
                let last = initial / ONECYCLE_FINAL_DIV;
                let peak = (ONECYCLE_PCT_START * steps as f64 - 1.0).max(1.0);
                let end = (steps as f64 - 1.0).max(peak + 1.0);
                let step = step as f64;
                if step <= peak {
                    cosine(initial, self.lr, step / peak)
                } else {
                    cosine(self.lr, last, (step - peak) / (end - peak))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            lr: 0.1,
            min_lr: 0.0,
            warmup_epochs: 0,
            step_size: 2,
            gamma: 0.5,
            milestones: vec![1, 3],
            restart_epochs: 2,
            restart_mult: 2,
            epochs: 6,
            steps_per_epoch: 1,
        }
    }

    fn per_epoch(s: &Schedule) -> Vec<f64> {
        (0..s.epochs).map(|e| s.lr_at(e * s.steps_per_epoch)).collect()
    }

    fn assert_close(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{actual:?} vs {expected:?}");
        }
    }

    #[test]
    fn constant_never_moves() {
        assert_close(&per_epoch(&schedule(ScheduleKind::Constant)), &[0.1; 6]);
    }

    #[test]
    fn step_halves_every_two_epochs() {
        assert_close(
            &per_epoch(&schedule(ScheduleKind::Step)),
            &[0.1, 0.1, 0.05, 0.05, 0.025, 0.025],
        );
    }

    #[test]
    fn multistep_halves_at_each_milestone() {
        let expected = [0.1, 0.05, 0.05, 0.025, 0.025, 0.025];
        assert_close(&per_epoch(&schedule(ScheduleKind::Multistep)), &expected);
    }

    #[test]
    fn cosine_follows_half_a_cosine_per_step() {
        let mut s = schedule(ScheduleKind::Cosine);
        s.epochs = 2;
        s.steps_per_epoch = 2;
        // Four steps: 0.1 * (1 + cos(pi * t / 4)) / 2 for t = 0..4.
        let expected: Vec<f64> =
            (0..4).map(|t| 0.1 * (1.0 + (PI * t as f64 / 4.0).cos()) / 2.0).collect();
        let actual: Vec<f64> = (0..4).map(|t| s.lr_at(t)).collect();
        assert_close(&actual, &expected);
    }

    #[test]
    fn cosine_restarts_double_their_period() {
        // Periods of 2 then 4 epochs: restarts at epochs 0 and 2.
        let s = schedule(ScheduleKind::CosineRestarts);
        let c = |t: f64, period: f64| 0.1 * (1.0 + (PI * t / period).cos()) / 2.0;
        let expected =
            [c(0.0, 2.0), c(1.0, 2.0), c(0.0, 4.0), c(1.0, 4.0), c(2.0, 4.0), c(3.0, 4.0)];
        assert_close(&per_epoch(&s), &expected);
    }

    #[test]
    fn onecycle_rises_to_lr_then_falls_far_below() {
        let mut s = schedule(ScheduleKind::Onecycle);
        s.epochs = 10;
        s.steps_per_epoch = 10;
        let lrs: Vec<f64> = (0..100).map(|t| s.lr_at(t)).collect();
        // It starts at lr/25, peaks at lr on step 29 (30% of 100, less one) and ends at
        // lr/25/1e4 on the last step, as PyTorch's OneCycleLR does.
        assert!((lrs[0] - 0.1 / 25.0).abs() < 1e-12);
        assert!((lrs[29] - 0.1).abs() < 1e-12);
        assert!((lrs[99] - 0.1 / 25.0 / 1e4).abs() < 1e-15);
        assert!(lrs[..29].windows(2).all(|w| w[0] < w[1]));
        assert!(lrs[29..].windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn warmup_rises_linearly_then_hands_over() {
        let mut s = schedule(ScheduleKind::Step);
        s.warmup_epochs = 1;
        s.steps_per_epoch = 4;
        let lrs: Vec<f64> = (0..12).map(|t| s.lr_at(t)).collect();
        // Steps 0..4 climb to lr in equal parts; then the step schedule starts at epoch 0.
        assert_close(&lrs[..4], &[0.025, 0.05, 0.075, 0.1]);
        assert_close(&lrs[4..12], &[0.1; 8]);
        assert!((s.lr_at(12) - 0.05).abs() < 1e-12);
    }
}
