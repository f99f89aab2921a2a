//! `ddexp bench`: time the training step of an experiment.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{MemoryCheck, Overrides};
use crate::spec;
use crate::spec::limits::MAX_STEPS;
use crate::train::bench;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The experiment whose training step is timed (model, batch, backend).
    experiment: PathBuf,
    /// Timed steps.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_STEPS))]
    steps: u64,
    /// Untimed steps first (kernel compilation, allocator warm-up).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=MAX_STEPS))]
    warmup: u64,
    #[command(flatten)]
    overrides: Overrides,
    #[command(flatten)]
    memory: MemoryCheck,
}

pub fn run(args: BenchArgs) -> Result<()> {
    args.memory.apply();
    let loaded = spec::load(&args.experiment, &args.overrides.set)?;
    // A warning that is an error here (Cuda in a CPU-only build) is reported once, as one.
    loaded.require_runnable()?;
    eout!("{}", loaded.warnings.render());
    let report = bench::bench(&loaded, args.steps, args.warmup)?;
    out!("{}", report.render());
    Ok(())
}
