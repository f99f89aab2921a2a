//! Continuous-time masked diffusion (MDLM) against numbers computed here without its code:
//! the NELBO estimator of `ddexp eval` against a quadrature over t of the exact expectation
//! over mask patterns; the D3PM bound with T = 10 000 against the MDLM bound for the same
//! time-free network; and the prediction cache of the exact sampler against the exact
//! distribution of the reverse process.

use std::collections::BTreeMap;
use std::f64::consts::FRAC_PI_2;

use burn::backend::Flex;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use ddexp::diffusion::{Diffusion, Moments, Times, sample_times};
use ddexp::model::{Dit, DitConfig, StateDict};
use ddexp::rng::{self, Stream};
use ddexp::sample::{AncestralSampler, SampleSettings, sample_with};
use ddexp::spec::{MaskSchedule, Process, TimeSampler};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type B = Flex;

fn mdlm(schedule: MaskSchedule, time_conditioning: bool) -> Process {
    Process::Mdlm {
        schedule,
        eps: 1e-3,
        t_min: 1e-3,
        time_conditioning,
    }
}

fn tokens(rows: &[Vec<usize>]) -> Tensor<B, 2, Int> {
    let (b, l) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, l]), &Default::default())
}

fn floats<const D: usize>(x: Tensor<B, D>) -> Vec<f64> {
    x.into_data().convert::<f64>().to_vec().unwrap()
}

/// −log p(x_0 | x) per position [rows × L], p the softmax over the `vocab` token columns of
/// the network's output at time input `time` (the mask column left out).
fn nll(net: &Dit<B>, x: &[Vec<usize>], x0: &[Vec<usize>], vocab: usize, time: f32) -> Vec<f64> {
    let rows = x.len();
    let times = Tensor::from_data(
        TensorData::new(vec![time; rows], [rows]),
        &Default::default(),
    );
    let log_p = log_softmax(net.forward(tokens(x), times).narrow(2, 0, vocab), 2);
    floats(
        log_p
            .gather(2, tokens(x0).unsqueeze_dim(2))
            .squeeze_dim::<2>(2)
            .neg(),
    )
}

/// The expectation over mask patterns, per token, of Σ_{i masked} −log p(x_0^i | x_t) when
/// each position is masked with probability `a`, averaged over the sequences of `data`:
/// every pattern of every sequence enumerated, weighted by a^|m| (1 − a)^(L − |m|).
fn masked_nll(net: &Dit<B>, data: &[Vec<usize>], vocab: usize, a: f64, time: f32) -> f64 {
    let len = data[0].len();
    let mut x = vec![];
    let mut x0 = vec![];
    let mut patterns = vec![];
    for row in data {
        for m in 0..1usize << len {
            x.push(
                (0..len)
                    .map(|i| if m >> i & 1 == 1 { vocab } else { row[i] })
                    .collect(),
            );
            x0.push(row.clone());
            patterns.push(m);
        }
    }
    let values = nll(net, &x, &x0, vocab, time);
    let mut total = 0.0;
    for (r, &m) in patterns.iter().enumerate() {
        let masked = m.count_ones() as i32;
        let p = a.powi(masked) * (1.0 - a).powi(len as i32 - masked);
        let sum: f64 = (0..len)
            .filter(|&i| m >> i & 1 == 1)
            .map(|i| values[r * len + i])
            .sum();
        total += p * sum / len as f64;
    }
    total / data.len() as f64
}

