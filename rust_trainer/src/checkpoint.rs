//! Checkpoints: the best model, and everything needed to resume the run exactly.
//!
//! One safetensors file holds the best epoch's weights under their plain PyTorch names (so
//! `safetensors.torch.load_file` gives a state dict), the last epoch's weights under
//! `resume.model.`, and the optimizer state under `resume.optim.`. The run's position (epoch,
//! best values, early-stopping count) and the architecture it belongs to go beside it as
//! JSON in `PATH.json`. Both are written to a temporary name and renamed, so an interrupted
//! write never leaves a half checkpoint behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::config::Config;
use crate::error::usage;

const MODEL_PREFIX: &str = "resume.model.";
const OPTIM_PREFIX: &str = "resume.optim.";

/// Where a run stands at the end of an epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: usize,
    pub best_epoch: Option<usize>,
    pub best_val_loss: Option<f64>,
    pub best_val_accuracy: Option<f64>,
    /// Epochs since the last improvement, for --patience.
    pub stale_epochs: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    trainer_version: String,
    /// The flags that fix the architecture; a resume must match them.
    architecture: serde_json::Value,
    progress: Progress,
}

/// Flags a resumed run may change: where and how fast it runs, what it reports, and how many
/// epochs it goes on for. Every other flag shapes the model or its training and must match.
const MAY_CHANGE: &[&str] = &[
    "epochs",
    "data_dir",
    "device",
    "threads",
    "eval_test",
    "eval_batch_size",
    "checkpoint",
    "resume",
    "amp",
    "channels_last",
];

fn architecture(config: &Config) -> serde_json::Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.retain(|key, _| !MAY_CHANGE.contains(&key.as_str()));
    }
    value
}

pub fn metadata_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

pub fn save(
    path: &Path,
    config: &Config,
    last: &nn::VarStore,
    best: &nn::VarStore,
    optimizer_state: Vec<(String, Tensor)>,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> = best.variables().into_iter().collect();
    named.extend(last.variables().into_iter().map(|(k, v)| (format!("{MODEL_PREFIX}{k}"), v)));
    named.extend(optimizer_state.into_iter().map(|(k, v)| (format!("{OPTIM_PREFIX}{k}"), v)));
    let named: Vec<(String, Tensor)> =
        named.into_iter().map(|(k, v)| (k, v.contiguous())).collect();

    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("--checkpoint: creating {}", parent.display()))?;
    }
    let partial = temporary(path);
    Tensor::write_safetensors(&named, &partial)
        .with_context(|| format!("--checkpoint: writing {}", partial.display()))?;
    let metadata = Metadata {
        trainer_version: env!("CARGO_PKG_VERSION").to_string(),
        architecture: architecture(config),
        progress: progress.clone(),
    };
    let json_path = metadata_path(path);
    let json_partial = temporary(&json_path);
    std::fs::write(&json_partial, serde_json::to_vec_pretty(&metadata)?)
        .with_context(|| format!("--checkpoint: writing {}", json_partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("--checkpoint: {}", path.display()))?;
    std::fs::rename(&json_partial, &json_path)
        .with_context(|| format!("--checkpoint: {}", json_path.display()))?;
    Ok(())
}

/// Loads `path` into the last and best models and returns the optimizer state and progress.
pub fn restore(
    path: &Path,
    config: &Config,
    last: &mut nn::VarStore,
    best: &mut nn::VarStore,
) -> anyhow::Result<(HashMap<String, Tensor>, Progress)> {
    let json_path = metadata_path(path);
    let text = std::fs::read_to_string(&json_path).map_err(|err| {
        usage(format!(
            "--resume ({}): cannot read its metadata {} ({err}); resume from a file written \
             by --checkpoint",
            path.display(),
            json_path.display()
        ))
    })?;
    let metadata: Metadata = serde_json::from_str(&text).map_err(|err| {
        usage(format!("--resume: {} is not checkpoint metadata ({err})", json_path.display()))
    })?;
    let expected = architecture(config);
    if metadata.architecture != expected {
        let saved = metadata.architecture.as_object().cloned().unwrap_or_default();
        let differences: Vec<String> = expected
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, value)| saved.get(*key) != Some(*value))
            .map(|(key, value)| {
                let was = saved.get(key).map_or("nothing".to_string(), |v| v.to_string());
                format!("--{} {value} (the checkpoint has {was})", key.replace('_', "-"))
            })
            .collect();
        return Err(usage(format!(
            "--resume ({}) continues another run: {}; give the flags it was started with",
            path.display(),
            differences.join(", ")
        )));
    }

    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|err| {
            usage(format!("--resume ({}): not a readable checkpoint ({err})", path.display()))
        })?
        .into_iter()
        .collect();
    let device = last.device();
    let fill = |vs: &mut nn::VarStore, prefix: &str| -> anyhow::Result<()> {
        for (name, mut variable) in vs.variables() {
            let key = format!("{prefix}{name}");
            let saved = tensors
                .get(&key)
                .ok_or_else(|| usage(format!("--resume ({}) lacks {key}", path.display())))?;
            tch::no_grad(|| variable.f_copy_(&saved.to_device(device)))
                .with_context(|| format!("--resume: {key} does not fit the model"))?;
        }
        Ok(())
    };
    fill(last, MODEL_PREFIX)?;
    fill(best, "")?;
    let optimizer = tensors
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(OPTIM_PREFIX).map(|k| (k.to_string(), v.to_device(device)))
        })
        .collect();
    Ok((optimizer, metadata.progress))
}
