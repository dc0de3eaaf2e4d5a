//! The library's training pieces on real MNIST: the loss goes down with a few steps.

mod common;

use clap::Parser;
use rust_trainer::cli::{Cli, Command};
use rust_trainer::config::Config;
use rust_trainer::{data, models, train};
use tch::nn::{self, OptimizerConfig};
use tch::Device;

#[test]
fn a_few_steps_lower_the_loss() {
    let data_dir = common::datasets();
    let argv =
        ["rust-trainer", "train", "--train-limit", "256", "--data-dir", data_dir.to_str().unwrap()];
    let Command::Train(args) = Cli::parse_from(argv).command else { unreachable!() };
    let config = Config::from_args(*args).unwrap();
    tch::manual_seed(0);
    let splits = data::load(&config, Device::Cpu).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = models::build(&vs.root(), &config, splits.shape, splits.classes);
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();

    let (before, _) = train::evaluate(model.as_ref(), &splits.train, 256);
    for _ in 0..20 {
        let loss = model
            .forward_t(&splits.train.images, true)
            .cross_entropy_for_logits(&splits.train.labels);
        opt.backward_step(&loss);
    }
    let (after, accuracy) = train::evaluate(model.as_ref(), &splits.train, 256);
    // Twenty Adam steps on one batch of real digits cut the loss well below its start.
    assert!(after < before * 0.5, "loss {before} -> {after}");
    assert!(accuracy > 0.8, "accuracy {accuracy}");
}
