//! Ancestral sampling of the absorbing process: start from all-mask at s = T and step down a
//! grid of times to 0, drawing x_{s'} ~ p(x_{s'} | x_s) at each step.
//!
//! Three samplers:
//! - [`AncestralSampler::Exact`] (the default): p(x_0) with the mask column removed, unmasked tokens
//!   kept. Whether a masked position unmasks in the step s → s' does not depend on the network
//!   (probability (ᾱ_{s'} − ᾱ_s) / (1 − ᾱ_s)), so the reveal step of every position is drawn
//!   first, and the network runs only at steps where some position of the batch is revealed,
//!   at that step's time s; the revealed positions draw their token from p(x_0 | x_s). This
//!   is the same distribution as stepping through every time, with far fewer network calls.
//! - [`AncestralSampler::ExactEveryStep`]: the same model, one posterior draw per step with the network
//!   at every step (the baseline the fast sampler is measured against).
//! - [`AncestralSampler::Reference`]: nanoDD's `sample.py`: p(x_0) is the softmax of the raw output
//!   (mask column included), the network runs at every step, and the last step redraws every
//!   position from p(x_0).

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::Rng;

use crate::diffusion::{Diffusion, ReverseMode, sample_categorical};
use crate::model::{Dit, token_ids, token_tensor};
use crate::rng::{self, Stream};

/// Which reverse process to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AncestralSampler {
    /// The model of the loss, calling the network only at steps where a position unmasks.
    #[default]
    Exact,
    /// The model of the loss, calling the network at every step.
    ExactEveryStep,
    /// nanoDD's sampler (mask column kept in p(x_0), every position redrawn at the end).
    Reference,
}

impl AncestralSampler {
    pub fn name(self) -> &'static str {
        match self {
            AncestralSampler::Exact => "exact",
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
    /// Reverse steps: T for exact ancestral sampling, fewer for a coarser grid.
    pub steps: usize,
    pub seed: u64,
    pub sampler: AncestralSampler,
}

/// The state after one reverse step, for progress displays.
#[derive(Debug)]
pub struct Step<'a> {
    /// Step index, 0 for the first step (from s = T).
    pub index: usize,
    /// The step went from time `s` to time `s_prev`.
    pub s: usize,
    pub s_prev: usize,
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
    /// The times visited, from T down to 0 (steps + 1 entries).
    pub grid: Vec<usize>,
    /// Per step, the positions over the batch that went from the mask to a token.
    pub revealed: Vec<usize>,
    pub network_calls: usize,
}

/// Sub-streams of [`Stream::Sample`]: which positions reveal when (one generator per
/// sequence), and the draws of each step.
const REVEAL: u64 = 0;
const TOKENS: u64 = 1;
const POSTERIOR: u64 = 2;

/// The times of a reverse pass with `steps` steps: T = τ_0 > τ_1 > … > τ_steps = 0, evenly
/// spaced (τ_i = ⌊T (steps − i) / steps⌋), so `steps` = T visits every time.
pub fn grid(timesteps: usize, steps: usize) -> Result<Vec<usize>> {
    if steps == 0 || steps > timesteps {
        bail!("--steps must be between 1 and the model's T = {timesteps}; got {steps}");
    }
    Ok((0..=steps)
        .map(|i| timesteps * (steps - i) / steps)
        .collect())
}

/// Samples with `net`; `on_step` sees the tokens after every step.
pub fn sample<B: Backend>(
    net: &Dit<B>,
    diffusion: &Diffusion,
    settings: &SampleSettings,
    on_step: impl FnMut(&Step),
) -> Result<Sampled> {
    let device = net.devices()[0].clone();
    let network = |x: Tensor<B, 2, Int>, s: usize| {
        let batch = x.dims()[0];
        let times = Tensor::from_data(TensorData::new(vec![s as f32; batch], [batch]), &device);
        net.forward(x, times)
    };
    sample_with(network, diffusion, settings, &device, on_step)
}

