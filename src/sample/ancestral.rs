//! Ancestral sampling: start from all-mask at the start of the process's time and step down
//! a grid of times to 0, drawing x_{s} ~ p(x_{s} | x_t) at each step t → s. Both processes
//! have the same reverse structure (an unmasked token stays; a masked one unmasks with a
//! probability set by the schedule alone and takes its token from p(x_0 | x_t)), so the
//! samplers are shared and read the schedule from [`Diffusion`].
//!
//! Four samplers:
//! - [`AncestralSampler::Exact`] (the default): p(x_0) with the mask column removed, unmasked
//!   tokens kept. Whether a masked position unmasks in the step t → s does not depend on the
//!   network (probability (α_s − α_t) / (1 − α_t)), so the reveal step of every position is
//!   drawn first, and the network runs only at steps where some position of the batch is
//!   revealed, at that step's time t; the revealed positions draw their token from
//!   p(x_0 | x_t). This is the same distribution as stepping through every time, with far
//!   fewer network calls. With a time-free network a prediction depends on a sequence's
//!   tokens alone, so it stays valid until the sequence changes: the sampler keeps each
//!   sequence's last prediction and calls the network only when a sequence that unmasks at
//!   this step has changed since its prediction was made, and then only on the sequences
//!   that changed and are not finished.
//! - [`AncestralSampler::ExactUncached`]: the same, with a fresh prediction for the whole
//!   batch at every step that unmasks something (the baseline of the cache).
//! - [`AncestralSampler::ExactEveryStep`]: the same model, one posterior draw per step with
//!   the network at every step (the baseline of the fast sampler).
//! - [`AncestralSampler::Reference`]: nanoDD's `sample.py` (D3PM only): p(x_0) is the softmax
//!   of the raw output (mask column included), the network runs at every step, and the last
//!   step redraws every position from p(x_0).

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData, s};
use rand::Rng;

use crate::diffusion::{Diffusion, ReverseMode, sample_categorical};
use crate::model::{Dit, token_ids, token_tensor};
use crate::rng::{self, Stream};

/// Which reverse process to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AncestralSampler {
    /// The model of the loss, calling the network only at steps where a position unmasks, and
    /// reusing a time-free network's predictions while they are valid.
    #[default]
    Exact,
    /// As `Exact`, but calling the network on the whole batch at every step that unmasks
    /// something, even when a time-free network's predictions are still valid.
    ExactUncached,
    /// The model of the loss, calling the network at every step.
    ExactEveryStep,
    /// nanoDD's sampler (mask column kept in p(x_0), every position redrawn at the end).
    Reference,
}

impl AncestralSampler {
    pub fn name(self) -> &'static str {
        match self {
            AncestralSampler::Exact => "exact",
            AncestralSampler::ExactUncached => "exact-uncached",
            AncestralSampler::ExactEveryStep => "exact-every-step",
            AncestralSampler::Reference => "reference",
        }
    }
}

/// How many sequences, how long, on which grid, from which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleSettings {
    pub batch: usize,
    pub seq_len: usize,
    /// Reverse steps: D3PM's T for exact ancestral sampling, fewer for a coarser grid.
    pub steps: usize,
    pub seed: u64,
    pub sampler: AncestralSampler,
}

/// The state after one reverse step, for progress displays.
#[derive(Debug)]
pub struct Step<'a> {
    /// Step index, 0 for the first step (from the start of the process's time).
    pub index: usize,
    /// The step went from time `t` to time `t_next` (D3PM: integer steps; MDLM: in (0, 1]).
    pub t: f64,
    pub t_next: f64,
    /// [batch × seq_len] token ids after the step, row-major (the mask id where masked).
    pub tokens: &'a [u32],
    /// Positions (over the batch) that went from the mask to a token in this step.
    pub revealed: usize,
    /// Network calls so far.
    pub network_calls: usize,
}

/// What a sampler drew.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// One row of token ids per sequence.
    pub tokens: Vec<Vec<u32>>,
    /// The times visited, from the start down to 0 (steps + 1 entries).
    pub grid: Vec<f64>,
    /// Per step, the positions over the batch that went from the mask to a token.
    pub revealed: Vec<usize>,
    pub network_calls: usize,
    /// Sequences the network ran on, summed over the calls (the work of the calls).
    pub network_rows: usize,
}

