//! Discrete diffusion processes: the forward noising, the training loss, the reverse step,
//! the time samplers and the bits/token bookkeeping.
//!
//! The training loop, evaluation and sampling talk to [`Diffusion`] only, so a second process
//! (MDLM, uniform D3PM, ...) is a new variant here and nothing changes there.

mod absorbing;
mod stats;
mod time_sampler;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use rand::Rng;

pub use absorbing::{
    D3pmAbsorbing, LossTrace, ReferencePosteriors, ReverseMode, TokenTerms, sample_categorical,
};
pub use stats::{LossStats, Moments};
pub use time_sampler::{local_times, sample_times};

use crate::model::{Dit, StateDict};
use crate::spec;

/// A diffusion process with its schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Diffusion {
    Absorbing(D3pmAbsorbing),
}

/// The loss of one micro-batch.
#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend> {
    /// [1] the training loss, mean over all tokens: backpropagate this.
    pub loss: Tensor<B, 1>,
    /// The per-token terms behind it.
    pub terms: TokenTerms<B>,
    /// [4] on the device: sums of the loss, of KL over tokens with t > 0, of CE over all
    /// tokens and of CE over tokens with t = 0. Read with [`LossOutput::stats`].
    sums: Tensor<B, 1>,
    timesteps: usize,
    tokens: usize,
    kl_tokens: usize,
    recon_tokens: usize,
}

impl<B: Backend> LossOutput<B> {
    /// The logged quantities as host numbers. This waits for the device (one transfer), so a
    /// training loop calls it only when it logs.
    pub fn stats(&self) -> LossStats {
        let sums = self
            .sums
            .clone()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .expect("f64 sums");
        LossStats {
            timesteps: self.timesteps,
            tokens: self.tokens,
            loss_sum: sums[0],
            kl_tokens: self.kl_tokens,
            kl_sum: sums[1],
            ce_sum: sums[2],
            recon_tokens: self.recon_tokens,
            recon_sum: sums[3],
        }
    }
}

impl Diffusion {
    /// The process of an experiment for a vocabulary of `vocab_size` tokens (K = vocab + 1).
    pub fn new(process: &spec::Process, vocab_size: usize) -> Self {
        match process {
            spec::Process::D3pmAbsorbing {
                timesteps,
                lambda_ce,
            } => Diffusion::Absorbing(D3pmAbsorbing::new(*timesteps, *lambda_ce, vocab_size + 1)),
        }
    }

    /// The experiment section that builds this process.
    pub fn to_spec(&self) -> spec::Process {
        match self {
            Diffusion::Absorbing(p) => spec::Process::D3pmAbsorbing {
                timesteps: p.timesteps(),
                lambda_ce: p.lambda_ce(),
            },
        }
    }

    /// Number of diffusion steps T; training draws transition indices t ∈ {0, …, T−1}.
    pub fn timesteps(&self) -> usize {
        match self {
            Diffusion::Absorbing(p) => p.timesteps(),
        }
    }

    /// Number of classes K the network predicts.
    pub fn num_classes(&self) -> usize {
        match self {
            Diffusion::Absorbing(p) => p.num_classes(),
        }
    }

    /// The training loss of clean tokens `x0` [B, L] at transition indices `t` (one per
    /// sequence), with the forward noise of sequence i drawn from `noise[i]` (the training
    /// loop uses the stream `(seed, Noise, [iteration, micro, global row])`).
    pub fn loss<B: Backend, R: Rng>(
        &self,
        net: &Dit<B>,
        x0: Tensor<B, 2, Int>,
        t: &[usize],
        noise: &mut [R],
    ) -> LossOutput<B> {
        let x_next = self.noise(x0.clone(), t, noise);
        self.loss_at(net, x0, x_next, t)
    }

    /// The training loss for given noised tokens `x_next` = x_{t+1}.
    pub fn loss_at<B: Backend>(
        &self,
        net: &Dit<B>,
        x0: Tensor<B, 2, Int>,
        x_next: Tensor<B, 2, Int>,
        t: &[usize],
    ) -> LossOutput<B> {
        match self {
            Diffusion::Absorbing(p) => p.loss_from_terms(p.token_terms(net, x0, x_next, t), t),
        }
    }

    /// Draws x_{t+1} ~ q(x_{t+1} | x_0), sequence i from `rows[i]`.
    pub fn noise<B: Backend, R: Rng>(
        &self,
        x0: Tensor<B, 2, Int>,
        t: &[usize],
        rows: &mut [R],
    ) -> Tensor<B, 2, Int> {
        match self {
            Diffusion::Absorbing(p) => p.noise(x0, t, rows),
        }
    }

    /// Per-token KL and CE at transition indices `t` with fresh noise, for evaluation: the
    /// KL term uses t ∈ {1, …, T−1}, the reconstruction term t = 0 (see [`Moments`]).
    pub fn token_terms<B: Backend, R: Rng>(
        &self,
        net: &Dit<B>,
        x0: Tensor<B, 2, Int>,
        t: &[usize],
        noise: &mut [R],
    ) -> TokenTerms<B> {
        match self {
            Diffusion::Absorbing(p) => {
                let x_next = p.noise(x0.clone(), t, noise);
                p.token_terms(net, x0, x_next, t)
            }
        }
    }

    /// One reverse step x_s → x_{s'} per sequence (s' = s − 1 for exact ancestral sampling).
    pub fn reverse_step<B: Backend>(
        &self,
        net: &Dit<B>,
        x_s: Tensor<B, 2, Int>,
        s: &[usize],
        s_prev: &[usize],
        mode: ReverseMode,
        rng: &mut impl Rng,
    ) -> Tensor<B, 2, Int> {
        match self {
            Diffusion::Absorbing(p) => p.reverse_step(net, x_s, s, s_prev, mode, rng),
        }
    }

    /// The schedule's buffers under nanoDD's names (`betas`, `alpha_bars`).
    pub fn buffers(&self) -> StateDict {
        match self {
            Diffusion::Absorbing(p) => p.buffers(),
        }
    }
}
