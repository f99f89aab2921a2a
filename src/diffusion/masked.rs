//! Continuous-time masked diffusion, as MDLM (Sahoo et al. 2024).
//!
//! Time runs over t ∈ [0, 1]. Under the forward process each token is still itself at time t
//! with probability α_t and the mask otherwise, independently; α falls from α_0 = 1 to
//! α_1 = eps (see [`MaskSchedule`]). The network predicts x_0 from x_t with the SUBS
//! parameterisation: the mask's logit is −∞ (x_0 is never the mask), and an unmasked position
//! carries its token over (p_θ(x_0^i = x_t^i) = 1, so its loss is 0).
//!
//! The negative ELBO of a sequence, in the continuous-time limit, is
//!
//! ```text
//! NELBO = ∫_0^1 w(t) · E_q[ Σ_{i masked in x_t} −log p_θ(x_0^i | x_t) ] dt,   w(t) = −α'_t / (1 − α_t)
//! ```
//!
//! The weight is positive because α falls (log-linear: w = 1/t). As in MDLM, the prior term
//! at t = 1 is left out: there a token survives with probability eps, while sampling starts
//! from all-mask.
//!
//! - **Training** draws t uniform in [t_min, 1) (MDLM's sampling_eps) and averages
//!   w(t)·(−log p_θ(x_0 | x_t)) over every token, 0 at unmasked ones.
//! - **Evaluation** splits the bound at t_min: the diffusion term over [t_min, 1], estimated
//!   as (1 − t_min) × the mean integrand at t uniform in [t_min, 1), and a reconstruction term
//!   E[Σ_{i masked in x_{t_min}} −log p_θ(x_0^i | x_{t_min})], one reverse jump from t_min
//!   to 0. Their sum bounds the likelihood of a model that follows the reverse process down
//!   to t_min and then unmasks every position left at once, and each part has finite
//!   variance (the integrand's variance grows like 1/t near 0).
//! - **Sampling** steps down a grid from t = 1 to 0. In a step t → s a masked position
//!   unmasks with probability (α_s − α_t) / (1 − α_t) and takes its token from p_θ(x_0 | x_t).
//!
//! The network sees the noise level σ_t = −ln α_t (MDLM's conditioning) or, time-free, a
//! constant.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData, s};
use rand::Rng;

use super::stats::Bound;
use super::{LossOutput, TokenTerms, network_times, sample_categorical};
use crate::model::Dit;
use crate::spec::MaskSchedule;

/// Sampling steps when none are asked for (MDLM's default).
pub const DEFAULT_SAMPLING_STEPS: usize = 1000;

/// The masked diffusion process: its schedule, and the functions of the loss and of sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct Mdlm {
    schedule: MaskSchedule,
    eps: f64,
    t_min: f64,
    time_conditioning: bool,
    num_classes: usize,
}

impl Mdlm {
    /// The process over K = `num_classes` classes (mask = K − 1).
    pub fn new(
        schedule: MaskSchedule,
        eps: f64,
        t_min: f64,
        time_conditioning: bool,
        num_classes: usize,
    ) -> Self {
        assert!(eps > 0.0 && eps < 1.0, "eps = {eps} must be in (0, 1)");
        assert!(
            t_min > 0.0 && t_min < 1.0,
            "t_min = {t_min} must be in (0, 1)"
        );
        Mdlm {
            schedule,
            eps,
            t_min,
            time_conditioning,
            num_classes,
        }
    }

