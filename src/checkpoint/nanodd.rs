//! nanoDD training checkpoints (`torch.save` zip/pickle `.pt` files): reading them, and
//! `ddexp import nanodd`, which turns one into a model folder.
//!
//! A checkpoint written by nanoDD's `train.py` is a dict with `model` (the state dict of
//! `D3PMAbsorbing`: `betas`, `alpha_bars`, `net.*`), `ema` (an `ema_pytorch.EMA` state dict:
//! `ema_model.<same names>` plus `initted` and `step`), `optimizer`, `model_cls`,
//! `model_args` (the constructor's arguments) and bookkeeping (`iter_num`, ...). Burn-store's
//! PyTorch reader parses the pickle; this module checks that the file is such a checkpoint
//! and extracts what ddexp needs.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch::reader::PickleValue;

use super::model_folder::{
    FORMAT, FORMAT_VERSION, ImportSummary, ModelInfo, ensure_free, model_state_dict,
    network_from_weights, split_checked, write_model_folder,
};
use super::open::LoadedModel;
use super::torch_storage;
use crate::diffusion::Diffusion;
use crate::memory;
use crate::model::{Dit, DitConfig, StateDict, WeightSet, as_f32};
use crate::spec;

/// `model_args` of a nanoDD checkpoint: the arguments of `D3PMAbsorbing(...)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelArgs {
    pub vocab_size: usize,
    pub n_embed: usize,
    pub n_heads: usize,
    pub n_blocks: usize,
    pub n_cond: usize,
    pub dropout: f64,
    #[serde(rename = "T")]
    pub timesteps: usize,
    pub lambda_ce: f64,
}

/// What ddexp uses of a nanoDD checkpoint.
#[derive(Debug, Clone)]
pub struct NanoddCheckpoint {
    pub model_args: ModelArgs,
    /// `training_args` when the checkpoint records them (recent nanoDD versions):
    /// batch_size, learning_rate, weight_decay, training_seed, ..., plus the top-level
    /// `total_batch_size`.
    pub training_args: HashMap<String, f64>,
    /// `iter_num`, when recorded.
    pub iter_num: Option<u64>,
    /// The chosen weights under the D3PM's names (`net.*`, `betas`, `alpha_bars`).
    pub weights: StateDict,
}

/// Reads `path` and the chosen weight set, with precise errors for files that are not
/// nanoDD checkpoints.
pub fn read_checkpoint(path: &Path, which: WeightSet) -> Result<NanoddCheckpoint> {
    if path.is_dir() {
        let inside: Vec<String> = std::fs::read_dir(path)
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "pt" || x == "pth"))
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        bail!(
            "{} is a folder; give the checkpoint file itself{}",
            path.display(),
            match inside.first() {
                Some(file) => format!(", e.g. {file}"),
                None => " (nanoDD writes ckpt.pt into its out_dir)".into(),
            }
        );
    }
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let root = PytorchReader::read_pickle_data(path, None).map_err(|e| {
        anyhow!(
            "{} is not a readable PyTorch checkpoint (expected a nanoDD `ckpt.pt` written by \
             torch.save): {e}",
            path.display()
        )
    })?;
    let PickleValue::Dict(root) = root else {
        bail!(
            "{} holds a pickled {} at its root, not a nanoDD checkpoint dict",
            path.display(),
            kind(&root)
        );
    };
    let mut keys: Vec<&String> = root.keys().collect();
    keys.sort();
    let not_nanodd = |what: &str| {
        anyhow!(
            "{} is not a nanoDD training checkpoint: {what} (top-level keys: {keys:?})",
            path.display()
        )
    };
    for key in ["model", "ema", "model_args"] {
        if !root.contains_key(key) {
            return Err(not_nanodd(&format!("it has no `{key}`")));
        }
    }
    if let Some(PickleValue::String(cls)) = root.get("model_cls")
        && cls != "D3PMAbsorbing"
    {
        bail!(
            "{}: model_cls is `{cls}`; ddexp imports nanoDD's D3PMAbsorbing checkpoints",
            path.display()
        );
    }
    let PickleValue::Dict(args) = &root["model_args"] else {
        return Err(not_nanodd("`model_args` is not a dict"));
    };
    let model_args = parse_model_args(args).with_context(|| format!("{}", path.display()))?;
    let mut training_args: HashMap<String, f64> = match root.get("training_args") {
        Some(PickleValue::Dict(args)) => args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), number(v)?)))
            .collect(),
        _ => HashMap::new(),
    };
    // Sequences per optimiser step over every GPU, recorded next to training_args.
    if let Some(total) = root.get("total_batch_size").and_then(number) {
        training_args.insert("total_batch_size".into(), total);
    }
    let iter_num = match root.get("iter_num") {
        Some(PickleValue::Int(n)) if *n >= 0 => Some(*n as u64),
        _ => None,
    };
    // Every tensor must lie within its storage before any is read (the reader would
    // zero-fill what is missing), and all of them must fit in memory.
    let bytes = torch_storage::check(path)?;
    memory::require(&memory::import(bytes as f64), crate::backend::Backend::Cpu)?;

    let (key, prefix) = match which {
        WeightSet::Model => ("model", ""),
        WeightSet::Ema => ("ema", "ema_model."),
    };
    let reader = PytorchReader::with_top_level_key(path, key)
        .map_err(|e| anyhow!("{}: cannot read the `{key}` weights: {e}", path.display()))?;
    let mut weights = StateDict::default();
    for (name, snapshot) in reader.tensors() {
        let Some(name) = name.strip_prefix(prefix) else {
            continue; // ema bookkeeping: `initted`, `step`
        };
        let data = snapshot.to_data().map_err(|e| {
            anyhow!(
                "{}: cannot read tensor `{key}.{name}`: {e:?}",
                path.display()
            )
        })?;
        weights.insert(name, as_f32(name, &data)?);
    }
    if weights.names().all(|n| !n.starts_with("net.")) {
        return Err(not_nanodd(&format!(
            "its `{key}` weights have no `net.*` tensors"
        )));
    }
    Ok(NanoddCheckpoint {
        model_args,
        training_args,
        iter_num,
        weights,
    })
}

