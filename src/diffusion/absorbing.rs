//! D3PM with an absorbing (mask) state, as nanoDD's `D3PMAbsorbing`.
//!
//! Time convention (the reference's): a training step draws a transition index
//! t ∈ {0, …, T−1}, noises x_0 to x_{t+1}, runs the network at time t + 1 and compares the
//! posteriors q(x_t | x_{t+1}, x_0) and p(x_t | x_{t+1}). Sampling goes from x_s to x_{s'}
//! with s' < s (s' = s − 1 for exact ancestral sampling); the training posterior is the case
//! s = t + 1, s' = t.
//!
//! # The loss in closed form
//!
//! The reference builds both posteriors as [B, L, K] vectors (K classes, mask m = K − 1) and
//! takes their KL. For this process the KL reduces to a multiple of the cross-entropy
//! CE = −log p_θ(x_0), where p_θ is the softmax of the network output without the mask
//! column, so training and evaluation ([`D3pmAbsorbing::token_terms`]) need only the logits'
//! log-normaliser and one gathered logit per token.
//!
//! Write β = β_{t+1} and ᾱ = ᾱ_t, so that ᾱ_{t+1} = (1 − β)·ᾱ. Unnormalised,
//! q(x_t = k | x_{t+1}, x_0) = q(x_{t+1} | x_t = k) · q(x_t = k | x_0): one forward step keeps
//! a token with 1 − β and masks it with β (the mask stays the mask), and after t steps x_0 is
//! still there with ᾱ and masked otherwise. p(x_t | x_{t+1}) is the same product with
//! p_θ(x_0) in place of the one-hot of x_0 (p_θ(m) = 0). Per position of x_{t+1}:
//!
//! * x_{t+1} = x_0 (not masked yet): only k = x_0 can step to x_{t+1}, and both q and p put
//!   all their mass there. KL = 0.
//! * x_{t+1} = m: k = m has weight 1·(1 − ᾱ) in both; k ≠ m has β·ᾱ·[k = x_0] in q and
//!   β·ᾱ·p_θ(k) in p. Both sum to β·ᾱ + 1 − ᾱ = 1 − ᾱ_{t+1}, so with
//!   w = β·ᾱ / (1 − ᾱ_{t+1}) = (ᾱ_t − ᾱ_{t+1}) / (1 − ᾱ_{t+1}), the probability that a masked
//!   token is unmasked at this step, q = w·δ(x_0) + (1 − w)·δ(m) and
//!   p = w·p_θ + (1 − w)·δ(m). Only k = x_0 and k = m carry q's mass, and q(m) = p(m), so
//!   KL = w·log(w / (w·p_θ(x_0))) = w·CE. This schedule (ᾱ_t = (T − t)/T) gives
//!   w = 1/(t + 1).
//! * t = 0: the posterior is x_0 itself and p is p_θ, so KL = CE at every position.
//!
//! So KL = c·CE per token with c = 1 at t = 0, and for t > 0 c = w where x_{t+1} is masked
//! and 0 where it is not. c depends only on t and x_{t+1}, so the gradient flows through CE
//! alone. This holds for every x_{t+1} that q(x_{t+1} | x_0) can draw (each token x_0 or the
//! mask); for other inputs the reference's posterior is made of its ε terms alone.
//!
//! The reference adds ε = 1e-20 inside every log, which the derivation leaves out. While
//! p_θ(x_0) ≫ ε/ᾱ_t that changes the KL by about ε/(ᾱ_t·p_θ(x_0)) nats or less, far below
//! f32 resolution. The two differ only where p_θ(x_0) ≲ ε/ᾱ_t (1e-20 to 1e-17 for T = 1000,
//! as ᾱ_t ≥ 1/T), a token whose CE is already 39 to 46 nats. There the reference's KL at a
//! masked token is −w·log(p_θ(x_0) + ε/ᾱ_t) (−log(p_θ(x_0) + ε) at t = 0, which the loss
//! does not use), flat at w·log(ᾱ_t/ε) ≤ 46·w nats and without gradient; at an unmasked
//! token ε gives p mass off x_0, and the KL rises from 0 towards log((2 − β)/(1 − β)) ≈ log 2.
//! The closed form does not reproduce this: it is the exact KL, −w·log p_θ(x_0), finite for
//! finite logits, with gradient w·(p_θ − δ(x_0)) however small p_θ(x_0) is, and 0 at
//! unmasked tokens. The cap belongs to the numerical guard, not to the model:
//! capped, the KL would stop teaching exactly the tokens predicted worst and evaluation would
//! understate the bits/token bound, and the reference's own CE at such a token is not capped.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::Rng;

use super::{Bound, TokenTerms, network_times};
use crate::model::{Dit, StateDict};

/// Added inside every log of the posterior, as the reference (log(0 + 1e-20) ≈ −46).
const EPS: f32 = 1e-20;

/// How p(x_0) enters the reverse process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReverseMode {
    /// The model of the loss: the mask column of the network output is removed before the
    /// softmax, and positions already unmasked keep their token (also at s = 1).
    #[default]
    Exact,
    /// nanoDD's sampler: p(x_0) is the softmax of the raw output (mask column included),
    /// and every position follows the posterior; at s = 1 every position is redrawn.
    Reference,
}

/// The absorbing process: its schedule and the functions of the loss and of sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct D3pmAbsorbing {
    timesteps: usize,
    lambda_ce: f64,
    num_classes: usize,
    /// Whether the network sees the step s (the reference) or a constant.
    time_conditioning: bool,
    /// betas[s] = 1 / (T − s + 1) for s = 1..T, betas[0] = 0 (1-indexed as the reference).
    betas: Vec<f32>,
    /// alpha_bars[s] = Π_{r ≤ s} (1 − betas[r]); alpha_bars[T] = 0 exactly.
    alpha_bars: Vec<f32>,
}

