//! `ddexp sample`: text from a run folder or a model folder.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::ModelChoice;
use crate::sample::{self, AncestralSampler, SampleOptions};
use crate::spec::limits::{MAX_BATCH, MAX_SEQ_LEN, MAX_STEPS};

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A run folder (results/<experiment>/<run>) or a model folder (from `ddexp import`).
    model: PathBuf,
    /// Sequences to draw.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH))]
    batch: u64,
    /// Tokens per sequence (default: the experiment's seq_len).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SEQ_LEN))]
    seq_len: Option<u64>,
    /// Reverse steps on an evenly spaced grid of times (default: D3PM's T, exact ancestral
    /// sampling; MDLM's 1000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_STEPS))]
    steps: Option<u64>,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// nanoDD's sampler (D3PM models): mask column kept in p(x_0), network at every step,
    /// every position redrawn at the last step.
    #[arg(long, conflicts_with_all = ["every_step", "no_cache"])]
    reference_sampler: bool,
    /// Call the network at every step even where no position unmasks (the same samples in
    /// distribution, slower; the baseline of the fast exact sampler).
    #[arg(long, conflicts_with = "no_cache")]
    every_step: bool,
    /// Call the network on the whole batch at every step that unmasks something, even when a
    /// time-free network's earlier predictions are still valid (the same samples in
    /// distribution; the baseline of the prediction cache).
    #[arg(long)]
    no_cache: bool,
    /// Print only the final text, even in a terminal.
    #[arg(long)]
    no_animate: bool,
    /// Append the samples to FILE instead of the model folder's samples.txt.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    choice: ModelChoice,
    /// The dataset folder, replacing the one the experiment names (character corpora are
    /// decoded with its vocabulary).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

pub fn run(args: SampleArgs) -> Result<()> {
    args.choice.memory.apply();
    let sampler = if args.reference_sampler {
        AncestralSampler::Reference
    } else if args.every_step {
        AncestralSampler::ExactEveryStep
    } else if args.no_cache {
        AncestralSampler::ExactUncached
    } else {
        AncestralSampler::Exact
    };
    let options = SampleOptions {
        batch: args.batch as usize,
        seq_len: args.seq_len.map(|l| l as usize),
        steps: args.steps.map(|s| s as usize),
        seed: args.seed,
        sampler,
        weights: args.choice.weights,
        checkpoint: args.choice.checkpoint,
        device: args.choice.device(),
        animate: !args.no_animate && std::io::stdout().is_terminal(),
        out: args.out,
        data: args.data,
    };
    let report = sample::sample_model(&args.model, &options)?;
    out!("{}", sample::format_texts(&report.texts));
    eoutln!(
        "{} × {} tokens, {} steps ({} sampler): {} network calls on {} sequences in {:.2} s; \
         appended to {}",
        report.settings.batch,
        report.settings.seq_len,
        report.settings.steps,
        report.settings.sampler.name(),
        report.sampled.network_calls,
        report.sampled.network_rows,
        report.elapsed.as_secs_f64(),
        report.written_to.display()
    );
    Ok(())
}
