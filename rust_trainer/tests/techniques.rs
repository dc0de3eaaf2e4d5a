//! The training techniques, each through the built binary on real data: ResNets on a
//! CIFAR-10 subset, schedules, early stopping, checkpoint and resume, evaluation invariance.

mod common;

use std::f64::consts::PI;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{epoch_values, events, find, train, train_cifar, trainer};

fn assert_close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() <= 1e-12 * e.abs().max(1.0), "{actual:?} vs {expected:?}");
    }
}

#[test]
fn every_model_trains_on_either_dataset() {
    for model in ["cnn", "resnet18", "resnet34", "resnet50"] {
        let mnist = train(&[
            "--model",
            model,
            "--width",
            "0.125",
            "--train-limit",
            "64",
            "--batch-size",
            "32",
        ]);
        let cifar = train_cifar(&[
            "--model",
            model,
            "--width",
            "0.125",
            "--train-limit",
            "64",
            "--batch-size",
            "32",
        ]);
        for (output, dataset) in [(mnist, "mnist"), (cifar, "cifar10")] {
            // Every combination runs to a finite result.
            assert_eq!(
                output.status.code(),
                Some(0),
                "{model} on {dataset}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let events = events(&output);
            let result = find(&events, "result").unwrap();
            assert!(result["val_loss"].as_f64().unwrap().is_finite(), "{model} on {dataset}");
            assert_eq!(find(&events, "start").unwrap()["dataset"], dataset);
        }
    }
}

#[test]
fn resnet18_lowers_its_loss_on_cifar10() {
    let output = train_cifar(&[
        "--model",
        "resnet18",
        "--width",
        "0.25",
        "--epochs",
        "4",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--augment",
        "none",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let losses = epoch_values(&events(&output), "train_loss");
    // Four epochs on 900 real images: the training loss falls from the first to the last.
    assert!(losses[3] < losses[0] * 0.9, "{losses:?}");
}

#[test]
fn cifar_start_event_carries_its_own_normalisation() {
    let output = train_cifar(&["--model", "cnn", "--train-limit", "32"]);
    let events = events(&output);
    let start = find(&events, "start").unwrap();
    let mean: Vec<f64> = start["normalisation"]["mean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // Three channels, near the well-known CIFAR-10 means; augmentation is on by default.
    assert_eq!(mean.len(), 3);
    for (m, known) in mean.iter().zip([0.4914, 0.4822, 0.4465]) {
        assert!((m - known).abs() < 0.02, "{mean:?}");
    }
    assert_eq!(start["config"]["augment"], "crop-flip");
}

/// lr of each epoch's first step, run through the trainer with 1000 examples in batches of
/// 250 (4 steps per epoch).
fn lrs(extra: &[&str]) -> Vec<f64> {
    let mut flags =
        vec!["--epochs", "6", "--batch-size", "250", "--lr", "0.1", "--optimizer", "sgd"];
    flags.extend_from_slice(extra);
    let output = train(&flags);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    epoch_values(&events(&output), "lr")
}

#[test]
fn schedules_follow_their_formulas() {
    // step: halve every 2 epochs.
    assert_close(
        &lrs(&["--schedule", "step", "--step-size", "2", "--gamma", "0.5"]),
        &[0.1, 0.1, 0.05, 0.05, 0.025, 0.025],
    );
    // multistep: decay by 0.1 at epochs 1 and 4 (counted from 0).
    assert_close(
        &lrs(&["--schedule", "multistep", "--milestones", "1,4"]),
        &[0.1, 0.01, 0.01, 0.01, 0.001, 0.001],
    );
    // cosine per step over 24 steps, read at steps 0, 4, 8, ...
    let cosine: Vec<f64> =
        (0..6).map(|e| 0.1 * (1.0 + (PI * (4 * e) as f64 / 24.0).cos()) / 2.0).collect();
    assert_close(&lrs(&["--schedule", "cosine"]), &cosine);
    // cosine-restarts with periods of 2 and 4 epochs.
    let c = |t: f64, p: f64| 0.1 * (1.0 + (PI * t / p).cos()) / 2.0;
    let restarts = [c(0.0, 2.0), c(1.0, 2.0), c(0.0, 4.0), c(1.0, 4.0), c(2.0, 4.0), c(3.0, 4.0)];
    assert_close(
        &lrs(&["--schedule", "cosine-restarts", "--restart-epochs", "2", "--restart-mult", "2"]),
        &restarts,
    );
    // one warm-up epoch of 4 steps, then constant.
    assert_close(&lrs(&["--warmup-epochs", "1"]), &[0.025, 0.1, 0.1, 0.1, 0.1, 0.1]);
    // one-cycle (PyTorch's formula): cosine up from lr/25 to lr until step 0.3 * 24 - 1,
    // then cosine down to lr/25/1e4 at the last step, 23.
    let (peak, last) = (0.3 * 24.0 - 1.0, 23.0);
    let cos = |from: f64, to: f64, f: f64| to + (from - to) * (1.0 + (PI * f).cos()) / 2.0;
    let onecycle: Vec<f64> = (0..6)
        .map(|e| {
            let step = (4 * e) as f64;
            if step <= peak {
                cos(0.004, 0.1, step / peak)
            } else {
                cos(0.1, 0.004 / 1e4, (step - peak) / (last - peak))
            }
        })
        .collect();
    assert_close(&lrs(&["--schedule", "onecycle"]), &onecycle);
}

#[test]
fn early_stopping_ends_at_the_right_epoch() {
    // A min-delta no epoch can beat: epochs 2 and 3 count as stale, patience 2 stops at 3.
    let output = train(&["--epochs", "10", "--patience", "2", "--min-delta", "100"]);
    assert_eq!(output.status.code(), Some(0));
    let events = events(&output);
    let result = find(&events, "result").unwrap();
    assert_eq!(result["status"], "early_stopped");
    assert_eq!(result["epochs_run"], 3);
    // The reported val_loss is the best epoch's, not the last one's.
    let best = epoch_values(&events, "val_loss").into_iter().fold(f64::MAX, f64::min);
    assert_eq!(result["val_loss"].as_f64().unwrap(), best);
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = common::datasets();
    let flags = |checkpoint: &str| -> Vec<String> {
        [
            "train",
            "--epochs",
            "4",
            "--train-limit",
            "1500",
            "--val-fraction",
            "0.02",
            "--threads",
            "2",
            "--quiet",
            "--augment",
            "shift",
            "--dropout",
            "0.3",
            "--schedule",
            "cosine",
            "--optimizer",
            "adamw",
            "--weight-decay",
            "0.01",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--checkpoint",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.path().join(checkpoint).display().to_string()])
        .collect()
    };

    let whole = trainer().args(flags("whole.safetensors")).output().unwrap();
    assert!(whole.status.success());
    let whole_result = find(&events(&whole), "result").unwrap().clone();

    // The same run, stopped by SIGTERM once its first epoch is reported.
    let mut child =
        trainer().args(flags("part.safetensors")).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("\"epoch\"") {
        line.clear();
        stdout.read_line(&mut line).unwrap();
    }
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let rest: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(rest.iter().any(|l| l.contains("\"stopped\"")), "{rest:?}");

    let mut resume = flags("part.safetensors");
    resume.extend([
        "--resume".to_string(),
        dir.path().join("part.safetensors").display().to_string(),
    ]);
    let resumed = trainer().args(&resume).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let resumed_events = events(&resumed);
    let start = find(&resumed_events, "start").unwrap();
    assert!(start["resumed_from_epoch"].as_u64().unwrap() >= 1);
    let resumed_result = find(&resumed_events, "result").unwrap();
    // Bit-for-bit the same best loss and epoch count as the run that was never stopped.
    assert_eq!(resumed_result["val_loss"], whole_result["val_loss"]);
    assert_eq!(resumed_result["best_epoch"], whole_result["best_epoch"]);
    assert_eq!(resumed_result["epochs_run"], 4);
}

#[test]
fn resume_with_another_model_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnn.safetensors");
    let saved = train(&["--checkpoint", path.to_str().unwrap()]);
    assert!(saved.status.success());
    // The checkpoint and its metadata both exist.
    assert!(path.is_file() && dir.path().join("cnn.safetensors.json").is_file());
    let output = train(&["--resume", path.to_str().unwrap(), "--hidden", "128"]);
    assert_eq!(output.status.code(), Some(2));
    let error = find(&events(&output), "error").unwrap().clone();
    assert!(error["message"].as_str().unwrap().contains("--resume"), "{error}");
}

#[test]
fn val_loss_does_not_depend_on_the_evaluation_batch_size() {
    let run = |eval_batch: &str| {
        let output = train_cifar(&[
            "--model",
            "resnet18",
            "--width",
            "0.125",
            "--eval-batch-size",
            eval_batch,
        ]);
        assert!(output.status.success());
        find(&events(&output), "result").unwrap()["val_loss"].as_f64().unwrap()
    };
    let (whole, small) = (run("1000"), run("7"));
    // BatchNorm runs in eval mode: per-example outputs, so only float summation order differs.
    assert!((whole - small).abs() < 1e-5 * whole, "{whole} vs {small}");
}

#[test]
fn malformed_cifar_file_exits_3() {
    let copy = tempfile::tempdir().unwrap();
    let source = common::cifar_subset().join("cifar-10-batches-bin");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let path = copy.path().join("data_batch_2.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();

    let output = trainer()
        .args(["train", "--dataset", "cifar10", "--epochs", "1", "--data-dir"])
        .arg(copy.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let error = find(&events(&output), "error").unwrap().clone();
    assert!(error["message"].as_str().unwrap().contains("data_batch_2.bin"), "{error}");
}

#[test]
fn cuda_only_flags_warn_once_on_the_cpu() {
    let info: serde_json::Value =
        serde_json::from_slice(&trainer().arg("info").output().unwrap().stdout).unwrap();
    if info["cuda_available"] == true {
        return; // The warning is for CPU runs; on CUDA the flags take effect.
    }
    let output = train(&["--amp", "--channels-last", "--device", "cpu"]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // One warning per flag, and the run goes on.
    assert_eq!(stderr.matches("--amp only applies on CUDA").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("--channels-last only applies on CUDA").count(), 1, "{stderr}");
}

#[test]
fn regularisation_flags_are_echoed_and_train() {
    // RMSprop at 3e-4: from PyTorch's initialisation, 1e-3 with momentum moves the small
    // weights so far in the first steps that 16 steps end at the uniform guess's loss.
    let output = train(&[
        "--label-smoothing",
        "0.1",
        "--clip-grad-norm",
        "1.0",
        "--optimizer",
        "rmsprop",
        "--lr",
        "3e-4",
        "--momentum",
        "0.5",
        "--weight-decay",
        "1e-4",
        "--no-decay-norm-bias",
        "--augment",
        "shift",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let events = events(&output);
    let config = &find(&events, "start").unwrap()["config"];
    // Each technique is in the start event's config as it was resolved.
    assert_eq!(config["label_smoothing"], 0.1);
    assert_eq!(config["clip_grad_norm"], 1.0);
    assert_eq!(config["optimizer"], "rmsprop");
    assert_eq!(config["no_decay_norm_bias"], true);
    assert_eq!(config["augment"], "shift");
    assert!(find(&events, "result").unwrap()["val_loss"].as_f64().unwrap() < 2.3);
}
