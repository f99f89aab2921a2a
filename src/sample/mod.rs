//! `ddexp sample`: text drawn from a trained model by ancestral sampling, shown unmasking in
//! the terminal, decoded with the corpus's vocabulary and appended to `samples.txt`.
//!
//! The samplers themselves are in [`ancestral`]; this module picks the model, the vocabulary
//! and the device, and records what was drawn.

mod ancestral;
mod animation;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};

pub use ancestral::{AncestralSampler, SampleSettings, Sampled, Step, sample, sample_with};
use animation::Animation;

use crate::backend::{self, DeviceChoice, Devices, Job};
use crate::checkpoint::{self, CheckpointChoice, SavedModel};
use crate::data::{self, Vocab};
use crate::diffusion::{Diffusion, ReverseMode};
use crate::memory;
use crate::model::WeightSet;
use crate::spec::{Dataset, Tokenizer};

/// Where samples are appended in a run folder or model folder.
pub const SAMPLES_FILE: &str = "samples.txt";

/// `ddexp sample`'s choices; `None` takes the experiment's value.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub batch: usize,
    /// Tokens per sequence (default: the experiment's seq_len).
    pub seq_len: Option<usize>,
    /// Reverse steps (default: D3PM's T, MDLM's 1000).
    pub steps: Option<usize>,
    pub seed: u64,
    pub sampler: AncestralSampler,
    pub weights: WeightSet,
    /// A run folder's latest or best checkpoint.
    pub checkpoint: CheckpointChoice,
    /// Where to run, when not on the experiment's own device.
    pub device: DeviceChoice,
    /// Animate on stdout when it is a terminal.
    pub animate: bool,
    /// Append here instead of the model's samples.txt.
    pub out: Option<PathBuf>,
    /// The corpus folder, replacing the experiment's (needed to decode character corpora
    /// other than text8, and checked against the model when given).
    pub data: Option<PathBuf>,
}

/// What `ddexp sample` drew.
#[derive(Debug, Clone)]
pub struct SampleReport {
    /// The decoded sequences.
    pub texts: Vec<String>,
    pub sampled: Sampled,
    pub settings: SampleSettings,
    /// Wall time of the sampling (not of loading the model).
    pub elapsed: Duration,
    /// The file the samples were appended to.
    pub written_to: PathBuf,
}

/// Samples `options.batch` sequences from the run folder or model folder `model` on the
/// experiment's backend (one device) and appends them, with a header line, to the folder's
/// samples.txt or to `options.out`.
pub fn sample_model(model: &Path, options: &SampleOptions) -> Result<SampleReport> {
    let opened = checkpoint::open(model, options.weights, options.checkpoint)?;
    let vocab = decoding_vocab(&opened, options.data.as_deref())?;
    let experiment = &opened.experiment;
    let topology = &experiment.topology;
    let (on, device) = options
        .device
        .resolve(topology.backend, &topology.devices)?;
    let trained_len = experiment.dataset.seq_len();
    let diffusion = Diffusion::new(&experiment.model, opened.vocab_size);
    let settings = SampleSettings {
        batch: options.batch,
        seq_len: options.seq_len.unwrap_or(trained_len),
        steps: options
            .steps
            .unwrap_or_else(|| diffusion.default_sampling_steps()),
        seed: options.seed,
        sampler: options.sampler,
    };
    diffusion.sampling_grid(settings.steps)?;
    if settings.batch == 0 || settings.seq_len == 0 {
        bail!("--batch and --seq-len must be at least 1");
    }
    if settings.sampler == AncestralSampler::Reference
        && !diffusion.supports(ReverseMode::Reference)
    {
        bail!(
            "--reference-sampler is nanoDD's sampler, for D3PM models; {} is {}",
            opened.describe(),
            diffusion.describe()
        );
    }
    memory::require(
        &memory::sampling(
            &experiment.network,
            opened.vocab_size,
            settings.batch,
            settings.seq_len,
        ),
        on,
    )?;
    if settings.seq_len != trained_len {
        eoutln!(
            "note: the model was trained on sequences of {trained_len} tokens; sampling {}",
            settings.seq_len
        );
    }
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| opened.path.join(SAMPLES_FILE));
    // Fail before sampling, not after, when the samples could not be written.
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot write samples to {}: {} is not a folder",
            out.display(),
            parent.display()
        );
    }

    eoutln!("model: {}", opened.describe());
    let job = SampleJob {
        opened: &opened,
        vocab: &vocab,
        settings,
        animate: options.animate,
    };
    let (sampled, elapsed) = backend::run(on, &[device], job)?;
    let texts: Vec<String> = sampled.tokens.iter().map(|row| vocab.decode(row)).collect();

    let header = format!(
        "# {} model={} sampler={} steps={} seed={} batch={} seq_len={} network_calls={} \
         network_rows={}\n",
        chrono::Local::now().to_rfc3339(),
        opened.describe(),
        settings.sampler.name(),
        settings.steps,
        settings.seed,
        settings.batch,
        settings.seq_len,
        sampled.network_calls,
        sampled.network_rows
    );
    // One write of the whole block in append mode, so concurrent samplers never interleave.
    let block = header + &format_texts(&texts) + "\n";
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .and_then(|mut file| file.write_all(block.as_bytes()))
        .with_context(|| format!("cannot append the samples to {}", out.display()))?;
    Ok(SampleReport {
        texts,
        sampled,
        settings,
        elapsed,
        written_to: out,
    })
}

