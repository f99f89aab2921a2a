//! Bits/token on a split: `ddexp eval`, and the final evaluation of a run.
//!
//! The negative log-likelihood of a sequence is bounded by the process's variational bound,
//! which the estimator splits into two independent terms:
//! - D3PM: L_T = Σ_{t=1}^{T−1} KL_t + CE_0 (the prior term is zero: at t = T every token is
//!   the mask under both q and p). The KL term is (T − 1) × the mean per-token KL at t
//!   uniform in {1, …, T−1}, the reconstruction term the mean per-token CE at t = 0.
//! - MDLM: the continuous-time NELBO split at t_min. The KL term is the diffusion term,
//!   (1 − t_min) × the mean per-token integrand w(t)·(−log p_θ(x_0 | x_t)) at t uniform in
//!   [t_min, 1); the reconstruction term is the mean per-token −log p_θ(x_0 | x_{t_min}) of
//!   the positions masked at t_min (see [`crate::diffusion::Mdlm`]).
//!
//! Each term is a mean over sequences with a standard error; their sum in bits is the
//! estimate and the errors add in quadrature.
//! Batches come from the split's fixed evaluation stream, and times and noise from a seed
//! of their own, so two evaluations with the same settings see exactly the same tokens.
//! EMA weights are the default.

use std::f64::consts::LN_2;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::backend::{self, DeviceChoice, Devices, Job};
use crate::checkpoint::{self, CheckpointChoice, SavedModel};
use crate::data::{self, Corpus};
use crate::diffusion::{Bound, Diffusion, Moments};
use crate::memory;
use crate::model::{Dit, WeightSet, token_tensor};
use crate::results::stats::plus_minus;
use crate::results::{EvalRow, RunDir};
use crate::rng::{self, Stream};
use crate::spec::Split;

/// How much of a split to evaluate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalSettings {
    pub kl_batches: u64,
    pub recon_batches: u64,
    pub batch_size: usize,
    /// Seed of the evaluation's times and noise (not of the windows, which are fixed).
    pub seed: u64,
}

/// One term of the estimate, in bits/token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Term {
    pub bits: f64,
    pub std_error: f64,
    /// Sequences averaged.
    pub sequences: u64,
}

/// The bits/token estimate on one split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub split: Split,
    pub kl: Term,
    pub recon: Term,
}

impl Estimate {
    pub fn bits_per_token(&self) -> f64 {
        self.kl.bits + self.recon.bits
    }

    pub fn std_error(&self) -> f64 {
        self.kl.std_error.hypot(self.recon.std_error)
    }
}

/// The running state of an estimate, so a caller can show progress as batches arrive.
#[derive(Debug, Clone, Copy, Default)]
pub struct Running {
    pub kl: Moments,
    pub recon: Moments,
}

impl Running {
    /// The estimate from the batches so far (NaN terms until each has a batch).
    pub fn estimate(&self, split: Split, bound: Bound) -> Estimate {
        let scale = bound.kl_weight / LN_2;
        Estimate {
            split,
            kl: Term {
                bits: self.kl.mean() * scale,
                std_error: self.kl.std_error() * scale,
                sequences: self.kl.count,
            },
            recon: Term {
                bits: self.recon.mean() / LN_2,
                std_error: self.recon.std_error() / LN_2,
                sequences: self.recon.count,
            },
        }
    }
}

/// Estimates bits/token of `net` on `split`. `progress` is called after every batch with the
/// number of batches done and the running state; `ControlFlow::Break` stops the estimate
/// (then `None`).
pub fn estimate<B: Backend>(
    net: &Dit<B>,
    diffusion: &Diffusion,
    corpus: &Corpus,
    split: Split,
    settings: &EvalSettings,
    mut progress: impl FnMut(u64, &Running) -> ControlFlow<()>,
) -> Option<Estimate> {
    let device = net.devices()[0].clone();
    let mut running = Running::default();
    let total = settings.kl_batches.saturating_add(settings.recon_batches);
    for batch in 0..total {
        let is_kl = batch < settings.kl_batches;
        let mut rng = rng::rng(settings.seed, Stream::EvalTimes, &[split as u64, batch]);
        let times = if is_kl {
            diffusion.kl_range().uniform(&mut rng, settings.batch_size)
        } else {
            diffusion.recon_times(settings.batch_size)
        };
        let ids = corpus.eval_batch(split, batch, settings.batch_size);
        let x0 = token_tensor::<B>(&ids, settings.batch_size, corpus.seq_len(), &device);
        let rows = 0..settings.batch_size as u64;
        let mut noise = rng::rows(
            settings.seed,
            Stream::EvalNoise,
            &[split as u64, batch],
            rows,
        );
        let terms = diffusion.token_terms(net, x0, &times, &mut noise);
        if is_kl {
            running.kl.merge(&Moments::of_sequence_means(terms.kl));
        } else {
            running.recon.merge(&Moments::of_sequence_means(terms.ce));
        }
        if progress(batch + 1, &running).is_break() {
            return None;
        }
    }
    Some(running.estimate(split, diffusion.bound()))
}

