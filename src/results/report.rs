//! `ddexp report`: compares finished (or running) runs from their files alone — run.json,
//! experiment.ron and the CSV logs; nothing is re-run.
//!
//! Runs whose resolved experiments are equal once `name` and `seed` are removed form a group
//! (the seeds of one configuration). Groups are named by the experiment fields that differ
//! between them (e.g. `sampler=LowDiscrepancy`) and compared with a baseline group (the first,
//! or the one `--baseline` names). Definitions of every number are in [`DEFINITIONS`], which
//! is also printed in report.md.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use walkdir::WalkDir;

use super::atomic::write_atomic;
use super::csv_log::{CsvRow, EvalRow, LogRow, TrainRow, ValRow, Weights, read_rows, write_rows};
use super::plot::{
    self, Band, ErrorBarChart, ErrorBarPanel, LineChart, Series, YScale, group_style,
};
use super::run_dir::{CHECKPOINTS_DIR, RUN_INFO_FILE, read_experiment};
use super::run_info::{RunInfo, RunStatus, now};
use super::stats::{difference_se, loss_noise, mean_se, ratio_se, rolling_mean, rolling_std};
use super::sweep_summary::SweepMemberRow;
use crate::spec::{Experiment, Split};

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

/// One row of the report's `summary.csv`: a group, with mean ± standard error over its runs
/// and its comparison with the baseline group. Empty fields: not available (e.g. a standard
/// error from a single run, or test bits/token before the final evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummaryRow {
    /// 1-based, in report order.
    pub group: usize,
    pub label: String,
    pub baseline: bool,
    pub runs: usize,
    /// The seeds of the runs, space-separated.
    pub seeds: String,
    /// Smallest last logged iteration among the runs.
    pub iters: u64,
    pub val_bits: Option<f64>,
    pub val_bits_se: Option<f64>,
    pub test_bits: Option<f64>,
    pub test_bits_se: Option<f64>,
    /// This group's mean minus the baseline's.
    pub val_delta: Option<f64>,
    pub val_delta_se: Option<f64>,
    pub test_delta: Option<f64>,
    pub test_delta_se: Option<f64>,
    /// Loss noise in nats/token.
    pub noise: Option<f64>,
    pub noise_se: Option<f64>,
    /// This group's mean loss noise divided by the baseline's.
    pub noise_ratio: Option<f64>,
    pub noise_ratio_se: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub final_train_loss_se: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// The rolling window W used for the noise and the smoothing.
    pub window: usize,
}

impl CsvRow for GroupSummaryRow {
    const FILE: &'static str = "summary.csv";
    const HEADER: &'static [&'static str] = &[
        "group",
        "label",
        "baseline",
        "runs",
        "seeds",
        "iters",
        "val_bits",
        "val_bits_se",
        "test_bits",
        "test_bits_se",
        "val_delta",
        "val_delta_se",
        "test_delta",
        "test_delta_se",
        "noise",
        "noise_se",
        "noise_ratio",
        "noise_ratio_se",
        "final_train_loss",
        "final_train_loss_se",
        "tokens_per_s",
        "window",
    ];
}

/// One row of the report's `members.csv`: one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSummaryRow {
    pub group: usize,
    pub label: String,
    pub run: String,
    pub run_dir: String,
    pub seed: u64,
    pub status: RunStatus,
    pub iters: u64,
    pub val_bits: Option<f64>,
    pub val_se: Option<f64>,
    /// `eval.csv` (final evaluation) or `val.csv` (last validation, before the final one).
    pub val_source: String,
    pub test_bits: Option<f64>,
    pub test_se: Option<f64>,
    pub noise: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub tokens_per_s: Option<f64>,
}

impl CsvRow for MemberSummaryRow {
    const FILE: &'static str = "members.csv";
    const HEADER: &'static [&'static str] = &[
        "group",
        "label",
        "run",
        "run_dir",
        "seed",
        "status",
        "iters",
        "val_bits",
        "val_se",
        "val_source",
        "test_bits",
        "test_se",
        "noise",
        "final_train_loss",
        "tokens_per_s",
    ];
}

