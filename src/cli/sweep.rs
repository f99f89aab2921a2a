//! `ddexp sweep`: run every member of a sweep folder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::experiments::dedup;
use super::{Interrupted, Overrides};
use crate::results::MemberStatus;
use crate::sweep::{self, Action, SweepOptions};

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The sweep folder: each experiment file in it is a member, and a sweep.ron in it
    /// expands its grid into members.
    dir: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    /// Run up to N members at once, on disjoint devices (GPUs split between them; CPU
    /// members share the cores).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    parallel: u16,
    /// List the members and what would happen to each (start, resume, skip); run and write
    /// nothing.
    #[arg(long)]
    dry_run: bool,
    /// The results folder: runs go to <results>/<experiment>/, the sweep's summary to
    /// <results>/sweeps/<sweep name>/.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

pub fn run(args: SweepArgs) -> Result<()> {
    let opts = SweepOptions {
        dir: args.dir,
        overrides: args.overrides.set,
        parallel: usize::from(args.parallel),
        results_root: args.results,
        exe: std::env::current_exe().context("cannot find the ddexp executable")?,
    };
    let plan = sweep::prepare(&opts).map_err(explain_invalid)?;
    let warnings: Vec<String> = plan
        .members
        .iter()
        .map(|p| p.member.loaded.warnings.render())
        .collect();
    eout!("{}", dedup(warnings));

    if args.dry_run {
        outln!(
            "sweep {}: {} members; summary: {}",
            plan.name,
            plan.members.len(),
            plan.summary_path().display()
        );
        let width = plan
            .members
            .iter()
            .map(|p| p.member.name.len())
            .max()
            .unwrap_or(0);
        for p in &plan.members {
            outln!(
                "  {:<width$}  {:<40}  {}",
                p.member.name,
                p.member.describe(),
                p.action
            );
        }
        return Ok(());
    }

    let outcome = sweep::run(&opts, &plan).map_err(explain_invalid)?;
    for row in &outcome.rows {
        outln!(
            "{:<11} {}",
            format!("{:?}", row.status).to_lowercase(),
            sweep::describe(row)
        );
    }
    outln!("summary: {}", outcome.summary.display());
    if outcome.interrupted {
        let left = outcome
            .rows
            .iter()
            .filter(|r| r.status != MemberStatus::Completed)
            .count();
        eoutln!(
            "sweep interrupted with {left} member(s) not completed; run the same command again to resume them"
        );
        return Err(Interrupted.into());
    }
    let unfinished: Vec<&str> = outcome
        .rows
        .iter()
        .filter(|r| r.status != MemberStatus::Completed)
        .map(|r| r.member.as_str())
        .collect();
    let busy = plan
        .members
        .iter()
        .any(|p| matches!(p.action, Action::Busy(_)));
    if !unfinished.is_empty() {
        bail!(
            "{} of {} members did not complete ({}); see {}{}",
            unfinished.len(),
            outcome.rows.len(),
            unfinished.join(", "),
            outcome.summary.display(),
            if busy {
                " (some are running in another process)"
            } else {
                "; run the sweep again to retry them"
            }
        );
    }
    outln!("next: ddexp report {}", plan.dir.display());
    Ok(())
}

/// Invalid members are printed as located reports; the error that remains says what it means.
fn explain_invalid(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<sweep::InvalidSweep>() {
        Ok(invalid) => {
            for err in &invalid.errors {
                eout!("{}", err.render());
            }
            anyhow::anyhow!(
                "{} sweep member file(s) invalid: nothing was run or written",
                invalid.errors.len()
            )
        }
        Err(e) => e,
    }
}