/// `ddexp eval`'s choices; `None` takes the experiment's eval section.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    pub splits: Option<Vec<Split>>,
    pub kl_batches: Option<u64>,
    pub recon_batches: Option<u64>,
    pub batch_size: Option<usize>,
    /// Seed of the times and noise; 0 is what a run's own final evaluation uses.
    pub seed: u64,
    pub weights: WeightSet,
    /// A run folder's latest or best checkpoint.
    pub checkpoint: CheckpointChoice,
    /// Replaces the dataset's folder.
    pub data: Option<PathBuf>,
    /// Where to run, when not on the experiment's own device.
    pub device: DeviceChoice,
}

/// What `ddexp eval` measured (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: PathBuf,
    /// "run folder" or "model folder".
    pub kind: &'static str,
    pub weights: WeightSet,
    /// Optimiser steps behind the weights, when known.
    pub iteration: Option<u64>,
    pub dataset: String,
    /// The process, in words.
    pub process: String,
    /// T of a discrete-time process (`null` for MDLM).
    pub timesteps: Option<usize>,
    pub kl_batches: u64,
    pub recon_batches: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub seed: u64,
    #[serde(serialize_with = "serialize_estimates")]
    pub estimates: Vec<Estimate>,
    /// The run's eval.csv the rows were appended to (run folders only).
    pub eval_csv: Option<PathBuf>,
}

/// One split's estimate in the JSON report, in bits/token.
#[derive(Serialize)]
struct SplitEstimate {
    split: &'static str,
    kl_bits: f64,
    kl_se: f64,
    recon_bits: f64,
    recon_se: f64,
    bits_per_token: f64,
    se: f64,
    kl_sequences: u64,
    recon_sequences: u64,
}

fn serialize_estimates<S: serde::Serializer>(
    estimates: &[Estimate],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(estimates.iter().map(SplitEstimate::from))
}

impl From<&Estimate> for SplitEstimate {
    fn from(e: &Estimate) -> Self {
        SplitEstimate {
            split: e.split.name(),
            kl_bits: e.kl.bits,
            kl_se: e.kl.std_error,
            recon_bits: e.recon.bits,
            recon_se: e.recon.std_error,
            bits_per_token: e.bits_per_token(),
            se: e.std_error(),
            kl_sequences: e.kl.sequences,
            recon_sequences: e.recon.sequences,
        }
    }
}

/// `ddexp eval MODEL`: bits/token of a run folder's latest checkpoint or of a model folder on
/// each split, on the experiment's backend (one device). For a run folder, one row per split
/// is appended to its eval.csv.
pub fn evaluate_model(model: &Path, options: &EvalOptions) -> Result<EvalReport> {
    let opened = checkpoint::open(model, options.weights, options.checkpoint)?;
    let experiment = &opened.experiment;
    let topology = &experiment.topology;
    let (on, device) = options
        .device
        .resolve(topology.backend, &topology.devices)?;
    let corpus = data::open(&opened.dataset(options.data.as_deref())?)?;
    corpus
        .check_model_vocab(opened.vocab_size)
        .with_context(|| format!("evaluating {}", opened.describe()))?;
    let batch = options.batch_size.unwrap_or(experiment.eval.batch_size);
    memory::require(
        &memory::evaluation(experiment, opened.vocab_size, batch),
        on,
    )?;
    let splits = options
        .splits
        .clone()
        .unwrap_or_else(|| experiment.eval.splits.clone());
    let settings = EvalSettings {
        kl_batches: options.kl_batches.unwrap_or(experiment.eval.kl_batches),
        recon_batches: options
            .recon_batches
            .unwrap_or(experiment.eval.recon_batches),
        batch_size: options.batch_size.unwrap_or(experiment.eval.batch_size),
        seed: options.seed,
    };
    if settings.kl_batches == 0 || settings.recon_batches == 0 || settings.batch_size == 0 {
        bail!(
            "the KL term, the reconstruction term and a batch each need at least one: got \
             {} KL batches, {} reconstruction batches of {} sequences",
            settings.kl_batches,
            settings.recon_batches,
            settings.batch_size
        );
    }
    // A damaged eval.csv fails now rather than after the evaluation; a missing one is only
    // created once there are rows to write.
    let run = opened.run_dir().map(RunDir::open).transpose()?;
    let early_log = match &run {
        Some(run) if run.csv_path::<EvalRow>().exists() => Some(run.log::<EvalRow>()?),
        _ => None,
    };
    eoutln!("model: {}", opened.describe());
    eoutln!("data: {}", corpus.description());
    let job = EvalJob {
        opened: &opened,
        corpus: &corpus,
        splits: &splits,
        settings,
    };
    let estimates = backend::run(on, &[device], job)?;
    for estimate in &estimates {
        check_finite(estimate)?;
    }

    let eval_csv = match run {
        Some(run) => {
            let mut log = match early_log {
                Some(log) => log,
                None => run.log::<EvalRow>()?,
            };
            for estimate in &estimates {
                let iteration = opened.iteration().unwrap_or(0);
                log.append(&eval_row(estimate, &settings, opened.weights, iteration))?;
            }
            log.sync()?;
            Some(log.path().to_path_buf())
        }
        None => None,
    };
    let report = EvalReport {
        model: opened.path.clone(),
        kind: opened.kind(),
        weights: opened.weights,
        iteration: opened.iteration(),
        dataset: corpus.description().to_string(),
        process: Diffusion::new(&experiment.model, opened.vocab_size).describe(),
        timesteps: experiment.model.timesteps(),
        kl_batches: settings.kl_batches,
        recon_batches: settings.recon_batches,
        batch_size: settings.batch_size,
        seq_len: corpus.seq_len(),
        seed: settings.seed,
        estimates,
        eval_csv,
    };
    Ok(report)
}

