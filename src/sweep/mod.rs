//! `ddexp sweep DIR`: runs every member of a sweep folder (see [`crate::spec::sweep`] for
//! what the members are) and keeps a summary of where each stands.
//!
//! 1. Every member is validated before anything runs or is written; one invalid member stops
//!    the sweep ([`prepare`]).
//! 2. Each member's fate is decided from the summary of earlier invocations: a completed run
//!    is skipped, a run that stopped after a checkpoint is resumed, anything else starts anew
//!    ([`plan`]).
//! 3. Members run as child `ddexp run` processes, one at a time or `--parallel N` at once on
//!    disjoint devices ([`child`]). A member that fails is recorded and the others go on;
//!    Ctrl-C lets the running members checkpoint, records them `interrupted` and stops.
//!
//! What a sweep writes, under `<results>/sweeps/<sweep name>/`:
//!
//! ```text
//! summary.csv            one SweepMemberRow per member, rewritten atomically at every change
//! members/<member>.ron   the resolved experiment each member runs
//! logs/<member>.log      the member's output, every attempt appended
//! sweep.lock             locked while a `ddexp sweep` works on the folder
//! source.txt             the sweep folder these results belong to; another folder of the
//!                        same name is refused
//! ```
//!
//! The members' run folders are ordinary runs, `<results>/<experiment name>/<run id>/`.

mod child;
mod plan;
mod record;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Once, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::results::stats::plus_minus;
use crate::results::{MemberStatus, SweepMemberRow, write_atomic, write_rows};
use crate::spec::{self, SpecError};
pub use child::Devices;
pub use plan::{Action, Plan, Planned, SOURCE_FILE, results_dir};
pub use record::SWEEP_LOCK_FILE;

/// What `ddexp sweep` was asked to do.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The sweep folder.
    pub dir: PathBuf,
    /// `--set path=value`, applied to every member (after a grid's own values).
    pub overrides: Vec<String>,
    /// Members running at once (at least 1).
    pub parallel: usize,
    /// The results folder: runs go to `<results>/<experiment>/`, the sweep's own files to
    /// `<results>/sweeps/<sweep name>/`.
    pub results_root: PathBuf,
    /// The ddexp binary that runs the members (the CLI passes its own executable).
    pub exe: PathBuf,
}

/// Members that are not valid: nothing ran and nothing was written.
#[derive(Debug)]
pub struct InvalidSweep {
    pub errors: Vec<SpecError>,
}

impl fmt::Display for InvalidSweep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            f.write_str(&e.render())?;
        }
        write!(
            f,
            "{} invalid sweep member file(s): nothing was run or written",
            self.errors.len()
        )
    }
}

impl std::error::Error for InvalidSweep {}

/// Validates every member of the sweep and decides what to do with each. Writes nothing:
/// this is all `--dry-run` does.
pub fn prepare(opts: &SweepOptions) -> Result<Plan> {
    // The folder itself first: a wrong path is one plain error, not an invalid member.
    let name = plan::sweep_name(&opts.dir)?;
    let members = spec::sweep::members(&opts.dir, &opts.overrides)
        .map_err(|errors| InvalidSweep { errors })?;
    plan::plan(opts, name, members)
}

/// What one invocation of a sweep did.
#[derive(Debug)]
pub struct Outcome {
    pub summary: PathBuf,
    /// One row per member, in member order (as in summary.csv).
    pub rows: Vec<SweepMemberRow>,
    /// Stopped by Ctrl-C (or a member was interrupted): members were left unstarted.
    pub interrupted: bool,
}

/// Ctrl-C presses (and SIGTERMs) received by this process.
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

fn install_interrupt_handler() {
    INSTALL.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        });
        if let Err(e) = installed {
            eoutln!(
                "warning: cannot handle Ctrl-C ({e}); a stopped sweep resumes its members from their last checkpoints when run again"
            );
        }
    });
}

/// A member's child process while it runs.
struct Running {
    slot: usize,
    pid: u32,
    started: Instant,
    /// Known from the start for a resumed run; found once a started child creates it.
    run_dir: Option<PathBuf>,
    /// For a started run: `<results>/<experiment name>` and the folders it held before.
    new_run: Option<(PathBuf, HashSet<OsString>)>,
}

