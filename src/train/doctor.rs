//! `ddexp doctor`'s self-check of a backend: one training step of a small DiT on the chosen
//! device, compared with the same step on flex, and a short throughput probe.
//!
//! It needs no dataset and no fixtures. The network starts from the same host-drawn weights
//! on both backends, and the tokens, times and noise are drawn on the host from fixed seeds,
//! so the two steps differ only by floating-point rounding. Compared, each as the largest
//! absolute difference over a tensor divided by the largest reference magnitude:
//!
//! - the logits of a forward pass, the loss, and the gradient of every parameter;
//! - the AdamW moments after the step (the optimiser's arithmetic on the device);
//! - the weights after the step. AdamW's first update is close to ±lr whatever the gradient's
//!   size, so an element whose gradient is zero up to rounding may step either way on two
//!   correct backends. The weights therefore pass when fewer than [`MAX_FLIPPED`] of their
//!   elements moved differently by more than 1% of the learning rate; a wrong update rule moves
//!   nearly all of them.

use std::time::{Duration, Instant};

use anyhow::Result;
use burn::backend::Autodiff;
use burn::tensor::TensorData;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::trainer::{State, solo_step};
use crate::backend::{self, Devices, Job};
use crate::diffusion::Diffusion;
use crate::model::{DitConfig, StateDict, token_tensor};
use crate::rng::{self, Stream};
use crate::spec::{self, Experiment};

/// The largest relative difference that passes.
pub const TOLERANCE: f64 = 1e-3;
/// The largest share of weight elements whose update may differ (see the module docs).
pub const MAX_FLIPPED: f64 = 1e-3;

/// The self-check's network and recipe: small enough for a software GPU, large enough to use
/// every kernel of the real one (several heads and blocks, a vocabulary of text8's size).
const EXPERIMENT: &str = r#"(
    name: "doctor",
    seed: 7,
    network: (n_embed: 64, n_heads: 4, n_blocks: 2, n_cond: 32, dropout: 0.0),
    dataset: Synthetic(seq_len: 64),
    train: (batch_size: 8, grad_accum: 1, max_iters: 1000, lr: 1e-3, warmup_iters: 0),
)"#;
const VOCAB: usize = 27;

/// One comparison of the self-check.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: &'static str,
    /// Largest relative difference (weights: the share of elements that moved differently).
    pub value: f64,
    pub limit: f64,
    /// The tensor with the largest difference, when several are compared.
    pub worst: Option<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.value <= self.limit // false for NaN
    }
}

/// What the self-check found on one device.
#[derive(Debug, Clone)]
pub struct SelfCheck {
    /// The device, e.g. `cuda:0`.
    pub device: String,
    pub checks: Vec<Check>,
    /// Training steps of the probe, their tokens per second, and the time of the first step
    /// (which includes compiling kernels on GPU backends).
    pub probe_steps: u64,
    pub tokens_per_s: f64,
    pub first_step: Duration,
}

impl SelfCheck {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }

    pub fn render(&self) -> String {
        let mut s = format!("self-check on {} against flex:\n", self.device);
        for c in &self.checks {
            let verdict = if c.passed() { "ok" } else { "FAIL" };
            let worst = c.worst.as_ref().map(|w| format!("  worst: {w}"));
            s.push_str(&format!(
                "  {:<32} {:>10.3e}  (limit {:.0e})  {verdict:<4}{}\n",
                c.what,
                c.value,
                c.limit,
                worst.unwrap_or_default()
            ));
        }
        let first = self.first_step.as_secs_f64();
        s.push_str(&match self.probe_steps {
            0 => format!("throughput: not probed (first step {first:.1} s, kernels included)\n"),
            steps => format!(
                "throughput: {:.0} tokens/s over {steps} training steps of the self-check \
                 network (first step {first:.1} s, kernels included)\n",
                self.tokens_per_s
            ),
        });
        s
    }
}

/// Checks device `device` of `backend` against flex, then probes its speed for `probe`.
pub fn self_check(backend: backend::Backend, device: usize, probe: Duration) -> Result<SelfCheck> {
    let experiment =
        spec::load_str(std::path::Path::new("doctor.ron"), EXPERIMENT, &[])?.experiment;
    let reference = backend::run(
        backend::Backend::Cpu,
        &[0],
        StepJob {
            experiment: &experiment,
            probe: None,
        },
    )?;
    let measured = backend::run(
        backend,
        &[device],
        StepJob {
            experiment: &experiment,
            probe: Some(probe),
        },
    )?;
    let lr = experiment.train.lr;
    let checks = vec![
        Check {
            what: "logits",
            value: relative(&measured.logits, &reference.logits),
            limit: TOLERANCE,
            worst: None,
        },
        Check {
            what: "loss",
            value: (measured.loss - reference.loss).abs() / reference.loss.abs(),
            limit: TOLERANCE,
            worst: None,
        },
        worst("gradients", &measured.grads, &reference.grads),
        worst("AdamW moments", &measured.moments, &reference.moments),
        Check {
            what: "weights after the step (share)",
            value: flipped(&measured, &reference, lr),
            limit: MAX_FLIPPED,
            worst: None,
        },
    ];
    Ok(SelfCheck {
        device: measured.device,
        checks,
        probe_steps: measured.probe_steps,
        tokens_per_s: measured.tokens_per_s,
        first_step: measured.first_step,
    })
}

/// One step's numbers on one device, on the host.
struct Measured {
    device: String,
    logits: TensorData,
    loss: f64,
    grads: StateDict,
    before: StateDict,
    after: StateDict,
    moments: StateDict,
    probe_steps: u64,
    tokens_per_s: f64,
    first_step: Duration,
}