/// The samples as text: one per line, or, when a sample can hold line breaks, each under a
/// `--- sample i ---` line so that samples stay apart.
pub fn format_texts(texts: &[String]) -> String {
    let multiline = texts.iter().any(|t| t.contains('\n'));
    let mut out = String::new();
    for (i, text) in texts.iter().enumerate() {
        if multiline {
            out.push_str(&format!("--- sample {} ---\n", i + 1));
        }
        out.push_str(text);
        out.push('\n');
    }
    out
}

/// The vocabulary that decodes the model's tokens. text8 and the synthetic corpus share
/// text8's alphabet, OpenWebText and GPT-2 corpora use GPT-2 BPE; a character corpus's
/// alphabet is in its folder. A folder given with `data` is always opened and checked.
fn decoding_vocab(opened: &SavedModel, data: Option<&Path>) -> Result<Vocab> {
    let dataset = opened.dataset(data)?;
    let needs_folder = matches!(
        dataset,
        Dataset::Text {
            tokenizer: Tokenizer::Char,
            ..
        }
    );
    if needs_folder || data.is_some() {
        let corpus = data::open(&dataset).with_context(|| {
            format!(
                "decoding the samples of {} needs its corpus's vocabulary (pass --data DIR when \
                 the corpus is in another folder)",
                opened.path.display()
            )
        })?;
        corpus
            .check_model_vocab(opened.vocab_size)
            .with_context(|| format!("sampling {}", opened.describe()))?;
        return Ok(corpus.vocab().clone());
    }
    let vocab = match dataset {
        Dataset::OpenWebText { .. } | Dataset::Text { .. } => Vocab::gpt2(),
        Dataset::Text8 { .. } | Dataset::Synthetic { .. } => Vocab::text8(),
    };
    if vocab.size() != opened.vocab_size {
        bail!(
            "{} reads {} token ids, but its experiment's dataset uses {}: the experiment does not \
             describe this model",
            opened.describe(),
            opened.vocab_size,
            vocab.describe()
        );
    }
    Ok(vocab)
}

/// Sampling on the device the experiment names, with the animation or a progress bar.
struct SampleJob<'a> {
    opened: &'a SavedModel,
    vocab: &'a Vocab,
    settings: SampleSettings,
    animate: bool,
}

impl Job for SampleJob<'_> {
    type Output = (Sampled, Duration);

    fn run<B: Backend>(self, devices: &Devices<B>) -> Result<(Sampled, Duration)> {
        let model = self.opened.load::<B>(&devices.devices[0])?;
        let settings = &self.settings;
        let started = Instant::now();
        let animation = self
            .animate
            .then(|| Animation::on_stdout(self.vocab, settings.seq_len, settings.steps))
            .flatten();
        let sampled = match animation {
            Some(mut animation) => {
                let sampled = sample(&model.net, &model.diffusion, settings, |step| {
                    animation.show(step)
                });
                animation.finish();
                sampled?
            }
            None => {
                let bar = ProgressBar::new(settings.steps as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "sample {bar:30} {pos}/{len} steps | {msg} | eta {eta}",
                    )
                    .expect("a valid template"),
                );
                let sampled = sample(&model.net, &model.diffusion, settings, |step| {
                    bar.set_position(step.index as u64 + 1);
                    bar.set_message(format!("{} network calls", step.network_calls));
                });
                bar.finish_and_clear();
                sampled?
            }
        };
        Ok((sampled, started.elapsed()))
    }
}
