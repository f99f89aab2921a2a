//! What a sweep will do with each member, decided from the summary of earlier invocations
//! and the run folders it names: skip a completed run, resume a stopped one, or start anew.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::SweepOptions;
use crate::checkpoint;
use crate::results::{CsvRow, RunDir, RunStatus, SweepMemberRow, read_rows};
use crate::spec::{self, sweep::Member};

/// Where a sweep keeps its files: `<results>/sweeps/<sweep name>/`.
pub fn results_dir(results_root: &Path, name: impl AsRef<Path>) -> PathBuf {
    results_root.join(spec::SWEEPS_FOLDER).join(name)
}

/// The file in a sweep's results folder that names the sweep folder it belongs to: two
/// sweep folders with the same name (`a/swc`, `b/swc`) would otherwise share
/// `<results>/sweeps/swc` and replace each other's summary.
pub const SOURCE_FILE: &str = "source.txt";

/// Refuses a results folder that belongs to another sweep folder than `source` (the sweep
/// folder, canonical). A folder without [`SOURCE_FILE`] is new, or an older ddexp's, and is
/// taken.
pub(super) fn check_source(dir: &Path, source: &Path) -> Result<()> {
    let file = dir.join(SOURCE_FILE);
    let recorded = match std::fs::read_to_string(&file) {
        Ok(text) => PathBuf::from(text.trim_end_matches('\n')),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    if recorded != source {
        let name = source.file_name().unwrap_or_default().to_string_lossy();
        bail!(
            "{} holds the results of another sweep folder named `{name}`, {}: this one, {}, \
             would replace its summary. Rename this sweep folder (e.g. to `{name}-2`) or pass \
             another --results; if it is the same sweep moved, write its new path into {}",
            dir.display(),
            recorded.display(),
            source.display(),
            file.display()
        );
    }
    Ok(())
}

/// A sweep, resolved and validated, before anything runs.
#[derive(Debug)]
pub struct Plan {
    /// The sweep's name: its folder's name.
    pub name: String,
    /// `<results>/sweeps/<name>`: summary.csv, the resolved members, the logs.
    pub dir: PathBuf,
    /// The sweep folder, canonical (recorded in [`SOURCE_FILE`]).
    pub source: PathBuf,
    pub members: Vec<Planned>,
}

/// A member and what this invocation does with it.
#[derive(Debug)]
pub struct Planned {
    pub member: Member,
    pub action: Action,
    /// Its row in the summary of an earlier invocation.
    pub previous: Option<SweepMemberRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Its run completed: nothing to do.
    Skip(PathBuf),
    /// Its run stopped (interrupted, killed or failed) after a checkpoint: `ddexp run --resume`.
    Resume(PathBuf),
    /// A new run; `reason` says why an earlier run is not continued.
    Start { reason: Option<String> },
    /// Its run is going on in another live process: left alone.
    Busy(PathBuf),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Skip(dir) => write!(f, "skip    completed in {}", dir.display()),
            Action::Resume(dir) => write!(f, "resume  {}", dir.display()),
            Action::Start { reason: None } => f.write_str("start"),
            Action::Start {
                reason: Some(reason),
            } => write!(f, "start   ({reason})"),
            Action::Busy(dir) => {
                write!(f, "busy    {} is running in another process", dir.display())
            }
        }
    }
}

impl Plan {
    /// The sweep's summary.csv.
    pub fn summary_path(&self) -> PathBuf {
        self.dir.join(SweepMemberRow::FILE)
    }

    /// The resolved experiment file a member runs.
    pub fn member_file(&self, member: &Member) -> PathBuf {
        self.dir
            .join("members")
            .join(format!("{}.ron", member.name))
    }

    /// The file a member's output goes to.
    pub fn log_file(&self, member: &Member) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", member.name))
    }
}

/// Decides each member's action. `name` is the sweep's ([`sweep_name`]); `members` are
/// validated already.
pub fn plan(opts: &SweepOptions, name: String, members: Vec<Member>) -> Result<Plan> {
    let dir = results_dir(&opts.results_root, &name);
    let source = opts
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", opts.dir.display()))?;
    check_source(&dir, &source)?;
    let summary = dir.join(SweepMemberRow::FILE);
    let previous: Vec<SweepMemberRow> = if summary.is_file() {
        read_rows(&summary).with_context(|| {
            format!(
                "cannot read the summary of an earlier invocation, {}; move it away to start the sweep over",
                summary.display()
            )
        })?
    } else {
        vec![]
    };
    let members = members
        .into_iter()
        .map(|member| {
            let previous = previous.iter().find(|r| r.member == member.name).cloned();
            let action = action(&member, previous.as_ref(), &dir);
            Planned {
                member,
                action,
                previous,
            }
        })
        .collect();
    Ok(Plan {
        name,
        dir,
        source,
        members,
    })
}

/// The sweep's name: the name of its folder, which must be usable as a folder name.
pub fn sweep_name(dir: &Path) -> Result<String> {
    if !dir.is_dir() {
        bail!(
            "{} {}: a sweep is a folder of experiment files and/or a {}",
            dir.display(),
            if dir.exists() {
                "is not a folder"
            } else {
                "does not exist"
            },
            spec::sweep::SWEEP_FILE
        );
    }
    let full = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !crate::results::is_folder_name(&name) {
        bail!(
            "the sweep folder's name `{name}` cannot name results/sweeps/<name>: use letters, digits, `_`, `.` and `-`"
        );
    }
    Ok(name)
}

/// Skip, resume or start, from the run folder an earlier invocation recorded.
fn action(member: &Member, previous: Option<&SweepMemberRow>, sweep_dir: &Path) -> Action {
    let Some(dir) = previous.and_then(|row| row.run_path(sweep_dir)) else {
        return Action::Start { reason: None };
    };
    let start = |why: String| Action::Start {
        reason: Some(format!("{}: {why}", dir.display())),
    };
    let Ok(run) = RunDir::open(&dir) else {
        return start("not a run folder any more".into());
    };
    let recorded = std::fs::read_to_string(run.experiment_path()).unwrap_or_default();
    if recorded != spec::to_ron(&member.loaded.experiment) {
        return start("ran a different experiment; the member changed since".into());
    }
    let info = run.info();
    if info.status == RunStatus::Completed {
        Action::Skip(dir)
    } else if run.is_being_written() {
        Action::Busy(dir)
    } else if run.checkpoints_dir().join(checkpoint::LATEST).is_file() {
        Action::Resume(dir)
    } else {
        start(format!(
            "stopped before its first checkpoint (run.json says `{}`)",
            info.status
        ))
    }
}
