//! Finding the runs a report covers (run folders, sweep folders, experiment names, folders to
//! search) and loading each from its files.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use walkdir::WalkDir;

use super::ReportOptions;
use crate::model::WeightSet;
use crate::results::stats::{loss_noise, mean_se};
use crate::results::{
    CHECKPOINTS_DIR, CsvRow, EXPERIMENT_FILE, EvalRow, LogRow, RUN_INFO_FILE, RunInfo,
    SweepMemberRow, TrainRow, ValRow, read_experiment, read_rows,
};
use crate::spec::{Experiment, Split};

/// A run folder found from the inputs, with its sweep member name if it came from a sweep.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub(super) dir: PathBuf,
    pub(super) member: Option<String>,
    /// Named directly by the user: failing to load it is an error, not a note.
    pub(super) explicit: bool,
}

/// One loaded run and the numbers derived from it.
#[derive(Debug)]
pub(super) struct Run {
    pub(super) dir: PathBuf,
    pub(super) name: String,
    pub(super) info: RunInfo,
    pub(super) experiment: Experiment,
    pub(super) train: Vec<TrainRow>,
    pub(super) val: Vec<ValRow>,
    pub(super) val_final: Option<Final>,
    pub(super) test_final: Option<Final>,
    pub(super) noise: Option<f64>,
    pub(super) final_train_loss: Option<f64>,
    pub(super) tokens_per_s: Option<f64>,
    pub(super) iters: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Final {
    pub(super) bits: f64,
    pub(super) se: Option<f64>,
    pub(super) source: &'static str,
}

/// Finds the run folders the inputs name. Returns them (first occurrence wins) and the sweep
/// folder when the only input is a sweep.
pub(super) fn discover(
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
pub(super) fn resolve_input(input: &str, results_root: &Path) -> Result<PathBuf> {
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
pub(super) fn walk_runs(root: &Path) -> Result<Vec<Found>> {
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

pub(super) fn load_run(found: &Found, window: usize) -> Result<Run> {
    let dir = &found.dir;
    let info = RunInfo::load(&dir.join(RUN_INFO_FILE))?;
    let experiment = read_experiment(&dir.join(EXPERIMENT_FILE))?;
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

pub(super) fn read_log<R: LogRow>(dir: &Path) -> Result<Vec<R>> {
    let path = dir.join(R::FILE);
    if path.exists() {
        read_rows(&path)
    } else {
        Ok(Vec::new())
    }
}

/// The last finite evaluation of a split, EMA weights preferred.
pub(super) fn final_bits(eval: &[EvalRow], split: Split) -> Option<Final> {
    let rows = || {
        eval.iter()
            .rev()
            .filter(move |r| r.split == split && r.bits_per_token.is_finite())
    };
    let row = rows()
        .find(|r| r.weights == WeightSet::Ema)
        .or_else(|| rows().next())?;
    Some(Final {
        bits: row.bits_per_token,
        se: Some(row.se).filter(|s| s.is_finite()),
        source: "eval.csv",
    })
}
