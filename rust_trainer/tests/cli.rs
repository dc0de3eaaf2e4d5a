//! The trainer driven as a user drives it: the built binary, real MNIST, exit codes, events.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{events, find, mnist_copy, train, trainer};

#[test]
fn info_reports_libtorch_and_cuda() {
    let output = trainer().arg("info").output().unwrap();
    assert!(output.status.success());
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The pinned libtorch is the one linked in.
    assert!(info["libtorch"].as_str().unwrap().starts_with("2.11.0"), "{info}");
    assert!(info["cuda_available"].is_boolean());
    assert!(info["cuda_device_count"].is_i64());
}

#[test]
fn one_epoch_prints_start_epoch_result_and_exits_0() {
    let output = train(&["--epochs", "2"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let events = events(&output);
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    // Exactly the documented sequence, in order.
    assert_eq!(names, ["start", "epoch", "epoch", "result"]);

    let start = &events[0];
    assert_eq!(start["train_size"], 1000);
    assert_eq!(start["val_size"], 1200);
    assert_eq!(start["config"]["lr"], 0.001);
    let epoch = &events[1];
    for field in ["train_loss", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_second"] {
        // Every epoch field is a finite number.
        assert!(epoch[field].as_f64().is_some_and(f64::is_finite), "{field}: {epoch}");
    }
    let result = &events[3];
    assert_eq!(result["status"], "completed");
    assert_eq!(result["epochs_run"], 2);
    // The reported loss is the best epoch's.
    let best =
        events[1..3].iter().map(|e| e["val_loss"].as_f64().unwrap()).fold(f64::MAX, f64::min);
    assert_eq!(result["val_loss"].as_f64().unwrap(), best);
    // The test set is not touched unless asked for.
    assert!(result.get("test_accuracy").is_none());
}

#[test]
fn the_same_seed_gives_the_same_val_loss() {
    let run = |seed: &str| {
        let output = train(&["--seed", seed, "--optimizer", "sgd", "--lr", "0.05"]);
        assert!(output.status.success());
        find(&events(&output), "result").unwrap()["val_loss"].clone()
    };
    let first = run("3");
    // Bit-for-bit equal on the CPU: the printed digits match.
    assert_eq!(first, run("3"));
    assert_ne!(first, run("4"));
}

#[test]
fn eval_test_adds_test_metrics() {
    let output = train(&["--eval-test"]);
    assert!(output.status.success());
    let result = find(&events(&output), "result").unwrap().clone();
    let accuracy = result["test_accuracy"].as_f64().unwrap();
    // A trained model on the real test set does far better than chance.
    assert!(accuracy > 0.5, "{result}");
    assert!(result["test_loss"].as_f64().unwrap().is_finite());
}

#[test]
fn out_of_range_flags_exit_2_naming_the_flag() {
    for (flags, needle) in [
        (&["--lr", "0"][..], "--lr (0)"),
        (&["--batch-size", "0"][..], "--batch-size (0)"),
        (&["--dropout", "1.5"][..], "--dropout (1.5)"),
        (&["--val-fraction", "1"][..], "--val-fraction (1)"),
        (&["--train-limit", "60000"][..], "--train-limit (60000)"),
        (&["--device", "tpu"][..], "--device (tpu)"),
    ] {
        let output = train(flags);
        // Usage errors exit 2 and the error event names the flag and value.
        assert_eq!(output.status.code(), Some(2), "{flags:?}");
        let events = events(&output);
        let error = find(&events, "error").unwrap();
        assert_eq!(error["kind"], "usage");
        assert!(error["message"].as_str().unwrap().contains(needle), "{error}");
        assert!(String::from_utf8_lossy(&output.stderr).contains(needle));
    }
}

#[test]
fn unknown_flag_exits_2_with_a_usage_event() {
    let output = train(&["--learning-rate", "0.1"]);
    assert_eq!(output.status.code(), Some(2));
    // clap's own message on stderr; a usage event on stdout for machine readers.
    assert!(String::from_utf8_lossy(&output.stderr).contains("--learning-rate"));
    assert_eq!(find(&events(&output), "error").unwrap()["kind"], "usage");
}

#[test]
fn missing_data_exits_3() {
    let empty = tempfile::tempdir().unwrap();
    let output = trainer()
        .args(["train", "--epochs", "1", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let events = events(&output);
    // No training started, and the error says where it looked.
    assert!(find(&events, "start").is_none());
    let error = find(&events, "error").unwrap();
    assert_eq!(error["kind"], "data");
    assert!(error["message"].as_str().unwrap().contains(&empty.path().display().to_string()));
}

#[test]
fn truncated_file_exits_3_naming_it() {
    let copy = mnist_copy();
    let path = copy.path().join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();

    let output =
        trainer().args(["train", "--epochs", "1", "--data-dir"]).arg(copy.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    let error = find(&events(&output), "error").unwrap().clone();
    assert!(error["message"].as_str().unwrap().contains("train-images-idx3-ubyte.gz"), "{error}");
}

#[test]
fn wrong_magic_exits_3() {
    let copy = mnist_copy();
    let path = copy.path().join("train-labels-idx1-ubyte.gz");
    std::fs::remove_file(&path).unwrap();
    // Raw bytes with a wrong magic number under the uncompressed name.
    std::fs::write(copy.path().join("train-labels-idx1-ubyte"), [0u8, 0, 0x0d, 1, 0, 0, 0, 0])
        .unwrap();

    let output =
        trainer().args(["train", "--epochs", "1", "--data-dir"]).arg(copy.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    let error = find(&events(&output), "error").unwrap().clone();
    assert!(error["message"].as_str().unwrap().contains("bad magic number"), "{error}");
}

#[test]
fn divergence_reports_diverged_and_exits_4() {
    let output = train(&["--optimizer", "sgd", "--lr", "1e6", "--momentum", "0.9"]);
    assert_eq!(output.status.code(), Some(4));
    let events = events(&output);
    // A result with status diverged comes first, then an error event of kind diverged.
    let result = find(&events, "result").unwrap();
    assert_eq!(result["status"], "diverged");
    assert_eq!(find(&events, "error").unwrap()["kind"], "diverged");
    // No non-finite value was printed as a number.
    assert!(!String::from_utf8_lossy(&output.stdout).to_lowercase().contains("nan"));
}

#[test]
fn cuda_asked_for_without_cuda_exits_5() {
    let info = trainer().arg("info").output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    if info["cuda_available"] == true {
        // On a CUDA machine ask for a device index that cannot exist.
        let output = train(&["--device", "cuda:99"]);
        assert_eq!(output.status.code(), Some(5));
        return;
    }
    let output = train(&["--device", "cuda"]);
    assert_eq!(output.status.code(), Some(5));
    assert_eq!(find(&events(&output), "error").unwrap()["kind"], "device");
}

#[test]
fn a_closed_stdout_ends_the_trainer_quietly() {
    let data_dir = common::datasets();
    let mut child = trainer()
        .args(["train", "--epochs", "50", "--train-limit", "500", "--threads", "1", "--quiet"])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"start\""));
    drop(stdout);

    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // No panic, no message: the reader went away and the trainer simply ended.
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn sigterm_writes_a_stopped_result_and_exits_143() {
    stopped_by("TERM", 143);
}

#[test]
fn sighup_writes_a_stopped_result_and_exits_129() {
    // The terminal of a trainer run by hand was closed: as SIGTERM, 128 + 1.
    stopped_by("HUP", 129);
}

/// Sends SIGNAL once the first epoch is in, and checks the run stops with a result.
fn stopped_by(signal: &str, expected: i32) {
    let data_dir = common::datasets();
    let mut child = trainer()
        .args(["train", "--epochs", "1000", "--train-limit", "2000", "--threads", "1", "--quiet"])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // Wait for the first epoch so that there is a best model to report.
    while !line.contains("\"epoch\"") {
        line.clear();
        stdout.read_line(&mut line).unwrap();
    }
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let rest: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    let code = child.wait().unwrap().code();
    // The process says it stopped, keeps the best epoch's loss, and exits 128 + N.
    let result = find(&rest, "result").expect("a result event after the signal");
    assert_eq!(result["status"], "stopped");
    assert!(result["val_loss"].as_f64().is_some());
    assert_eq!(code, Some(expected));
}

#[test]
fn a_model_too_big_for_memory_exits_5_without_frames() {
    let output = train(&["--hidden", "2000000000"]);
    // Out of memory is a device problem, reported in one sentence: no panic, no C++ frames.
    assert_eq!(output.status.code(), Some(5));
    let error = find(&events(&output), "error").unwrap().clone();
    assert_eq!(error["kind"], "device");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("can't allocate memory") && !message.contains("frame #"), "{message}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
}

#[test]
fn resuming_with_another_lr_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.safetensors");
    assert!(train(&["--checkpoint", path.to_str().unwrap()]).status.success());
    let output = train(&["--resume", path.to_str().unwrap(), "--lr", "0.01", "--epochs", "2"]);
    // Only flags that do not change the training may differ; the message names the one that did.
    assert_eq!(output.status.code(), Some(2));
    let error = find(&events(&output), "error").unwrap().clone();
    assert!(error["message"].as_str().unwrap().contains("--lr 0.01 (the checkpoint has 0.001)"));
}

#[test]
fn output_is_whole_although_the_process_skips_exit_handlers() {
    // The binary ends with `_exit`, past libtorch's global destructors; what it printed
    // must still reach a pipe in full, and the exit code must survive.
    let describe = trainer().arg("describe").output().unwrap();
    assert_eq!(describe.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&describe.stdout).unwrap();
    assert!(schema["flags"].as_array().is_some_and(|flags| flags.len() > 20), "{schema}");

    let help = trainer().args(["train", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.ends_with('\n') && text.contains("--help"), "{text}");

    let version = trainer().arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    let expected = concat!("rust-trainer ", env!("CARGO_PKG_VERSION"), "\n");
    assert_eq!(String::from_utf8(version.stdout).unwrap(), expected);
}

/// Runs `rust-trainer ARGS` with `line` and a newline on its stdin.
fn with_stdin(args: &[&str], line: &[u8]) -> std::process::Output {
    use std::io::Write;

    let mut child = trainer()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(line).unwrap();
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// The message of the run's `error` event.
fn error_message(output: &std::process::Output) -> String {
    let events = events(output);
    find(&events, "error").unwrap()["message"].as_str().unwrap().to_string()
}

#[test]
fn flags_from_stdin_train_as_the_same_flags_on_the_command_line() {
    let data_dir = common::datasets();
    let shared = ["train", "--data-dir", data_dir.to_str().unwrap(), "--train-limit", "256"];
    let shared = [&shared[..], &["--val-fraction", "0.02", "--threads", "1", "--quiet"]].concat();
    let trial = ["--lr", "0.003", "--seed", "7", "--epochs", "1"];

    let direct = trainer().args(&shared).args(trial).output().unwrap();
    let line = serde_json::to_string(&trial).unwrap();
    let piped = with_stdin(&[&shared[..], &["--flags-from-stdin"]].concat(), line.as_bytes());

    assert_eq!(piped.status.code(), Some(0), "{}", String::from_utf8_lossy(&piped.stderr));
    let (direct, piped) = (events(&direct), events(&piped));
    let result = |events: &[serde_json::Value]| find(events, "result").unwrap()["val_loss"].clone();
    // The same run: identical losses, and the flags from stdin are in the echoed config.
    assert_eq!(result(&direct), result(&piped));
    assert_eq!(find(&piped, "start").unwrap()["config"]["lr"], 0.003);

    // A line that is not a JSON array of strings is a usage error naming the flag.
    let output = with_stdin(&["train", "--flags-from-stdin"], b"--lr 0.1");
    assert_eq!(output.status.code(), Some(2));
    let message = error_message(&output);
    assert!(message.contains("--flags-from-stdin"), "{message}");

    // A flag on stdin that `train` does not take: the message says where it came from.
    let output = with_stdin(&["train", "--flags-from-stdin"], br#"["--bogus", "1"]"#);
    assert_eq!(output.status.code(), Some(2));
    let message = error_message(&output);
    assert!(message.starts_with("with the flags read on stdin: ") && message.contains("'--bogus'"));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&message));
}

#[test]
fn flags_from_stdin_go_before_a_literal_double_dash() {
    // `train --flags-from-stdin --`: the flags read are flags, not words after `--`.
    let output = with_stdin(&["train", "--flags-from-stdin", "--"], br#"["--epochs", "0"]"#);
    // Read as the flag --epochs, whose value 0 is refused by name (not an unexpected word).
    assert_eq!(output.status.code(), Some(2));
    let message = error_message(&output);
    assert!(message.contains("--epochs") && !message.contains("unexpected argument"), "{message}");
}
