//! Reading nanoDD training checkpoints (`torch.save` zip/pickle `.pt` files).
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
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch::reader::PickleValue;

use super::weights::{StateDict, as_f32};

/// Which weights of a checkpoint to use.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WeightSet {
    /// The exponential moving average (what nanoDD samples and evaluates with).
    #[default]
    Ema,
    /// The raw training weights.
    Model,
}

impl WeightSet {
    pub fn name(self) -> &'static str {
        match self {
            WeightSet::Ema => "ema",
            WeightSet::Model => "model",
        }
    }
}

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
