//! The `rust-trainer` binary: parses the command line, runs it, and owns the mapping from
//! errors to exit codes. Nothing else in the crate ends the process.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use clap::Parser;
use rust_trainer::cli::Cli;
use rust_trainer::error::ErrorKind;
use rust_trainer::events::{EventWriter, StdoutClosed};
use rust_trainer::train::Stop;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

fn main() -> ExitCode {
    let mut events = EventWriter::new(io::stdout().lock());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not failures and print to stdout as usual.
            if err.use_stderr() {
                let rendered = err.to_string();
                let first = rendered.lines().next().unwrap_or_default();
                let message = match first.strip_prefix("error: ") {
                    Some(message) => format!("{message}; see --help"),
                    // No subcommand: clap prints the help, whose first line is no error.
                    None => "a command is required (train, info or describe); see --help".into(),
                };
                let _ = events.error(ErrorKind::Usage, &message);
            }
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };

    // A libtorch failure inside tch surfaces as a panic; it is reported below as an error
    // event with a one-paragraph message, not as a panic report with C++ frames.
    panic::set_hook(Box::new(|_| {}));
    let stop = match install_signal_handlers() {
        Ok(stop) => stop,
        Err(err) => return fail(&mut events, &err.into()),
    };
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        rust_trainer::run(cli.command, &mut events, &stop)
    }));
    match result {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(err)) if err.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Ok(Err(err)) => fail(&mut events, &err),
        Err(payload) => {
            // libtorch errors surface as panics from tch's infallible calls.
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic without a message".to_string());
            fail(&mut events, &anyhow::anyhow!(text))
        }
    }
}

/// SIGINT and SIGTERM ask the training loop to stop after the current batch; a second
/// signal of the same kind ends the process at once.
fn install_signal_handlers() -> io::Result<Stop> {
    let code = Arc::new(AtomicUsize::new(0));
    for (signal, exit_code) in [(SIGINT, 130), (SIGTERM, 143)] {
        let seen = Arc::new(AtomicBool::new(false));
        flag::register_conditional_shutdown(signal, exit_code, Arc::clone(&seen))?;
        flag::register(signal, seen)?;
        flag::register_usize(signal, Arc::clone(&code), exit_code as usize)?;
    }
    Ok(Stop::new(code))
}

fn fail<W: io::Write>(events: &mut EventWriter<W>, err: &anyhow::Error) -> ExitCode {
    let kind = ErrorKind::of(err);
    let message = without_backtrace(&format!("{err:#}"));
    eprintln!("rust-trainer: {message}");
    let _ = events.error(kind, &message);
    ExitCode::from(kind.exit_code())
}

/// libtorch appends its C++ backtrace to every error, and tch's panics wrap the error in
/// `Torch("...")` with escaped newlines; the user needs the sentence before the frames.
fn without_backtrace(message: &str) -> String {
    let message = match message.find("Torch(\"") {
        Some(start) => &message[start + "Torch(\"".len()..],
        None => message,
    };
    let cut = ["\\nframe #", "\nframe #", "\\nException raised from", "\nException raised from"]
        .iter()
        .filter_map(|marker| message.find(marker))
        .min()
        .unwrap_or(message.len());
    message[..cut].trim_end().trim_end_matches("\")").trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::without_backtrace;

    #[test]
    fn libtorch_frames_are_cut_from_messages() {
        let panic = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail] \
                     can't allocate memory: 8 bytes\\nframe #0: c10::x + 0x6a\\n\")";
        assert_eq!(without_backtrace(panic), "[enforce fail] can't allocate memory: 8 bytes");
        let plain = "shape mismatch\nException raised from foo at bar.cpp:1\nframe #0: x";
        assert_eq!(without_backtrace(plain), "shape mismatch");
        assert_eq!(without_backtrace("no frames here"), "no frames here");
    }
}