/// The per-sequence coefficients of one posterior q(x_{s'} | x_s, x_0), as [B, 1, 1] tensors.
struct Posterior<B: Backend> {
    /// Probability that a token is masked between s' and s (β_s when s' = s − 1).
    beta: Tensor<B, 3>,
    /// 1 − beta, computed in f32 as the reference does.
    keep: Tensor<B, 3>,
    /// ᾱ_{s'} and 1 − ᾱ_{s'}.
    alpha_bar: Tensor<B, 3>,
    one_minus_alpha_bar: Tensor<B, 3>,
    /// Sequences with s' = 0, whose posterior is x_0 itself.
    reaches_x0: Tensor<B, 3, Bool>,
}

/// The network's intermediate values in one loss evaluation (for parity tests and inspection).
#[derive(Debug, Clone, Default)]
pub struct LossTrace<B: Backend> {
    /// [B, L, K] network output before the mask column is removed.
    pub logits: Option<Tensor<B, 3>>,
    pub net: crate::model::DitTrace<B>,
}

/// The training posteriors as the reference builds them, [B, L, K] each: the specification
/// that tests hold the closed-form loss to. Training and evaluation never build them.
#[derive(Debug, Clone)]
pub struct ReferencePosteriors<B: Backend> {
    /// Unnormalised log q(x_t | x_{t+1}, x_0).
    pub log_q: Tensor<B, 3>,
    /// Unnormalised log p(x_t | x_{t+1}).
    pub log_p: Tensor<B, 3>,
}

impl<B: Backend> ReferencePosteriors<B> {
    /// [B, L] KL(q ‖ p) of the normalised posteriors, clamped at 0, as the reference computes
    /// it (its value at t = 0 is the KL of x_0's one-hot from p_θ, the cross-entropy).
    pub fn kl(&self) -> Tensor<B, 2> {
        let (log_q, log_p) = (self.log_q.clone(), self.log_p.clone());
        (softmax(log_q.clone(), 2) * (log_softmax(log_q, 2) - log_softmax(log_p, 2)))
            .sum_dim(2)
            .squeeze_dim::<2>(2)
            .clamp_min(0.0)
    }
}

impl D3pmAbsorbing {
    /// The process with T = `timesteps` over K = `num_classes` classes (mask = K − 1).
    pub fn new(timesteps: usize, lambda_ce: f64, num_classes: usize) -> Self {
        assert!(timesteps >= 2, "a diffusion needs at least 2 steps");
        // The reference's arithmetic, so the tables agree bit for bit: f32 betas, and a
        // cumulative product of the f32 factors accumulated in f64 (torch's cumprod on CPU).
        let mut betas = vec![0.0f32; timesteps + 1];
        for (s, beta) in betas.iter_mut().enumerate().skip(1) {
            *beta = 1.0 / (timesteps - s + 1) as f32;
        }
        let mut alpha_bars = Vec::with_capacity(timesteps + 1);
        let mut product = 1.0f64;
        for beta in &betas {
            product *= (1.0 - beta) as f64;
            alpha_bars.push(product as f32);
        }
        alpha_bars[timesteps] = 0.0;
        D3pmAbsorbing {
            timesteps,
            lambda_ce,
            num_classes,
            time_conditioning: true,
            betas,
            alpha_bars,
        }
    }

    /// The same process with a time-conditioned (`true`, the reference) or time-free network.
    pub fn with_time_conditioning(self, time_conditioning: bool) -> Self {
        D3pmAbsorbing {
            time_conditioning,
            ..self
        }
    }

    pub fn time_conditioning(&self) -> bool {
        self.time_conditioning
    }

    pub fn timesteps(&self) -> usize {
        self.timesteps
    }