/// How every number in the report is defined (printed in report.md; also docs/report.md).
pub const DEFINITIONS: &str = "\
- **Groups.** Runs whose resolved experiments (experiment.ron) are identical once `name` and `seed` \
are removed form a group. A group is named by the experiment fields whose values differ between \
groups; the baseline is the first group (or the one `--baseline` names).
- **mean ± s.e.** Over the runs of a group: the mean and the standard error of the mean, \
s.e. = sample standard deviation (divisor n − 1) / √n. Differences between groups have \
s.e. = √(s.e.₁² + s.e.₂²); ratios a/b have s.e. = (a/b)·√((s.e.ₐ/a)² + (s.e._b/b)²) (first-order \
propagation, groups independent). \"Clearly\" lower or higher means more than 2 s.e. apart; with \
a handful of seeds this is a rough guide, not a significance test.
- **Final bits/token.** From eval.csv (the final evaluation, EMA weights preferred; the last \
row per split). Its error bar in the per-run chart is the evaluation's own standard error. A \
run without a final val evaluation uses the last row of val.csv (marked `val.csv`).
- **Loss noise (nats/token).** For each run, take the train loss as logged in train.csv (one \
value per log interval; non-finite values left out) as x₁ … xₙ. For each point i whose centred \
window of W logged points (i − h … i + h, W = 2h + 1) fits in the series, s_i is the sample \
standard deviation (divisor W − 1) of the window's values around their own mean: the rolling \
standard deviation. The run's loss noise is the mean of s_i over the points of the second half \
(0-based i ≥ ⌊n/2⌋), where the loss changes slowly compared with the window. Groups are compared \
by mean ± s.e. over their runs and by the ratio to the baseline group. Runs must log at the \
same interval for their noise to be comparable.
- **Final train loss.** Mean of the last W logged train losses of a run.
- **Charts.** Each group's curve is the mean over its runs at the iterations all of them \
logged; the shaded band spans the lowest to the highest run. Train losses are smoothed with a \
centred rolling mean of W logged points (the window shrinks symmetrically at the ends, to no fewer than W/4 points on each side); the loss-noise chart shows the rolling standard \
deviation s_i.";

/// A run folder found from the inputs, with its sweep member name if it came from a sweep.
#[derive(Debug, Clone)]
struct Found {
    dir: PathBuf,
    member: Option<String>,
    /// Named directly by the user: failing to load it is an error, not a note.
    explicit: bool,
}

/// One loaded run and the numbers derived from it.
#[derive(Debug)]
struct Run {
    dir: PathBuf,
    name: String,
    info: RunInfo,
    experiment: Experiment,
    train: Vec<TrainRow>,
    val: Vec<ValRow>,
    val_final: Option<Final>,
    test_final: Option<Final>,
    noise: Option<f64>,
    final_train_loss: Option<f64>,
    tokens_per_s: Option<f64>,
    iters: u64,
}

#[derive(Debug, Clone, Copy)]
struct Final {
    bits: f64,
    se: Option<f64>,
    source: &'static str,
}

#[derive(Debug)]
struct Group {
    label: String,
    /// The differing fields as (path, value).
    fields: Vec<(String, String)>,
    /// Indices into the runs, ordered by seed.
    members: Vec<usize>,
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
        (None, None) => opts.results_root.join("report"),
    };

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

