//! A trained model opened for `ddexp eval` and `ddexp sample`, from either kind of folder:
//!
//! ```text
//! run folder     results/<experiment>/<run>/, written by `ddexp run`:
//!                run.json, experiment.ron, checkpoints/latest.safetensors and
//!                best.safetensors (both weight sets, as `model.<name>` and `ema.<name>`)
//! model folder   written by `ddexp import nanodd`:
//!                model.json, experiment.ron, weights.safetensors (one weight set)
//! ```
//!
//! [`open`] reads and checks everything on the host, so a missing or corrupt folder fails
//! with a precise message before a device is touched; [`SavedModel::load`] then builds the
//! network on whichever backend the caller runs (see [`crate::backend::run`]).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;

use super::{
    BEST, CheckpointWeights, INFO_FILE, LATEST, ModelInfo, NET_PREFIX, WEIGHTS_FILE,
    network_from_weights, read_model_info, tensor_file,
};
use crate::diffusion::Diffusion;
use crate::model::{Dit, StateDict, WeightSet};
use crate::results::{CHECKPOINTS_DIR, EXPERIMENT_FILE, RUN_INFO_FILE, RunDir};
use crate::spec::{self, Dataset, Experiment};

/// What MODEL may be, for error messages.
const WHAT_MODEL_IS: &str = "MODEL is a run folder (results/<experiment>/<run>/, written by \
     `ddexp run`) or a model folder (model.json, weights.safetensors and experiment.ron, written \
     by `ddexp import nanodd`)";

/// Which checkpoint of a run folder to open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckpointChoice {
    /// The last one written (at the last eval interval, Ctrl-C or the end of the run).
    #[default]
    Latest,
    /// The one with the lowest validation l_T (`train.checkpoint.keep_best`).
    Best,
}

impl CheckpointChoice {
    pub fn name(self) -> &'static str {
        match self {
            CheckpointChoice::Latest => "latest",
            CheckpointChoice::Best => "best",
        }
    }

    fn file(self) -> &'static str {
        match self {
            CheckpointChoice::Latest => LATEST,
            CheckpointChoice::Best => BEST,
        }
    }
}

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A run folder's latest or best checkpoint, taken after `iteration` optimiser steps.
    Run {
        iteration: u64,
        checkpoint: CheckpointChoice,
    },
    /// A model folder and its provenance.
    ModelFolder { info: ModelInfo },
}

/// A model read from disk and checked, not yet on a device.
#[derive(Debug, Clone)]
pub struct SavedModel {
    /// The folder as given.
    pub path: PathBuf,
    pub origin: Origin,
    /// The experiment the model was trained with (validated).
    pub experiment: Experiment,
    pub weights: WeightSet,
    /// Token ids the network reads, without the mask (the mask id is this value).
    pub vocab_size: usize,
    /// The file the weights were read from.
    pub weights_file: PathBuf,
    /// D3PM-level weights (nanoDD's names: `net.*`, `betas`, `alpha_bars`).
    state: StateDict,
}

/// A model on a device.
#[derive(Debug)]
pub struct LoadedModel<B: Backend> {
    pub diffusion: Diffusion,
    pub net: Dit<B>,
}

/// Opens the run folder or model folder `path` with the `weights` set (of the `checkpoint`
/// chosen, for a run folder).
pub fn open(path: &Path, weights: WeightSet, checkpoint: CheckpointChoice) -> Result<SavedModel> {
    if !path.exists() {
        bail!("{} does not exist; {WHAT_MODEL_IS}", path.display());
    }
    if !path.is_dir() {
        bail!(not_a_folder(path));
    }
    let saved = if path.join(INFO_FILE).exists() {
        if checkpoint != CheckpointChoice::Latest {
            bail!(
                "--checkpoint {}: {} is a model folder, which holds one set of weights; \
                 --checkpoint picks among a run folder's checkpoints",
                checkpoint.name(),
                path.display()
            );
        }
        open_model_folder(path, weights)?
    } else if path.join(RUN_INFO_FILE).exists() {
        open_run_folder(path, weights, checkpoint)?
    } else {
        bail!(neither(path))
    };
    saved.check()?;
    Ok(saved)
}

