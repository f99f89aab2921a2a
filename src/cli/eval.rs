//! `ddexp eval`: bits/token of a run folder or a model folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::ModelChoice;
use crate::eval::{self, EvalOptions};
use crate::spec::Split;
use crate::spec::limits::{MAX_BATCH, MAX_EVAL_BATCHES};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A run folder (results/<experiment>/<run>) or a model folder (from `ddexp import`).
    model: PathBuf,
    /// Split to evaluate (repeatable; default: the experiment's eval.splits).
    #[arg(long = "split", value_name = "val|test|train", value_parser = parse_split)]
    splits: Vec<Split>,
    /// Batches for the KL term, t uniform in 1..T−1 (default: eval.kl_batches).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_EVAL_BATCHES))]
    kl_batches: Option<u64>,
    /// Batches for the reconstruction term, t = 0 (default: eval.recon_batches).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_EVAL_BATCHES))]
    recon_batches: Option<u64>,
    /// Sequences per batch (default: eval.batch_size).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH))]
    batch_size: Option<u64>,
    /// Seed of the diffusion times and noise (0 reproduces a run's own final evaluation).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    choice: ModelChoice,
    /// The dataset folder, replacing the one the experiment names.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_split(name: &str) -> Result<Split, String> {
    Split::ALL
        .into_iter()
        .find(|split| split.name() == name)
        .ok_or_else(|| format!("unknown split `{name}`, expected val, test or train"))
}

pub fn run(args: EvalArgs) -> Result<()> {
    args.choice.memory.apply();
    let options = EvalOptions {
        splits: (!args.splits.is_empty()).then_some(args.splits),
        kl_batches: args.kl_batches,
        recon_batches: args.recon_batches,
        batch_size: args.batch_size.map(|b| b as usize),
        seed: args.seed,
        weights: args.choice.weights,
        checkpoint: args.choice.checkpoint,
        device: args.choice.device(),
        data: args.data,
    };
    let report = eval::evaluate_model(&args.model, &options)?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!(
            "{} KL batches + {} reconstruction batches of {} × {} tokens, {}, seed {}",
            report.kl_batches,
            report.recon_batches,
            report.batch_size,
            report.seq_len,
            report.process,
            report.seed
        );
        out!("{}", eval::format_estimates(&report.estimates));
        if let Some(csv) = &report.eval_csv {
            outln!("appended to {}", csv.display());
        }
    }
    Ok(())
}