    pub fn lambda_ce(&self) -> f64 {
        self.lambda_ce
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn mask_id(&self) -> usize {
        self.num_classes - 1
    }

    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    pub fn alpha_bars(&self) -> &[f32] {
        &self.alpha_bars
    }

    /// The schedule as nanoDD's buffers (`betas`, `alpha_bars`), for weight files that
    /// nanoDD can load.
    pub fn buffers(&self) -> StateDict {
        let n = self.timesteps + 1;
        let mut out = StateDict::default();
        out.insert("betas", TensorData::new(self.betas.clone(), [n]));
        out.insert("alpha_bars", TensorData::new(self.alpha_bars.clone(), [n]));
        out
    }

    /// Draws x_{t+1} ~ q(x_{t+1} | x_0) for transition indices `t` (one per sequence): each
    /// token is kept with probability ᾱ_{t+1} and masked otherwise. Sequence i draws its
    /// uniforms on the host from `rows[i]`, so every backend masks the same tokens, and a
    /// sequence's noise does not depend on which batch or device it lands in.
    pub fn noise<B: Backend, R: Rng>(
        &self,
        x0: Tensor<B, 2, Int>,
        t: &[usize],
        rows: &mut [R],
    ) -> Tensor<B, 2, Int> {
        let [batch, seq_len] = x0.dims();
        assert_eq!(t.len(), batch, "one time per sequence");
        assert_eq!(rows.len(), batch, "one noise generator per sequence");
        let device = x0.device();
        let mut uniforms: Vec<f32> = Vec::with_capacity(batch * seq_len);
        for row in rows.iter_mut() {
            uniforms.extend((0..seq_len).map(|_| row.random::<f32>()));
        }
        let uniforms =
            Tensor::<B, 2>::from_data(TensorData::new(uniforms, [batch, seq_len]), &device);
        let keep_prob: Vec<f32> = t.iter().map(|&t| self.alpha_bars[t + 1]).collect();
        let keep_prob = Tensor::<B, 2>::from_data(TensorData::new(keep_prob, [batch, 1]), &device);
        let masked = uniforms.greater_equal(keep_prob.expand([batch, seq_len]));
        x0.mask_fill(masked, self.mask_id() as i64)
    }

    /// The per-token KL and CE of the loss at transition indices `t` for noised tokens
    /// `x_next` = x_{t+1} drawn from q(x_{t+1} | x_0), in closed form (see the module doc).
    pub fn token_terms<B: Backend>(
        &self,
        net: &Dit<B>,
        x0: Tensor<B, 2, Int>,
        x_next: Tensor<B, 2, Int>,
        t: &[usize],
    ) -> TokenTerms<B> {
        self.token_terms_traced(net, x0, x_next, t, None)
    }

    /// [`token_terms`](Self::token_terms) that also records the logits and the network's
    /// intermediates.
    pub fn token_terms_traced<B: Backend>(
        &self,
        net: &Dit<B>,
        x0: Tensor<B, 2, Int>,
        x_next: Tensor<B, 2, Int>,
        t: &[usize],
        mut trace: Option<&mut LossTrace<B>>,
    ) -> TokenTerms<B> {
        let s: Vec<usize> = t.iter().map(|&t| t + 1).collect();
        let logits = net.forward_traced(
            x_next.clone(),
            self.times(&s, &x_next.device()),
            trace.as_deref_mut().map(|trace| &mut trace.net),
        );
        if let Some(trace) = trace {
            trace.logits = Some(logits.clone());
        }
        self.token_terms_from_logits(logits, x0, x_next, t)
    }

    /// [`token_terms`](Self::token_terms) from the network's output `logits` [B, L, K] for
    /// `x_next` at times t + 1: KL = c·CE with c from [`kl_weights`](Self::kl_weights).
    fn token_terms_from_logits<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        x0: Tensor<B, 2, Int>,
        x_next: Tensor<B, 2, Int>,
        t: &[usize],
    ) -> TokenTerms<B> {
        let ce = self.cross_entropy(logits, x0);
        let kl = ce.clone() * self.kl_weights(x_next, t);
        TokenTerms { kl, ce }
    }