impl SavedModel {
    /// Refuses weights that hold NaN or infinities (a damaged file, or a run that diverged
    /// between checkpoints of its EMA): they would evaluate to NaN and sample blanks. A run
    /// folder's checkpoint must also lie within its experiment's max_iters.
    fn check(&self) -> Result<()> {
        if let Some(name) = super::non_finite(self.state.0.iter()) {
            bail!(
                "the {} weights in {} hold NaN or infinite values (in `{name}`): there is no \
                 model to use; take another checkpoint or weight set (--checkpoint, --weights)",
                self.weights.name(),
                self.weights_file.display()
            );
        }
        if let Origin::Run { iteration, .. } = self.origin {
            let max = self.experiment.train.max_iters;
            if iteration > max {
                bail!(
                    "{}: the checkpoint is at iteration {iteration}, beyond its experiment's \
                     max_iters ({max}): it does not belong to this run",
                    self.weights_file.display()
                );
            }
        }
        Ok(())
    }

    /// Builds the network and its process on `device`.
    pub fn load<B: Backend>(&self, device: &B::Device) -> Result<LoadedModel<B>> {
        let (diffusion, net) =
            network_from_weights(&self.state, &self.experiment, self.vocab_size, device)
                .with_context(|| {
                    format!(
                        "the {} weights in {} do not fit the network of the experiment in {}",
                        self.weights.name(),
                        self.weights_file.display(),
                        self.path.join(EXPERIMENT_FILE).display()
                    )
                })?;
        Ok(LoadedModel { diffusion, net })
    }

    /// The run folder, when the model is one (where eval.csv and samples.txt go).
    pub fn run_dir(&self) -> Option<&Path> {
        match self.origin {
            Origin::Run { .. } => Some(&self.path),
            Origin::ModelFolder { .. } => None,
        }
    }

    /// Optimiser steps behind the weights, when known.
    pub fn iteration(&self) -> Option<u64> {
        match &self.origin {
            Origin::Run { iteration, .. } => Some(*iteration),
            Origin::ModelFolder { info } => info.iter_num,
        }
    }

    /// "run folder" or "model folder".
    pub fn kind(&self) -> &'static str {
        match self.origin {
            Origin::Run { .. } => "run folder",
            Origin::ModelFolder { .. } => "model folder",
        }
    }

    /// One line for headers and logs, e.g.
    /// `results/x/2026-11-27T10-00-00 (run folder, best checkpoint, iteration 1500, ema weights)`.
    pub fn describe(&self) -> String {
        let from = match &self.origin {
            Origin::Run {
                iteration,
                checkpoint,
            } => format!("{} checkpoint, iteration {iteration}", checkpoint.name()),
            Origin::ModelFolder { info } => format!("imported from {}", info.source),
        };
        format!(
            "{} ({}, {from}, {} weights)",
            self.path.display(),
            self.kind(),
            self.weights.name()
        )
    }

    /// The experiment's dataset, with its folder replaced by `root` when given (an imported
    /// model's experiment names `data/text8`, wherever the data really is).
    pub fn dataset(&self, root: Option<&Path>) -> Result<Dataset> {
        let mut dataset = self.experiment.dataset.clone();
        let Some(new_root) = root else {
            return Ok(dataset);
        };
        match &mut dataset {
            Dataset::Text8 { root, .. }
            | Dataset::OpenWebText { root, .. }
            | Dataset::Text { root, .. } => *root = new_root.to_path_buf(),
            Dataset::Synthetic { .. } => bail!(
                "--data {}: the model's experiment uses the synthetic corpus, which is generated in \
                 memory and has no folder",
                new_root.display()
            ),
        }
        Ok(dataset)
    }
}