/// [`sample`] with any function standing for the network: `network(x_s, s)` returns the
/// logits [B, L, K] of x_s at time s. Tests use it to count and time the calls.
pub fn sample_with<B: Backend>(
    mut network: impl FnMut(Tensor<B, 2, Int>, usize) -> Tensor<B, 3>,
    diffusion: &Diffusion,
    settings: &SampleSettings,
    device: &B::Device,
    mut on_step: impl FnMut(&Step),
) -> Result<Sampled> {
    // Only the absorbing process exists; its structure is what makes the fast sampler exact.
    let Diffusion::Absorbing(process) = diffusion;
    let grid = grid(process.timesteps(), settings.steps)?;
    let (batch, seq_len) = (settings.batch, settings.seq_len);
    if batch == 0 || seq_len == 0 {
        bail!("cannot sample {batch} sequences of {seq_len} tokens");
    }
    let mask = process.mask_id() as u32;
    let seed = settings.seed;
    let mut tokens = vec![mask; batch * seq_len];
    let mut x = token_tensor::<B>(&tokens, batch, seq_len, device);
    let mut revealed = Vec::with_capacity(grid.len() - 1);
    let mut network_calls = 0;

    // Fast sampler: the step at which each position is revealed, drawn up front. A position
    // with uniform u is masked at time s iff u ≥ ᾱ_s, so it is revealed in the step τ_i → τ_{i+1}
    // with ᾱ_{τ_i} ≤ u < ᾱ_{τ_{i+1}}: in each step a still-masked position unmasks with
    // probability (ᾱ_{τ_{i+1}} − ᾱ_{τ_i}) / (1 − ᾱ_{τ_i}), as in the posterior.
    let reveal_step: Vec<usize> = match settings.sampler {
        AncestralSampler::Exact => {
            let alpha_bar: Vec<f64> = grid
                .iter()
                .map(|&s| process.alpha_bars()[s] as f64)
                .collect();
            let mut rows = rng::rows(seed, Stream::Sample, &[REVEAL], 0..batch as u64);
            rows.iter_mut()
                .flat_map(|row| {
                    (0..seq_len)
                        .map(|_| {
                            let u: f64 = row.random();
                            // ᾱ_T = 0 ≤ u < 1 = ᾱ_0: the partition point is in 1..=steps.
                            alpha_bar.partition_point(|&a| a <= u) - 1
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        }
        AncestralSampler::ExactEveryStep | AncestralSampler::Reference => vec![],
    };
    let mut reveals_per_step = vec![0; grid.len() - 1];
    for &step in &reveal_step {
        reveals_per_step[step] += 1;
    }

    for (index, pair) in grid.windows(2).enumerate() {
        let (s, s_prev) = (pair[0], pair[1]);
        let count = match settings.sampler {
            AncestralSampler::Exact => {
                let count = reveals_per_step[index];
                if count > 0 {
                    let now: Vec<bool> = reveal_step.iter().map(|&step| step == index).collect();
                    let probs = process.x0_probs(network(x.clone(), s));
                    network_calls += 1;
                    let mut draws = rng::rng(seed, Stream::Sample, &[TOKENS, index as u64]);
                    let drawn = sample_categorical(probs, &mut draws);
                    let now = Tensor::<B, 2, Bool>::from_data(
                        TensorData::new(now, [batch, seq_len]),
                        device,
                    );
                    x = x.mask_where(now, drawn);
                    tokens = token_ids(x.clone());
                }
                count
            }
            AncestralSampler::ExactEveryStep | AncestralSampler::Reference => {
                let mode = if settings.sampler == AncestralSampler::Reference {
                    ReverseMode::Reference
                } else {
                    ReverseMode::Exact
                };
                let logits = network(x.clone(), s);
                network_calls += 1;
                let mut draws = rng::rng(seed, Stream::Sample, &[POSTERIOR, index as u64]);
                x = process.reverse_step_from_logits(
                    logits,
                    x,
                    &vec![s; batch],
                    &vec![s_prev; batch],
                    mode,
                    &mut draws,
                );
                let after = token_ids(x.clone());
                let count = tokens
                    .iter()
                    .zip(&after)
                    .filter(|&(&before, &after)| before == mask && after != mask)
                    .count();
                tokens = after;
                count
            }
        };
        revealed.push(count);
        on_step(&Step {
            index,
            s,
            s_prev,
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_run_from_t_to_zero() {
        assert_eq!(grid(5, 5).unwrap(), [5, 4, 3, 2, 1, 0]);
        assert_eq!(grid(1000, 4).unwrap(), [1000, 750, 500, 250, 0]);
        assert_eq!(grid(10, 3).unwrap(), [10, 6, 3, 0]);
        assert_eq!(grid(10, 1).unwrap(), [10, 0]);
        assert!(grid(10, 0).is_err());
        assert!(grid(10, 11).is_err());
    }
}
