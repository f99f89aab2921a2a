//! Discrete diffusion processes: the forward noising, the training loss, the reverse step,
//! the time samplers and the bits/token bookkeeping.
//!
//! The training loop, evaluation and sampling talk to [`Diffusion`] only. Two processes:
//! nanoDD's discrete-time absorbing D3PM ([`D3pmAbsorbing`]) and continuous-time masked
//! diffusion ([`Mdlm`]). Their times differ in kind (a step index, a point of (0, 1]), so
//! times travel as [`Times`], and each process names the ranges they are drawn from.

mod absorbing;
mod masked;
mod stats;
mod time_sampler;

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;

pub use absorbing::{
    D3pmAbsorbing, LossTrace, ReferencePosteriors, ReverseMode, sample_categorical,
};
pub use masked::Mdlm;
pub use stats::{Bound, LossStats, Moments};
pub use time_sampler::{TimeRange, Times, local_times, sample_times};

use crate::model::{Dit, StateDict};
use crate::spec::{self, MaskSchedule};

/// A diffusion process with its schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Diffusion {
    Absorbing(D3pmAbsorbing),
    Mdlm(Mdlm),
}

/// The per-token terms of the loss, [B, L] each.
#[derive(Debug, Clone)]
pub struct TokenTerms<B: Backend> {
    /// The term of the bound's diffusion part: D3PM's KL(q(x_t | x_{t+1}, x_0) ‖
    /// p(x_t | x_{t+1})), clamped at 0; MDLM's NELBO integrand w(t)·(−log p_θ(x_0 | x_t)).
    pub kl: Tensor<B, 2>,
    /// The cross-entropy of the network's p(x_0) (mask column removed) against x_0 (MDLM: 0
    /// at unmasked positions, which SUBS carries over).
    pub ce: Tensor<B, 2>,
}

/// The loss of one micro-batch.
#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend> {
    /// [1] the training loss, mean over all tokens: backpropagate this.
    pub loss: Tensor<B, 1>,
    /// The per-token terms behind it.
    pub terms: TokenTerms<B>,
    /// [4] on the device: sums of the loss, of KL over tokens away from the reconstruction
    /// time, of CE over all tokens and of CE over tokens at the reconstruction time. Read
    /// with [`LossOutput::stats`].
    sums: Tensor<B, 1>,
    bound: Bound,
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
            bound: self.bound,
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

/// The network's time input [B]: each sequence's time value, or the same constant 0 for
/// every sequence when the network is time-free (its prediction then depends on the tokens
/// alone, which is what lets a sampler reuse it until a token changes).
fn network_times<B: Backend>(
    values: impl ExactSizeIterator<Item = f32>,
    conditioned: bool,
    device: &B::Device,
) -> Tensor<B, 1> {
    let n = values.len();
    let values: Vec<f32> = if conditioned {
        values.collect()
    } else {
        vec![0.0; n]
    };
    Tensor::from_data(TensorData::new(values, [n]), device)
}

impl Diffusion {
    /// The process of an experiment for a vocabulary of `vocab_size` tokens (K = vocab + 1).
    pub fn new(process: &spec::Process, vocab_size: usize) -> Self {
        let num_classes = vocab_size + 1;
        match *process {
            spec::Process::D3pmAbsorbing {
                timesteps,
                lambda_ce,
                time_conditioning,
            } => Diffusion::Absorbing(
                D3pmAbsorbing::new(timesteps, lambda_ce, num_classes)
                    .with_time_conditioning(time_conditioning),
            ),
            spec::Process::Mdlm {
                schedule,
                eps,
                t_min,
                time_conditioning,
            } => Diffusion::Mdlm(Mdlm::new(
                schedule,
                eps,
                t_min,
                time_conditioning,
                num_classes,
            )),
        }
    }

    /// The experiment section that builds this process.
    pub fn to_spec(&self) -> spec::Process {
        match self {
            Diffusion::Absorbing(p) => spec::Process::D3pmAbsorbing {
                timesteps: p.timesteps(),
                lambda_ce: p.lambda_ce(),
                time_conditioning: p.time_conditioning(),
            },
            Diffusion::Mdlm(p) => spec::Process::Mdlm {
                schedule: p.schedule(),
                eps: p.eps(),
                t_min: p.t_min(),
                time_conditioning: p.time_conditioning(),
            },
        }
    }