/// ∫ f over [a, b] by composite Simpson with `n` (even) intervals.
fn simpson(f: &dyn Fn(f64) -> f64, a: f64, b: f64, n: usize) -> f64 {
    let h = (b - a) / n as f64;
    let inner: f64 = (1..n)
        .map(|i| f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
        .sum();
    (f(a) + inner + f(b)) * h / 3.0
}

/// A small DiT whose adaptive LayerNorms move with the time input, so its predictions depend
/// on the time and on the context.
fn conditioned_net(vocab: usize) -> Dit<B> {
    let config = DitConfig {
        num_classes: vocab + 1,
        n_embed: 16,
        n_heads: 2,
        n_blocks: 1,
        n_cond: 8,
        dropout: 0.0,
    };
    let mut weights = config.init_state_dict(7);
    let pattern =
        |n: usize| -> Vec<f32> { (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.15).collect() };
    weights.insert(
        "blocks.0.adaLN_modulation.weight",
        TensorData::new(pattern(96 * 8), [96, 8]),
    );
    weights.insert(
        "adaLN_modulation.weight",
        TensorData::new(pattern(32 * 8), [32, 8]),
    );
    Dit::from_state_dict(&config, &weights, &Default::default()).unwrap()
}

/// The estimator of `ddexp eval` for MDLM — the diffusion term (1 − t_min) × the mean
/// integrand at t uniform in [t_min, 1), the reconstruction term the mean −log p at t_min —
/// is unbiased: over 20 000 sequences per term its means match the exact terms within 3
/// standard errors. The exact terms enumerate all 2^L mask patterns of every sequence at each
/// t, and integrate over t by Simpson's rule, on pieces where the network's time input σ_t
/// changes little (σ grows like −ln(1 − t) near t = 1). The schedule, the weight w(t) and σ_t
/// come from their closed forms here, not from the code under test.
#[test]
fn the_nelbo_estimator_is_unbiased() {
    let vocab = 3;
    let net = conditioned_net(vocab);
    let data = vec![vec![0, 1, 2, 1, 0], vec![2, 2, 0, 1, 1]];
    let eps = 1e-3;
    // Cosine masks a fraction of about (πt/2)²/2 at small t: t_min = 0.05 masks enough
    // positions (0.3%) for the reconstruction term to be measured.
    for (schedule, conditioned, t_min) in [
        (MaskSchedule::LogLinear, true, 1e-3),
        (MaskSchedule::Cosine, false, 0.05),
    ] {
        let masked_probability = move |t: f64| match schedule {
            MaskSchedule::LogLinear => (1.0 - eps) * t,
            MaskSchedule::Cosine => (1.0 - eps) * (1.0 - (FRAC_PI_2 * t).cos()),
        };
        let weight = move |t: f64| match schedule {
            MaskSchedule::LogLinear => 1.0 / t,
            MaskSchedule::Cosine => {
                FRAC_PI_2 * (FRAC_PI_2 * t).sin() / (1.0 - (FRAC_PI_2 * t).cos())
            }
        };
        let time = |t: f64| {
            if conditioned {
                -(1.0 - masked_probability(t)).ln() as f32
            } else {
                0.0
            }
        };
        let expected = |t: f64| masked_nll(&net, &data, vocab, masked_probability(t), time(t));
        let integrand = |t: f64| weight(t) * expected(t);
        let pieces = [t_min, 0.5, 0.9, 0.99, 0.999, 1.0];
        let diffusion_term: f64 = pieces
            .windows(2)
            .map(|w| simpson(&integrand, w[0], w[1], 40))
            .sum();
        let recon_term = expected(t_min);

        let process = Process::Mdlm {
            schedule,
            eps,
            t_min,
            time_conditioning: conditioned,
        };
        let diffusion = Diffusion::new(&process, vocab);
        let (batches, n) = (40u64, 500);
        let x0 = tokens(&(0..n).map(|i| data[i % 2].clone()).collect::<Vec<_>>());
        let mut kl = Moments::default();
        let mut recon = Moments::default();
        for batch in 0..2 * batches {
            let mut rng = rng::rng(5, Stream::EvalTimes, &[batch]);
            let is_kl = batch < batches;
            let times = if is_kl {
                diffusion.kl_range().uniform(&mut rng, n)
            } else {
                diffusion.recon_times(n)
            };
            let mut noise = rng::rows(5, Stream::EvalNoise, &[batch], 0..n as u64);
            let terms = diffusion.token_terms(&net, x0.clone(), &times, &mut noise);
            if is_kl {
                kl.merge(&Moments::of_sequence_means(terms.kl));
            } else {
                recon.merge(&Moments::of_sequence_means(terms.ce));
            }
        }
        let scale = diffusion.bound().kl_weight;
        assert!((scale - (1.0 - t_min)).abs() < 1e-12);
        let (kl_mean, kl_se) = (kl.mean() * scale, kl.std_error() * scale);
        assert!(
            (kl_mean - diffusion_term).abs() < 3.0 * kl_se,
            "{schedule:?}: diffusion term {kl_mean:.5} ± {kl_se:.5}, exact {diffusion_term:.5}"
        );
        assert!(
            (recon.mean() - recon_term).abs() < 3.0 * recon.std_error(),
            "{schedule:?}: reconstruction term {:.6} ± {:.6}, exact {recon_term:.6}",
            recon.mean(),
            recon.std_error()
        );
        // A useful estimate: the diffusion term is known to about 1%, and reconstruction at
        // t_min is a small part of the bound.
        assert!(kl_se < 0.02 * diffusion_term, "{kl_se} of {diffusion_term}");
        assert!(recon_term < 0.01 * diffusion_term);
    }
}

/// A time-free DiT that copies unmasked tokens (their −log p is below 1e-30) and predicts a
/// masked position from its context. The embedding puts token v at 20 on axis v (the mask is
/// 0 on those axes) plus small random components elsewhere; the final LayerNorm keeps only the
/// token axes, so with the tied output projection the logit of v is 20 × the normalised
/// coordinate v: an unmasked token leads every other by about 80. The attention branch
/// (gate 0.1, no adaptive modulation, no MLP) brings the context into masked positions.
fn copying_net(vocab: usize) -> Dit<B> {
    let config = DitConfig {
        num_classes: vocab + 1,
        n_embed: 16,
        n_heads: 2,
        n_blocks: 1,
        n_cond: 8,
        dropout: 0.0,
    };
    let d = config.n_embed;
    let mut weights: StateDict = config.init_state_dict(11);
    let random = weights
        .get("vocab_embed.weight")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let mut embed = vec![0.0f32; (vocab + 1) * d];
    for v in 0..=vocab {
        for j in 0..d {
            embed[v * d + j] = if j < vocab {
                if v == j { 20.0 } else { 0.0 }
            } else {
                random[v * d + j] * 2.0
            };
        }
    }
    weights.insert("vocab_embed.weight", TensorData::new(embed, [vocab + 1, d]));
    let mut modulation = vec![0.0f32; 6 * d];
    for gate in &mut modulation[2 * d..3 * d] {
        *gate = 0.1;
    }
    weights.insert(
        "blocks.0.adaLN_modulation.bias",
        TensorData::new(modulation, [6 * d]),
    );
    let norm: Vec<f32> = (0..d).map(|j| if j < vocab { 1.0 } else { 0.0 }).collect();
    weights.insert("norm_final.weight", TensorData::new(norm, [d]));
    Dit::from_state_dict(&config, &weights, &Default::default()).unwrap()
}

/// For a time-free network, D3PM-absorbing's bound with T = 10 000 steps and the MDLM NELBO
/// (log-linear, eps = t_min = 10⁻³) agree within their combined standard errors (3 s.e.)
/// plus an allowance derived here.
///
/// Let G(a) be the expected Σ_{i masked} −log p(x_0^i | x) / L over the data when each
/// position is masked with probability a, and c(a) = G(a)/a the expected −log p of one
/// masked token. G(a) = Σ_k a^k (1 − a)^(L−k) S_k, where S_k sums over the patterns with k
/// masked positions, so c is a polynomial with c(0) = S_1.
///
/// D3PM: ᾱ_s = (T − s)/T, so x_s masks with probability s/T, and in the step s → s − 1 a
/// masked position unmasks with probability 1/s: KL_s = G(s/T)/s = c(s/T)/T. The
/// reconstruction term is the CE of every position at x_1, G(1/T) + U, where U is the CE of
/// the unmasked ones. So l_T = (1/T) Σ_{s=1}^{T} c(s/T) + U.
///
/// MDLM: x_t masks with probability a = (1 − ε)t and w = 1/t, so the diffusion term is
/// ∫_{t_min}^1 G((1 − ε)t)/t dt = ∫_{a₀}^{1−ε} c(a) da with a₀ = (1 − ε)t_min, and the
/// reconstruction term is G(a₀) = a₀ c(a₀).
///
/// So l_T − NELBO = E₁ + E₂ + E₃ + U, with
/// - E₁ = (1/T) Σ_{s=1}^{T} c(s/T) − ∫_0^1 c = (c(1) − c(0))/(2T) + O(1/T²), the error of a
///   right Riemann sum (Euler–Maclaurin): the O(1/T) part;
/// - E₂ = ∫_{1−ε}^1 c ≈ ε c(1): the bound over (1 − ε, 1] that MDLM leaves out;
/// - E₃ = ∫_0^{a₀} c − a₀ c(a₀) = O(a₀²): reconstruction at t_min in one jump.
///
/// The test enumerates every mask pattern of every sequence (one forward pass), which gives
/// the S_k and so c exactly, evaluates E₁, E₂ and E₃ from c, and checks that U is below
/// 10⁻⁶ (the network copies unmasked tokens). The allowance is |E₁ + E₂ + E₃| + 10⁻⁶; with
/// T = 10 000 it is far below the standard errors, so a wrong weight, schedule or time
/// convention in either process fails the test.
#[test]
fn d3pm_with_many_steps_and_mdlm_bound_the_same_likelihood() {
    let (vocab, len, sequences) = (4, 8, 64);
    let timesteps = 10_000;
    let (eps, t_min) = (1e-3, 1e-3);
    let net = copying_net(vocab);
    // A Markov chain over 4 tokens, so context helps predict a masked token.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let data: Vec<Vec<usize>> = (0..sequences)
        .map(|_| {
            let mut row = vec![rng.random_range(0..vocab)];
            while row.len() < len {
                let last = *row.last().unwrap();
                row.push(if rng.random::<f64>() < 0.7 {
                    (last + 1) % vocab
                } else {
                    rng.random_range(0..vocab)
                });
            }
            row
        })
        .collect();

    // Every mask pattern of every sequence: S_k, and the CE of unmasked positions.
    let mut x = vec![];
    let mut x0 = vec![];
    for row in &data {
        for m in 0..1usize << len {
            x.push(
                (0..len)
                    .map(|i| if m >> i & 1 == 1 { vocab } else { row[i] })
                    .collect(),
            );
            x0.push(row.clone());
        }
    }
    let values = nll(&net, &x, &x0, vocab, 0.0);
    let mut s_k = vec![0.0; len + 1];
    let mut unmasked_ce: f64 = 0.0;
    for (r, input) in x.iter().enumerate() {
        let mut sum = 0.0;
        for i in 0..len {
            if input[i] == vocab {
                sum += values[r * len + i];
            } else {
                unmasked_ce = unmasked_ce.max(values[r * len + i]);
            }
        }
        let k = input.iter().filter(|&&t| t == vocab).count();
        s_k[k] += sum / len as f64 / sequences as f64;
    }
    assert!(
        unmasked_ce < 1e-6,
        "the network does not copy: CE {unmasked_ce}"
    );
    let g = |a: f64| -> f64 {
        (0..=len)
            .map(|k| a.powi(k as i32) * (1.0 - a).powi((len - k) as i32) * s_k[k])
            .sum()
    };
    let c = |a: f64| if a == 0.0 { s_k[1] } else { g(a) / a };
    let t = timesteps as f64;
    let e1 =
        (1..=timesteps).map(|s| c(s as f64 / t)).sum::<f64>() / t - simpson(&c, 0.0, 1.0, 1000);
    let e2 = simpson(&c, 1.0 - eps, 1.0, 10);
    let a0 = (1.0 - eps) * t_min;
    let e3 = simpson(&c, 0.0, a0, 10) - a0 * c(a0);
    let allowance = (e1 + e2 + e3).abs() + 1e-6;
    // E₁ is the O(1/T) term, E₂ about ε c(1).
    assert!((e1 - (c(1.0) - c(0.0)) / (2.0 * t)).abs() < 1e-6, "{e1}");
    assert!((e2 - eps * c(1.0)).abs() < 1e-4 * c(1.0), "{e2}");
    assert!(c(1.0) > 0.5);

    // Each estimate: batches of 512 sequences (8 copies of the data) with stratified times;
    // the batch estimates are the independent units.
    let estimate = |process: &Process, seed: u64| -> (f64, f64) {
        let diffusion = Diffusion::new(process, vocab);
        let n = 512;
        let x0 = tokens(
            &(0..n)
                .map(|i| data[i % sequences].clone())
                .collect::<Vec<_>>(),
        );
        let unit = |value: f64| Moments {
            count: 1,
            sum: value,
            sum_sq: value * value,
        };
        let mut kl = Moments::default();
        for batch in 0..60 {
            let times = sample_times(
                TimeSampler::LowDiscrepancy,
                seed,
                batch,
                n,
                diffusion.kl_range(),
            );
            let mut noise = rng::rows(seed, Stream::EvalNoise, &[batch], 0..n as u64);
            let terms = diffusion.token_terms(&net, x0.clone(), &times, &mut noise);
            kl.merge(&unit(
                floats(terms.kl.mean())[0] * diffusion.bound().kl_weight,
            ));
        }
        let mut recon = Moments::default();
        for batch in 0..10 {
            let times: Times = diffusion.recon_times(n);
            let mut noise = rng::rows(seed, Stream::EvalNoise, &[1000 + batch], 0..n as u64);
            let terms = diffusion.token_terms(&net, x0.clone(), &times, &mut noise);
            recon.merge(&unit(floats(terms.ce.mean())[0]));
        }
        (
            kl.mean() + recon.mean(),
            kl.std_error().hypot(recon.std_error()),
        )
    };
    let d3pm = Process::D3pmAbsorbing {
        timesteps,
        lambda_ce: 0.05,
        time_conditioning: false,
    };
    let (l_t, l_t_se) = estimate(&d3pm, 1);
    let (nelbo, nelbo_se) = estimate(&mdlm(MaskSchedule::LogLinear, false), 2);
    let tolerance = 3.0 * l_t_se.hypot(nelbo_se) + allowance;
    assert!(
        (l_t - nelbo).abs() < tolerance,
        "D3PM l_T {l_t:.4} ± {l_t_se:.4}, MDLM {nelbo:.4} ± {nelbo_se:.4}, tolerance \
         {tolerance:.4} (allowance {allowance:.5}: E1 {e1:.2e}, E2 {e2:.2e}, E3 {e3:.2e})"
    );
    // The comparison is sharp: the two bounds are compared to better than 1.5%.
    assert!(
        l_t_se.hypot(nelbo_se) < 0.015 * nelbo,
        "{l_t_se} {nelbo_se}"
    );
}

/// A time-free stand-in network over 2 tokens and 3 positions whose prediction for a masked
/// position depends strongly on the tokens already revealed, so the order in which positions
/// unmask matters. Logits [B, 3, 3]: token 0 at 0, token 1 at a bias plus couplings to the
/// revealed neighbours, the mask at 5 (which p(x_0) must ignore).
fn coupled_logits(x: &[i64]) -> Vec<f32> {
    let bias = [0.3, -0.2, 0.0];
    let mut out = Vec::with_capacity(x.len() * 3);
    for row in x.chunks(3) {
        for (i, &bias) in bias.iter().enumerate() {
            let mut one = bias;
            for (j, &token) in row.iter().enumerate() {
                if j != i && token != 2 {
                    let coupling = if i.abs_diff(j) == 1 { 1.5 } else { 0.5 };
                    one += coupling * if token == 1 { 1.0 } else { -1.0 };
                }
            }
            out.extend([0.0, one as f32, 5.0]);
        }
    }
    out
}

/// The exact distribution of a sequence of 3 positions from the exact reverse process with
/// `steps` steps in which each position unmasks at a step uniform over the steps
/// (independently): every assignment of steps to positions, then the revealed positions of
/// each step drawn independently from p(x_0 | the state before the step).
fn exact_distribution(steps: usize) -> [f64; 8] {
    let p_of = |state: &[i64; 3], i: usize| -> f64 {
        let logits = coupled_logits(state);
        let (zero, one) = (logits[3 * i] as f64, logits[3 * i + 1] as f64);
        one.exp() / (zero.exp() + one.exp())
    };
    let mut out = [0.0; 8];
    for assignment in 0..steps.pow(3) {
        let reveal = [
            assignment % steps,
            assignment / steps % steps,
            assignment / steps / steps,
        ];
        let mut states: Vec<([i64; 3], f64)> = vec![([2, 2, 2], 1.0 / steps.pow(3) as f64)];
        for step in 0..steps {
            let now: Vec<usize> = (0..3).filter(|&i| reveal[i] == step).collect();
            let mut next = vec![];
            for (state, p) in &states {
                for draw in 0..1usize << now.len() {
                    let mut new = *state;
                    let mut q = *p;
                    for (k, &i) in now.iter().enumerate() {
                        let one = p_of(state, i);
                        let v = draw >> k & 1;
                        new[i] = v as i64;
                        q *= if v == 1 { one } else { 1.0 - one };
                    }
                    next.push((new, q));
                }
            }
            states = next;
        }
        for (state, p) in states {
            out[(state[0] + 2 * state[1] + 4 * state[2]) as usize] += p;
        }
    }
    out
}

/// The exact sampler's prediction cache (a time-free network's prediction reused until its
/// sequence changes) draws from the exact distribution of the reverse process, as do the
/// uncached and the every-step samplers: 3200 sequences of each, for MDLM and for a
/// time-free D3PM, against the exact probabilities of the 8 outcomes (χ² with 7 degrees of
/// freedom below 27.9, p = 10⁻⁴ each). Both grids make every step equally likely for a
/// position to unmask (log-linear α on an even grid; D3PM's linear ᾱ at τ = 8, 6, 4, 2, 0),
/// which the exact distribution assumes. The cache must also save calls.
#[test]
fn the_prediction_cache_draws_from_the_exact_distribution() {
    let steps = 4;
    let exact = exact_distribution(steps);
    assert!((exact.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    let d3pm = Process::D3pmAbsorbing {
        timesteps: 8,
        lambda_ce: 0.05,
        time_conditioning: false,
    };
    let device = Default::default();
    for process in [mdlm(MaskSchedule::LogLinear, false), d3pm] {
        let diffusion = Diffusion::new(&process, 2);
        let mut calls = BTreeMap::new();
        for sampler in [
            AncestralSampler::Exact,
            AncestralSampler::ExactUncached,
            AncestralSampler::ExactEveryStep,
        ] {
            let mut counts = [0usize; 8];
            let mut total_calls = 0;
            for seed in 0..400 {
                let network = |x: Tensor<B, 2, Int>, time: f32| {
                    assert_eq!(time, 0.0, "a time-free network sees a constant");
                    let b = x.dims()[0];
                    let ids: Vec<i64> = x.into_data().convert::<i64>().to_vec().unwrap();
                    Tensor::from_data(TensorData::new(coupled_logits(&ids), [b, 3, 3]), &device)
                };
                let settings = SampleSettings {
                    batch: 8,
                    seq_len: 3,
                    steps,
                    seed,
                    sampler,
                };
                let sampled = sample_with(network, &diffusion, &settings, &device, |_| {}).unwrap();
                total_calls += sampled.network_calls;
                for row in &sampled.tokens {
                    counts[(row[0] + 2 * row[1] + 4 * row[2]) as usize] += 1;
                }
            }
            let n = counts.iter().sum::<usize>() as f64;
            let chi2: f64 = counts
                .iter()
                .zip(exact)
                .map(|(&o, p)| (o as f64 - n * p).powi(2) / (n * p))
                .sum();
            assert!(
                chi2 < 27.9,
                "{process:?} {sampler:?}: χ² = {chi2:.1}, counts {counts:?}, exact {exact:?}"
            );
            calls.insert(sampler.name(), total_calls);
        }
        assert!(
            calls["exact"] < calls["exact-uncached"],
            "{process:?}: the cache saves no calls: {calls:?}"
        );
        assert!(
            calls["exact-uncached"] <= calls["exact-every-step"],
            "{calls:?}"
        );
    }
}