fn open_run_folder(path: &Path, weights: WeightSet, which: CheckpointChoice) -> Result<SavedModel> {
    let run = RunDir::open(path)?;
    let loaded = spec::load(&run.experiment_path(), &[])?;
    let experiment = loaded.experiment;
    let file = run.checkpoints_dir().join(which.file());
    if !file.is_file() {
        match which {
            CheckpointChoice::Latest => bail!(
                "run folder {} has no checkpoint ({CHECKPOINTS_DIR}/{LATEST} is missing): the \
                 run stopped before its first checkpoint, so there are no weights to use",
                path.display()
            ),
            CheckpointChoice::Best => bail!(
                "run folder {} has no best checkpoint ({CHECKPOINTS_DIR}/{BEST} is missing): it \
                 is written at validation when train.checkpoint.keep_best is true; use \
                 --checkpoint latest",
                path.display()
            ),
        }
    }
    let checkpoint = CheckpointWeights::load(&file, weights)?;
    if checkpoint.experiment != spec::to_ron(&experiment) {
        bail!(
            "{} was trained with a different experiment than {} says: the experiment file was \
             edited after the run started; restore it (the checkpoint keeps the original in its \
             metadata)",
            file.display(),
            run.experiment_path().display()
        );
    }
    let embedding = format!("{NET_PREFIX}vocab_embed.weight");
    let vocab_size = match checkpoint.weights.get(&embedding) {
        Some(data) if data.shape.len() == 2 && data.shape[0] >= 2 => data.shape[0] - 1,
        _ => bail!(
            "{}: the {} weights have no usable `{embedding}`, so they are not a DiT's",
            file.display(),
            weights.name()
        ),
    };
    Ok(SavedModel {
        path: path.to_path_buf(),
        origin: Origin::Run {
            iteration: checkpoint.iteration,
            checkpoint: which,
        },
        experiment,
        weights,
        vocab_size,
        weights_file: file,
        state: checkpoint.weights,
    })
}

fn open_model_folder(path: &Path, weights: WeightSet) -> Result<SavedModel> {
    let info = read_model_info(path)?;
    let loaded = spec::load(&path.join(EXPERIMENT_FILE), &[])?;
    if info.weights != weights {
        bail!(
            "model folder {} holds only the {} weights of {}, not the {} weights; import those \
             into another folder with `ddexp import nanodd {} --out <folder> --weights {}`",
            path.display(),
            info.weights.name(),
            info.source,
            weights.name(),
            info.source,
            weights.name()
        );
    }
    if info.num_classes < 2 {
        bail!(
            "{}: num_classes is {}, but a model needs at least one token and the mask",
            path.join(INFO_FILE).display(),
            info.num_classes
        );
    }
    let weights_file = path.join(WEIGHTS_FILE);
    if !weights_file.is_file() {
        bail!(
            "model folder {} is incomplete: {WEIGHTS_FILE} is missing (it has {INFO_FILE}); \
             import the model again with `ddexp import nanodd {} --out <folder>`",
            path.display(),
            info.source
        );
    }
    let state = tensor_file::read(&weights_file)?;
    Ok(SavedModel {
        path: path.to_path_buf(),
        vocab_size: info.num_classes - 1,
        origin: Origin::ModelFolder { info },
        experiment: loaded.experiment,
        weights,
        weights_file,
        state,
    })
}

/// The error for a MODEL that is a file.
fn not_a_folder(path: &Path) -> String {
    let extension = path.extension().and_then(|e| e.to_str());
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let in_checkpoints = parent.and_then(|p| p.file_name()) == Some(CHECKPOINTS_DIR.as_ref());
    match extension {
        Some("pt") => format!(
            "{} is a file, and looks like a nanoDD checkpoint: import it first with \
             `ddexp import nanodd {} --out models/<name>`, then pass models/<name>",
            path.display(),
            path.display()
        ),
        Some("safetensors") if in_checkpoints => format!(
            "{} is a checkpoint file; pass its run folder {}",
            path.display(),
            parent
                .and_then(Path::parent)
                .unwrap_or(Path::new("."))
                .display()
        ),
        _ => format!(
            "{} is a file, not a folder; {WHAT_MODEL_IS}",
            path.display()
        ),
    }
}

/// The error for a folder that is neither kind, saying what it looks like instead.
fn neither(path: &Path) -> String {
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    let runs: Vec<&PathBuf> = entries
        .iter()
        .filter(|e| e.join(RUN_INFO_FILE).is_file())
        .collect();
    if let Some(last) = runs.last() {
        return format!(
            "{} holds {} run folder(s) of an experiment, not one run; pass one of them, e.g. {}",
            path.display(),
            runs.len(),
            last.display()
        );
    }
    let listing = if entries.is_empty() {
        "it is empty".to_string()
    } else {
        let names: Vec<String> = entries
            .iter()
            .take(12)
            .map(|e| {
                e.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let more = entries.len().saturating_sub(names.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("it contains {}{more}", names.join(", "))
    };
    format!(
        "{} is neither a run folder (no {RUN_INFO_FILE}) nor a model folder (no {INFO_FILE}); \
         {listing}. {WHAT_MODEL_IS}",
        path.display()
    )
}