    /// One line naming the process and its schedule, for reports.
    pub fn describe(&self) -> String {
        let time = |on: bool| if on { "time-conditioned" } else { "time-free" };
        match self {
            Diffusion::Absorbing(p) => format!(
                "D3PM absorbing, T = {}, {}",
                p.timesteps(),
                time(p.time_conditioning())
            ),
            Diffusion::Mdlm(p) => format!(
                "MDLM, {} schedule, eps = {}, t_min = {}, {}",
                match p.schedule() {
                    MaskSchedule::LogLinear => "log-linear",
                    MaskSchedule::Cosine => "cosine",
                },
                p.eps(),
                p.t_min(),
                time(p.time_conditioning())
            ),
        }
    }

    /// Number of classes K the network predicts.
    pub fn num_classes(&self) -> usize {
        match self {
            Diffusion::Absorbing(p) => p.num_classes(),
            Diffusion::Mdlm(p) => p.num_classes(),
        }
    }

    /// The mask token, K − 1.
    pub fn mask_id(&self) -> usize {
        self.num_classes() - 1
    }

    /// Whether the network sees the diffusion time (otherwise it sees a constant).
    pub fn time_conditioning(&self) -> bool {
        match self {
            Diffusion::Absorbing(p) => p.time_conditioning(),
            Diffusion::Mdlm(p) => p.time_conditioning(),
        }
    }

    /// How per-token means make the bound (logged l_T, bits/token, evaluation).
    pub fn bound(&self) -> Bound {
        match self {
            Diffusion::Absorbing(p) => Bound::steps(p.timesteps()),
            Diffusion::Mdlm(p) => Bound::continuous(p.t_min()),
        }
    }

    /// Where training (and validation) draw their times: D3PM's transition indices
    /// {0, …, T−1}, MDLM's [t_min, 1).
    pub fn training_range(&self) -> TimeRange {
        match self {
            Diffusion::Absorbing(p) => TimeRange::Steps {
                start: 0,
                end: p.timesteps(),
            },
            Diffusion::Mdlm(p) => TimeRange::Interval {
                start: p.t_min(),
                end: 1.0,
            },
        }
    }

    /// Where evaluation draws the times of the bound's diffusion (KL) term: D3PM's
    /// {1, …, T−1}, MDLM's [t_min, 1).
    pub fn kl_range(&self) -> TimeRange {
        match self {
            Diffusion::Absorbing(p) => TimeRange::Steps {
                start: 1,
                end: p.timesteps(),
            },
            Diffusion::Mdlm(_) => self.training_range(),
        }
    }

    /// The time of the reconstruction term for `n` sequences: D3PM's t = 0, MDLM's t_min.
    pub fn recon_times(&self, n: usize) -> Times {
        match self {
            Diffusion::Absorbing(_) => Times::Steps(vec![0; n]),
            Diffusion::Mdlm(p) => Times::Continuous(vec![p.t_min(); n]),
        }
    }

    /// The training loss of clean tokens `x0` [B, L] at times `t` (one per sequence), with
    /// the forward noise of sequence i drawn from `noise[i]` (the training loop uses the
    /// stream `(seed, Noise, [iteration, micro, global row])`).
    pub fn loss<B: Backend, R: Rng>(
        &self,
        net: &Dit<B>,
        x0: Tensor<B, 2, Int>,
        t: &Times,
        noise: &mut [R],
    ) -> LossOutput<B> {
        let x_t = self.noise(x0.clone(), t, noise);
        self.loss_at(net, x0, x_t, t)
    }

    /// The training loss for given noised tokens `x_t` (D3PM: x_{t+1}).
    pub fn loss_at<B: Backend>(
        &self,
        net: &Dit<B>,
        x0: Tensor<B, 2, Int>,
        x_t: Tensor<B, 2, Int>,
        t: &Times,
    ) -> LossOutput<B> {
        match (self, t) {
            (Diffusion::Absorbing(p), Times::Steps(t)) => {
                p.loss_from_terms(p.token_terms(net, x0, x_t, t), t)
            }
            (Diffusion::Mdlm(p), Times::Continuous(t)) => {
                p.loss_from_terms(p.token_terms(net, x0, x_t, t))
            }
            _ => foreign_times(self),
        }
    }