/// Sub-streams of [`Stream::Sample`]: which positions reveal when (one generator per
/// sequence), and the draws of each step.
const REVEAL: u64 = 0;
const TOKENS: u64 = 1;
const POSTERIOR: u64 = 2;

/// Samples with `net`; `on_step` sees the tokens after every step.
pub fn sample<B: Backend>(
    net: &Dit<B>,
    diffusion: &Diffusion,
    settings: &SampleSettings,
    on_step: impl FnMut(&Step),
) -> Result<Sampled> {
    let device = net.devices()[0].clone();
    let network = |x: Tensor<B, 2, Int>, time: f32| {
        let batch = x.dims()[0];
        let times = Tensor::from_data(TensorData::new(vec![time; batch], [batch]), &device);
        net.forward(x, times)
    };
    sample_with(network, diffusion, settings, &device, on_step)
}

/// [`sample`] with any function standing for the network: `network(x_t, time)` returns the
/// logits [B, L, K] of x_t at the network's time input `time` (see
/// [`Diffusion::network_time`]). Tests use it to count and time the calls.
pub fn sample_with<B: Backend>(
    mut network: impl FnMut(Tensor<B, 2, Int>, f32) -> Tensor<B, 3>,
    diffusion: &Diffusion,
    settings: &SampleSettings,
    device: &B::Device,
    mut on_step: impl FnMut(&Step),
) -> Result<Sampled> {
    let grid = diffusion.sampling_grid(settings.steps)?;
    let (batch, seq_len) = (settings.batch, settings.seq_len);
    if batch == 0 || seq_len == 0 {
        bail!("cannot sample {batch} sequences of {seq_len} tokens");
    }
    if settings.sampler == AncestralSampler::Reference
        && !diffusion.supports(ReverseMode::Reference)
    {
        bail!(
            "the reference sampler is nanoDD's, for D3PM models; this model is {}",
            diffusion.describe()
        );
    }
    let mask = diffusion.mask_id() as u32;
    let seed = settings.seed;
    let mut tokens = vec![mask; batch * seq_len];
    let mut x = token_tensor::<B>(&tokens, batch, seq_len, device);
    let mut revealed = Vec::with_capacity(grid.len() - 1);
    let (mut network_calls, mut network_rows) = (0, 0);

    // Fast samplers: the step at which each position is revealed, drawn up front. Under the
    // forward process a position with uniform u is masked at time t iff u ≥ α_t; given that it
    // is masked at the start τ_0 (u ≥ α(τ_0)), it is revealed in the step τ_i → τ_{i+1} with
    // α(τ_i) ≤ u < α(τ_{i+1}): in each step a still-masked position unmasks with probability
    // (α(τ_{i+1}) − α(τ_i)) / (1 − α(τ_i)), as in the posterior.
    let fast = matches!(
        settings.sampler,
        AncestralSampler::Exact | AncestralSampler::ExactUncached
    );
    let reveal_step: Vec<usize> = if fast {
        let alpha: Vec<f64> = grid
            .iter()
            .map(|&t| diffusion.keep_probability(t))
            .collect();
        let start = alpha[0];
        let mut rows = rng::rows(seed, Stream::Sample, &[REVEAL], 0..batch as u64);
        rows.iter_mut()
            .flat_map(|row| {
                (0..seq_len)
                    .map(|_| {
                        let u = start + (1.0 - start) * row.random::<f64>();
                        // α(τ_0) ≤ u < 1 = α(0): the partition point is in 1..=steps.
                        alpha.partition_point(|&a| a <= u) - 1
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    } else {
        vec![]
    };
    let mut reveals_per_step = vec![0; grid.len() - 1];
    for &step in &reveal_step {
        reveals_per_step[step] += 1;
    }
    let mut cache = (settings.sampler == AncestralSampler::Exact && !diffusion.time_conditioning())
        .then(|| PredictionCache::new(batch));

    for (index, pair) in grid.windows(2).enumerate() {
        let (t, t_next) = (pair[0], pair[1]);
        let time = diffusion.network_time(t);
        let count = if fast {
            let count = reveals_per_step[index];
            if count > 0 {
                let now: Vec<bool> = reveal_step.iter().map(|&step| step == index).collect();
                let probs = match cache.as_mut() {
                    Some(cache) => {
                        let unmasking: Vec<usize> = (0..batch)
                            .filter(|&r| now[r * seq_len..(r + 1) * seq_len].contains(&true))
                            .collect();
                        let rows = cache.refresh(&unmasking, &tokens, seq_len, mask, |rows| {
                            let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                            let ids = Tensor::from_data(TensorData::new(ids, [rows.len()]), device);
                            diffusion.x0_probs(network(x.clone().select(0, ids), time))
                        });
                        if rows > 0 {
                            network_calls += 1;
                            network_rows += rows;
                        }
                        cache.probs()
                    }
                    None => {
                        network_calls += 1;
                        network_rows += batch;
                        diffusion.x0_probs(network(x.clone(), time))
                    }
                };
                let mut draws = rng::rng(seed, Stream::Sample, &[TOKENS, index as u64]);
                let drawn = sample_categorical(probs, &mut draws);
                let now =
                    Tensor::<B, 2, Bool>::from_data(TensorData::new(now, [batch, seq_len]), device);
                x = x.mask_where(now, drawn);
                tokens = token_ids(x.clone());
            }
            count
        } else {
            let mode = if settings.sampler == AncestralSampler::Reference {
                ReverseMode::Reference
            } else {
                ReverseMode::Exact
            };
            let logits = network(x.clone(), time);
            network_calls += 1;
            network_rows += batch;
            let mut draws = rng::rng(seed, Stream::Sample, &[POSTERIOR, index as u64]);
            x = diffusion.reverse_step_from_logits(logits, x, t, t_next, mode, &mut draws);
            let after = token_ids(x.clone());
            let count = tokens
                .iter()
                .zip(&after)
                .filter(|&(&before, &after)| before == mask && after != mask)
                .count();
            tokens = after;
            count
        };
        revealed.push(count);
        on_step(&Step {
            index,
            t,
            t_next,
            tokens: &tokens,
            revealed: count,
            network_calls,
        });
    }
    Ok(Sampled {
        tokens: tokens.chunks(seq_len).map(<[u32]>::to_vec).collect(),
        grid,
        revealed,
        network_calls,
        network_rows,
    })
}

/// The last prediction p(x_0) [B, L, K] of each sequence of a time-free network, and which
/// sequences changed since theirs was made.
struct PredictionCache<B: Backend> {
    probs: Option<Tensor<B, 3>>,
    changed: Vec<bool>,
}

impl<B: Backend> PredictionCache<B> {
    /// No prediction yet: every sequence counts as changed.
    fn new(batch: usize) -> Self {
        PredictionCache {
            probs: None,
            changed: vec![true; batch],
        }
    }

    /// Makes the predictions of the sequences `unmasking` at this step valid for `tokens`
    /// (row-major, `seq_len` per sequence). When one of them changed since its prediction,
    /// `predict(rows)` runs the network on every sequence that changed and still has a mask
    /// (a finished sequence needs no prediction again), all in one call. Returns the number
    /// of sequences predicted (0: no call). The unmasking sequences then count as changed.
    fn refresh(
        &mut self,
        unmasking: &[usize],
        tokens: &[u32],
        seq_len: usize,
        mask: u32,
        predict: impl FnOnce(&[usize]) -> Tensor<B, 3>,
    ) -> usize {
        let mut predicted = 0;
        if unmasking.iter().any(|&r| self.changed[r]) {
            let rows: Vec<usize> = (0..self.changed.len())
                .filter(|&r| {
                    self.changed[r] && tokens[r * seq_len..(r + 1) * seq_len].contains(&mask)
                })
                .collect();
            let fresh = predict(&rows);
            self.probs = Some(match self.probs.take() {
                // The first call sees every sequence.
                None => fresh,
                Some(mut probs) => {
                    for (j, &r) in rows.iter().enumerate() {
                        probs = probs.slice_assign(s![r..r + 1], fresh.clone().narrow(0, j, 1));
                    }
                    probs
                }
            });
            for &r in &rows {
                self.changed[r] = false;
            }
            predicted = rows.len();
        }
        for &r in unmasking {
            self.changed[r] = true;
        }
        predicted
    }

    fn probs(&self) -> Tensor<B, 3> {
        self.probs
            .clone()
            .expect("a prediction is made before any is read")
    }
}
