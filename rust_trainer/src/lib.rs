//! rust-trainer: trains one model with one set of hyperparameters on libtorch and reports
//! what happened as JSON Lines events on stdout.
//!
//! The binary is a thin shell around [`run`]; the modules are public so that integration
//! tests and other tools can drive the pieces directly.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod describe;
pub mod error;
pub mod events;
pub mod models;
pub mod optim;
pub mod schedule;
pub mod train;

use std::io::Write;

use serde::Serialize;

use crate::cli::Command;
use crate::config::Config;
use crate::error::ErrorKind;
use crate::events::{EventWriter, Status};
use crate::train::Stop;

/// What `rust-trainer info` prints.
#[derive(Debug, Serialize)]
pub struct Info {
    pub version: &'static str,
    /// The libtorch version the trainer was built against.
    pub libtorch: &'static str,
    pub cuda_available: bool,
    pub cuda_device_count: i64,
    pub cudnn_available: bool,
    pub threads: i32,
}

pub fn info() -> Info {
    Info {
        version: env!("CARGO_PKG_VERSION"),
        libtorch: option_env!("RUST_TRAINER_LIBTORCH_VERSION").unwrap_or("unknown"),
        cuda_available: tch::Cuda::is_available(),
        cuda_device_count: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        threads: tch::get_num_threads(),
    }
}

/// Runs one command; returns the process's exit code.
///
/// A run that ends without an `Err` has already written its `result` event; the exit code
/// then says how it ended (0, 4 for divergence, 130/143/129 when stopped by a signal).
pub fn run<W: Write>(
    command: Command,
    events: &mut EventWriter<W>,
    stop: &Stop,
) -> anyhow::Result<u8> {
    match command {
        Command::Info => {
            events.write_json(&info())?;
            Ok(0)
        }
        Command::Describe => {
            events.write_json(&describe::describe())?;
            Ok(0)
        }
        Command::Train(args) => {
            let config = Config::from_args(*args)?;
            let outcome = train::run(&config, events, stop)?;
            Ok(match outcome.status {
                Status::Completed | Status::EarlyStopped => 0,
                Status::Stopped => stop.requested().unwrap_or(0),
                Status::Diverged => {
                    let message = "training diverged: the loss became non-finite; lower --lr";
                    events.error(ErrorKind::Diverged, message)?;
                    ErrorKind::Diverged.exit_code()
                }
            })
        }
    }
}