/// Finds the run folders the inputs name. Returns them (first occurrence wins) and the sweep
/// folder when the only input is a sweep.
fn discover(
    opts: &ReportOptions,
    notes: &mut Vec<String>,
) -> Result<(Vec<Found>, Option<PathBuf>)> {
    let mut found = Vec::new();
    let mut sweeps = Vec::new();
    if opts.inputs.is_empty() {
        if !opts.results_root.is_dir() {
            bail!(
                "{} does not exist: there are no runs yet (`ddexp run EXPERIMENT.ron` creates them)",
                opts.results_root.display()
            );
        }
        found.extend(walk_runs(&opts.results_root)?);
    }
    for input in &opts.inputs {
        let path = resolve_input(input, &opts.results_root)?;
        let summary = if path.is_file() {
            Some(path.clone())
        } else {
            Some(path.join(SweepMemberRow::FILE)).filter(|p| p.is_file())
        };
        if path.join(RUN_INFO_FILE).is_file() {
            found.push(Found {
                dir: path,
                member: None,
                explicit: true,
            });
        } else if let Some(summary) = summary {
            let sweep_dir = summary.parent().unwrap_or(Path::new(".")).to_path_buf();
            for row in read_rows::<SweepMemberRow>(&summary)? {
                match row.run_path(&sweep_dir) {
                    Some(dir) if dir.join(RUN_INFO_FILE).is_file() => found.push(Found {
                        dir,
                        member: Some(row.member),
                        explicit: false,
                    }),
                    Some(dir) => notes.push(format!(
                        "sweep member {}: run folder {} not found",
                        row.member,
                        dir.display()
                    )),
                    None => notes.push(format!(
                        "sweep member {} has not started ({})",
                        row.member,
                        summary.display()
                    )),
                }
            }
            sweeps.push(sweep_dir);
        } else {
            let runs = walk_runs(&path)?;
            if runs.is_empty() {
                // A sweep's definition folder (experiments/x/) is a likely slip for its
                // results (results/sweeps/x/).
                let results = fs::canonicalize(&path)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_owned()))
                    .map(|name| crate::sweep::results_dir(&opts.results_root, name))
                    .filter(|r| r.join(SweepMemberRow::FILE).is_file());
                bail!(
                    "{} holds no run folders (folders with {RUN_INFO_FILE}) and no sweep {}{}",
                    path.display(),
                    SweepMemberRow::FILE,
                    match results {
                        Some(r) => format!(
                            "; the results of the sweep it defines are in {}: `ddexp report {}`",
                            r.display(),
                            r.display()
                        ),
                        None => String::new(),
                    }
                );
            }
            found.extend(runs);
        }
    }
    let mut seen = HashSet::new();
    found.retain(|f| seen.insert(fs::canonicalize(&f.dir).unwrap_or_else(|_| f.dir.clone())));
    let single_sweep = (opts.inputs.len() == 1 && sweeps.len() == 1).then(|| sweeps.remove(0));
    Ok((found, single_sweep))
}