/// Runs a plan from [`prepare`] to the end (or to Ctrl-C) and returns the final summary.
pub fn run(opts: &SweepOptions, plan: &Plan) -> Result<Outcome> {
    let unrunnable: Vec<SpecError> = plan
        .members
        .iter()
        .filter_map(|p| p.member.loaded.require_runnable().err())
        .collect();
    if !unrunnable.is_empty() {
        return Err(InvalidSweep { errors: unrunnable }.into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let devices = Devices::new(
        opts.parallel,
        plan.members.iter().map(|p| &p.member.loaded.experiment),
        std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
        std::env::var_os("RAYON_NUM_THREADS").is_some(),
        cores,
    )?;

    let _lock = record::SweepLock::acquire(&plan.dir)?;
    // Again under the lock: another sweep folder of the same name may have started since.
    plan::check_source(&plan.dir, &plan.source)?;
    write_atomic(
        &plan.dir.join(plan::SOURCE_FILE),
        format!("{}\n", plan.source.display()).as_bytes(),
    )?;
    for p in &plan.members {
        let file = plan.member_file(&p.member);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        write_atomic(&file, spec::to_ron(&p.member.loaded.experiment).as_bytes())?;
    }
    let mut rows: Vec<SweepMemberRow> = plan.members.iter().map(first_row).collect();
    for (row, p) in rows.iter_mut().zip(&plan.members) {
        if let Action::Skip(dir) = &p.action {
            record::fill_numbers(row, dir);
        }
    }
    let summary = plan.summary_path();
    write_rows(&summary, &rows)?;

    let mut queue: VecDeque<usize> = plan
        .members
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.action, Action::Resume(_) | Action::Start { .. }))
        .map(|(i, _)| i)
        .collect();
    let bar = progress_bar(queue.len() as u64);
    for p in &plan.members {
        match &p.action {
            Action::Skip(dir) => say(
                &bar,
                format!(
                    "{:<11} {} (completed in {})",
                    "skip",
                    p.member.name,
                    dir.display()
                ),
            ),
            Action::Busy(dir) => say(
                &bar,
                format!(
                    "{:<11} {} ({} is running in another process)",
                    "skip",
                    p.member.name,
                    dir.display()
                ),
            ),
            Action::Resume(_) | Action::Start { .. } => {}
        }
    }

    install_interrupt_handler();
    let mut handled_interrupts = INTERRUPTS.load(Ordering::SeqCst);
    let (done_tx, done_rx) = mpsc::channel();
    let mut running: HashMap<usize, Running> = HashMap::new();
    let mut free_slots: Vec<usize> = (0..opts.parallel).rev().collect();
    // `interrupted`: start no new member; `signalled`: Ctrl-C was passed on to the children.
    let mut interrupted = false;
    let mut signalled = false;
    loop {
        let interrupts = INTERRUPTS.load(Ordering::SeqCst);
        if interrupts > handled_interrupts {
            handled_interrupts = interrupts;
            if !signalled {
                say(
                    &bar,
                    "interrupt: the running members save a checkpoint and stop; no new member starts (Ctrl-C again stops them at once)".into(),
                );
            }
            interrupted = true;
            signalled = true;
            for r in running.values() {
                child::interrupt(r.pid);
            }
        }

        while !interrupted && !queue.is_empty() && !free_slots.is_empty() {
            let index = queue.pop_front().expect("not empty");
            let slot = free_slots.pop().expect("not empty");
            let p = &plan.members[index];
            let experiment = &p.member.loaded.experiment;
            let member_file = plan.member_file(&p.member);
            let (job, new_run, run_dir) = match &p.action {
                Action::Resume(dir) => {
                    (child::Job::Resume { run_dir: dir }, None, Some(dir.clone()))
                }
                _ => {
                    let parent = opts.results_root.join(&experiment.name);
                    let before = child::existing_runs(&parent);
                    (
                        child::Job::Start {
                            member_file: &member_file,
                            results_root: &opts.results_root,
                        },
                        Some((parent, before)),
                        None,
                    )
                }
            };
            let verb = if run_dir.is_some() { "resume" } else { "start" };
            let env = devices.env(experiment, slot);
            let log = plan.log_file(&p.member);
            match child::spawn(&opts.exe, &job, &log, &env, index, done_tx.clone()) {
                Ok(c) => {
                    say(
                        &bar,
                        format!("{verb:<11} {} (log: {})", p.member.name, log.display()),
                    );
                    rows[index].status = MemberStatus::Running;
                    rows[index].error = None;
                    running.insert(
                        index,
                        Running {
                            slot,
                            pid: c.pid,
                            started: Instant::now(),
                            run_dir,
                            new_run,
                        },
                    );
                }
                Err(e) => {
                    free_slots.push(slot);
                    rows[index].status = MemberStatus::Failed;
                    rows[index].error = Some(format!("{e:#}"));
                    say(&bar, format!("{:<11} {}: {e:#}", "failed", p.member.name));
                    bar.inc(1);
                }
            }
            write_rows(&summary, &rows)?;
        }
        bar.set_message(running_names(plan, &running));
        if running.is_empty() {
            break;
        }

        match done_rx.recv_timeout(Duration::from_millis(200)) {
            Ok((index, exit)) => {
                let mut r = running.remove(&index).expect("a running member");
                free_slots.push(r.slot);
                discover_run_dir(&mut r);
                let p = &plan.members[index];
                let row = &mut rows[index];
                let (status, error) = record::ending(
                    &exit,
                    r.run_dir.as_deref(),
                    &plan.log_file(&p.member),
                    signalled,
                );
                row.status = status;
                row.error = error;
                let previous_wall = match &p.action {
                    Action::Resume(_) => p.previous.as_ref().and_then(|r| r.wall_s).unwrap_or(0.0),
                    _ => 0.0,
                };
                row.wall_s = Some(previous_wall + r.started.elapsed().as_secs_f64());
                if let Some(dir) = &r.run_dir {
                    row.run_dir = relative_to_sweep(&opts.results_root, dir);
                    record::fill_numbers(row, dir);
                }
                if status == MemberStatus::Interrupted {
                    interrupted = true;
                }
                say(
                    &bar,
                    format!("{:<11} {}", status_word(status), describe(row)),
                );
                bar.inc(1);
                write_rows(&summary, &rows)?;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Record run folders as soon as they exist, so that a sweep killed outright
                // still knows which run to resume.
                let mut found = false;
                for (&index, r) in running.iter_mut() {
                    if r.run_dir.is_none() {
                        discover_run_dir(r);
                        if let Some(dir) = &r.run_dir {
                            rows[index].run_dir = relative_to_sweep(&opts.results_root, dir);
                            found = true;
                        }
                    }
                }
                if found {
                    write_rows(&summary, &rows)?;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                unreachable!("the sweep holds a sender")
            }
        }
    }
    bar.finish_and_clear();
    Ok(Outcome {
        summary,
        rows,
        interrupted,
    })
}

/// A member's row before this invocation runs anything.
fn first_row(p: &Planned) -> SweepMemberRow {
    let pending = SweepMemberRow::pending(&p.member.name);
    let previous = p.previous.clone().map(|mut row| {
        row.member = p.member.name.clone();
        row
    });
    match &p.action {
        Action::Start { .. } => pending,
        Action::Skip(_) => SweepMemberRow {
            status: MemberStatus::Completed,
            error: None,
            ..previous.unwrap_or(pending)
        },
        Action::Busy(_) => SweepMemberRow {
            status: MemberStatus::Running,
            ..previous.unwrap_or(pending)
        },
        Action::Resume(_) => previous.unwrap_or(pending),
    }
}

fn discover_run_dir(r: &mut Running) {
    if r.run_dir.is_none()
        && let Some((parent, before)) = &r.new_run
    {
        r.run_dir = child::find_new_run(parent, before, r.pid);
    }
}

/// A run folder as summary.csv records it: relative to `<results>/sweeps/<sweep>/` when it
/// is under the results folder (so the results folder can move), else as it is.
fn relative_to_sweep(results_root: &Path, run_dir: &Path) -> String {
    match run_dir.strip_prefix(results_root) {
        Ok(inside) => Path::new("../..").join(inside).display().to_string(),
        Err(_) => run_dir.display().to_string(),
    }
}

fn status_word(status: MemberStatus) -> &'static str {
    match status {
        MemberStatus::Pending => "pending",
        MemberStatus::Running => "running",
        MemberStatus::Completed => "completed",
        MemberStatus::Failed => "failed",
        MemberStatus::Interrupted => "interrupted",
    }
}

