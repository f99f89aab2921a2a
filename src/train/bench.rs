//! `ddexp bench`: the speed of the training step (forward, backward, clipping, AdamW, EMA)
//! of an experiment on its backend, after a warm-up, without writing a run folder.
//!
//! The step is exactly the training loop's ([`super::trainer::step`]) for one replica on the
//! first device of the topology (without the all-reduce of several replicas). Windows come from the
//! experiment's dataset when it is prepared; otherwise from uniformly random ids of the
//! dataset's vocabulary, which costs the same compute, so the text8 recipe can be timed on a
//! GPU machine before the data is there.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand::Rng;

use super::trainer::{State, solo_step};
use crate::backend::{self, Devices, Memory};
use crate::data::{self, GPT2_VOCAB_SIZE, TEXT8_ALPHABET};
use crate::diffusion::Diffusion;
use crate::memory;
use crate::model::DitConfig;
use crate::rng::{self, Stream};
use crate::spec::{self, Dataset, Experiment};

/// What `ddexp bench` measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub backend: String,
    pub data: String,
    pub parameters: usize,
    pub tokens_per_step: usize,
    pub warmup: u64,
    /// Wall time of each timed step, in milliseconds.
    pub step_ms: Vec<f64>,
    /// Peak memory: resident set of the process on CPU, reserved device memory on GPUs.
    pub peak_memory: Option<Memory>,
    /// What [`memory::training_step`] estimated before the first step, in bytes.
    pub estimate: f64,
}

impl BenchReport {
    pub fn mean_ms(&self) -> f64 {
        self.step_ms.iter().sum::<f64>() / self.step_ms.len() as f64
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens_per_step as f64 / (self.mean_ms() / 1e3)
    }

    pub fn render(&self) -> String {
        let min = self.step_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.step_ms.iter().copied().fold(0.0, f64::max);
        let memory = match self.peak_memory {
            Some(Memory { bytes, what }) => {
                format!("{:.1} MiB ({what})", bytes as f64 / (1u64 << 20) as f64)
            }
            None => "not measured on this platform".into(),
        };
        format!(
            "backend:     {}\ndata:        {}\nparameters:  {}\ntokens/step: {}\nsteps:       {} timed after {} warm-up\nms/step:     {:.1} (min {:.1}, max {:.1})\ntokens/s:    {:.0}\npeak memory: {memory}\nestimate:    ≈ {:.1} MiB (checked before the first step)\n",
            self.backend,
            self.data,
            self.parameters,
            self.tokens_per_step,
            self.step_ms.len(),
            self.warmup,
            self.mean_ms(),
            min,
            max,
            self.tokens_per_s(),
            self.estimate / (1u64 << 20) as f64,
        )
    }
}

/// Times `steps` training steps of `loaded` after `warmup` untimed ones.
pub fn bench(loaded: &spec::Loaded, steps: u64, warmup: u64) -> Result<BenchReport> {
    loaded.require_runnable()?;
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let limit = crate::spec::limits::MAX_STEPS;
    if steps > limit || warmup > limit {
        bail!("--steps and --warmup take at most {limit} steps each; got {steps} and {warmup}");
    }
    let experiment = &loaded.experiment;
    let first_device = &experiment.topology.devices[..1];
    let job = BenchJob {
        experiment,
        steps,
        warmup,
    };
    backend::run(experiment.topology.backend, first_device, job)
}

/// The timed steps as a [`backend::Job`] on one device.
struct BenchJob<'a> {
    experiment: &'a Experiment,
    steps: u64,
    warmup: u64,
}

impl backend::Job for BenchJob<'_> {
    type Output = BenchReport;

    fn run<B: Backend>(self, devices: &Devices<B>) -> Result<BenchReport> {
        time_steps::<Autodiff<B>>(self.experiment, self.steps, self.warmup, devices)
    }
}

fn time_steps<B: AutodiffBackend>(
    experiment: &Experiment,
    steps: u64,
    warmup: u64,
    devices: &Devices<B::InnerBackend>,
) -> Result<BenchReport> {
    let device = &devices.devices[0];
    let seq_len = experiment.dataset.seq_len();
    let batch = experiment.train.batch_size;
    let need = |vocab| memory::training_step(experiment, vocab);
    if let Some(vocab) = memory::known_vocab(&experiment.dataset) {
        memory::require(&need(vocab), devices.backend)?;
    }
    let (vocab, data, corpus) = match data::open(&experiment.dataset) {
        Ok(corpus) => (
            corpus.vocab().size(),
            corpus.description().to_string(),
            Some(corpus),
        ),
        Err(e) => match &experiment.dataset {
            Dataset::Text8 { .. } => (TEXT8_ALPHABET.chars().count(), random_note(&e), None),
            Dataset::OpenWebText { .. } => (GPT2_VOCAB_SIZE, random_note(&e), None),
            Dataset::Text { .. } | Dataset::Synthetic { .. } => return Err(e),
        },
    };
    if memory::known_vocab(&experiment.dataset).is_none() {
        memory::require(&need(vocab), devices.backend)?;
    }
    let config = DitConfig::from_spec(&experiment.network, vocab)?;
    let diffusion = Diffusion::new(&experiment.model, vocab);
    let mut state = State::<B>::fresh(experiment, &config, device);
    let windows = |it: u64, micro: u64| match &corpus {
        Some(c) => c.train_batch(experiment.seed, it, micro, 0, batch),
        None => {
            let mut r = rng::rng(experiment.seed, Stream::TrainWindows, &[it, micro]);
            (0..batch * seq_len)
                .map(|_| r.random_range(0..vocab as u32))
                .collect()
        }
    };
    let mut step_ms = vec![];
    let mut peak = None::<Memory>;
    for i in 0..warmup + steps {
        let started = Instant::now();
        solo_step(&mut state, experiment, &diffusion, seq_len, windows, device)?;
        if i >= warmup {
            step_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        if let Some(now) = devices.memory() {
            peak = Some(match peak {
                Some(p) if p.bytes >= now.bytes => p,
                _ => now,
            });
        }
    }
    let report = BenchReport {
        backend: devices.label(),
        data,
        parameters: config.param_count(),
        tokens_per_step: experiment.train.grad_accum * batch * seq_len,
        warmup,
        step_ms,
        peak_memory: peak,
        estimate: need(vocab).bytes(),
    };
    let mean = report.mean_ms();
    if !mean.is_finite() || report.step_ms.is_empty() {
        bail!(
            "no timed step to report ({} timed steps, mean {mean} ms)",
            report.step_ms.len()
        );
    }
    Ok(report)
}

fn random_note(e: &anyhow::Error) -> String {
    let first = format!("{e:#}");
    let first = first.lines().next().unwrap_or_default().to_string();
    format!("random token ids (the dataset is not prepared: {first})")
}
