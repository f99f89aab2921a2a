//! From per-token losses to the logged numbers and the bits/token estimate.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// How a process turns its per-token means into the bound l_T in nats/token:
/// l_T = kl_weight × mean KL + mean reconstruction CE, or kl_weight_alone × mean KL when no
/// sequence was at the reconstruction time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bound {
    pub kl_weight: f64,
    pub kl_weight_alone: f64,
}

impl Bound {
    /// D3PM with T steps: T − 1 KL terms (t ∈ {1, …, T−1}) and the CE at t = 0; without a
    /// sequence at t = 0, T × the mean KL stands for all T terms.
    pub fn steps(timesteps: usize) -> Bound {
        Bound {
            kl_weight: (timesteps - 1) as f64,
            kl_weight_alone: timesteps as f64,
        }
    }

    /// Continuous time with the diffusion term over [t_min, 1]: (1 − t_min) × the mean of the
    /// integrand at t uniform in [t_min, 1), plus the reconstruction term at t_min when it was
    /// measured (left out otherwise: it is about t_min × the CE of a masked token).
    pub fn continuous(t_min: f64) -> Bound {
        Bound {
            kl_weight: 1.0 - t_min,
            kl_weight_alone: 1.0 - t_min,
        }
    }
}

/// Sums and counts of one or more micro-batches. Merging the stats of all micro-steps and
/// ranks gives exactly the numbers of one big batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    pub bound: Bound,
    pub tokens: usize,
    pub loss_sum: f64,
    /// Tokens of sequences away from the reconstruction time and the sum of their KL (MDLM:
    /// of the NELBO integrand, see [`super::Mdlm`]).
    pub kl_tokens: usize,
    pub kl_sum: f64,
    /// Sum of CE over all tokens.
    pub ce_sum: f64,
    /// Tokens of sequences at the reconstruction time (D3PM: t = 0) and the sum of their CE.
    pub recon_tokens: usize,
    pub recon_sum: f64,
}

impl LossStats {
    pub fn merge(&mut self, other: &LossStats) {
        assert!(
            self.tokens == 0 || self.bound == other.bound,
            "merging stats of different processes"
        );
        self.bound = other.bound;
        self.tokens += other.tokens;
        self.loss_sum += other.loss_sum;
        self.kl_tokens += other.kl_tokens;
        self.kl_sum += other.kl_sum;
        self.ce_sum += other.ce_sum;
        self.recon_tokens += other.recon_tokens;
        self.recon_sum += other.recon_sum;
    }

    /// The training loss (mean over tokens).
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.tokens as f64
    }

    /// Mean KL over tokens away from the reconstruction time (NaN when every sequence had
    /// t = 0, as the reference).
    pub fn kl(&self) -> f64 {
        self.kl_sum / self.kl_tokens as f64
    }

    /// Mean CE over all tokens.
    pub fn ce(&self) -> f64 {
        self.ce_sum / self.tokens as f64
    }

    /// The bound's estimate in nats/token (see [`Bound`]).
    pub fn l_t(&self) -> f64 {
        if self.recon_tokens > 0 {
            self.kl() * self.bound.kl_weight + self.recon_sum / self.recon_tokens as f64
        } else {
            self.kl() * self.bound.kl_weight_alone
        }
    }

    pub fn bits_per_token(&self) -> f64 {
        self.l_t() / std::f64::consts::LN_2
    }
}

/// Count, sum and sum of squares of per-sequence values, for a mean with a standard error.
/// Sequences are the independent units (each has its own window, time and noise); tokens of
/// one sequence are not.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Moments {
    /// The moments of the per-sequence means of `per_token` [B, L] (one device transfer).
    pub fn of_sequence_means<B: Backend>(per_token: Tensor<B, 2>) -> Moments {
        let means = per_token
            .mean_dim(1)
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .expect("f64 means");
        let mut moments = Moments::default();
        for m in means {
            moments.count += 1;
            moments.sum += m;
            moments.sum_sq += m * m;
        }
        moments
    }

    pub fn merge(&mut self, other: &Moments) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Standard error of the mean (sample variance with n − 1); NaN below two values, which
    /// have no spread to measure (0 would claim an exact estimate).
    pub fn std_error(&self) -> f64 {
        if self.count < 2 {
            return f64::NAN;
        }
        let n = self.count as f64;
        let var = (self.sum_sq - self.sum * self.sum / n) / (n - 1.0);
        (var.max(0.0) / n).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn l_t_without_reconstruction_scales_kl_by_t() {
        let stats = LossStats {
            bound: Bound::steps(10),
            tokens: 4,
            loss_sum: 2.0,
            kl_tokens: 4,
            kl_sum: 1.0,
            ce_sum: 8.0,
            recon_tokens: 0,
            recon_sum: 0.0,
        };
        assert_eq!(stats.l_t(), 0.25 * 10.0);
        assert_eq!(stats.ce(), 2.0);
        assert_eq!(stats.loss(), 0.5);
        let only_recon = LossStats {
            kl_tokens: 0,
            kl_sum: 0.0,
            recon_tokens: 4,
            ..stats
        };
        assert!(
            only_recon.kl().is_nan(),
            "no KL tokens: no estimate, as the reference"
        );
    }

    #[test]
    fn moments_give_the_standard_error_of_sequence_means() {
        // Sequence means 1, 2, 3, 6.
        let values = vec![1.0f32, 1.0, 2.0, 2.0, 3.0, 3.0, 5.0, 7.0];
        let per_token =
            Tensor::<Flex, 2>::from_data(TensorData::new(values, [4, 2]), &Default::default());
        let mut m = Moments::of_sequence_means(per_token);
        assert_eq!(m.count, 4);
        assert_eq!(m.mean(), 3.0);
        // Sample variance (4 + 1 + 0 + 9) / 3, standard error sqrt(var / 4).
        assert!((m.std_error() - (14.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12);
        let copy = m;
        m.merge(&copy);
        assert_eq!(m.count, 8);
        assert_eq!(m.mean(), 3.0);
        let one = Moments {
            count: 1,
            sum: 2.0,
            sum_sq: 4.0,
        };
        assert!(one.std_error().is_nan(), "one value has no standard error");
    }
}