/// `name: val 1.2345 ± 0.0100, test ... bits/token, 12 s` or the error.
pub fn describe(row: &SweepMemberRow) -> String {
    let mut s = row.member.clone();
    let bits = |b: Option<f64>, se: Option<f64>| match (b, se) {
        (Some(b), Some(se)) => plus_minus(b, se),
        (Some(b), None) => format!("{b:.4}"),
        _ => "–".into(),
    };
    if row.val_bits.is_some() || row.test_bits.is_some() {
        s.push_str(&format!(
            ": val {}, test {} bits/token",
            bits(row.val_bits, row.val_se),
            bits(row.test_bits, row.test_se)
        ));
    }
    if let Some(w) = row.wall_s {
        s.push_str(&format!(", {w:.1} s"));
    }
    if let Some(e) = &row.error {
        s.push_str(&format!(": {e}"));
    }
    s
}

fn running_names(plan: &Plan, running: &HashMap<usize, Running>) -> String {
    let mut indices: Vec<&usize> = running.keys().collect();
    indices.sort();
    let names: Vec<&str> = indices
        .into_iter()
        .map(|&i| plan.members[i].member.name.as_str())
        .collect();
    format!("running {}", names.join(", "))
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("sweep {bar:30} {pos}/{len} members | {elapsed} | {msg}")
            .expect("a valid template"),
    );
    bar
}

/// A line above the progress bar, or on stderr when the bar is hidden (not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eoutln!("{line}");
    } else {
        bar.println(line);
    }
}
