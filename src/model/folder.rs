//! Model folders: a trained network and the experiment it belongs to, ready for `ddexp eval`
//! and `ddexp sample`. `ddexp import nanodd` writes one from a nanoDD checkpoint.
//!
//! ```text
//! DIR/experiment.ron        the experiment (network sizes, process, dataset, recipe)
//! DIR/weights.safetensors   one weight set named exactly as nanoDD's D3PMAbsorbing state dict:
//!                           net.* (PyTorch layout), net.rotary_emb.inv_freq, betas, alpha_bars
//! DIR/model.json            where the weights came from, which set, K
//! ```
//!
//! Because the weights keep nanoDD's names and layout, `D3PMAbsorbing.load_state_dict` in
//! nanoDD accepts the file as it is. Training checkpoints (issue 5) can reuse the same naming
//! with `model.`/`ema.` prefixes (see [`StateDict::with_prefix`]).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::config::DitConfig;
use super::dit::Dit;
use super::nanodd::{self, ModelArgs, NanoddCheckpoint, WeightSet};
use super::weights::StateDict;
use crate::diffusion::Diffusion;
use crate::spec;

pub const EXPERIMENT_FILE: &str = "experiment.ron";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const INFO_FILE: &str = "model.json";
const FORMAT: &str = "ddexp-model";
const FORMAT_VERSION: u32 = 1;
/// Prefix of the network's weights in a D3PM-level state dict (nanoDD's `self.net`).
pub const NET_PREFIX: &str = "net.";

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