    pub fn schedule(&self) -> MaskSchedule {
        self.schedule
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn t_min(&self) -> f64 {
        self.t_min
    }

    pub fn time_conditioning(&self) -> bool {
        self.time_conditioning
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn mask_id(&self) -> usize {
        self.num_classes - 1
    }

    /// 1 − α_t, the probability that a token is masked at time t, computed without
    /// cancellation near t = 0.
    pub fn mask_probability(&self, t: f64) -> f64 {
        let scale = 1.0 - self.eps;
        match self.schedule {
            MaskSchedule::LogLinear => scale * t,
            // 1 − cos(πt/2) = 2 sin²(πt/4).
            MaskSchedule::Cosine => scale * 2.0 * (std::f64::consts::FRAC_PI_4 * t).sin().powi(2),
        }
    }

    /// α_t, the probability that a token is still itself at time t.
    pub fn alpha(&self, t: f64) -> f64 {
        1.0 - self.mask_probability(t)
    }

    /// The loss weight w(t) = −α'_t / (1 − α_t) > 0.
    pub fn loss_weight(&self, t: f64) -> f64 {
        let scale = 1.0 - self.eps;
        let rate = match self.schedule {
            MaskSchedule::LogLinear => scale,
            MaskSchedule::Cosine => {
                scale * std::f64::consts::FRAC_PI_2 * (std::f64::consts::FRAC_PI_2 * t).sin()
            }
        };
        rate / self.mask_probability(t)
    }

    /// The noise level σ_t = −ln α_t the network is conditioned on.
    pub fn sigma(&self, t: f64) -> f64 {
        -(-self.mask_probability(t)).ln_1p()
    }

    /// The network's time input at times `t`: σ_t, or a constant when time-free.
    pub fn network_times<B: Backend>(&self, t: &[f64], device: &B::Device) -> Tensor<B, 1> {
        let sigmas = t.iter().map(|&t| self.sigma(t) as f32);
        network_times(sigmas, self.time_conditioning, device)
    }

    /// Draws x_t ~ q(x_t | x_0): each token is kept with probability α_t and masked otherwise.
    /// Sequence i draws its uniforms on the host from `rows[i]`, so every backend masks the
    /// same tokens, and a sequence's noise does not depend on which batch or device it lands
    /// in.
    pub fn noise<B: Backend, R: Rng>(
        &self,
        x0: Tensor<B, 2, Int>,
        t: &[f64],
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
        let keep: Vec<f32> = t.iter().map(|&t| self.alpha(t) as f32).collect();
        let keep = Tensor::<B, 2>::from_data(TensorData::new(keep, [batch, 1]), &device);
        let masked = uniforms.greater_equal(keep.expand([batch, seq_len]));
        x0.mask_fill(masked, self.mask_id() as i64)
    }

    /// The per-token terms at times `t` for noised tokens `x_t`: `ce` is −log p_θ(x_0 | x_t)
    /// under SUBS (0 where x_t is unmasked), `kl` is w(t) × ce, the NELBO integrand.
    pub fn token_terms<B: Backend>(
        &self,
        net: &Dit<B>,
        x0: Tensor<B, 2, Int>,
        x_t: Tensor<B, 2, Int>,
        t: &[f64],
    ) -> TokenTerms<B> {
        let logits = net.forward(x_t.clone(), self.network_times(t, &x_t.device()));
        self.terms_from_logits(logits, x0, x_t, t)
    }

    /// [`token_terms`](Self::token_terms) from the network's output `logits` [B, L, K] for
    /// `x_t`.
    pub fn terms_from_logits<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        x0: Tensor<B, 2, Int>,
        x_t: Tensor<B, 2, Int>,
        t: &[f64],
    ) -> TokenTerms<B> {
        let [batch, _] = x0.dims();
        assert_eq!(t.len(), batch, "one time per sequence");
        let device = x0.device();
        let log_p = log_softmax(self.remove_mask_column(logits), 2);
        let nll = log_p
            .gather(2, x0.unsqueeze_dim(2))
            .squeeze_dim::<2>(2)
            .neg();
        // SUBS carries an unmasked token over: its −log p is exactly 0, whatever the network
        // says there (and no gradient reaches that output).
        let masked = x_t.equal_elem(self.mask_id() as i64).float();
        let ce = nll * masked;
        let weights: Vec<f32> = t.iter().map(|&t| self.loss_weight(t) as f32).collect();
        let weights = Tensor::<B, 2>::from_data(TensorData::new(weights, [batch, 1]), &device);
        let kl = ce.clone() * weights;
        TokenTerms { kl, ce }
    }

    /// The training loss: the NELBO integrand averaged over all tokens. Every sequence is a
    /// diffusion-term draw (no reconstruction time in training).
    pub fn loss_from_terms<B: Backend>(&self, terms: TokenTerms<B>) -> LossOutput<B> {
        let [batch, seq_len] = terms.kl.dims();
        let loss = terms.kl.clone().mean();
        let kl_sum = terms.kl.clone().detach().sum();
        let ce_sum = terms.ce.clone().detach().sum();
        let no_recon = Tensor::zeros([1], &terms.kl.device());
        let sums = Tensor::cat(vec![kl_sum.clone(), kl_sum, ce_sum, no_recon], 0);
        LossOutput {
            bound: Bound::continuous(self.t_min),
            loss,
            terms,
            sums,
            tokens: batch * seq_len,
            kl_tokens: batch * seq_len,
            recon_tokens: 0,
        }
    }

    /// The probability that a masked position unmasks between t and s < t:
    /// (α_s − α_t) / (1 − α_t). With SUBS it does not depend on the network.
    pub fn unmask_probability(&self, t: f64, s: f64) -> f64 {
        assert!(s < t && t <= 1.0, "a reverse step goes from t to s < t ≤ 1");
        (self.alpha(s) - self.alpha(t)) / self.mask_probability(t)
    }

    /// One reverse step x_t → x_s (s < t) from the network's output `logits` [B, L, K] for
    /// `x_t`: a masked position stays masked with probability (1 − α_s) / (1 − α_t) and
    /// otherwise takes a token from p_θ(x_0 | x_t); unmasked tokens are kept.
    pub fn reverse_step_from_logits<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        x_t: Tensor<B, 2, Int>,
        t: f64,
        s: f64,
        rng: &mut impl Rng,
    ) -> Tensor<B, 2, Int> {
        let unmask = self.unmask_probability(t, s);
        let k = self.num_classes;
        // p_θ(x_0) has no mass on the mask column, so the stay-masked mass goes there alone.
        let probs = (self.x0_probs(logits) * unmask).slice_fill(s![.., .., k - 1..k], 1.0 - unmask);
        let drawn = sample_categorical(probs, rng);
        let unmasked = x_t.clone().not_equal_elem(self.mask_id() as i64);
        drawn.mask_where(unmasked, x_t)
    }

