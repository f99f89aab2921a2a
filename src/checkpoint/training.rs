//! Training checkpoints: one safetensors file holding everything a run needs to continue
//! exactly where it stopped; evaluation and sampling read one of its weight sets.
//!
//! ```text
//! model.<name>      the raw weights, named as nanoDD's D3PMAbsorbing state dict (net.*, betas, ...)
//! ema.<name>        the EMA weights, same names
//! optim.m.<path>    AdamW first moments by module path
//! optim.v.<path>    AdamW second moments
//! metadata          format, iteration, tokens seen, optimiser steps, EMA updates, best val l_T,
//!                   the resolved experiment (RON) and the ddexp version
//! ```
//!
//! Randomness needs no state: every draw is a function of (seed, iteration, ...) (see
//! [`crate::rng`]), so the iteration is the data position and the RNG state at once.
//! Files are written to a temporary name and renamed, so a crash never leaves a torn file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::TensorData;

use super::tensor_file;
use crate::model::{DitConfig, StateDict, WeightSet, check_names_and_shapes};
use crate::spec;

const FORMAT: &str = "ddexp-checkpoint";
const VERSION: &str = "1";

pub const LATEST: &str = "latest.safetensors";
pub const BEST: &str = "best.safetensors";

/// Everything saved at a checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Optimiser steps completed; training continues with iteration `iteration`.
    pub iteration: u64,
    pub tokens: u64,
    /// Lowest val l_T seen so far (nats), if any validation ran.
    pub best_val_l_t: Option<f64>,
    pub ema_updates: u64,
    pub optimizer_steps: u64,
    /// The resolved experiment, as written in the run folder.
    pub experiment: String,
    pub model: StateDict,
    pub ema: StateDict,
    pub optimizer: Vec<(String, TensorData)>,
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = self.model.clone().with_prefix("model.");
        tensors.0.extend(self.ema.clone().with_prefix("ema.").0);
        for (name, data) in &self.optimizer {
            tensors.insert(format!("optim.{name}"), data.clone());
        }
        let mut meta = BTreeMap::new();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("version".into(), VERSION.into());
        meta.insert("ddexp_version".into(), env!("CARGO_PKG_VERSION").into());
        meta.insert("iteration".into(), self.iteration.to_string());
        meta.insert("tokens".into(), self.tokens.to_string());
        meta.insert("ema_updates".into(), self.ema_updates.to_string());
        meta.insert("optimizer_steps".into(), self.optimizer_steps.to_string());
        if let Some(best) = self.best_val_l_t {
            // Rust's shortest round-trip formatting: the f64 reads back bit for bit.
            meta.insert("best_val_l_t".into(), best.to_string());
        }
        meta.insert("experiment".into(), self.experiment.clone());
        tensor_file::write(path, &tensors, meta)
            .with_context(|| format!("writing checkpoint {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let (tensors, meta) = tensor_file::read_with_metadata(path)?;
        let meta = Metadata::checked(path, meta)?;
        let field = |key: &str| meta.field(key);
        let number = |key: &str| meta.number(key);
        let best_val_l_t = match meta.get("best_val_l_t") {
            Some(v) => Some(v.parse().with_context(|| {
                format!(
                    "{}: metadata `best_val_l_t` is not a number",
                    path.display()
                )
            })?),
            None => None,
        };
        let mut model = StateDict::default();
        let mut ema = StateDict::default();
        let mut optimizer = vec![];
        for (name, data) in tensors.0 {
            if let Some(n) = name.strip_prefix("model.") {
                model.insert(n, data);
            } else if let Some(n) = name.strip_prefix("ema.") {
                ema.insert(n, data);
            } else if let Some(n) = name.strip_prefix("optim.") {
                optimizer.push((n.to_string(), data));
            } else {
                bail!("{}: unexpected tensor `{name}`", path.display());
            }
        }
        Ok(Checkpoint {
            iteration: number("iteration")?,
            tokens: number("tokens")?,
            best_val_l_t,
            ema_updates: number("ema_updates")?,
            optimizer_steps: number("optimizer_steps")?,
            experiment: field("experiment")?.clone(),
            model,
            ema,
            optimizer,
        })
    }
}

