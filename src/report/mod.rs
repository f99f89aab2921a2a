//! `ddexp report`: compares finished (or running) runs from their files alone — run.json,
//! experiment.ron and the CSV logs; nothing is re-run.
//!
//! Runs whose resolved experiments are equal once `name` and `seed` are removed form a group
//! (the seeds of one configuration). Groups are named by the experiment fields that differ
//! between them (e.g. `sampler=LowDiscrepancy`) and compared with a baseline group (the first,
//! or the one `--baseline` names). Definitions of every number are in [`DEFINITIONS`], which
//! is also printed in report.md.

mod charts;
mod compare;
mod discover;
mod markdown;
mod numbers;

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::results::plot;
use crate::results::{CsvRow, RunStatus, write_atomic, write_rows};
use charts::{Chart, charts};
pub use compare::{GroupSummaryRow, MemberSummaryRow};
use compare::{choose_baseline, findings, group_runs, summarise};
use discover::{discover, load_run};
pub use markdown::DEFINITIONS;
use markdown::markdown;

/// Logged points in the rolling windows (smoothing and loss noise) unless `--window` says.
pub const DEFAULT_WINDOW: usize = 21;

/// What `ddexp report` was asked to do.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Run folders, sweep folders (or their summary.csv), experiment names, or folders to
    /// search for runs; empty means everything under `results_root`.
    pub inputs: Vec<String>,
    pub results_root: PathBuf,
    /// Output folder; default `<sweep>/report` for a single sweep, else `<results>/report`.
    pub out: Option<PathBuf>,
    /// Rolling window W in logged points (odd, at least 3).
    pub window: usize,
    /// A text that appears in exactly one group's label; that group is the baseline.
    pub baseline: Option<String>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            inputs: Vec::new(),
            results_root: PathBuf::from("results"),
            out: None,
            window: DEFAULT_WINDOW,
            baseline: None,
        }
    }
}

/// What a report wrote and found.
#[derive(Debug, Clone)]
pub struct Report {
    pub out_dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// The comparisons with the baseline, in words (also in report.md).
    pub findings: Vec<String>,
    /// Runs skipped, values left out, and similar (also in report.md).
    pub notes: Vec<String>,
    pub runs: usize,
    pub groups: usize,
}

/// Writes the report and returns what it wrote. Everything is read and computed before the
/// first file is written, so bad input leaves nothing behind.
pub fn report(opts: &ReportOptions) -> Result<Report> {
    if opts.window < 3 || opts.window.is_multiple_of(2) {
        bail!(
            "--window {} is not valid: the rolling window must be an odd number of logged points, at least 3",
            opts.window
        );
    }
    let mut notes = Vec::new();
    let (found, single_sweep) = discover(opts, &mut notes)?;
    let mut runs = Vec::new();
    for f in found {
        match load_run(&f, opts.window) {
            Ok(run) => runs.push(run),
            Err(err) if !f.explicit => notes.push(format!("skipped {}: {err:#}", f.dir.display())),
            Err(err) => return Err(err),
        }
    }
    if runs.is_empty() {
        bail!(
            "no runs to report on{}; a run folder has run.json, experiment.ron and train.csv (created by `ddexp run`)",
            if opts.inputs.is_empty() {
                format!(" under {}", opts.results_root.display())
            } else {
                String::new()
            }
        );
    }
    for run in &runs {
        if run.info.status != RunStatus::Completed {
            notes.push(format!(
                "{} is {}: listed, but left out of its group's final bits/token",
                run.name, run.info.status
            ));
        }
        let skipped = run.train.iter().filter(|r| !r.loss.is_finite()).count();
        if skipped > 0 {
            notes.push(format!(
                "{}: {skipped} non-finite train loss value(s) left out",
                run.name
            ));
        }
        if run.noise.is_none() {
            notes.push(format!(
                "{}: too few logged train losses ({}) for the loss noise with a window of {} points",
                run.name,
                run.train.len(),
                opts.window
            ));
        }
    }

    let mut groups = group_runs(&runs)?;
    let baseline = choose_baseline(&groups, opts.baseline.as_deref())?;
    // The baseline goes first: ratios and differences are relative to it.
    let base = groups.remove(baseline);
    groups.insert(0, base);
    for group in &groups {
        let mut seeds: Vec<u64> = group
            .members
            .iter()
            .map(|&i| runs[i].experiment.seed)
            .collect();
        let n = seeds.len();
        seeds.dedup();
        if seeds.len() < n {
            notes.push(format!(
                "group `{}` has several runs with the same seed; each counts as a separate sample",
                group.label
            ));
        }
    }

    let (summary, members) = summarise(&runs, &groups, opts.window);
    let findings = findings(&summary);
    let out_dir = match (&opts.out, &single_sweep) {
        (Some(out), _) => out.clone(),
        (None, Some(sweep)) => sweep.join("report"),
        (None, None) => opts.results_root.join(crate::spec::REPORT_FOLDER),
    };

    refuse_foreign_folder(&out_dir)?;
    let charts = charts(&runs, &groups, opts.window);
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut files = Vec::new();
    for (stem, chart) in &charts {
        let size = (1100, 650);
        let written = match chart {
            Chart::Lines(c) => plot::save(c, &out_dir.join(stem), size)?,
            Chart::ErrorBars(c) => plot::save(c, &out_dir.join(stem), size)?,
        };
        files.extend(written);
    }
    let summary_path = out_dir.join(GroupSummaryRow::FILE);
    write_rows(&summary_path, &summary)?;
    let members_path = out_dir.join(MemberSummaryRow::FILE);
    write_rows(&members_path, &members)?;
    let markdown = markdown(
        opts, &runs, &groups, &summary, &members, &findings, &notes, &charts,
    );
    let md_path = out_dir.join("report.md");
    write_atomic(&md_path, markdown.as_bytes())?;
    files.extend([md_path, summary_path, members_path]);

    Ok(Report {
        out_dir,
        files,
        findings,
        notes,
        runs: runs.len(),
        groups: groups.len(),
    })
}

/// Refuses to write a report into a folder that holds something else ddexp wrote: a sweep's
/// results (its summary.csv has the report's name), a run folder, a model folder or a
/// dataset, whose files the report's would replace or mix with.
fn refuse_foreign_folder(out: &std::path::Path) -> Result<()> {
    let owners = [
        (crate::sweep::SOURCE_FILE, "a sweep's results folder"),
        (crate::sweep::SWEEP_LOCK_FILE, "a sweep's results folder"),
        (crate::results::RUN_INFO_FILE, "a run folder"),
        (crate::checkpoint::INFO_FILE, "a model folder"),
        ("meta.json", "a dataset folder"),
    ];
    if let Some((file, what)) = owners.iter().find(|(file, _)| out.join(file).exists()) {
        bail!(
            "--out {} is {what} (it has {file}); the report would overwrite its files. Pass a \
             folder of its own, e.g. {}",
            out.display(),
            out.join("report").display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
