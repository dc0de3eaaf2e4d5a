//! The event stream: the only code that writes to stdout.
//!
//! One JSON object per line, flushed after each line, so a reader sees an epoch the moment it
//! ends. serde_json writes non-finite floats as `null` and never uses the locale, which is what
//! the contract asks for.

use std::io::{self, Write};

use serde::Serialize;

use crate::cli::{DatasetKind, ModelKind};
use crate::config::Config;
use crate::data::Normalisation;
use crate::error::ErrorKind;

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Completed,
    EarlyStopped,
    Diverged,
    Stopped,
}

#[derive(Debug, Serialize)]
pub struct Start<'a> {
    pub version: &'static str,
    pub model: ModelKind,
    pub dataset: DatasetKind,
    pub device: String,
    pub threads: usize,
    pub parameters: i64,
    pub train_size: i64,
    pub val_size: i64,
    /// Per-channel statistics of the training file, used to normalise every split.
    pub normalisation: &'a Normalisation,
    /// The epoch a `--resume` run continues after; absent for a fresh run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from_epoch: Option<usize>,
    pub config: &'a Config,
}

#[derive(Debug, Clone, Serialize)]
pub struct Epoch {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    /// Absent without a validation set (`--val-fraction 0`); `null` when not finite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
    pub samples_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    /// `val_loss` and `val_accuracy`, both absent without a validation set.
    #[serde(flatten)]
    pub validation: Option<BestValidation>,
    /// The epoch whose model is tested and kept: the last one without a validation set.
    pub best_epoch: Option<usize>,
    pub epochs_run: usize,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// The best epoch's validation loss and accuracy; `null` while no epoch has finished.
#[derive(Debug, Clone, Serialize)]
pub struct BestValidation {
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ErrorEvent<'a> {
    pub kind: ErrorKind,
    pub message: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    Start(Start<'a>),
    Epoch(&'a Epoch),
    Result(&'a Outcome),
    Error(ErrorEvent<'a>),
}

/// Raised when the reader of stdout went away; the process then ends quietly.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// Writes events to any `Write`; stdout in the binary, a buffer in tests.
pub struct EventWriter<W: Write> {
    out: W,
}

impl<W: Write> EventWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    pub fn emit(&mut self, event: &Event<'_>) -> anyhow::Result<()> {
        self.write_line(serde_json::to_vec(event)?)
    }

    fn write_line(&mut self, mut line: Vec<u8>) -> anyhow::Result<()> {
        line.push(b'\n');
        match self.out.write_all(&line).and_then(|()| self.out.flush()) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
            Err(err) => Err(anyhow::Error::new(err).context("writing an event to stdout")),
        }
    }

    /// Writes an `error` event.
    pub fn error(&mut self, kind: ErrorKind, message: &str) -> anyhow::Result<()> {
        self.emit(&Event::Error(ErrorEvent { kind, message }))
    }

    /// Writes any serialisable value as one JSON line (for commands other than `train`).
    pub fn write_json<T: Serialize>(&mut self, value: &T) -> anyhow::Result<()> {
        self.write_line(serde_json::to_vec(value)?)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(event: &Event<'_>) -> serde_json::Value {
        let mut writer = EventWriter::new(Vec::new());
        writer.emit(event).unwrap();
        let bytes = writer.into_inner();
        // Exactly one line, ending in a newline.
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(bytes.last(), Some(&b'\n'));
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn epoch_event_has_the_contract_fields() {
        let epoch = Epoch {
            epoch: 1,
            epochs: 3,
            train_loss: 0.5,
            val_loss: Some(0.25),
            val_accuracy: Some(0.9),
            lr: 1e-3,
            seconds: 1.5,
            samples_per_second: 1000.0,
        };
        let value = line(&Event::Epoch(&epoch));
        // The tag names the event and every field keeps its contract spelling.
        assert_eq!(value["event"], "epoch");
        assert_eq!(value["val_loss"], 0.25);
        assert_eq!(value["lr"], 0.001);
        assert_eq!(value["samples_per_second"], 1000.0);
    }

    #[test]
    fn non_finite_values_are_null() {
        let outcome = Outcome {
            status: Status::Diverged,
            validation: Some(BestValidation { val_loss: Some(f64::NAN), val_accuracy: None }),
            best_epoch: None,
            epochs_run: 1,
            seconds: 0.1,
            test_loss: None,
            test_accuracy: None,
            checkpoint: None,
        };
        let value = line(&Event::Result(&outcome));
        // NaN is never printed as a number, and unrequested test fields are absent.
        assert_eq!(value["status"], "diverged");
        assert!(value["val_loss"].is_null());
        assert!(value.get("test_loss").is_none());
    }

    #[test]
    fn without_validation_the_val_fields_are_absent() {
        let epoch = Epoch {
            epoch: 2,
            epochs: 2,
            train_loss: 0.5,
            val_loss: None,
            val_accuracy: None,
            lr: 1e-3,
            seconds: 1.5,
            samples_per_second: 1000.0,
        };
        let outcome = Outcome {
            status: Status::Completed,
            validation: None,
            best_epoch: Some(2),
            epochs_run: 2,
            seconds: 3.0,
            test_loss: Some(0.1),
            test_accuracy: Some(0.97),
            checkpoint: None,
        };
        // Absent rather than null: null says a value was not finite, absent that none exists.
        let epoch = line(&Event::Epoch(&epoch));
        assert!(epoch.get("val_loss").is_none() && epoch.get("val_accuracy").is_none());
        let result = line(&Event::Result(&outcome));
        assert!(result.get("val_loss").is_none() && result.get("val_accuracy").is_none());
        assert_eq!(result["best_epoch"], 2);
        assert_eq!(result["test_accuracy"], 0.97);
    }

    #[test]
    fn error_event_names_its_kind() {
        let value = line(&Event::Error(ErrorEvent { kind: ErrorKind::Data, message: "bad magic" }));
        assert_eq!(value["event"], "error");
        assert_eq!(value["kind"], "data");
        assert_eq!(value["message"], "bad magic");
    }

    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_reader_is_reported_as_such() {
        let mut writer = EventWriter::new(ClosedPipe);
        let err = writer.emit(&Event::Error(ErrorEvent { kind: ErrorKind::Usage, message: "" }));
        // A broken pipe becomes StdoutClosed, which the binary turns into a quiet exit.
        assert!(err.unwrap_err().downcast_ref::<StdoutClosed>().is_some());
    }
}
