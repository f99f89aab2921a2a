//! Model folders: a trained network and the experiment it belongs to, ready for `ddexp eval`
//! and `ddexp sample` (`ddexp import nanodd` writes them), and the D3PM-level state dict that
//! every weights file holds.
//!
//! ```text
//! DIR/experiment.ron        the experiment (network sizes, process, dataset, recipe)
//! DIR/weights.safetensors   one weight set named exactly as nanoDD's D3PMAbsorbing state dict:
//!                           net.* (PyTorch layout), net.rotary_emb.inv_freq, betas, alpha_bars
//! DIR/model.json            where the weights came from, which set, K
//! ```
//!
//! Because the weights keep nanoDD's names and layout, `D3PMAbsorbing.load_state_dict` in
//! nanoDD accepts the file as it is.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{INFO_FILE, NET_PREFIX, WEIGHTS_FILE, tensor_file};
use crate::diffusion::Diffusion;
use crate::model::{Dit, DitConfig, StateDict, WeightSet};
use crate::results::EXPERIMENT_FILE;
use crate::spec;

pub(super) const FORMAT: &str = "ddexp-model";
pub(super) const FORMAT_VERSION: u32 = 1;

/// `model.json`: provenance of a model folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Always "ddexp-model".
    pub format: String,
    pub version: u32,
    /// Where the weights came from (e.g. the nanoDD checkpoint's path).
    pub source: String,
    /// Which weight set of the source.
    pub weights: WeightSet,
    /// K = vocabulary + 1; the mask id is K − 1.
    pub num_classes: usize,
    /// Training iterations behind the weights, when known.
    pub iter_num: Option<u64>,
    /// The source's own record of the model (nanoDD's `model_args`), when imported.
    pub model_args: Option<serde_json::Value>,
    /// Anything a user should know about how the folder was made.
    pub notes: Vec<String>,
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub out: PathBuf,
    pub experiment: spec::Experiment,
    pub info: ModelInfo,
}

/// The D3PM-level state dict of a network and its process (nanoDD's names).
pub fn model_state_dict<B: Backend>(net: &Dit<B>, diffusion: &Diffusion) -> StateDict {
    let mut weights = net.state_dict().with_prefix(NET_PREFIX);
    weights.0.extend(diffusion.buffers().0);
    weights
}

/// Reads and checks a model folder's `model.json`.
pub fn read_model_info(dir: &Path) -> Result<ModelInfo> {
    let info_path = dir.join(INFO_FILE);
    let info_text = fs::read_to_string(&info_path).with_context(|| {
        format!(
            "{} is not a model folder: cannot read {INFO_FILE}",
            dir.display()
        )
    })?;
    let info: ModelInfo = serde_json::from_str(&info_text)
        .with_context(|| format!("{} is not a valid {INFO_FILE}", info_path.display()))?;
    if info.format != FORMAT || info.version != FORMAT_VERSION {
        bail!(
            "{}: format {:?} version {}, expected {FORMAT:?} version {FORMAT_VERSION}",
            info_path.display(),
            info.format,
            info.version
        );
    }
    Ok(info)
}

/// The process and the network of `experiment` for a vocabulary of `vocab_size` tokens, with
/// the network's weights taken from a D3PM-level state dict (`net.*`, and the schedule
/// buffers, which must match the process when present).
pub fn network_from_weights<B: Backend>(
    weights: &StateDict,
    experiment: &spec::Experiment,
    vocab_size: usize,
    device: &B::Device,
) -> Result<(Diffusion, Dit<B>)> {
    let config = DitConfig::from_spec(&experiment.network, vocab_size)?;
    let diffusion = Diffusion::new(&experiment.model, vocab_size);
    let net_weights = split_checked(weights, &diffusion)?;
    let net = Dit::from_state_dict(&config, &net_weights, device)?;
    Ok((diffusion, net))
}

/// Writes a model folder atomically: everything goes into a temporary sibling folder that is
/// renamed to `dir` at the end. `dir` must not exist or be empty.
pub fn write_model_folder(
    dir: &Path,
    experiment: &spec::Experiment,
    info: &ModelInfo,
    weights: &StateDict,
) -> Result<()> {
    ensure_free(dir)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dir
        .file_name()
        .with_context(|| format!("{} is not a folder name", dir.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let ron = ron::ser::to_string_pretty(experiment, ron::ser::PrettyConfig::default())
            .context("cannot serialise the experiment")?;
        fs::write(tmp.join(EXPERIMENT_FILE), ron + "\n")?;
        fs::write(
            tmp.join(INFO_FILE),
            serde_json::to_string_pretty(info)? + "\n",
        )?;
        let metadata = [
            ("format".to_string(), FORMAT.to_string()),
            ("source".to_string(), info.source.clone()),
            ("weights".to_string(), info.weights.name().to_string()),
        ]
        .into();
        tensor_file::write(&tmp.join(WEIGHTS_FILE), weights, metadata)?;
        // rename(2) replaces an empty directory, so an empty `dir` is fine too.
        fs::rename(&tmp, dir)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Splits a D3PM-level state dict into the network's weights, checking the schedule buffers
/// against the process when they are present.
pub(super) fn split_checked(weights: &StateDict, diffusion: &Diffusion) -> Result<StateDict> {
    let buffers = diffusion.buffers();
    for name in weights.names() {
        if name.starts_with(NET_PREFIX) {
            continue;
        }
        let Some(expected) = buffers.get(name) else {
            let kept = std::iter::once("`net.*`".to_string())
                .chain(buffers.names().map(|b| format!("`{b}`")))
                .collect::<Vec<_>>()
                .join(", ");
            bail!(
                "unexpected tensor `{name}`: the weights of {} hold {kept} only",
                diffusion.describe()
            );
        };
        let found = weights
            .get(name)
            .expect("listed")
            .to_vec::<f32>()
            .unwrap_or_default();
        let expected = expected.to_vec::<f32>().expect("f32 buffers");
        let same = found.len() == expected.len()
            && found
                .iter()
                .zip(&expected)
                .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1e-3));
        if !same {
            bail!(
                "`{name}` ({} values) is not the schedule of {:?}: the weights belong to \
                 another number of steps",
                found.len(),
                diffusion.to_spec()
            );
        }
    }
    Ok(weights.strip_prefix(NET_PREFIX))
}

/// Refuses an output folder that exists and is not empty.
pub(super) fn ensure_free(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = dir.is_dir()
            && fs::read_dir(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .next()
                .is_none();
        if !empty {
            bail!(
                "{} already exists and is not empty; choose another --out or remove it",
                dir.display()
            );
        }
    }
    Ok(())
}