/// Evaluation of each split on the device the experiment names.
struct EvalJob<'a> {
    opened: &'a SavedModel,
    corpus: &'a Corpus,
    splits: &'a [Split],
    settings: EvalSettings,
}

impl Job for EvalJob<'_> {
    type Output = Vec<Estimate>;

    fn run<B: Backend>(self, devices: &Devices<B>) -> Result<Vec<Estimate>> {
        let model = self.opened.load::<B>(&devices.devices[0])?;
        Ok(self
            .splits
            .iter()
            .map(|&split| {
                evaluate_with_progress(
                    &model.net,
                    &model.diffusion,
                    self.corpus,
                    split,
                    &self.settings,
                    &|| false,
                )
                .expect("an evaluation that is never stopped finishes")
            })
            .collect())
    }
}

/// Refuses an estimate that is not a number: it is never written as a row. Weights that
/// are finite can still overflow on some input, and a term without a batch is NaN.
pub fn check_finite(estimate: &Estimate) -> Result<()> {
    // The standard error of a single sequence is NaN by definition; the estimate is not.
    if !estimate.bits_per_token().is_finite() {
        bail!(
            "the {} estimate is not a number (KL term {} bits over {} sequences, \
             reconstruction term {} bits over {} sequences): the network's output overflows \
             on this data; nothing was written",
            estimate.split,
            estimate.kl.bits,
            estimate.kl.sequences,
            estimate.recon.bits,
            estimate.recon.sequences
        );
    }
    Ok(())
}

/// The eval.csv row of `estimate`, made with `settings` from `weights` after `iteration`
/// optimiser steps.
pub fn eval_row(
    estimate: &Estimate,
    settings: &EvalSettings,
    weights: WeightSet,
    iteration: u64,
) -> EvalRow {
    EvalRow {
        split: estimate.split,
        weights,
        kl_bits: estimate.kl.bits,
        kl_se: estimate.kl.std_error,
        recon_bits: estimate.recon.bits,
        recon_se: estimate.recon.std_error,
        bits_per_token: estimate.bits_per_token(),
        se: estimate.std_error(),
        kl_batches: settings.kl_batches,
        recon_batches: settings.recon_batches,
        batch_size: settings.batch_size as u64,
        iter: iteration,
        timestamp: chrono::Local::now().to_rfc3339(),
    }
}

/// [`estimate`] with a progress bar showing the running estimate; `None` when `stop()`
/// turned true between two batches.
pub fn evaluate_with_progress<B: Backend>(
    net: &Dit<B>,
    diffusion: &Diffusion,
    corpus: &Corpus,
    split: Split,
    settings: &EvalSettings,
    stop: &dyn Fn() -> bool,
) -> Option<Estimate> {
    let bar = ProgressBar::new(settings.kl_batches.saturating_add(settings.recon_batches));
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} batches | {msg} | eta {eta}")
            .expect("a valid template"),
    );
    bar.set_prefix(format!("eval {split}"));
    let bound = diffusion.bound();
    let estimate = estimate(net, diffusion, corpus, split, settings, |done, running| {
        bar.set_position(done);
        let e = running.estimate(split, bound);
        if e.kl.sequences > 1 {
            bar.set_message(format!(
                "{:.4} ± {:.4} bits/token",
                e.bits_per_token(),
                e.std_error()
            ));
        }
        match stop() {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    });
    bar.finish_and_clear();
    estimate
}

/// The final table: one row per split.
pub fn format_estimates(estimates: &[Estimate]) -> String {
    let mut s = format!(
        "{:<6} {:>20} {:>20} {:>20}\n",
        "split", "KL term (bits)", "recon term (bits)", "bits/token"
    );
    for e in estimates {
        s.push_str(&format!(
            "{:<6} {:>20} {:>20} {:>20}\n",
            e.split.name(),
            plus_minus(e.kl.bits, e.kl.std_error),
            plus_minus(e.recon.bits, e.recon.std_error),
            plus_minus(e.bits_per_token(), e.std_error())
        ));
    }
    s
}