/// A model folder loaded for use.
#[derive(Debug)]
pub struct LoadedModel<B: Backend> {
    pub experiment: spec::Experiment,
    pub info: ModelInfo,
    pub diffusion: Diffusion,
    pub net: Dit<B>,
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

/// Loads `dir` (written by `ddexp import` or by ddexp itself) onto `device`, checking that the
/// weights fit the experiment's network and process.
pub fn load_model_folder<B: Backend>(dir: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    let info = read_model_info(dir)?;
    let experiment_path = dir.join(EXPERIMENT_FILE);
    let experiment_text = fs::read_to_string(&experiment_path)
        .with_context(|| format!("cannot read {}", experiment_path.display()))?;
    let experiment: spec::Experiment = ron::from_str(&experiment_text)
        .with_context(|| format!("{} is not a valid experiment", experiment_path.display()))?;

    let weights_path = dir.join(WEIGHTS_FILE);
    let weights = StateDict::read_safetensors(&weights_path)?;
    let (diffusion, net) = network_from_weights(
        &weights,
        &experiment,
        info.num_classes.saturating_sub(1),
        device,
    )
    .with_context(|| {
        format!(
            "{} does not fit the network of {}",
            weights_path.display(),
            experiment_path.display()
        )
    })?;
    Ok(LoadedModel {
        experiment,
        info,
        diffusion,
        net,
    })
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
        weights.write_safetensors(&tmp.join(WEIGHTS_FILE), metadata)?;
        // rename(2) replaces an empty directory, so an empty `dir` is fine too.
        fs::rename(&tmp, dir)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// `ddexp import nanodd CKPT --out DIR --weights ema|model`.
pub fn import_nanodd(ckpt: &Path, out: &Path, which: WeightSet) -> Result<ImportSummary> {
    ensure_free(out)?;
    let checkpoint = nanodd::read_checkpoint(ckpt, which)?;
    let NanoddCheckpoint {
        model_args: args,
        training_args,
        iter_num,
        weights,
    } = checkpoint;
    let (experiment, notes) = experiment_from_args(out, &args, &training_args);
    let config = DitConfig::from_spec(&experiment.network, args.vocab_size).with_context(|| {
        format!(
            "{}: model_args describe an impossible network",
            ckpt.display()
        )
    })?;
    let diffusion = Diffusion::new(&experiment.model, args.vocab_size);
    // Load once to check every name and shape against model_args before writing anything.
    let net = split_checked(&weights, &diffusion)
        .and_then(|net_weights| {
            Dit::<Flex>::from_state_dict(&config, &net_weights, &Default::default())
        })
        .with_context(|| {
            format!(
                "{}: the `{}` weights do not match the checkpoint's model_args {args:?}",
                ckpt.display(),
                which.name()
            )
        })?;
    let info = ModelInfo {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        source: ckpt.display().to_string(),
        weights: which,
        num_classes: config.num_classes,
        iter_num,
        model_args: Some(serde_json::to_value(&args)?),
        notes,
    };
    write_model_folder(out, &experiment, &info, &model_state_dict(&net, &diffusion))?;
    Ok(ImportSummary {
        out: out.to_path_buf(),
        experiment,
        info,
    })
}

/// Splits a D3PM-level state dict into the network's weights, checking the schedule buffers
/// against the process when they are present.
fn split_checked(weights: &StateDict, diffusion: &Diffusion) -> Result<StateDict> {
    let buffers = diffusion.buffers();
    for name in weights.names() {
        if name.starts_with(NET_PREFIX) {
            continue;
        }
        let Some(expected) = buffers.get(name) else {
            bail!(
                "unexpected tensor `{name}` (a D3PM state dict has `net.*`, `betas`, `alpha_bars`)"
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
fn ensure_free(dir: &Path) -> Result<()> {
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

/// The experiment a nanoDD checkpoint was trained with, as far as it records it. nanoDD
/// does not record the dataset: the vocabulary decides (27 → text8, 50257 → OpenWebText, as
/// in nanoDD's `sample.py`, with its sequence lengths); other vocabularies get a custom
/// character corpus and a note.
fn experiment_from_args(
    out: &Path,
    args: &ModelArgs,
    training_args: &std::collections::HashMap<String, f64>,
) -> (spec::Experiment, Vec<String>) {
    let name = experiment_name(out);
    let mut notes = Vec::new();
    let dataset = match args.vocab_size {
        27 => spec::Dataset::Text8 {
            root: "data/text8".into(),
            seq_len: 256,
        },
        50257 => spec::Dataset::OpenWebText {
            root: "data/openwebtext".into(),
            seq_len: 1024,
        },
        other => {
            notes.push(format!(
                "nanoDD checkpoints do not record their dataset, and a vocabulary of {other} is \
                 neither text8 (27) nor GPT-2 (50257): the experiment names a character corpus \
                 at data/{name} with seq_len 256; edit experiment.ron to point at the real data"
            ));
            spec::Dataset::Text {
                root: format!("data/{name}").into(),
                seq_len: 256,
                tokenizer: spec::Tokenizer::Char,
            }
        }
    };
    let mut dataset = dataset;
    if let Some(&len) = training_args.get("seq_len") {
        match &mut dataset {
            spec::Dataset::Text8 { seq_len, .. }
            | spec::Dataset::OpenWebText { seq_len, .. }
            | spec::Dataset::Text { seq_len, .. }
            | spec::Dataset::Synthetic { seq_len, .. } => *seq_len = len as usize,
        }
    }
    // Every hyper-parameter the checkpoint records wins over ddexp's defaults.
    let mut train = spec::Train::default();
    let arg = |name: &str| training_args.get(name).copied();
    if let Some(b) = arg("batch_size") {
        train.batch_size = b as usize;
    }
    // The imported experiment has one device. total_batch_size (sequences per step over all
    // GPUs) keeps the reference's global batch on it; without it, nanoDD's per-process
    // gradient_accumulation_steps is the best record there is.
    match (arg("total_batch_size"), arg("gradient_accumulation_steps")) {
        (Some(total), _)
            if train.batch_size > 0 && (total as usize).is_multiple_of(train.batch_size) =>
        {
            train.grad_accum = (total as usize / train.batch_size).max(1);
        }
        (_, Some(n)) => train.grad_accum = n as usize,
        _ => {}
    }
    if let Some(lr) = arg("learning_rate") {
        train.lr = lr;
    }
    if let Some(lr) = arg("min_lr") {
        train.min_lr = lr;
    }
    if let Some(n) = arg("warmup_iters") {
        train.warmup_iters = n as u64;
    }
    if let Some(n) = arg("max_iters") {
        train.max_iters = n as u64;
    }
    if let Some(n) = arg("eval_iters") {
        train.eval_iters = n as u64;
    }
    if let Some(wd) = arg("weight_decay") {
        train.weight_decay = wd;
    }
    let experiment = spec::Experiment {
        name,
        seed: training_args.get("training_seed").map_or(1, |&s| s as u64),
        model: spec::Process::D3pmAbsorbing {
            timesteps: args.timesteps,
            lambda_ce: args.lambda_ce,
        },
        network: spec::Network {
            n_embed: args.n_embed,
            n_heads: args.n_heads,
            n_blocks: args.n_blocks,
            n_cond: args.n_cond,
            dropout: args.dropout,
        },
        dataset,
        sampler: spec::TimeSampler::Uniform,
        train,
        eval: spec::Eval::default(),
        topology: spec::Topology::default(),
    };
    (experiment, notes)
}

/// The folder's name, made a valid experiment name.
fn experiment_name(out: &Path) -> String {
    let raw = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if cleaned.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        cleaned
    } else {
        format!("nanodd{cleaned}").chars().take(100).collect()
    }
}
