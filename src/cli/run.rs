//! `ddexp run`: train an experiment, or resume a stopped run.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Interrupted, Overrides};
use crate::eval;
use crate::spec;
use crate::train::{self, Ending};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The experiment file to train.
    #[arg(required_unless_present = "resume")]
    experiment: Option<PathBuf>,
    /// Continue a stopped or killed run from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["experiment", "set"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    /// Folder that holds one folder per experiment.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

pub fn run(args: RunArgs) -> Result<()> {
    let report = match (&args.resume, &args.experiment) {
        (Some(dir), _) => train::resume(dir)?,
        (None, Some(file)) => {
            let loaded = spec::load(file, &args.overrides.set)?;
            eprint!("{}", loaded.warnings.render());
            train::run(&loaded, &args.results)?
        }
        (None, None) => unreachable!("clap requires an experiment or --resume"),
    };
    match report.ending {
        Ending::Completed => {
            print!("{}", eval::format_estimates(&report.estimates));
            println!("results: {}", report.run_dir.display());
            Ok(())
        }
        Ending::Interrupted { iteration } => {
            eprintln!(
                "interrupted at iteration {iteration}; checkpoint saved. Resume with:\n  ddexp run --resume {}",
                report.run_dir.display()
            );
            Err(Interrupted.into())
        }
    }
}