    /// −log p_θ(x_0) [B, L], p_θ the softmax of `logits` [B, L, K] without the mask column:
    /// the log-normaliser of the non-mask logits minus the logit of x_0. Never negative, in
    /// f32 too: the largest logit's own term makes the sum at least 1, so the log-normaliser
    /// is at least every logit (the reference clamps its KL at 0; this needs no clamp).
    fn cross_entropy<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        x0: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let target = logits.clone().gather(2, x0.unsqueeze_dim(2));
        let logits = self.remove_mask_column(logits);
        // Shifted by the row's largest logit, a constant, so that exp stays in range. On a
        // backend that writes into a buffer with a single handle (flex does), the mask and the
        // shift reuse the logits' buffer, and the graph keeps one [B, L, K] tensor for
        // backward: exp's input.
        let max = logits.clone().detach().max_dim(2);
        let log_norm = (logits - max.clone()).exp().sum_dim(2).log() + max;
        (log_norm - target).squeeze_dim::<2>(2)
    }

    /// [B, L] the factor c of KL = c·CE: 1 at t = 0 (the posterior is x_0 itself); for t > 0
    /// the unmasking probability of step t + 1 → t where x_{t+1} is the mask, else 0.
    fn kl_weights<B: Backend>(&self, x_next: Tensor<B, 2, Int>, t: &[usize]) -> Tensor<B, 2> {
        let [batch, seq_len] = x_next.dims();
        let device = x_next.device();
        let column = |values: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(values, [batch, 1]), &device)
                .expand([batch, seq_len])
        };
        let masked = t
            .iter()
            .map(|&t| self.unmask_probability(t + 1, t) as f32)
            .collect();
        let unmasked = t.iter().map(|&t| if t == 0 { 1.0 } else { 0.0 }).collect();
        let is_mask = x_next.equal_elem(self.mask_id() as i64);
        column(unmasked).mask_where(is_mask, column(masked))
    }

    /// q(x_t | x_{t+1}, x_0) and p(x_t | x_{t+1}) built term by term as the reference does,
    /// from the network's output `logits` [B, L, K] for `x_next` at times t + 1. For tests:
    /// training and evaluation use [`token_terms`](Self::token_terms).
    pub fn reference_posteriors<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        x0: Tensor<B, 2, Int>,
        x_next: Tensor<B, 2, Int>,
        t: &[usize],
    ) -> ReferencePosteriors<B> {
        let s: Vec<usize> = t.iter().map(|&t| t + 1).collect();
        let posterior = self.posterior::<B>(&s, t, &x0.device());
        ReferencePosteriors {
            log_q: self.log_posterior(self.one_hot(x0), x_next.clone(), &posterior),
            log_p: self.log_posterior(self.x0_probs(logits), x_next, &posterior),
        }
    }

    /// The training loss and its bookkeeping for transition indices `t` and noised tokens
    /// `x_next`: per token KL + λ·CE (CE alone where t = 0), averaged over all tokens.
    pub fn loss_from_terms<B: Backend>(
        &self,
        terms: TokenTerms<B>,
        t: &[usize],
    ) -> super::LossOutput<B> {
        let [batch, seq_len] = terms.kl.dims();
        let device = terms.kl.device();
        let at_data: Vec<f32> = t.iter().map(|&t| if t == 0 { 1.0 } else { 0.0 }).collect();
        let at_data = Tensor::<B, 2>::from_data(TensorData::new(at_data, [batch, 1]), &device);
        let hybrid = terms.kl.clone() + terms.ce.clone() * self.lambda_ce;
        // where(t == 0, ce, kl + λ·ce), written as a blend so it broadcasts over the row.
        let per_token = hybrid.clone() + (terms.ce.clone() - hybrid) * at_data.clone();
        let loss = per_token.clone().mean();

        let rows_with_kl = at_data.clone().neg() + 1.0;
        let kl_sum = (terms.kl.clone().detach() * rows_with_kl).sum();
        let ce_sum = terms.ce.clone().detach().sum();
        let recon_sum = (terms.ce.clone().detach() * at_data).sum();
        let sums = Tensor::cat(vec![per_token.detach().sum(), kl_sum, ce_sum, recon_sum], 0);
        let recon_rows = t.iter().filter(|&&t| t == 0).count();
        super::LossOutput {
            bound: Bound::steps(self.timesteps),
            loss,
            terms,
            sums,
            tokens: batch * seq_len,
            kl_tokens: (batch - recon_rows) * seq_len,
            recon_tokens: recon_rows * seq_len,
        }
    }

    /// Unnormalised log p(x_{s'} | x_s) for each sequence's step s → s' (s' < s), with p(x_0)
    /// predicted by the network at time s. `s_prev[i] = s[i] − 1` is exact ancestral
    /// sampling; larger jumps sample on a coarser grid (the absorbing posterior has the same
    /// closed form with ᾱ at the two grid times).
    pub fn reverse_log_probs<B: Backend>(
        &self,
        net: &Dit<B>,
        x_s: Tensor<B, 2, Int>,
        s: &[usize],
        s_prev: &[usize],
        mode: ReverseMode,
    ) -> Tensor<B, 3> {
        let logits = net.forward(x_s.clone(), self.times(s, &x_s.device()));
        self.reverse_log_probs_from_logits(logits, x_s, s, s_prev, mode)
    }

    /// [`reverse_log_probs`](Self::reverse_log_probs) from the network's output `logits`
    /// [B, L, K] for `x_s` at times `s`.
    pub fn reverse_log_probs_from_logits<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        x_s: Tensor<B, 2, Int>,
        s: &[usize],
        s_prev: &[usize],
        mode: ReverseMode,
    ) -> Tensor<B, 3> {
        let logits = match mode {
            ReverseMode::Exact => self.remove_mask_column(logits),
            ReverseMode::Reference => logits,
        };
        let posterior = self.posterior::<B>(s, s_prev, &x_s.device());
        self.log_posterior(softmax(logits, 2), x_s, &posterior)
    }

    /// One reverse step x_s → x_{s'}, drawing from [`reverse_log_probs`](Self::reverse_log_probs)
    /// with uniforms from `rng`. In [`ReverseMode::Exact`] unmasked tokens are kept.
    pub fn reverse_step<B: Backend>(
        &self,
        net: &Dit<B>,
        x_s: Tensor<B, 2, Int>,
        s: &[usize],
        s_prev: &[usize],
        mode: ReverseMode,
        rng: &mut impl Rng,
    ) -> Tensor<B, 2, Int> {
        let logits = net.forward(x_s.clone(), self.times(s, &x_s.device()));
        self.reverse_step_from_logits(logits, x_s, s, s_prev, mode, rng)
    }

    /// [`reverse_step`](Self::reverse_step) from the network's output `logits` [B, L, K] for
    /// `x_s` at times `s`.
    pub fn reverse_step_from_logits<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        x_s: Tensor<B, 2, Int>,
        s: &[usize],
        s_prev: &[usize],
        mode: ReverseMode,
        rng: &mut impl Rng,
    ) -> Tensor<B, 2, Int> {
        let log_probs = self.reverse_log_probs_from_logits(logits, x_s.clone(), s, s_prev, mode);
        let drawn = sample_categorical(softmax(log_probs, 2), rng);
        match mode {
            ReverseMode::Exact => self.keep_unmasked(x_s, drawn),
            ReverseMode::Reference => drawn,
        }
    }

    /// p(x_0 | x_s) [B, L, K] predicted by the network at times `s`, mask column removed.
    pub fn predict_x0<B: Backend>(
        &self,
        net: &Dit<B>,
        x_s: Tensor<B, 2, Int>,
        s: &[usize],
    ) -> Tensor<B, 3> {
        let device = x_s.device();
        self.x0_probs(net.forward(x_s, self.times(s, &device)))
    }

    /// p(x_0) [B, L, K] from the network's output: the softmax with the mask column removed.
    pub fn x0_probs<B: Backend>(&self, logits: Tensor<B, 3>) -> Tensor<B, 3> {
        softmax(self.remove_mask_column(logits), 2)
    }

    /// Probability that a masked token is unmasked between s and s' < s:
    /// (ᾱ_{s'} − ᾱ_s) / (1 − ᾱ_s) (= 1/s for s' = s − 1 with this schedule). With the mask
    /// column removed from p(x_0) this does not depend on the network, which lets a sampler
    /// skip the network at steps where nothing unmasks.
    pub fn unmask_probability(&self, s: usize, s_prev: usize) -> f64 {
        assert!(
            s_prev < s && s <= self.timesteps,
            "a reverse step goes from s to s' < s ≤ T"
        );
        let (a_s, a_prev) = (self.alpha_bars[s] as f64, self.alpha_bars[s_prev] as f64);
        (a_prev - a_s) / (1.0 - a_s)
    }

    /// Keeps every token of `x_s` that is not the mask; masked positions take `drawn`.
    pub fn keep_unmasked<B: Backend>(
        &self,
        x_s: Tensor<B, 2, Int>,
        drawn: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2, Int> {
        let unmasked = x_s.clone().not_equal_elem(self.mask_id() as i64);
        drawn.mask_where(unmasked, x_s)
    }

    /// The coefficients of q(x_{s'} | x_s, x_0) per sequence.
    fn posterior<B: Backend>(
        &self,
        s: &[usize],
        s_prev: &[usize],
        device: &B::Device,
    ) -> Posterior<B> {
        assert_eq!(s.len(), s_prev.len(), "one step per sequence");
        let batch = s.len();
        let column = |values: Vec<f32>| {
            Tensor::<B, 3>::from_data(TensorData::new(values, [batch, 1, 1]), device)
        };
        let beta: Vec<f32> = s
            .iter()
            .zip(s_prev)
            .map(|(&s, &s_prev)| {
                assert!(
                    s_prev < s && s <= self.timesteps,
                    "a step goes from s to s' < s ≤ T"
                );
                if s_prev + 1 == s {
                    self.betas[s]
                } else {
                    1.0 - self.alpha_bars[s] / self.alpha_bars[s_prev]
                }
            })
            .collect();
        let keep = beta.iter().map(|b| 1.0 - b).collect();
        let alpha_bar: Vec<f32> = s_prev.iter().map(|&s| self.alpha_bars[s]).collect();
        let one_minus_alpha_bar = alpha_bar.iter().map(|a| 1.0 - a).collect();
        let reaches_x0: Vec<bool> = s_prev.iter().map(|&s| s == 0).collect();
        Posterior {
            beta: column(beta),
            keep: column(keep),
            alpha_bar: column(alpha_bar),
            one_minus_alpha_bar: column(one_minus_alpha_bar),
            reaches_x0: Tensor::from_data(TensorData::new(reaches_x0, [batch, 1, 1]), device),
        }
    }

    /// log(q(x_s | x_{s'}) as a function of x_{s'} + ε) + log(q(x_{s'} | x_0) + ε), where x_0
    /// is a one-hot or a predicted distribution [B, L, K]; sequences with s' = 0 get
    /// log(x_0 + ε). The reverse step's distribution, and the reference's training posteriors.
    fn log_posterior<B: Backend>(
        &self,
        x0: Tensor<B, 3>,
        x_s: Tensor<B, 2, Int>,
        p: &Posterior<B>,
    ) -> Tensor<B, 3> {
        let shape = x0.dims();
        let device = x0.device();
        // q(x_s | x_{s'}): a kept token stays (1 − β); anything becomes the mask with β; the
        // mask stays the mask.
        let x_s_is_mask = x_s
            .clone()
            .equal_elem(self.mask_id() as i64)
            .float()
            .unsqueeze_dim(2);
        let from_step = self.one_hot(x_s) * p.keep.clone() + x_s_is_mask * p.beta.clone();
        // q(x_{s'} | x_0): x_0 survives with ᾱ_{s'}, the rest of the mass is on the mask.
        let from_data = x0.clone() * p.alpha_bar.clone()
            + self.mask_column(1.0, &device) * p.one_minus_alpha_bar.clone();
        let log_posterior = (from_step + EPS).log() + (from_data + EPS).log();
        log_posterior.mask_where(p.reaches_x0.clone().expand(shape), (x0 + EPS).log())
    }

    /// [B, L] token ids → [B, L, K] one-hot floats, without leaving the device.
    fn one_hot<B: Backend>(&self, x: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let classes = Tensor::<B, 1, Int>::arange(0..self.num_classes as i64, &x.device());
        x.unsqueeze_dim::<3>(2)
            .equal(classes.reshape([1, 1, self.num_classes]))
            .float()
    }

    /// [1, 1, K]: `value` on the mask column, 0 elsewhere.
    fn mask_column<B: Backend>(&self, value: f32, device: &B::Device) -> Tensor<B, 3> {
        let mut column = vec![0.0f32; self.num_classes];
        column[self.mask_id()] = value;
        Tensor::from_data(TensorData::new(column, [1, 1, self.num_classes]), device)
    }

    /// The network's time input at steps `s`: the raw s as floats (1..T, not scaled), or a
    /// constant when time-free.
    fn times<B: Backend>(&self, s: &[usize], device: &B::Device) -> Tensor<B, 1> {
        network_times(s.iter().map(|&s| s as f32), self.time_conditioning, device)
    }

    /// The network output with −∞ on the mask column: p(x_0) never predicts the mask. An
    /// addition rather than a slice assignment, so that it runs in place on a tensor with
    /// no other handle.
    fn remove_mask_column<B: Backend>(&self, logits: Tensor<B, 3>) -> Tensor<B, 3> {
        let device = logits.device();
        logits + self.mask_column(f32::NEG_INFINITY, &device)
    }
}