    /// p_θ(x_0) [B, L, K] from the network's output: the softmax with the mask column removed.
    pub fn x0_probs<B: Backend>(&self, logits: Tensor<B, 3>) -> Tensor<B, 3> {
        softmax(self.remove_mask_column(logits), 2)
    }

    /// The network output with the mask column set to −∞.
    fn remove_mask_column<B: Backend>(&self, logits: Tensor<B, 3>) -> Tensor<B, 3> {
        let k = self.num_classes;
        logits.slice_fill(s![.., .., k - 1..k], f32::NEG_INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    type B = Flex;

    fn log_linear() -> Mdlm {
        Mdlm::new(MaskSchedule::LogLinear, 1e-3, 1e-3, false, 4)
    }

    fn cosine() -> Mdlm {
        Mdlm::new(MaskSchedule::Cosine, 1e-3, 1e-3, false, 4)
    }

    fn tokens(rows: Vec<Vec<i64>>) -> Tensor<B, 2, Int> {
        let (b, l) = (rows.len(), rows[0].len());
        let flat: Vec<i64> = rows.into_iter().flatten().collect();
        Tensor::from_data(TensorData::new(flat, [b, l]), &Default::default())
    }

    fn ints(x: Tensor<B, 2, Int>) -> Vec<i64> {
        x.into_data().convert::<i64>().to_vec().unwrap()
    }

    fn floats<const D: usize>(x: Tensor<B, D>) -> Vec<f64> {
        x.into_data().convert::<f64>().to_vec().unwrap()
    }

    /// Logits [B, L, 4] giving p(x_0) = (1/4, 1/2, 1/4) over the three tokens at every
    /// position, with a large mask logit that SUBS must ignore.
    fn fixed_logits(batch: usize, seq_len: usize) -> Tensor<B, 3> {
        let row = [0.0f32, std::f32::consts::LN_2, 0.0, 50.0];
        let values: Vec<f32> = (0..batch * seq_len).flat_map(|_| row).collect();
        Tensor::from_data(
            TensorData::new(values, [batch, seq_len, 4]),
            &Default::default(),
        )
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn schedules_run_from_one_to_eps() {
        let (ll, cos) = (log_linear(), cosine());
        assert_eq!(ll.alpha(0.0), 1.0);
        assert!(close(ll.alpha(1.0), 1e-3, 1e-12));
        assert!(close(ll.alpha(0.25), 1.0 - 0.999 * 0.25, 1e-12));
        assert_eq!(cos.alpha(0.0), 1.0);
        assert!(close(cos.alpha(1.0), 1e-3, 1e-12));
        let half = 1e-3 + 0.999 * std::f64::consts::FRAC_1_SQRT_2;
        assert!(close(cos.alpha(0.5), half, 1e-12));
        assert!(close(ll.sigma(1.0), -(1e-3f64).ln(), 1e-12));
        // Log-linear: w = (1 − eps) / ((1 − eps)·t) = 1/t.
        for t in [1e-3, 0.1, 0.5, 1.0] {
            assert!(close(ll.loss_weight(t), 1.0 / t, 1e-12), "t = {t}");
        }
        // Cosine: w = (π/2)·sin(πt/2) / (1 − cos(πt/2)): π/2 at t = 1, about 2/t near 0.
        assert!(close(
            cos.loss_weight(1.0),
            std::f64::consts::FRAC_PI_2,
            1e-12
        ));
        assert!(close(cos.loss_weight(1e-3), 2.0 / 1e-3, 1e-6));
        // w = −α'/(1 − α) against a central difference of α.
        for process in [&ll, &cos] {
            for t in [0.05, 0.3, 0.7, 0.95] {
                let h = 1e-6;
                let rate = -(process.alpha(t + h) - process.alpha(t - h)) / (2.0 * h);
                let expected = rate / (1.0 - process.alpha(t));
                assert!(close(process.loss_weight(t), expected, 1e-6), "t = {t}");
            }
        }
    }

    #[test]
    fn the_loss_is_the_weighted_cross_entropy_of_masked_positions() {
        let p = log_linear();
        // x_0 = (1, 0, 2); at t = 0.5 positions 0 and 2 are masked: −log p = (ln 2, 0, ln 4),
        // weighted by w = 1/t = 2.
        let x0 = tokens(vec![vec![1, 0, 2]]);
        let x_t = tokens(vec![vec![3, 0, 3]]);
        let terms = p.terms_from_logits(fixed_logits(1, 3), x0, x_t, &[0.5]);
        let ln2 = std::f64::consts::LN_2;
        let expected_ce = [ln2, 0.0, 2.0 * ln2];
        for (got, want) in floats(terms.ce.clone()).iter().zip(expected_ce) {
            assert!(close(*got, want, 1e-6), "ce {got} vs {want}");
        }
        for (got, want) in floats(terms.kl.clone()).iter().zip(expected_ce) {
            assert!(close(*got, 2.0 * want, 1e-6), "kl {got} vs {}", 2.0 * want);
        }
        let out = p.loss_from_terms(terms);
        let loss = floats(out.loss.clone())[0];
        assert!(close(loss, 2.0 * 3.0 * ln2 / 3.0, 1e-6), "loss {loss}");
        let stats = out.stats();
        assert!(close(stats.loss(), loss, 1e-6));
        assert!(close(stats.kl(), loss, 1e-6));
        assert!(close(stats.ce(), ln2, 1e-6));
        assert!(close(stats.l_t(), 0.999 * loss, 1e-6));
        assert_eq!(stats.recon_tokens, 0);
    }

    #[test]
    fn all_masked_counts_every_position_and_none_masked_costs_nothing() {
        let p = log_linear();
        let x0 = tokens(vec![vec![1, 0, 2, 1], vec![0, 0, 2, 2]]);
        let all = tokens(vec![vec![3; 4], vec![3; 4]]);
        // t at both ends of the training range: w = 1/t_min = 1000 and w = 1.
        let terms = p.terms_from_logits(fixed_logits(2, 4), x0.clone(), all, &[1e-3, 1.0]);
        let (ln2, ln4) = (std::f64::consts::LN_2, 2.0 * std::f64::consts::LN_2);
        let row0 = [ln2, ln4, ln4, ln2];
        let row1 = [ln4, ln4, ln4, ln4];
        let expected_kl: Vec<f64> = row0
            .iter()
            .map(|v| 1000.0 * v)
            .chain(row1.iter().copied())
            .collect();
        for (got, want) in floats(terms.kl.clone()).iter().zip(&expected_kl) {
            assert!(close(*got, *want, 1e-6), "{got} vs {want}");
        }
        let loss = floats(p.loss_from_terms(terms).loss)[0];
        assert!(close(loss, expected_kl.iter().sum::<f64>() / 8.0, 1e-6));

        // Nothing masked: zero loss even where the network puts no mass on the data.
        let mut wrong = vec![0.0f32; 2 * 4 * 4];
        for (i, v) in wrong.iter_mut().enumerate() {
            *v = if i % 4 == 2 { 30.0 } else { -30.0 };
        }
        let wrong = Tensor::from_data(TensorData::new(wrong, [2, 4, 4]), &Default::default());
        let terms = p.terms_from_logits(wrong, x0.clone(), x0, &[0.5, 1.0]);
        assert!(floats(terms.kl.clone()).iter().all(|&v| v == 0.0));
        assert_eq!(floats(p.loss_from_terms(terms).loss)[0], 0.0);
    }

    #[test]
    fn cosine_weights_follow_the_schedule() {
        let p = cosine();
        let x0 = tokens(vec![vec![1], vec![1]]);
        let masked = tokens(vec![vec![3], vec![3]]);
        let terms = p.terms_from_logits(fixed_logits(2, 1), x0, masked, &[1.0, 0.5]);
        let ln2 = std::f64::consts::LN_2;
        let pi = std::f64::consts::PI;
        let w_half = (pi / 2.0) * (pi / 4.0).sin() / (1.0 - (pi / 4.0).cos());
        let kl = floats(terms.kl);
        assert!(close(kl[0], pi / 2.0 * ln2, 1e-6), "{}", kl[0]);
        assert!(close(kl[1], w_half * ln2, 1e-6), "{}", kl[1]);
    }

    #[test]
    fn noise_masks_with_probability_one_minus_alpha() {
        let p = log_linear();
        let x0 = tokens(vec![vec![1; 4000], vec![2; 4000]]);
        let mut rows: Vec<ChaCha8Rng> = (0..2).map(ChaCha8Rng::seed_from_u64).collect();
        let noised = ints(p.noise(x0, &[1.0, 0.25], &mut rows));
        let masked = |row: usize| {
            noised[row * 4000..(row + 1) * 4000]
                .iter()
                .filter(|&&v| v == 3)
                .count()
        };
        // 1 − α: 0.999 and 0.24975 (binomial standard deviations 2 and 27).
        assert!((3980..=4000).contains(&masked(0)), "{}", masked(0));
        assert!((890..1110).contains(&masked(1)), "{}", masked(1));
        assert!(noised[4000..].iter().all(|&v| v == 2 || v == 3));
    }

    #[test]
    fn a_reverse_step_unmasks_at_the_schedule_rate() {
        let p = log_linear();
        let n = 6000;
        let x_t = tokens(vec![vec![3; n]]);
        let (t, s) = (0.8, 0.6);
        let x_s = ints(p.reverse_step_from_logits(
            fixed_logits(1, n),
            x_t,
            t,
            s,
            &mut ChaCha8Rng::seed_from_u64(1),
        ));
        // (α_s − α_t) / (1 − α_t) = 0.2 / 0.8 = 1/4 unmask; of those, p(x_0) = (1/4, 1/2, 1/4).
        let count = |v: i64| x_s.iter().filter(|&&x| x == v).count() as f64 / n as f64;
        assert!((count(3) - 0.75).abs() < 0.03, "{}", count(3));
        assert!((count(1) - 0.125).abs() < 0.02, "{}", count(1));
        assert!((count(0) - 0.0625).abs() < 0.015, "{}", count(0));
        // Unmasked tokens stay.
        let x_t = tokens(vec![vec![0, 1, 2, 3]]);
        for seed in 0..20 {
            let x_s = ints(p.reverse_step_from_logits(
                fixed_logits(1, 4),
                x_t.clone(),
                0.1,
                0.05,
                &mut ChaCha8Rng::seed_from_u64(seed),
            ));
            assert_eq!(&x_s[..3], &[0, 1, 2]);
        }
    }
}