    /// Draws x_t ~ q(x_t | x_0) (D3PM: x_{t+1}), sequence i from `rows[i]`.
    pub fn noise<B: Backend, R: Rng>(
        &self,
        x0: Tensor<B, 2, Int>,
        t: &Times,
        rows: &mut [R],
    ) -> Tensor<B, 2, Int> {
        match (self, t) {
            (Diffusion::Absorbing(p), Times::Steps(t)) => p.noise(x0, t, rows),
            (Diffusion::Mdlm(p), Times::Continuous(t)) => p.noise(x0, t, rows),
            _ => foreign_times(self),
        }
    }

    /// Per-token KL and CE at times `t` with fresh noise, for evaluation (see [`Moments`]).
    pub fn token_terms<B: Backend, R: Rng>(
        &self,
        net: &Dit<B>,
        x0: Tensor<B, 2, Int>,
        t: &Times,
        noise: &mut [R],
    ) -> TokenTerms<B> {
        let x_t = self.noise(x0.clone(), t, noise);
        match (self, t) {
            (Diffusion::Absorbing(p), Times::Steps(t)) => p.token_terms(net, x0, x_t, t),
            (Diffusion::Mdlm(p), Times::Continuous(t)) => p.token_terms(net, x0, x_t, t),
            _ => foreign_times(self),
        }
    }

    /// Reverse steps when sampling asks for none: T for D3PM (exact ancestral sampling), 1000
    /// for MDLM.
    pub fn default_sampling_steps(&self) -> usize {
        match self {
            Diffusion::Absorbing(p) => p.timesteps(),
            Diffusion::Mdlm(_) => masked::DEFAULT_SAMPLING_STEPS,
        }
    }

    /// The times of a reverse pass with `steps` steps, from the start (all-mask) down to 0,
    /// evenly spaced: D3PM's τ_i = ⌊T(steps − i)/steps⌋ (at most T steps, so `steps` = T visits
    /// every time), MDLM's t_i = (steps − i)/steps.
    pub fn sampling_grid(&self, steps: usize) -> Result<Vec<f64>> {
        match self {
            Diffusion::Absorbing(p) => {
                let timesteps = p.timesteps();
                if steps == 0 || steps > timesteps {
                    bail!("--steps must be between 1 and the model's T = {timesteps}; got {steps}");
                }
                Ok((0..=steps)
                    .map(|i| (timesteps * (steps - i) / steps) as f64)
                    .collect())
            }
            Diffusion::Mdlm(_) => {
                if steps == 0 {
                    bail!("--steps must be at least 1");
                }
                Ok((0..=steps)
                    .map(|i| (steps - i) as f64 / steps as f64)
                    .collect())
            }
        }
    }

    /// The probability that a token is still itself at a time of the sampling grid (ᾱ_s, α_t).
    pub fn keep_probability(&self, t: f64) -> f64 {
        match self {
            Diffusion::Absorbing(p) => p.alpha_bars()[t as usize] as f64,
            Diffusion::Mdlm(p) => p.alpha(t),
        }
    }

    /// What the network is fed at a time of the sampling grid: D3PM's step s, MDLM's σ_t, or
    /// 0 when time-free.
    pub fn network_time(&self, t: f64) -> f32 {
        if !self.time_conditioning() {
            return 0.0;
        }
        match self {
            Diffusion::Absorbing(_) => t as f32,
            Diffusion::Mdlm(p) => p.sigma(t) as f32,
        }
    }