struct StepJob<'a> {
    experiment: &'a Experiment,
    /// How long to time training steps after the checked one, if at all.
    probe: Option<Duration>,
}

impl Job for StepJob<'_> {
    type Output = Measured;

    fn run<B: Backend>(self, devices: &Devices<B>) -> Result<Measured> {
        measure::<Autodiff<B>>(self.experiment, self.probe, devices)
    }
}

fn measure<B: AutodiffBackend>(
    experiment: &Experiment,
    probe: Option<Duration>,
    devices: &Devices<B::InnerBackend>,
) -> Result<Measured> {
    let device = &devices.devices[0];
    let config = DitConfig::from_spec(&experiment.network, VOCAB)?;
    let diffusion = Diffusion::new(&experiment.model, VOCAB);
    let (batch, seq_len) = (experiment.train.batch_size, experiment.dataset.seq_len());
    let mut state = State::<B>::fresh(experiment, &config, device);
    let windows = |it: u64, micro: u64| random_windows(experiment.seed, it, micro, batch * seq_len);

    // The forward, loss and gradients of the step's own batch, times and noise.
    let x0 = token_tensor::<B>(&windows(0, 0), batch, seq_len, device);
    let times = (1..=batch).map(|i| i as f32 * 97.0).collect::<Vec<_>>();
    let logits = state
        .model
        .forward(
            x0.clone(),
            burn::tensor::Tensor::from_data(TensorData::new(times, [batch]), device),
        )
        .into_data();
    let t = diffusion
        .training_range()
        .uniform(&mut rng::rng(experiment.seed, Stream::Noise, &[1]), batch);
    let mut noise = rng::rows(experiment.seed, Stream::Noise, &[0, 0], 0..batch as u64);
    let out = diffusion.loss(&state.model, x0, &t, &mut noise);
    let loss = out.stats().loss();
    let grads = state.model.grads_state_dict(&out.loss.backward());

    let before = state.model.state_dict();
    let started = Instant::now();
    solo_step(&mut state, experiment, &diffusion, seq_len, windows, device)?;
    let first_step = started.elapsed();
    let after = state.model.state_dict();
    let moments = state.optimizer.state().1.into_iter().collect();

    let (mut probe_steps, mut tokens_per_s) = (0, f64::NAN);
    if let Some(probe) = probe {
        let started = Instant::now();
        while started.elapsed() < probe {
            solo_step(&mut state, experiment, &diffusion, seq_len, windows, device)?;
            probe_steps += 1;
        }
        let tokens = (probe_steps as usize * batch * seq_len) as f64;
        tokens_per_s = tokens / started.elapsed().as_secs_f64();
    }
    Ok(Measured {
        device: devices.label(),
        logits,
        loss,
        grads,
        before,
        after,
        moments,
        probe_steps,
        tokens_per_s,
        first_step,
    })
}

/// Uniformly random token ids of the self-check's vocabulary, as a function of where they are
/// used.
fn random_windows(seed: u64, it: u64, micro: u64, len: usize) -> Vec<u32> {
    use rand::Rng;
    let mut r = rng::rng(seed, Stream::TrainWindows, &[it, micro]);
    (0..len).map(|_| r.random_range(0..VOCAB as u32)).collect()
}

/// max |a − b| / max |b| over the entries of two tensors of the same shape.
fn relative(a: &TensorData, b: &TensorData) -> f64 {
    let a = a
        .clone()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap_or_default();
    let b = b
        .clone()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap_or_default();
    if a.len() != b.len() || a.is_empty() {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    if diff.is_nan() {
        f64::NAN
    } else {
        diff / scale
    }
}

/// The worst [`relative`] difference over the tensors of two state dicts, named after it.
fn worst(what: &'static str, measured: &StateDict, reference: &StateDict) -> Check {
    let (name, value) = reference
        .0
        .iter()
        .map(|(name, b)| {
            let value = measured.get(name).map_or(f64::INFINITY, |a| relative(a, b));
            (name.as_str(), value)
        })
        .fold(("", 0.0f64), |(wn, wv), (n, v)| {
            if v > wv || v.is_nan() {
                (n, v)
            } else {
                (wn, wv)
            }
        });
    Check {
        what,
        value,
        limit: TOLERANCE,
        // No tensor is named when every one matches exactly.
        worst: (!name.is_empty()).then(|| name.to_string()),
    }
}

/// The share of weight elements whose update differs between the two steps by more than 1%
/// of the learning rate.
fn flipped(measured: &Measured, reference: &Measured, lr: f64) -> f64 {
    let flat = |d: &StateDict, name: &str| -> Vec<f64> {
        d.get(name)
            .map(|t| {
                t.clone()
                    .convert::<f64>()
                    .to_vec::<f64>()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    let (mut moved, mut total) = (0usize, 0usize);
    for name in reference.after.names() {
        let (a0, a1) = (flat(&measured.before, name), flat(&measured.after, name));
        let (b0, b1) = (flat(&reference.before, name), flat(&reference.after, name));
        if [a0.len(), a1.len(), b0.len()] != [b1.len(); 3] {
            return f64::INFINITY;
        }
        total += b1.len();
        moved += (0..b1.len())
            .filter(|&i| {
                let differ = ((a1[i] - a0[i]) - (b1[i] - b0[i])).abs();
                differ.is_nan() || differ > 0.01 * lr
            })
            .count();
    }
    moved as f64 / total.max(1) as f64
}