fn parse_model_args(args: &HashMap<String, PickleValue>) -> Result<ModelArgs> {
    let get = |name: &str| {
        args.get(name).ok_or_else(|| {
            let mut present: Vec<&String> = args.keys().collect();
            present.sort();
            anyhow!(
                "the checkpoint's model_args lack `{name}` (present: {present:?}); ddexp does \
                 not guess hyper-parameters a checkpoint should record"
            )
        })
    };
    let count = |name: &str| -> Result<usize> {
        match get(name)? {
            PickleValue::Int(n) if *n > 0 => Ok(*n as usize),
            other => bail!(
                "model_args.{name} should be a positive integer, found {}",
                kind(other)
            ),
        }
    };
    let real = |name: &str| -> Result<f64> {
        let value = get(name)?;
        number(value).ok_or_else(|| {
            anyhow!(
                "model_args.{name} should be a number, found {}",
                kind(value)
            )
        })
    };
    Ok(ModelArgs {
        vocab_size: count("vocab_size")?,
        n_embed: count("n_embed")?,
        n_heads: count("n_heads")?,
        n_blocks: count("n_blocks")?,
        n_cond: count("n_cond")?,
        dropout: real("dropout")?,
        timesteps: count("T")?,
        lambda_ce: real("lambda_ce")?,
    })
}

fn number(value: &PickleValue) -> Option<f64> {
    match value {
        PickleValue::Int(n) => Some(*n as f64),
        PickleValue::Float(x) => Some(*x),
        _ => None,
    }
}

fn kind(value: &PickleValue) -> String {
    match value {
        PickleValue::None => "None (or an object ddexp does not read)".into(),
        PickleValue::Bool(b) => format!("bool {b}"),
        PickleValue::Int(n) => format!("int {n}"),
        PickleValue::Float(x) => format!("float {x}"),
        PickleValue::String(s) => format!("string {s:?}"),
        PickleValue::List(_) => "list".into(),
        PickleValue::Dict(_) => "dict".into(),
        PickleValue::Bytes(_) => "bytes".into(),
    }
}

/// The `which` weights of a nanoDD checkpoint as a model on `device`, checked against the
/// checkpoint's model_args as an import checks them, without writing a model folder.
pub fn load_nanodd<B: Backend>(
    ckpt: &Path,
    which: WeightSet,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    let checkpoint = read_checkpoint(ckpt, which)?;
    let args = &checkpoint.model_args;
    let (experiment, _) = experiment_from_args(ckpt, args, &checkpoint.training_args);
    let (diffusion, net) =
        network_from_weights(&checkpoint.weights, &experiment, args.vocab_size, device)
            .with_context(|| {
                format!(
                    "{}: the `{}` weights do not match the checkpoint's model_args {args:?}",
                    ckpt.display(),
                    which.name()
                )
            })?;
    Ok(LoadedModel { diffusion, net })
}

/// `ddexp import nanodd CKPT --out DIR --weights ema|model`.
pub fn import_nanodd(ckpt: &Path, out: &Path, which: WeightSet) -> Result<ImportSummary> {
    ensure_free(out)?;
    let checkpoint = read_checkpoint(ckpt, which)?;
    let NanoddCheckpoint {
        model_args: args,
        training_args,
        iter_num,
        weights,
    } = checkpoint;
    let (experiment, notes) = experiment_from_args(out, &args, &training_args);
    // The recorded arguments go through the experiment's own checks (bounds included)
    // before anything is built from them: a crafted T of 10^12 is refused, not allocated.
    let experiment = spec::load_str(Path::new("experiment.ron"), &spec::to_ron(&experiment), &[])
        .map_err(|e| {
            anyhow!(
                "{}: the checkpoint's model_args and training_args do not make a valid \
             experiment:\n{e}",
                ckpt.display()
            )
        })?
        .experiment;
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
            time_conditioning: true,
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
    let reserved = spec::RESERVED_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(&cleaned));
    if cleaned.starts_with(|c: char| c.is_ascii_alphanumeric()) && !reserved {
        cleaned
    } else {
        format!("nanodd{cleaned}").chars().take(100).collect()
    }
}
