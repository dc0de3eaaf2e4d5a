//! The `rust-trainer` binary: parses the command line, runs it, and owns the mapping from
//! errors to exit codes. Nothing else in the crate ends the process.

use std::env;
use std::ffi::OsString;
use std::io::{self, BufRead, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use clap::Parser;
use rust_trainer::cli::{Cli, Command};
use rust_trainer::error::ErrorKind;
use rust_trainer::events::{EventWriter, StdoutClosed};
use rust_trainer::train::Stop;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;

fn main() {
    let code = run_main();
    // Everything the run wrote is closed by now (its files were dropped inside `run`); what
    // is left are libtorch's global destructors, which unregister thousands of operators and
    // took about 0.2 s of every process. The kernel reclaims that memory at exit anyway.
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: `_exit` ends the process without running C or C++ exit handlers; no other
    // thread of ours is writing anything that needs them.
    unsafe { libc::_exit(i32::from(code)) }
}

fn run_main() -> u8 {
    let mut events = EventWriter::new(io::stdout().lock());
    let mut args: Vec<OsString> = env::args_os().collect();
    let mut cli = match parse(&args, &mut events, false) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if matches!(&cli.command, Command::Train(train) if train.flags_from_stdin) {
        // Read before the signal handlers exist, so that SIGTERM ends a process that is still
        // waiting for its flags at once.
        match flags_from_stdin(io::stdin().lock()) {
            Ok(more) => {
                args.retain(|arg| arg != FLAGS_FROM_STDIN);
                // Before a literal `--`, after which nothing would be read as a flag.
                let at = args.iter().position(|arg| arg == "--").unwrap_or(args.len());
                args.splice(at..at, more.into_iter().map(OsString::from));
            }
            Err(message) => {
                eprintln!("rust-trainer: {message}");
                let _ = events.error(ErrorKind::Usage, &message);
                return ErrorKind::Usage.exit_code();
            }
        }
        cli = match parse(&args, &mut events, true) {
            Ok(cli) => cli,
            Err(code) => return code,
        };
    }

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
        Ok(Ok(code)) => code,
        Ok(Err(err)) if err.downcast_ref::<StdoutClosed>().is_some() => 0,
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

const FLAGS_FROM_STDIN: &str = "--flags-from-stdin";

/// The parsed command line, or the exit code after clap's message (usage errors as an
/// error event too; --help and --version print to stdout and exit 0). `from_stdin`: the
/// command line includes flags read on stdin, which a usage error says, without clap's
/// usage line (it would show the command line without them).
fn parse<W: io::Write>(
    args: &[OsString],
    events: &mut EventWriter<W>,
    from_stdin: bool,
) -> Result<Cli, u8> {
    Cli::try_parse_from(args).map_err(|err| {
        let code = u8::try_from(err.exit_code()).unwrap_or(2);
        if err.use_stderr() {
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let mut message = match first.strip_prefix("error: ") {
                Some(message) => format!("{message}; see --help"),
                // No subcommand: clap prints the help, whose first line is no error.
                None => "a command is required (train, info or describe); see --help".into(),
            };
            if from_stdin {
                message = format!("with the flags read on stdin: {message}");
                eprintln!("rust-trainer: {message}");
                let _ = events.error(ErrorKind::Usage, &message);
                return code;
            }
            let _ = events.error(ErrorKind::Usage, &message);
        }
        let _ = err.print();
        code
    })
}

/// The flags of `--flags-from-stdin`: the first line of `input`, a JSON array of strings.
fn flags_from_stdin(mut input: impl BufRead) -> Result<Vec<String>, String> {
    let mut line = String::new();
    match input.read_line(&mut line) {
        Ok(0) => Err(format!("{FLAGS_FROM_STDIN}: stdin closed before a line of flags arrived")),
        Ok(_) => {
            let flags: Vec<String> = serde_json::from_str(&line).map_err(|err| {
                format!(
                    "{FLAGS_FROM_STDIN}: the line on stdin is not a JSON array of strings ({err})"
                )
            })?;
            let nested = |flag: &String| {
                flag == FLAGS_FROM_STDIN || flag.starts_with(&format!("{FLAGS_FROM_STDIN}="))
            };
            if flags.iter().any(nested) {
                return Err(format!(
                    "{FLAGS_FROM_STDIN}: the flags on stdin may not ask for it again"
                ));
            }
            Ok(flags)
        }
        Err(err) => Err(format!("{FLAGS_FROM_STDIN}: cannot read stdin: {err}")),
    }
}

/// SIGINT, SIGTERM and SIGHUP (the terminal closed) ask the training loop to stop after the
/// current batch; a second signal of the same kind ends the process at once.
fn install_signal_handlers() -> io::Result<Stop> {
    let code = Arc::new(AtomicUsize::new(0));
    for (signal, exit_code) in [(SIGINT, 130), (SIGTERM, 143), (SIGHUP, 129)] {
        let seen = Arc::new(AtomicBool::new(false));
        flag::register_conditional_shutdown(signal, exit_code, Arc::clone(&seen))?;
        flag::register(signal, seen)?;
        flag::register_usize(signal, Arc::clone(&code), exit_code as usize)?;
    }
    Ok(Stop::new(code))
}

fn fail<W: io::Write>(events: &mut EventWriter<W>, err: &anyhow::Error) -> u8 {
    let kind = ErrorKind::of(err);
    let message = without_backtrace(&format!("{err:#}"));
    eprintln!("rust-trainer: {message}");
    let _ = events.error(kind, &message);
    kind.exit_code()
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
    use super::{flags_from_stdin, without_backtrace};

    #[test]
    fn flags_from_stdin_take_one_json_line() {
        let read = flags_from_stdin(&b"[\"--lr\", \"0.01\"]\n[\"--epochs\"]\n"[..]);
        assert_eq!(read.unwrap(), ["--lr", "0.01"]);
        let closed = flags_from_stdin(&b""[..]).unwrap_err();
        assert!(closed.contains("--flags-from-stdin") && closed.contains("closed"), "{closed}");
        let garbage = flags_from_stdin(&b"--lr 0.01\n"[..]).unwrap_err();
        assert!(garbage.contains("not a JSON array of strings"), "{garbage}");
        assert!(flags_from_stdin(&b"[1, 2]\n"[..]).is_err());
        let again = flags_from_stdin(&b"[\"--flags-from-stdin\"]\n"[..]).unwrap_err();
        assert!(again.contains("may not ask for it again"), "{again}");
    }

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