/// One draw per position from the distributions `probs` [B, L, K] by inverting the CDF with
/// one host uniform per position (B·L numbers, not B·L·K). A class of probability 0 is never
/// drawn: u ∈ (0, 1] is scaled by the row's total and the class is the first whose CDF
/// reaches it.
pub fn sample_categorical<B: Backend>(
    probs: Tensor<B, 3>,
    rng: &mut impl Rng,
) -> Tensor<B, 2, Int> {
    let [batch, seq_len, k] = probs.dims();
    let device = probs.device();
    let uniforms: Vec<f32> = (0..batch * seq_len)
        .map(|_| 1.0 - rng.random::<f32>())
        .collect();
    let uniforms =
        Tensor::<B, 3>::from_data(TensorData::new(uniforms, [batch, seq_len, 1]), &device);
    let cdf = probs.cumsum(2);
    let total = cdf.clone().narrow(2, k - 1, 1);
    let target = (uniforms * total).expand([batch, seq_len, k]);
    cdf.lower(target).int().sum_dim(2).squeeze_dim::<2>(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DitConfig;
    use burn::backend::Flex;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    type B = Flex;

    fn net() -> Dit<B> {
        let c = DitConfig {
            num_classes: 6,
            n_embed: 16,
            n_heads: 2,
            n_blocks: 1,
            n_cond: 8,
            dropout: 0.0,
        };
        // Non-zero final modulation so predictions depend on the input.
        let mut weights = c.init_state_dict(3);
        weights.insert(
            "adaLN_modulation.weight",
            TensorData::new((0..32 * 8).map(|i| (i % 5) as f32 * 0.1).collect(), [32, 8]),
        );
        Dit::from_state_dict(&c, &weights, &Default::default()).unwrap()
    }

    fn tokens(rows: Vec<Vec<i64>>) -> Tensor<B, 2, Int> {
        let (b, l) = (rows.len(), rows[0].len());
        let flat: Vec<i64> = rows.into_iter().flatten().collect();
        Tensor::from_data(TensorData::new(flat, [b, l]), &Default::default())
    }

    fn ints(x: Tensor<B, 2, Int>) -> Vec<i64> {
        x.into_data().convert::<i64>().to_vec().unwrap()
    }

    fn floats<const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
        x.into_data().convert::<f32>().to_vec().unwrap()
    }

    #[test]
    fn schedule_is_linear_in_alpha_bar() {
        let p = D3pmAbsorbing::new(1000, 0.05, 28);
        assert_eq!(p.betas()[0], 0.0);
        assert_eq!(p.betas()[1000], 1.0);
        assert_eq!(p.alpha_bars()[0], 1.0);
        assert_eq!(p.alpha_bars()[1000], 0.0);
        for (s, a) in p.alpha_bars().iter().enumerate() {
            assert!(
                (*a as f64 - (1000 - s) as f64 / 1000.0).abs() < 1e-6,
                "s = {s}"
            );
        }
        for s in [1, 2, 500, 1000] {
            assert!((p.unmask_probability(s, s - 1) - 1.0 / s as f64).abs() < 1e-5);
        }
        assert!((p.unmask_probability(1000, 500) - 0.5).abs() < 1e-6);
    }

    fn seeded_rows(seed: u64, n: u64) -> Vec<ChaCha8Rng> {
        (0..n)
            .map(|i| ChaCha8Rng::seed_from_u64(seed * 1000 + i))
            .collect()
    }

    #[test]
    fn noise_masks_with_probability_one_minus_alpha_bar() {
        let p = D3pmAbsorbing::new(10, 0.05, 6);
        let x0 = tokens(vec![vec![1; 2000], vec![2; 2000], vec![3; 2000]]);
        // t + 1 = 10 (everything masked), 5 (half), 1 (a tenth).
        let t = [9, 4, 0];
        let noised = ints(p.noise(x0.clone(), &t, &mut seeded_rows(1, 3)));
        let masked = |row: usize| {
            noised[row * 2000..(row + 1) * 2000]
                .iter()
                .filter(|&&v| v == 5)
                .count()
        };
        assert_eq!(masked(0), 2000);
        assert!((900..1100).contains(&masked(1)), "{}", masked(1));
        assert!((140..260).contains(&masked(2)), "{}", masked(2));
        // Unmasked tokens are the data, and the draw is a function of the rng.
        assert!(noised[4000..].iter().all(|&v| v == 3 || v == 5));
        assert_eq!(noised, ints(p.noise(x0, &t, &mut seeded_rows(1, 3))));
    }

    #[test]
    fn exact_reverse_step_unmasks_at_the_closed_form_rate() {
        let p = D3pmAbsorbing::new(100, 0.05, 6);
        let net = net();
        let x_s = tokens(vec![vec![5, 5, 1, 5], vec![2, 5, 5, 5]]);
        // Adjacent and coarse steps.
        for (s, s_prev) in [([40, 3], [39, 2]), ([90, 50], [30, 10])] {
            let log_probs = p.reverse_log_probs(&net, x_s.clone(), &s, &s_prev, ReverseMode::Exact);
            let probs = floats(softmax(log_probs, 2));
            for row in 0..2 {
                let stay = 1.0 - p.unmask_probability(s[row], s_prev[row]);
                for pos in 0..4 {
                    let idx = (row * 4 + pos) * 6;
                    if ints(x_s.clone())[row * 4 + pos] == 5 {
                        let mask_prob = probs[idx + 5] as f64;
                        assert!((mask_prob - stay).abs() < 1e-5, "{mask_prob} vs {stay}");
                    }
                }
            }
        }
    }

    #[test]
    fn reverse_steps_keep_unmasked_tokens_in_exact_mode() {
        let p = D3pmAbsorbing::new(100, 0.05, 6);
        let net = net();
        let x_s = tokens(vec![vec![5, 0, 1, 5, 4, 5], vec![2, 5, 5, 3, 5, 0]]);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        // s = 1 → 0: every masked position is drawn from p(x_0), never the mask.
        let x = ints(p.reverse_step(
            &net,
            x_s.clone(),
            &[1, 1],
            &[0, 0],
            ReverseMode::Exact,
            &mut rng,
        ));
        for (before, after) in ints(x_s.clone()).into_iter().zip(&x) {
            assert_ne!(*after, 5);
            if before != 5 {
                assert_eq!(before, *after);
            }
        }
        for _ in 0..5 {
            let x = ints(p.reverse_step(
                &net,
                x_s.clone(),
                &[50, 7],
                &[49, 6],
                ReverseMode::Exact,
                &mut rng,
            ));
            for (before, after) in ints(x_s.clone()).into_iter().zip(&x) {
                if before != 5 {
                    assert_eq!(before, *after);
                }
            }
        }
    }

    #[test]
    fn categorical_draws_follow_the_probabilities() {
        let probs = vec![0.0f32, 0.5, 0.0, 0.25, 0.25, 0.0];
        let n = 4000;
        let all: Vec<f32> = (0..n).flat_map(|_| probs.clone()).collect();
        let probs_t =
            Tensor::<B, 3>::from_data(TensorData::new(all, [1, n, 6]), &Default::default());
        let draws = ints(sample_categorical(
            probs_t,
            &mut ChaCha8Rng::seed_from_u64(2),
        ));
        let count = |k: i64| draws.iter().filter(|&&d| d == k).count();
        for k in [0, 2, 5] {
            assert_eq!(count(k), 0, "class {k} has probability 0");
        }
        assert!((1880..2120).contains(&count(1)), "{}", count(1));
        assert!((900..1100).contains(&count(3)), "{}", count(3));
    }

    fn logits<Bk: Backend>(values: Vec<f32>, shape: [usize; 3]) -> Tensor<Bk, 3> {
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    /// max |a − b| / max |b|, 0 where both are all zeros.
    fn relative_error(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        err / scale.max(f32::MIN_POSITIVE)
    }

    #[test]
    fn closed_form_terms_by_hand() {
        // Classes {0, 1} and the mask 2; every position predicts p_θ = (1/4, 3/4) whatever
        // the mask column's logit. T = 4, so w = 1/(t + 1).
        let p = D3pmAbsorbing::new(4, 0.05, 3);
        let row = [0.0, 3f32.ln(), 5.0];
        let logits = logits::<B>(row.repeat(6), [2, 3, 3]);
        // t = 1: two masked positions (w = 1/2) and an unmasked one. t = 0: KL = CE everywhere.
        let x0 = tokens(vec![vec![0, 1, 1], vec![1, 0, 0]]);
        let x_next = tokens(vec![vec![2, 2, 1], vec![1, 2, 0]]);
        let t = [1, 0];
        let (ln4, ln4_3) = (4f32.ln(), (4.0f32 / 3.0).ln());
        let ce = [ln4, ln4_3, ln4_3, ln4_3, ln4, ln4];
        let kl = [ln4 / 2.0, ln4_3 / 2.0, 0.0, ln4_3, ln4, ln4];

        let terms = p.token_terms_from_logits(logits.clone(), x0.clone(), x_next.clone(), &t);
        let reference = p.reference_posteriors(logits, x0, x_next, &t).kl();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&floats(terms.ce.clone()), &ce));
        assert!(
            close(&floats(terms.kl.clone()), &kl),
            "{:?}",
            floats(terms.kl.clone())
        );
        assert!(close(&floats(reference), &kl));

        let loss = floats(p.loss_from_terms(terms, &t).loss)[0];
        let expected =
            ((0..3).map(|i| kl[i] + 0.05 * ce[i]).sum::<f32>() + ce[3..].iter().sum::<f32>()) / 6.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }

    /// Which positions of x_{t+1} are masked in a test row.
    #[derive(Clone, Copy)]
    enum Masks {
        Drawn,
        All,
        None,
    }

    #[test]
    fn closed_form_equals_the_reference_formulation_with_gradients() {
        type A = burn::backend::Autodiff<Flex>;
        let (timesteps, k, seq_len) = (100, 9, 12);
        let p = D3pmAbsorbing::new(timesteps, 0.05, k);
        let mask = p.mask_id() as i64;
        let rows = [
            (0, Masks::Drawn),
            (0, Masks::All),
            (0, Masks::None),
            (1, Masks::All),
            (2, Masks::Drawn),
            (5, Masks::All),
            (37, Masks::Drawn),
            (50, Masks::Drawn),
            (60, Masks::None),
            (98, Masks::Drawn),
            (99, Masks::Drawn),
        ];
        let batch = rows.len();
        let t: Vec<usize> = rows.iter().map(|r| r.0).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x0: Vec<i64> = (0..batch * seq_len)
            .map(|_| rng.random_range(0..mask))
            .collect();
        let x0 = tokens(x0.chunks(seq_len).map(<[i64]>::to_vec).collect());
        let drawn = ints(p.noise(x0.clone(), &t, &mut seeded_rows(12, batch as u64)));
        let x_next: Vec<Vec<i64>> = rows
            .iter()
            .zip(ints(x0.clone()).chunks(seq_len).zip(drawn.chunks(seq_len)))
            .map(|(&(_, masks), (x0, drawn))| match masks {
                Masks::Drawn => drawn.to_vec(),
                Masks::All => vec![mask; seq_len],
                Masks::None => x0.to_vec(),
            })
            .collect();
        let x_next = tokens(x_next);
        let to_autodiff = |x: Tensor<B, 2, Int>| Tensor::<A, 2, Int>::from_inner(x);
        let (x0, x_next) = (to_autodiff(x0), to_autodiff(x_next));

        // Logits over ±6 (p_θ(x_0) far above the reference's ε) and random weights per token,
        // so that the gradient of every token's KL and CE takes part.
        let values: Vec<f32> = (0..batch * seq_len * k)
            .map(|_| rng.random_range(-6.0..6.0))
            .collect();
        let mut weights = || {
            let values = (0..batch * seq_len)
                .map(|_| rng.random_range(0.5..2.0))
                .collect();
            Tensor::<A, 2>::from_data(
                TensorData::new(values, [batch, seq_len]),
                &Default::default(),
            )
        };
        let (kl_weights, ce_weights) = (weights(), weights());
        let run = |reference: bool| {
            let logits = logits::<A>(values.clone(), [batch, seq_len, k]).require_grad();
            let terms = if reference {
                let posteriors =
                    p.reference_posteriors(logits.clone(), x0.clone(), x_next.clone(), &t);
                let log_p_x0 = log_softmax(p.remove_mask_column(logits.clone()), 2);
                TokenTerms {
                    kl: posteriors.kl(),
                    ce: log_p_x0
                        .gather(2, x0.clone().unsqueeze_dim(2))
                        .squeeze_dim(2)
                        .neg(),
                }
            } else {
                p.token_terms_from_logits(logits.clone(), x0.clone(), x_next.clone(), &t)
            };
            let objective = (terms.kl.clone() * kl_weights.clone()).sum()
                + (terms.ce.clone() * ce_weights.clone()).sum();
            let grad = logits.grad(&objective.backward()).unwrap();
            (
                floats(terms.kl.inner()),
                floats(terms.ce.inner()),
                floats(grad),
            )
        };
        let (kl, ce, grad) = run(false);
        let (kl_ref, ce_ref, grad_ref) = run(true);
        let rows_of = |v: &[f32]| v.chunks(seq_len).map(<[f32]>::to_vec).collect::<Vec<_>>();
        for (row, (ours, reference)) in rows_of(&kl).iter().zip(rows_of(&kl_ref)).enumerate() {
            let err = relative_error(ours, &reference);
            assert!(err < 1e-5, "KL at t = {}: relative error {err}", t[row]);
        }
        let err = relative_error(&ce, &ce_ref);
        assert!(err < 1e-6, "CE: relative error {err}");
        let err = relative_error(&grad, &grad_ref);
        assert!(err < 1e-5, "gradient: relative error {err}");
    }

    #[test]
    fn below_the_epsilon_the_reference_caps_the_kl_and_the_closed_form_does_not() {
        // p_θ(x_0) = e^−80 / 2 at a masked and at an unmasked position, t = 499 (w = 1/500).
        let p = D3pmAbsorbing::new(1000, 0.05, 4);
        let logits = logits::<B>([-80.0, 0.0, 0.0, 0.0].repeat(2), [1, 2, 4]);
        let x0 = tokens(vec![vec![0, 0]]);
        let x_next = tokens(vec![vec![3, 0]]);
        let t = [499];
        let terms = p.token_terms_from_logits(logits.clone(), x0.clone(), x_next.clone(), &t);
        let kl = floats(terms.kl);
        let reference = floats(p.reference_posteriors(logits, x0, x_next, &t).kl());

        let w = 1.0 / 500.0;
        let ce = 80.0 + 2f64.ln();
        assert!((kl[0] as f64 - w * ce).abs() < 1e-5, "{}", kl[0]);
        assert_eq!(kl[1], 0.0);
        // The reference: −w·log(p_θ(x_0) + ε/ᾱ_t) ≈ w·log(ᾱ_t/ε) at the masked token, and
        // log((2 − β)/(1 − β)) at the unmasked one.
        let capped = w * (p.alpha_bars()[499] as f64 / 1e-20).ln();
        assert!(
            (reference[0] as f64 - capped).abs() < 1e-4,
            "{} vs {capped}",
            reference[0]
        );
        let beta = p.betas()[500] as f64;
        let unmasked = ((2.0 - beta) / (1.0 - beta)).ln();
        assert!(
            (reference[1] as f64 - unmasked).abs() < 1e-3,
            "{} vs {unmasked}",
            reference[1]
        );
    }

    #[test]
    fn loss_is_the_hybrid_mean_and_stats_merge_like_one_batch() {
        let p = D3pmAbsorbing::new(100, 0.05, 6);
        let net = net();
        let x0 = tokens(vec![vec![0, 1, 2, 3], vec![4, 3, 2, 1], vec![1, 1, 0, 0]]);
        let t = [0, 37, 99];
        let x_next = p.noise(x0.clone(), &t, &mut seeded_rows(5, 3));
        let out = p.loss_from_terms(p.token_terms(&net, x0.clone(), x_next.clone(), &t), &t);
        let kl = floats(out.terms.kl.clone());
        let ce = floats(out.terms.ce.clone());
        assert!(kl.iter().all(|&v| v >= 0.0));
        let expected: f32 = (0..12)
            .map(|i| if i < 4 { ce[i] } else { kl[i] + 0.05 * ce[i] })
            .sum::<f32>()
            / 12.0;
        assert!((floats(out.loss.clone())[0] - expected).abs() < 1e-6);

        let stats = out.stats();
        let kl_mean = kl[4..].iter().sum::<f32>() as f64 / 8.0;
        let recon = ce[..4].iter().sum::<f32>() as f64 / 4.0;
        assert!((stats.kl() - kl_mean).abs() < 1e-6);
        assert!((stats.l_t() - (kl_mean * 99.0 + recon)).abs() < 1e-4);
        assert!((stats.bits_per_token() - stats.l_t() / std::f64::consts::LN_2).abs() < 1e-9);

        // The same tokens split in two micro-batches give the same stats once merged.
        let rows = |x: &Tensor<B, 2, Int>, a: usize, n: usize| x.clone().narrow(0, a, n);
        let first = p.loss_from_terms(
            p.token_terms(&net, rows(&x0, 0, 1), rows(&x_next, 0, 1), &t[..1]),
            &t[..1],
        );
        let rest = p.loss_from_terms(
            p.token_terms(&net, rows(&x0, 1, 2), rows(&x_next, 1, 2), &t[1..]),
            &t[1..],
        );
        let mut merged = first.stats();
        merged.merge(&rest.stats());
        assert_eq!(merged.tokens, stats.tokens);
        assert!((merged.l_t() - stats.l_t()).abs() < 1e-4);
        assert!((merged.loss() - stats.loss()).abs() < 1e-6);
    }
}