    /// p(x_0) [B, L, K] from the network's output: the softmax with the mask column removed.
    pub fn x0_probs<B: Backend>(&self, logits: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Diffusion::Absorbing(p) => p.x0_probs(logits),
            Diffusion::Mdlm(p) => p.x0_probs(logits),
        }
    }

    /// Whether this process has a reverse step of this kind: every process has the exact
    /// one; nanoDD's reference sampler exists for D3PM only.
    pub fn supports(&self, mode: ReverseMode) -> bool {
        matches!(
            (self, mode),
            (Diffusion::Absorbing(_), _) | (_, ReverseMode::Exact)
        )
    }

    /// One reverse step of the whole batch from grid time `t` to `s` < t, from the network's
    /// output `logits` [B, L, K] for `x_t`, with uniforms from `rng`.
    pub fn reverse_step_from_logits<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        x_t: Tensor<B, 2, Int>,
        t: f64,
        s: f64,
        mode: ReverseMode,
        rng: &mut impl Rng,
    ) -> Tensor<B, 2, Int> {
        assert!(self.supports(mode), "{mode:?} steps of {}", self.describe());
        match self {
            Diffusion::Absorbing(p) => {
                let batch = x_t.dims()[0];
                let (t, s) = (vec![t as usize; batch], vec![s as usize; batch]);
                p.reverse_step_from_logits(logits, x_t, &t, &s, mode, rng)
            }
            Diffusion::Mdlm(p) => p.reverse_step_from_logits(logits, x_t, t, s, rng),
        }
    }

    /// The schedule's buffers stored with the network's weights: D3PM's under nanoDD's names
    /// (`betas`, `alpha_bars`); none for MDLM, whose schedule is a formula.
    pub fn buffers(&self) -> StateDict {
        match self {
            Diffusion::Absorbing(p) => p.buffers(),
            Diffusion::Mdlm(_) => StateDict::default(),
        }
    }
}

/// Times of one process given to another: a bug in the caller, not bad input.
fn foreign_times(diffusion: &Diffusion) -> ! {
    panic!("times of another kind given to {}", diffusion.describe())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d3pm(timesteps: usize) -> Diffusion {
        let process = spec::Process::D3pmAbsorbing {
            timesteps,
            lambda_ce: 0.05,
            time_conditioning: true,
        };
        Diffusion::new(&process, 27)
    }

    #[test]
    fn d3pm_grids_run_from_t_to_zero() {
        let grid = |t, steps| d3pm(t).sampling_grid(steps);
        assert_eq!(grid(5, 5).unwrap(), [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]);
        assert_eq!(grid(1000, 4).unwrap(), [1000.0, 750.0, 500.0, 250.0, 0.0]);
        assert_eq!(grid(10, 3).unwrap(), [10.0, 6.0, 3.0, 0.0]);
        assert_eq!(grid(10, 1).unwrap(), [10.0, 0.0]);
        assert!(grid(10, 0).is_err());
        assert!(grid(10, 11).is_err());
    }

    #[test]
    fn mdlm_grids_run_from_one_to_zero_and_time_free_networks_see_a_constant() {
        let process = |time_conditioning| spec::Process::Mdlm {
            schedule: MaskSchedule::LogLinear,
            eps: 1e-3,
            t_min: 1e-3,
            time_conditioning,
        };
        let mdlm = Diffusion::new(&process(true), 27);
        assert_eq!(mdlm.sampling_grid(4).unwrap(), [1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(mdlm.sampling_grid(5000).unwrap().len(), 5001);
        assert!(mdlm.sampling_grid(0).is_err());
        assert_eq!(mdlm.default_sampling_steps(), 1000);
        assert!((mdlm.keep_probability(1.0) - 1e-3).abs() < 1e-12);
        assert_eq!(mdlm.keep_probability(0.0), 1.0);
        // σ_t = −ln α_t: −ln(1 − 0.999 · 0.5).
        let sigma = -(1.0f64 - 0.999 * 0.5).ln() as f32;
        assert!((mdlm.network_time(0.5) - sigma).abs() < 1e-6);
        let free = Diffusion::new(&process(false), 27);
        assert_eq!(free.network_time(0.5), 0.0);
        assert_eq!(free.network_time(1.0), 0.0);
        assert_eq!(d3pm(1000).network_time(17.0), 17.0);
        assert!(!free.supports(ReverseMode::Reference));
        assert!(d3pm(10).supports(ReverseMode::Reference));
        // The spec round-trips.
        assert_eq!(free.to_spec(), process(false));
        assert_eq!(Diffusion::new(&free.to_spec(), 27), free);
    }
}
