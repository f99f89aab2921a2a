//! Bits/token on a split (DESIGN.md §5), and the shorter validation pass of the training loop.
//!
//! The estimator splits the T-step bound into two independent terms:
//! the KL term, (T − 1) × the mean per-token KL at t uniform in {1, …, T−1}, and the
//! reconstruction term, the mean per-token CE at t = 0. Each is a mean over sequences with
//! a standard error; their sum in bits is the estimate and the errors add in quadrature.
//! Batches come from the split's fixed evaluation stream, and times and noise from a seed
//! of their own, so two evaluations with the same settings see exactly the same tokens.

use std::f64::consts::LN_2;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;

use crate::data::Corpus;
use crate::diffusion::{Diffusion, LossStats, Moments};
use crate::model::Dit;
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
/// number of batches done and the running state.
pub fn estimate<B: Backend>(
    net: &Dit<B>,
    diffusion: &Diffusion,
    corpus: &Corpus,
    split: Split,
    settings: &EvalSettings,
    mut progress: impl FnMut(u64, &Running),
) -> Estimate {
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
        progress(batch + 1, &running);
    }
    running.estimate(split, timesteps)
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