/// An input is a path if it exists, else an experiment name under the results folder, else a
/// sweep name under `results/sweeps/`.
fn resolve_input(input: &str, results_root: &Path) -> Result<PathBuf> {
    let candidates = [
        PathBuf::from(input),
        results_root.join(input),
        crate::sweep::results_dir(results_root, input),
    ];
    if let Some(path) = candidates.iter().find(|p| p.exists()) {
        return Ok(path.clone());
    }
    bail!(
        "`{input}` is neither a run folder, a sweep folder nor an experiment name: none of {} exists",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Every folder below `root` holding a run.json, sorted, not looking inside run folders.
fn walk_runs(root: &Path) -> Result<Vec<Found>> {
    let mut runs = Vec::new();
    let mut walk = WalkDir::new(root).sort_by_file_name().into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
        if !entry.file_type().is_dir() {
            continue;
        }
        if entry.path().join(RUN_INFO_FILE).is_file() {
            runs.push(Found {
                dir: entry.path().to_path_buf(),
                member: None,
                explicit: false,
            });
            walk.skip_current_dir();
        } else if entry.file_name() == CHECKPOINTS_DIR {
            walk.skip_current_dir();
        }
    }
    Ok(runs)
}

fn load_run(found: &Found, window: usize) -> Result<Run> {
    let dir = &found.dir;
    let info = RunInfo::load(&dir.join(RUN_INFO_FILE))?;
    let experiment = read_experiment(&dir.join(super::run_dir::EXPERIMENT_FILE))?;
    let train: Vec<TrainRow> = read_log(dir)?;
    let val: Vec<ValRow> = read_log(dir)?;
    let eval: Vec<EvalRow> = read_log(dir)?;

    let losses: Vec<f64> = train
        .iter()
        .map(|r| r.loss)
        .filter(|v| v.is_finite())
        .collect();
    let last_w = &losses[losses.len().saturating_sub(window)..];
    let mut speeds: Vec<f64> = train
        .iter()
        .map(|r| r.tokens_per_s)
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    speeds.sort_by(f64::total_cmp);
    let val_final = final_bits(&eval, Split::Val).or_else(|| {
        val.iter()
            .rev()
            .find(|r| r.bits_per_token.is_finite())
            .map(|r| Final {
                bits: r.bits_per_token,
                se: Some(r.bits_se).filter(|s| s.is_finite()),
                source: "val.csv",
            })
    });
    Ok(Run {
        name: found
            .member
            .clone()
            .unwrap_or_else(|| format!("{}/{}", info.experiment, info.run_id)),
        dir: dir.clone(),
        val_final,
        test_final: final_bits(&eval, Split::Test),
        noise: loss_noise(&losses, window),
        final_train_loss: mean_se(last_w).map(|m| m.0),
        tokens_per_s: speeds.get(speeds.len() / 2).copied(),
        iters: train.last().map_or(0, |r| r.iter),
        info,
        experiment,
        train,
        val,
    })
}

fn read_log<R: LogRow>(dir: &Path) -> Result<Vec<R>> {
    let path = dir.join(R::FILE);
    if path.exists() {
        read_rows(&path)
    } else {
        Ok(Vec::new())
    }
}

/// The last finite evaluation of a split, EMA weights preferred.
fn final_bits(eval: &[EvalRow], split: Split) -> Option<Final> {
    let rows = || {
        eval.iter()
            .rev()
            .filter(move |r| r.split == split && r.bits_per_token.is_finite())
    };
    let row = rows()
        .find(|r| r.weights == Weights::Ema)
        .or_else(|| rows().next())?;
    Some(Final {
        bits: row.bits_per_token,
        se: Some(row.se).filter(|s| s.is_finite()),
        source: "eval.csv",
    })
}

/// Groups runs by their experiment without name and seed, in order of first appearance, and
/// labels each group by the fields that differ between groups.
fn group_runs(runs: &[Run]) -> Result<Vec<Group>> {
    let mut keys: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let mut value = serde_json::to_value(&run.experiment)?;
        if let Value::Object(map) = &mut value {
            map.remove("name");
            map.remove("seed");
        }
        let key = value.to_string();
        match keys.iter().position(|(k, _)| *k == key) {
            Some(g) => members[g].push(i),
            None => {
                let mut flat = BTreeMap::new();
                flatten("", &value, &mut flat);
                keys.push((key, flat));
                members.push(vec![i]);
            }
        }
    }
    let all_paths: BTreeSet<&String> = keys.iter().flat_map(|(_, flat)| flat.keys()).collect();
    let differing: Vec<&String> = all_paths
        .into_iter()
        .filter(|p| {
            let first = keys[0].1.get(*p);
            keys.iter().any(|(_, flat)| flat.get(*p) != first)
        })
        .collect();
    Ok(keys
        .iter()
        .zip(members)
        .map(|((_, flat), mut members)| {
            members.sort_by_key(|&i| runs[i].experiment.seed);
            let fields: Vec<(String, String)> = differing
                .iter()
                .map(|p| {
                    (
                        (*p).clone(),
                        flat.get(*p).cloned().unwrap_or_else(|| "(absent)".into()),
                    )
                })
                .collect();
            let label = if fields.is_empty() {
                let names: BTreeSet<&str> = members
                    .iter()
                    .map(|&i| runs[i].experiment.name.as_str())
                    .collect();
                names.into_iter().collect::<Vec<_>>().join(" + ")
            } else {
                fields
                    .iter()
                    .map(|(p, v)| format!("{p}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Group {
                label,
                fields,
                members,
            }
        })
        .collect())
}

/// Flattens JSON into dotted paths: `{"train": {"lr": 0.001}}` → `train.lr` = `0.001`.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn choose_baseline(groups: &[Group], wanted: Option<&str>) -> Result<usize> {
    let Some(wanted) = wanted else { return Ok(0) };
    let matches: Vec<usize> = (0..groups.len())
        .filter(|&g| groups[g].label.contains(wanted))
        .collect();
    match matches[..] {
        [g] => Ok(g),
        _ => bail!(
            "--baseline `{wanted}` matches {} groups; it must match exactly one of: {}",
            matches.len(),
            groups
                .iter()
                .map(|g| format!("`{}`", g.label))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn summarise(
    runs: &[Run],
    groups: &[Group],
    window: usize,
) -> (Vec<GroupSummaryRow>, Vec<MemberSummaryRow>) {
    let mut summary: Vec<GroupSummaryRow> = Vec::new();
    let mut members = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let of = |f: &dyn Fn(&Run) -> Option<f64>| {
            let values: Vec<f64> = group.members.iter().filter_map(|&i| f(&runs[i])).collect();
            mean_se(&values)
        };
        // Final bits/token only of runs that finished: a stopped run's last validation is
        // another estimator at another iteration.
        let finished = |r: &Run| r.info.status == RunStatus::Completed;
        let val = of(&|r| r.val_final.filter(|_| finished(r)).map(|f| f.bits));
        let test = of(&|r| r.test_final.filter(|_| finished(r)).map(|f| f.bits));
        let noise = of(&|r| r.noise);
        let train_loss = of(&|r| r.final_train_loss);
        let speed = of(&|r| r.tokens_per_s);
        let base = summary.first();
        type Op = fn(f64, Option<f64>, f64, Option<f64>) -> (f64, Option<f64>);
        let compare = |mine: Option<(f64, Option<f64>)>,
                       theirs: (Option<f64>, Option<f64>),
                       op: Op| match (mine, theirs) {
            (Some((a, sa)), (Some(b), sb)) => {
                let (v, se) = op(a, sa, b, sb);
                (Some(v), se)
            }
            _ => (None, None),
        };
        // The baseline compared with itself: difference 0 and ratio 1, exactly.
        let exact = |mine: Option<(f64, Option<f64>)>, v: f64| (mine.map(|_| v), None);
        let ((val_delta, val_delta_se), (test_delta, test_delta_se), (noise_ratio, noise_ratio_se)) =
            match base {
                None => (exact(val, 0.0), exact(test, 0.0), exact(noise, 1.0)),
                Some(b) => (
                    compare(val, (b.val_bits, b.val_bits_se), difference_se),
                    compare(test, (b.test_bits, b.test_bits_se), difference_se),
                    compare(noise, (b.noise, b.noise_se), ratio_se),
                ),
            };
        summary.push(GroupSummaryRow {
            group: g + 1,
            label: group.label.clone(),
            baseline: g == 0,
            runs: group.members.len(),
            seeds: group
                .members
                .iter()
                .map(|&i| runs[i].experiment.seed.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            iters: group
                .members
                .iter()
                .map(|&i| runs[i].iters)
                .min()
                .unwrap_or(0),
            val_bits: val.map(|m| m.0),
            val_bits_se: val.and_then(|m| m.1),
            test_bits: test.map(|m| m.0),
            test_bits_se: test.and_then(|m| m.1),
            val_delta,
            val_delta_se,
            test_delta,
            test_delta_se,
            noise: noise.map(|m| m.0),
            noise_se: noise.and_then(|m| m.1),
            noise_ratio,
            noise_ratio_se,
            final_train_loss: train_loss.map(|m| m.0),
            final_train_loss_se: train_loss.and_then(|m| m.1),
            tokens_per_s: speed.map(|m| m.0),
            window,
        });
        for &i in &group.members {
            let run = &runs[i];
            members.push(MemberSummaryRow {
                group: g + 1,
                label: group.label.clone(),
                run: run.name.clone(),
                run_dir: run.dir.display().to_string(),
                seed: run.experiment.seed,
                status: run.info.status,
                iters: run.iters,
                val_bits: run.val_final.map(|f| f.bits),
                val_se: run.val_final.and_then(|f| f.se),
                val_source: run.val_final.map_or("", |f| f.source).to_string(),
                test_bits: run.test_final.map(|f| f.bits),
                test_se: run.test_final.and_then(|f| f.se),
                noise: run.noise,
                final_train_loss: run.final_train_loss,
                tokens_per_s: run.tokens_per_s,
            });
        }
    }
    (summary, members)
}

/// The comparisons of each group with the baseline, in words.
fn findings(summary: &[GroupSummaryRow]) -> Vec<String> {
    let Some(base) = summary.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for g in &summary[1..] {
        let (a, b) = (&g.label, &base.label);
        if let (Some(ratio), Some(noise), Some(base_noise)) = (g.noise_ratio, g.noise, base.noise) {
            let (diff, diff_se) = difference_se(noise, g.noise_se, base_noise, base.noise_se);
            out.push(format!(
                "Loss noise of `{a}` relative to `{b}`: ratio {} ({}); difference {} nats/token.",
                pm(ratio, g.noise_ratio_se),
                verdict(diff, diff_se, "lower", "higher"),
                pm(diff, diff_se)
            ));
        }
        for (what, delta, delta_se) in [
            ("val", g.val_delta, g.val_delta_se),
            ("test", g.test_delta, g.test_delta_se),
        ] {
            if let Some(delta) = delta {
                out.push(format!(
                    "Final {what} bits/token of `{a}` minus `{b}`: {} ({}).",
                    pm(delta, delta_se),
                    verdict(delta, delta_se, "lower", "higher")
                ));
            }
        }
    }
    out
}

/// Whether a difference is more than 2 standard errors from zero.
fn verdict(diff: f64, se: Option<f64>, below: &str, above: &str) -> String {
    match se {
        Some(se) if se > 0.0 => {
            let z = diff / se;
            if z <= -2.0 {
                format!("clearly {below}: {:.1} s.e. below", -z)
            } else if z >= 2.0 {
                format!("clearly {above}: {z:.1} s.e. above")
            } else {
                format!("no clear difference: within 2 s.e. ({z:+.1})")
            }
        }
        _ => "no error bar: needs at least 2 runs in each group".into(),
    }
}

/// A value with 4 significant digits and its standard error with at least 2, both with the
/// same decimals.
fn pm(v: f64, se: Option<f64>) -> String {
    match se {
        Some(se) => {
            let se_decimals = if se > 0.0 && se.is_finite() {
                (1 - se.log10().floor() as i64).clamp(0, 8) as usize
            } else {
                0
            };
            let decimals = decimals_for(v).max(se_decimals);
            format!("{v:.decimals$} ± {se:.decimals$}")
        }
        None => format!("{v:.*}", decimals_for(v)),
    }
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.*}", decimals_for(v)))
}

fn decimals_for(v: f64) -> usize {
    if v == 0.0 || !v.is_finite() {
        return 4;
    }
    (3 - v.abs().log10().floor() as i64).clamp(0, 8) as usize
}

fn pm_opt(v: Option<f64>, se: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| pm(v, se))
}

enum Chart {
    Lines(LineChart),
    ErrorBars(ErrorBarChart),
}

/// One run's curve for a chart: (iteration, x, y).
type Curve = Vec<(u64, f64, f64)>;

/// Mean over curves at the keys (iterations) all of them have: (mean x, mean y, min y, max y).
fn align(curves: &[Curve]) -> Vec<(f64, f64, f64, f64)> {
    let Some(first) = curves.first() else {
        return Vec::new();
    };
    let maps: Vec<BTreeMap<u64, (f64, f64)>> = curves
        .iter()
        .map(|c| c.iter().map(|&(k, x, y)| (k, (x, y))).collect())
        .collect();
    first
        .iter()
        .filter_map(|&(k, _, _)| {
            let points: Option<Vec<(f64, f64)>> = maps.iter().map(|m| m.get(&k).copied()).collect();
            let points = points?;
            let n = points.len() as f64;
            let x = points.iter().map(|p| p.0).sum::<f64>() / n;
            let ys = points.iter().map(|p| p.1);
            let mean = ys.clone().sum::<f64>() / n;
            let lo = ys.clone().fold(f64::INFINITY, f64::min);
            let hi = ys.fold(f64::NEG_INFINITY, f64::max);
            Some((x, mean, lo, hi))
        })
        .collect()
}

/// A chart with one mean curve and band per group, from a per-run curve function.
fn group_chart(
    runs: &[Run],
    groups: &[Group],
    title: &str,
    x_label: &str,
    y_label: &str,
    y_scale: YScale,
    curve: &dyn Fn(&Run) -> Curve,
) -> LineChart {
    let mut chart = LineChart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        y_scale,
        secondary_x: None,
        bands: Vec::new(),
        series: Vec::new(),
        notes: Vec::new(),
    };
    for (g, group) in groups.iter().enumerate() {
        let curves: Vec<_> = group
            .members
            .iter()
            .map(|&i| curve(&runs[i]))
            .filter(|c| !c.is_empty())
            .collect();
        let aligned = align(&curves);
        if aligned.is_empty() {
            chart.notes.push(format!(
                "group `{}`: no data for this chart",
                short(&group.label)
            ));
            continue;
        }
        let longest = curves
            .iter()
            .map(|c| c.last().map_or(0, |p| p.0))
            .max()
            .unwrap_or(0);
        if curves.iter().any(|c| c.len() != aligned.len()) {
            chart.notes.push(format!(
                "group `{}`: drawn where all {} runs have data ({} points; the longest run reaches iteration {longest})",
                short(&group.label),
                curves.len(),
                aligned.len()
            ));
        }
        let mut style = group_style(g);
        style.marker_every = aligned.len().div_ceil(12).max(1);
        if curves.len() >= 2 {
            chart.bands.push(Band {
                points: aligned.iter().map(|p| (p.0, p.2, p.3)).collect(),
                color: style.color,
            });
        }
        chart.series.push(Series {
            label: Some(format!(
                "{} ({} run{})",
                short(&group.label),
                curves.len(),
                if curves.len() == 1 { "" } else { "s" }
            )),
            points: aligned.iter().map(|p| (p.0, p.1)).collect(),
            style,
            markers_only: false,
        });
    }
    chart
}

/// Labels in charts stay on one line.
fn short(label: &str) -> String {
    if label.chars().count() <= 60 {
        label.to_string()
    } else {
        label.chars().take(57).collect::<String>() + "..."
    }
}

fn charts(runs: &[Run], groups: &[Group], w: usize) -> Vec<(&'static str, Chart)> {
    let finite_losses = |run: &Run| -> Vec<(u64, f64)> {
        run.train
            .iter()
            .filter(|r| r.loss.is_finite())
            .map(|r| (r.iter, r.loss))
            .collect()
    };
    let smoothed = |run: &Run| {
        let pts = finite_losses(run);
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        pts.iter()
            .zip(rolling_mean(&ys, w))
            .filter_map(|(p, m)| m.map(|m| (p.0, p.0 as f64, m)))
            .collect()
    };
    let noise = |run: &Run| {
        let pts = finite_losses(run);
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        pts.iter()
            .zip(rolling_std(&ys, w))
            .filter_map(|(p, s)| s.map(|s| (p.0, p.0 as f64, s)))
            .collect()
    };
    let val_by_iter = |run: &Run| {
        run.val
            .iter()
            .filter(|r| r.bits_per_token.is_finite())
            .map(|r| (r.iter, r.iter as f64, r.bits_per_token))
            .collect()
    };
    let val_by_tokens = |run: &Run| {
        run.val
            .iter()
            .filter(|r| r.bits_per_token.is_finite())
            .map(|r| (r.iter, r.tokens as f64, r.bits_per_token))
            .collect()
    };
    let iteration = "iteration (optimiser steps)";
    let mut charts = vec![
        (
            "train_loss",
            Chart::Lines(group_chart(
                runs,
                groups,
                "Train loss (smoothed), mean over seeds",
                iteration,
                &format!("train loss per token (nats), centred mean of {w} logged steps"),
                YScale::Auto,
                &smoothed,
            )),
        ),
        (
            "val_bits_vs_iter",
            Chart::Lines(group_chart(
                runs,
                groups,
                "Validation bits/token, mean over seeds",
                iteration,
                "val bits/token",
                YScale::Auto,
                &val_by_iter,
            )),
        ),
        (
            "val_bits_vs_tokens",
            Chart::Lines(group_chart(
                runs,
                groups,
                "Validation bits/token against training tokens",
                "training tokens seen",
                "val bits/token",
                YScale::Auto,
                &val_by_tokens,
            )),
        ),
        (
            "loss_noise",
            Chart::Lines(group_chart(
                runs,
                groups,
                "Loss noise: rolling standard deviation of the train loss",
                iteration,
                &format!("std of train loss over {w} logged steps (nats)"),
                YScale::Auto,
                &noise,
            )),
        ),
    ];

    let order: Vec<usize> = groups
        .iter()
        .flat_map(|g| g.members.iter().copied())
        .collect();
    let group_of: BTreeMap<usize, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, grp)| grp.members.iter().map(move |&i| (i, g)))
        .collect();
    let panel = |title: &str, f: &dyn Fn(&Run) -> Option<Final>| ErrorBarPanel {
        title: title.into(),
        items: order
            .iter()
            .enumerate()
            .filter_map(|(x, &i)| f(&runs[i]).map(|v| (x, group_of[&i], v.bits, v.se)))
            .collect(),
    };
    let mut panels = vec![
        panel("val", &|r| r.val_final),
        panel("test", &|r| r.test_final),
    ];
    let mut notes = Vec::new();
    panels.retain(|p| {
        if p.items.is_empty() {
            notes.push(format!("no run has a final {} bits/token yet", p.title));
        }
        !p.items.is_empty()
    });
    charts.push((
        "final_bits",
        Chart::ErrorBars(ErrorBarChart {
            title: "Final bits/token per run (error bars: the evaluation's standard error; dashed: group mean)".into(),
            y_label: "bits/token".into(),
            item_labels: order.iter().map(|&i| format!("seed {}", runs[i].experiment.seed)).collect(),
            groups: groups.iter().map(|g| short(&g.label)).collect(),
            panels,
            notes,
        }),
    ));
    charts
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    opts: &ReportOptions,
    runs: &[Run],
    groups: &[Group],
    summary: &[GroupSummaryRow],
    members: &[MemberSummaryRow],
    findings: &[String],
    notes: &[String],
    charts: &[(&str, Chart)],
) -> String {
    let mut md = String::new();
    let inputs = if opts.inputs.is_empty() {
        format!("everything under `{}`", opts.results_root.display())
    } else {
        opts.inputs
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(md, "# ddexp report\n");
    let _ = writeln!(
        md,
        "{} runs in {} groups, from {inputs}. Written {} by ddexp {}; rolling window W = {} logged points. \
         Numbers are mean ± standard error over the runs (seeds) of a group; definitions at the end.\n",
        runs.len(),
        groups.len(),
        now(),
        env!("CARGO_PKG_VERSION"),
        opts.window
    );

    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "| group | runs | final val bits/token | final test bits/token | loss noise (nats/token) | noise ratio to baseline | final train loss (nats) | tokens/s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for s in summary {
        let name = if s.baseline {
            format!("`{}` (baseline)", s.label)
        } else {
            format!("`{}`", s.label)
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            s.runs,
            pm_opt(s.val_bits, s.val_bits_se),
            pm_opt(s.test_bits, s.test_bits_se),
            pm_opt(s.noise, s.noise_se),
            pm_opt(s.noise_ratio, s.noise_ratio_se),
            pm_opt(s.final_train_loss, s.final_train_loss_se),
            s.tokens_per_s.map_or("–".into(), |v| format!("{v:.0}")),
        );
    }
    if !findings.is_empty() {
        let _ = writeln!(
            md,
            "\n**Compared with the baseline `{}`:**\n",
            summary[0].label
        );
        for f in findings {
            let _ = writeln!(md, "- {f}");
        }
    }

    let _ = writeln!(md, "\n## Charts\n");
    for (stem, chart) in charts {
        let title = match chart {
            Chart::Lines(c) => &c.title,
            Chart::ErrorBars(c) => &c.title,
        };
        let _ = writeln!(
            md,
            "### {title}\n\n![{title}]({stem}.png)\n\n[SVG]({stem}.svg)\n"
        );
    }

    let _ = writeln!(md, "## Groups\n");
    for (g, group) in groups.iter().enumerate() {
        let s = &summary[g];
        let _ = writeln!(
            md,
            "### {}. `{}`{}\n",
            g + 1,
            group.label,
            if g == 0 { " (baseline)" } else { "" }
        );
        let experiments: BTreeSet<&str> = group
            .members
            .iter()
            .map(|&i| runs[i].experiment.name.as_str())
            .collect();
        let _ = writeln!(
            md,
            "Experiment name(s): {}.",
            experiments
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !group.fields.is_empty() {
            let fields = group
                .fields
                .iter()
                .map(|(p, v)| format!("`{p}` = `{v}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(md, "Differs from the other groups in: {fields}.");
        }
        let _ = writeln!(
            md,
            "\n| run | seed | status | iterations | final val bits/token | final test bits/token | loss noise | final train loss | tokens/s |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for m in members.iter().filter(|m| m.group == g + 1) {
            let source = if m.val_source == "val.csv" {
                " (val.csv)"
            } else {
                ""
            };
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {}{source} | {} | {} | {} | {} |",
                m.run,
                m.seed,
                m.status,
                m.iters,
                pm_opt(m.val_bits, m.val_se),
                pm_opt(m.test_bits, m.test_se),
                num(m.noise),
                num(m.final_train_loss),
                m.tokens_per_s.map_or("–".into(), |v| format!("{v:.0}")),
            );
        }
        let _ = writeln!(
            md,
            "| **mean ± s.e.** | {} | | {} | {} | {} | {} | {} | {} |\n",
            s.seeds,
            s.iters,
            pm_opt(s.val_bits, s.val_bits_se),
            pm_opt(s.test_bits, s.test_bits_se),
            pm_opt(s.noise, s.noise_se),
            pm_opt(s.final_train_loss, s.final_train_loss_se),
            s.tokens_per_s.map_or("–".into(), |v| format!("{v:.0}")),
        );
    }

    let _ = writeln!(md, "## Definitions\n\n{DEFINITIONS}\n");
    let _ = writeln!(
        md,
        "Files: `summary.csv` (one row per group), `members.csv` (one row per run), and each chart as PNG and SVG.\n"
    );
    if !notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

#[cfg(test)]
mod tests;
