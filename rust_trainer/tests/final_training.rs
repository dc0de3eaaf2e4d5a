//! Final training: `--val-fraction 0` trains on the whole training file with no validation
//! set, then `--eval-test` tests the last epoch's model once and `--checkpoint` keeps it.

mod common;

use common::{events, find, train, trainer};
use tch::Tensor;

#[test]
fn no_validation_trains_on_everything_and_tests_the_last_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("final.safetensors");
    let output = train(&[
        "--val-fraction",
        "0",
        "--epochs",
        "2",
        "--eval-test",
        "--checkpoint",
        path.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let events = events(&output);

    // Nothing is held out: the training set is the whole --train-limit, the validation empty.
    let start = find(&events, "start").unwrap();
    assert_eq!(start["train_size"], 1000);
    assert_eq!(start["val_size"], 0);
    assert_eq!(start["config"]["val_fraction"], 0.0);

    let epochs: Vec<_> = events.iter().filter(|e| e["event"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    for epoch in &epochs {
        // No validation metric exists, so none is reported (absent, not null).
        assert!(epoch.get("val_loss").is_none() && epoch.get("val_accuracy").is_none(), "{epoch}");
        assert!(epoch["train_loss"].as_f64().is_some_and(f64::is_finite), "{epoch}");
    }

    let result = find(&events, "result").unwrap();
    assert_eq!(result["status"], "completed");
    assert!(result.get("val_loss").is_none() && result.get("val_accuracy").is_none(), "{result}");
    // The last epoch is the one tested and kept.
    assert_eq!(result["best_epoch"], 2);
    assert!(result["test_accuracy"].as_f64().unwrap() > 0.5, "{result}");
    assert!(result["test_loss"].as_f64().unwrap().is_finite(), "{result}");
    assert_eq!(result["checkpoint"], path.to_str().unwrap());

    // The kept weights are the last epoch's: equal to the ones saved for resuming.
    let tensors = Tensor::read_safetensors(&path).unwrap();
    let kept: Vec<_> = tensors.iter().filter(|(name, _)| !name.starts_with("resume.")).collect();
    assert!(!kept.is_empty());
    for (name, tensor) in kept {
        let last = &tensors.iter().find(|(other, _)| *other == format!("resume.model.{name}"));
        let (_, last) = last.as_ref().unwrap_or_else(|| panic!("no resume copy of {name}"));
        assert!(tensor.equal(last), "{name} differs from the last epoch's");
    }
}

#[test]
fn no_validation_is_deterministic_for_a_seed() {
    let run = |seed: &str| {
        let output = train(&["--val-fraction", "0", "--eval-test", "--seed", seed]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        find(&events(&output), "result").unwrap()["test_loss"].clone()
    };
    let first = run("1");
    // The same seed and threads give the same test_loss to the last digit; another seed not.
    assert_eq!(first, run("1"));
    assert_ne!(first, run("2"));
}

#[test]
fn early_stopping_without_validation_is_a_usage_error() {
    let output = train(&["--val-fraction", "0", "--patience", "2"]);
    // Exit 2 before any data is read, naming both flags.
    assert_eq!(output.status.code(), Some(2));
    let error = find(&events(&output), "error").unwrap().clone();
    let message = error["message"].as_str().unwrap();
    assert_eq!(error["kind"], "usage");
    assert!(message.contains("--patience (2)") && message.contains("--val-fraction 0"), "{error}");
}

#[test]
fn describe_publishes_zero_as_a_valid_val_fraction() {
    let output = trainer().arg("describe").output().unwrap();
    assert!(output.status.success());
    let description: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let flag = description["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|flag| flag["name"] == "val_fraction")
        .unwrap()
        .clone();
    // A closed low end at 0 and an open high end at 1: [0, 1).
    assert_eq!(flag["range"]["low"], 0.0);
    assert_eq!(flag["range"]["low_open"], false);
    assert_eq!(flag["range"]["high_open"], true);
}