impl Checkpoint {
    /// Refuses a checkpoint (read from `path`) whose counters disagree with each other or
    /// with `experiment`, or whose weights or moments are not all finite: resuming from it
    /// would rewrite the run's logs from a wrong place or train from broken weights. Every
    /// optimiser step updates the EMA once and counts the global batch's tokens.
    pub fn check_resumable(
        &self,
        path: &Path,
        experiment: &spec::Experiment,
        vocab: usize,
    ) -> Result<()> {
        let it = self.iteration;
        let max = experiment.train.max_iters;
        if it > max {
            bail!(
                "{}: the checkpoint is at iteration {it}, beyond the experiment's max_iters \
                 ({max}): it does not belong to this run",
                path.display()
            );
        }
        let tokens = (experiment.tokens_per_iter() as u64).checked_mul(it);
        for (what, value, expected) in [
            ("optimizer_steps", self.optimizer_steps, Some(it)),
            ("ema_updates", self.ema_updates, Some(it)),
            ("tokens", self.tokens, tokens),
        ] {
            if Some(value) != expected {
                bail!(
                    "{}: the checkpoint says iteration {it} but {what} {value} (expected {}): \
                     its counters disagree with its weights, so it is damaged or edited",
                    path.display(),
                    expected.map_or("a count that fits in 64 bits".into(), |e| e.to_string())
                );
            }
        }
        let config = DitConfig::from_spec(&experiment.network, vocab)?;
        for (set, tensors) in [("model", &self.model), ("ema", &self.ema)] {
            check_names_and_shapes(&config, &tensors.strip_prefix(super::NET_PREFIX))
                .with_context(|| {
                    format!(
                        "{}: the checkpoint's {set} weights do not fit the experiment",
                        path.display()
                    )
                })?;
            if let Some(name) = super::non_finite(tensors.0.iter()) {
                bail!(
                    "{}: the {set} weight `{name}` holds NaN or infinite values; the \
                     checkpoint cannot be resumed",
                    path.display()
                );
            }
        }
        if let Some((name, data)) = self.optimizer.iter().find(|(_, d)| d.shape.len() != 1) {
            bail!(
                "{}: the optimiser moment `{name}` has shape {:?}; moments are stored flat",
                path.display(),
                data.shape.as_slice()
            );
        }
        if let Some(name) = super::non_finite(self.optimizer.iter().map(|(n, d)| (n, d))) {
            bail!(
                "{}: the optimiser moment `{name}` holds NaN or infinite values; the \
                 checkpoint cannot be resumed",
                path.display()
            );
        }
        Ok(())
    }
}

/// One weight set of a checkpoint, for evaluation and sampling.
#[derive(Debug, Clone)]
pub struct CheckpointWeights {
    pub iteration: u64,
    /// The resolved experiment the checkpoint was trained with (RON).
    pub experiment: String,
    /// The D3PM-level state dict (nanoDD's names: `net.*`, `betas`, `alpha_bars`).
    pub weights: StateDict,
}

impl CheckpointWeights {
    /// Reads the `ema` or `model` weights of a checkpoint and its metadata, leaving the
    /// other weights and the optimiser moments on disk.
    pub fn load(path: &Path, which: WeightSet) -> Result<CheckpointWeights> {
        let prefix = format!("{}.", which.name());
        let (tensors, meta) = tensor_file::read_selected(path, |name| name.starts_with(&prefix))?;
        let meta = Metadata::checked(path, meta)?;
        let weights = tensors.strip_prefix(&prefix);
        if weights.is_empty() {
            bail!(
                "{} holds no `{prefix}*` tensors: the checkpoint has no {} weights",
                path.display(),
                which.name()
            );
        }
        Ok(CheckpointWeights {
            iteration: meta.number("iteration")?,
            experiment: meta.field("experiment")?.clone(),
            weights,
        })
    }
}

/// A checkpoint's string metadata, checked for format and version.
struct Metadata<'a> {
    path: &'a Path,
    meta: BTreeMap<String, String>,
}

impl<'a> Metadata<'a> {
    fn checked(path: &'a Path, meta: BTreeMap<String, String>) -> Result<Metadata<'a>> {
        let meta = Metadata { path, meta };
        if meta.field("format")? != FORMAT {
            bail!(
                "{} is not a ddexp checkpoint (format {:?})",
                path.display(),
                meta.field("format")?
            );
        }
        if meta.field("version")? != VERSION {
            bail!(
                "{} is a version {} checkpoint; this ddexp reads version {VERSION}",
                path.display(),
                meta.field("version")?
            );
        }
        Ok(meta)
    }

    fn get(&self, key: &str) -> Option<&String> {
        self.meta.get(key)
    }

    fn field(&self, key: &str) -> Result<&String> {
        self.meta.get(key).with_context(|| {
            format!(
                "{} is not a ddexp checkpoint: no `{key}` in its metadata",
                self.path.display()
            )
        })
    }

    fn number(&self, key: &str) -> Result<u64> {
        self.field(key)?
            .parse()
            .with_context(|| format!("{}: metadata `{key}` is not a number", self.path.display()))
    }
}
