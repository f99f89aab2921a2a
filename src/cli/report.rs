//! `ddexp report`: compare runs from their logs.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::report;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run folders, sweep folders (or their summary.csv), experiment names, or folders to
    /// search for runs. None: every run under --results.
    pub inputs: Vec<String>,
    /// Folder for report.md, the charts, summary.csv and members.csv
    /// [default: <sweep>/report for a single sweep, else <results>/report].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The results folder that experiment names and sweep names are looked up in.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Rolling window, in logged points (odd, at least 3), for the smoothing and the loss noise.
    #[arg(long, default_value_t = report::DEFAULT_WINDOW)]
    window: usize,
    /// The group the others are compared with: text that appears in exactly one group's label,
    /// e.g. `sampler=Uniform` [default: the first group].
    #[arg(long)]
    baseline: Option<String>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let report = report::report(&report::ReportOptions {
        inputs: args.inputs,
        results_root: args.results,
        out: args.out,
        window: args.window,
        baseline: args.baseline,
    })?;
    for note in &report.notes {
        eoutln!("note: {note}");
    }
    for finding in &report.findings {
        outln!("{finding}");
    }
    outln!(
        "{} runs in {} groups: wrote {}",
        report.runs,
        report.groups,
        report.out_dir.join("report.md").display()
    );
    Ok(())
}
