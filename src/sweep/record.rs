//! What a sweep records about a member: how its run ended and its numbers, read from the run
//! folder (run.json, eval.csv, train.csv) and the member's log; and the lock that keeps two
//! sweeps from working on the same summary.

use std::fs;
use std::path::Path;
use std::process::ExitStatus;

use anyhow::{Context, Result, bail};

use crate::model::WeightSet;
use crate::results::{
    Attempt, CsvRow, EvalRow, FolderLock, MemberStatus, RunInfo, RunStatus, SweepMemberRow,
    TrainRow, read_rows,
};
use crate::spec::Split;

/// The exit status `ddexp run` uses when it stopped on Ctrl-C after saving a checkpoint.
pub const INTERRUPTED_EXIT: i32 = 130;

/// How a member's attempt ended, from the child's exit status, its run folder (if it made
/// one) and its log. `stopping`: the sweep passed on a Ctrl-C, so a child that a signal ended
/// (one interrupted before it could handle Ctrl-C itself) was interrupted, not failed.
pub fn ending(
    exit: &std::io::Result<ExitStatus>,
    run_dir: Option<&Path>,
    log: &Path,
    stopping: bool,
) -> (MemberStatus, Option<String>) {
    let info = run_dir.and_then(|d| RunInfo::load(&d.join(crate::results::RUN_INFO_FILE)).ok());
    let code = exit.as_ref().ok().and_then(ExitStatus::code);
    let status = info.as_ref().map(|i| i.status);
    if code == Some(0) && status == Some(RunStatus::Completed) {
        return (MemberStatus::Completed, None);
    }
    let by_signal = exit.as_ref().ok().and_then(signal).is_some();
    if code == Some(INTERRUPTED_EXIT)
        || status == Some(RunStatus::Interrupted)
        || (stopping && by_signal)
    {
        return (MemberStatus::Interrupted, None);
    }
    let why = info
        .and_then(|i| i.error)
        .or_else(|| error_in_log(log))
        .unwrap_or_else(|| match exit {
            Ok(s) => match (s.code(), signal(s)) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(c), _) => format!("exited with status {c}"),
                _ => format!("ended with {s}"),
            },
            Err(e) => format!("could not be waited for: {e}"),
        });
    (
        MemberStatus::Failed,
        Some(format!("{why} (log: {})", log.display())),
    )
}

#[cfg(unix)]
fn signal(status: &ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn signal(_: &ExitStatus) -> Option<i32> {
    None
}

/// The error a child printed last (`error: ...` and the lines after it), from its log.
fn error_in_log(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().rposition(|l| l.starts_with("error:"))?;
    let message: Vec<&str> = lines[start..]
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    Some(
        message
            .join(" ")
            .trim_start_matches("error:")
            .trim()
            .to_string(),
    )
}

/// Fills a row's numbers from its run folder: final val/test bits/token with standard errors
/// (eval.csv, the last row per split, EMA weights preferred) and the median training
/// throughput (train.csv). Numbers a run has not written yet stay empty.
pub fn fill_numbers(row: &mut SweepMemberRow, run_dir: &Path) {
    let evals: Vec<EvalRow> = read_rows(&run_dir.join(EvalRow::FILE)).unwrap_or_default();
    let last = |split: Split| {
        let of_split = || evals.iter().filter(move |r| r.split == split);
        of_split()
            .rfind(|r| r.weights == WeightSet::Ema)
            .or_else(|| of_split().next_back())
            .map(|r| (r.bits_per_token, r.se))
    };
    (row.val_bits, row.val_se) = last(Split::Val).unzip();
    (row.test_bits, row.test_se) = last(Split::Test).unzip();
    let train: Vec<TrainRow> = read_rows(&run_dir.join(TrainRow::FILE)).unwrap_or_default();
    let mut speeds: Vec<f64> = train
        .iter()
        .map(|r| r.tokens_per_s)
        .filter(|s| s.is_finite())
        .collect();
    speeds.sort_by(f64::total_cmp);
    row.tokens_per_s = match speeds.len() {
        0 => None,
        n if n % 2 == 1 => Some(speeds[n / 2]),
        n => Some((speeds[n / 2 - 1] + speeds[n / 2]) / 2.0),
    };
}

/// `results/sweeps/<sweep>/sweep.lock` while a `ddexp sweep` works on the folder: two
/// invocations on one sweep would run its members twice and overwrite each other's summary.
/// A lock left by a process that is gone (killed) is taken over.
/// Held while a `ddexp sweep` works on a sweep's results folder: a second sweep of the same
/// folder would run members twice and overwrite the summary.
#[derive(Debug)]
pub struct SweepLock {
    _lock: FolderLock,
}

pub const SWEEP_LOCK_FILE: &str = "sweep.lock";

impl SweepLock {
    pub fn acquire(sweep_dir: &Path) -> Result<SweepLock> {
        fs::create_dir_all(sweep_dir)
            .with_context(|| format!("cannot create {}", sweep_dir.display()))?;
        match FolderLock::try_acquire(&sweep_dir.join(SWEEP_LOCK_FILE))? {
            Attempt::Acquired(lock) => Ok(SweepLock { _lock: lock }),
            Attempt::Held { pid } => bail!(
                "the sweep in {} is being run by {}; wait for it or stop it (Ctrl-C) first",
                sweep_dir.display(),
                pid.map_or("another process".to_string(), |pid| format!(
                    "process {pid}"
                ))
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_sweep_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let lock = SweepLock::acquire(dir.path()).unwrap();
        let err = SweepLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("is being run by process {}", std::process::id())),
            "{err}"
        );
        drop(lock);
        SweepLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_failed_childs_error_comes_from_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("m.log");
        fs::write(
            &log,
            "=== attempt 1 ===\nsome output\nerror: cannot open data/x: No such file\n",
        )
        .unwrap();
        let exit = std::process::Command::new("false").status();
        let (status, error) = ending(&exit, None, &log, false);
        assert_eq!(status, MemberStatus::Failed);
        let error = error.unwrap();
        assert!(
            error.starts_with("cannot open data/x: No such file (log: "),
            "{error}"
        );
    }
}
