//! Bits/token on a split (DESIGN.md §5): `ddexp eval`, the final evaluation of a run, and the
//! shorter validation pass of the training loop.
//!
//! The estimator splits the T-step bound into two independent terms:
//! the KL term, (T − 1) × the mean per-token KL at t uniform in {1, …, T−1}, and the
//! reconstruction term, the mean per-token CE at t = 0. Each is a mean over sequences with
//! a standard error; their sum in bits is the estimate and the errors add in quadrature.
//! Batches come from the split's fixed evaluation stream, and times and noise from a seed
//! of their own, so two evaluations with the same settings see exactly the same tokens.

use std::f64::consts::LN_2;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::Serialize;

use crate::backend::{self, DeviceChoice, Job};
use crate::data::{self, Corpus};
use crate::diffusion::{Diffusion, LossStats, Moments};
use crate::model::{Dit, WeightSet};
use crate::results::{EvalRow, RunDir, Weights};
use crate::rng::{self, Stream};
use crate::spec::Split;
use crate::trained::{self, CheckpointChoice, Opened};

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
    pub fn estimate(&self, split: Split, timesteps: usize) -> Estimate {
        let scale = (timesteps - 1) as f64 / LN_2;
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
    let timesteps = diffusion.timesteps();
    let mut running = Running::default();
    let total = settings.kl_batches + settings.recon_batches;
    for batch in 0..total {
        let is_kl = batch < settings.kl_batches;
        let mut rng = rng::rng(settings.seed, Stream::EvalTimes, &[split as u64, batch]);
        let times: Vec<usize> = (0..settings.batch_size)
            .map(|_| {
                if is_kl {
                    rng.random_range(1..timesteps)
                } else {
                    0
                }
            })
            .collect();
        let x0 = batch_tensor::<B>(corpus, split, batch, settings.batch_size, &device);
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
    Some(running.estimate(split, timesteps))
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
    pub timesteps: usize,
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
    let opened = trained::open(model, options.weights, options.checkpoint)?;
    let experiment = &opened.experiment;
    let topology = options.device.topology(&experiment.topology)?;
    let corpus = data::open(&opened.dataset(options.data.as_deref())?)?;
    corpus
        .check_model_vocab(opened.vocab_size)
        .with_context(|| format!("evaluating {}", opened.describe()))?;
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
    eprintln!("model: {}", opened.describe());
    eprintln!("data: {}", corpus.description());
    let job = EvalJob {
        opened: &opened,
        corpus: &corpus,
        splits: &splits,
        settings,
    };
    let estimates = backend::run_on_one_device(&topology, job)?;

    let eval_csv = match run {
        Some(run) => {
            let mut log = match early_log {
                Some(log) => log,
                None => run.log::<EvalRow>()?,
            };
            for estimate in &estimates {
                log.append(&eval_row(estimate, &settings, &opened))?;
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
    opened: &'a Opened,
    corpus: &'a Corpus,
    splits: &'a [Split],
    settings: EvalSettings,
}

impl Job for EvalJob<'_> {
    type Output = Vec<Estimate>;

    fn run<B: Backend>(self, device: &B::Device) -> Result<Vec<Estimate>> {
        let model = self.opened.load::<B>(device)?;
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

fn eval_row(estimate: &Estimate, settings: &EvalSettings, opened: &Opened) -> EvalRow {
    EvalRow {
        split: estimate.split,
        weights: match opened.weights {
            WeightSet::Ema => Weights::Ema,
            WeightSet::Model => Weights::Raw,
        },
        kl_bits: estimate.kl.bits,
        kl_se: estimate.kl.std_error,
        recon_bits: estimate.recon.bits,
        recon_se: estimate.recon.std_error,
        bits_per_token: estimate.bits_per_token(),
        se: estimate.std_error(),
        kl_batches: settings.kl_batches,
        recon_batches: settings.recon_batches,
        batch_size: settings.batch_size as u64,
        iter: opened.iteration().unwrap_or(0),
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
    let bar = ProgressBar::new(settings.kl_batches + settings.recon_batches);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} batches | {msg} | eta {eta}")
            .expect("a valid template"),
    );
    bar.set_prefix(format!("eval {split}"));
    let timesteps = diffusion.timesteps();
    let estimate = estimate(net, diffusion, corpus, split, settings, |done, running| {
        bar.set_position(done);
        let e = running.estimate(split, timesteps);
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

/// `value ± standard error`, or `value ± n/a` where there is no standard error (one batch or
/// one sequence).
pub fn plus_minus(value: f64, se: f64) -> String {
    match se.is_finite() {
        true => format!("{value:.4} ± {se:.4}"),
        false => format!("{value:.4} ± n/a"),
    }
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

/// The validation pass of the training loop: the training loss and its T-step estimate on
/// `batches` batches of the fixed val stream, with uniform times as in training. Also the
/// standard error of bits/token over batches.
pub fn validation_loss<B: Backend>(
    net: &Dit<B>,
    diffusion: &Diffusion,
    corpus: &Corpus,
    batches: u64,
    batch_size: usize,
) -> (LossStats, f64) {
    let stats = validation_batches(net, diffusion, corpus, 0..batches, batch_size);
    summarise_validation(&stats)
}

/// The statistics of some batches of the validation pass (each batch is the same whoever
/// evaluates it, so replicas can share the pass).
pub fn validation_batches<B: Backend>(
    net: &Dit<B>,
    diffusion: &Diffusion,
    corpus: &Corpus,
    batches: impl Iterator<Item = u64>,
    batch_size: usize,
) -> Vec<LossStats> {
    let device = net.devices()[0].clone();
    let timesteps = diffusion.timesteps();
    batches
        .map(|batch| {
            let mut rng = rng::rng(0, Stream::Validation, &[batch, 0]);
            let times: Vec<usize> = (0..batch_size)
                .map(|_| rng.random_range(0..timesteps))
                .collect();
            let x0 = batch_tensor::<B>(corpus, Split::Val, batch, batch_size, &device);
            let mut noise = rng::rows(0, Stream::Validation, &[batch, 1], 0..batch_size as u64);
            diffusion.loss(net, x0, &times, &mut noise).stats()
        })
        .collect()
}

/// The validation result from the statistics of its batches, in batch order: the merged
/// statistics and the standard error of bits/token over batches.
pub fn summarise_validation(batches: &[LossStats]) -> (LossStats, f64) {
    let mut total = LossStats::default();
    let mut per_batch = Moments::default();
    for stats in batches {
        let bits = stats.bits_per_token();
        per_batch.merge(&Moments {
            count: 1,
            sum: bits,
            sum_sq: bits * bits,
        });
        total.merge(stats);
    }
    (total, per_batch.std_error())
}

/// Batch `index` of the split's evaluation stream as a [batch, seq_len] tensor.
fn batch_tensor<B: Backend>(
    corpus: &Corpus,
    split: Split,
    index: u64,
    batch_size: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = corpus
        .eval_batch(split, index, batch_size)
        .into_iter()
        .map(i64::from)
        .collect();
    Tensor::from_data(TensorData::new(ids, [batch_size, corpus.seq_len()]), device)
}
