//! A run folder, `results/<experiment name>/<run id>/`: creating one that no
//! other run can share, recording the experiment and status, and preparing it for resume.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::atomic::{self, write_atomic};
use super::csv_log::{CsvLog, EvalRow, LogRow, TrainRow, ValRow, retain_rows, truncate_after};
use super::folder_lock::{self, Attempt, FolderLock};
use super::loss_chart;
use super::run_info::{RunInfo, RunStatus, now};
use crate::spec::{self, Backend, Experiment};

pub const EXPERIMENT_FILE: &str = "experiment.ron";
pub const RUN_INFO_FILE: &str = "run.json";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const LOCK_FILE: &str = "run.lock";

/// An open run folder and its `run.json`.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    info: RunInfo,
    /// Held by the process that writes into the folder (a new run, or a resume); readers
    /// (`eval`, `report`, `sweep`'s bookkeeping) open the folder without it.
    _writer_lock: Option<FolderLock>,
}

impl RunDir {
    /// Creates a new run folder for `experiment` under `results_root` with a run id from the
    /// local time (`2026-11-27T10-00-00`), writes `experiment.ron` and `run.json` (status
    /// `running`). See [`Self::create_with_id`].
    pub fn create(results_root: &Path, experiment: &Experiment) -> Result<RunDir> {
        let id = chrono::Local::now().format("%Y-%m-%dT%H-%M-%S").to_string();
        Self::create_with_id(results_root, experiment, &id)
    }

    /// Creates `results_root/<experiment name>/<base_id>`, or `<base_id>-2`, `-3`, ... if that
    /// is taken. The folder is claimed with a single `create_dir`, which fails if it exists, so
    /// two processes can never end up in the same folder. If writing the files fails, the
    /// folder is removed again.
    pub fn create_with_id(
        results_root: &Path,
        experiment: &Experiment,
        base_id: &str,
    ) -> Result<RunDir> {
        check_path_component("experiment name", &experiment.name)?;
        check_path_component("run id", base_id)?;
        let parent = results_root.join(&experiment.name);
        fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let (path, id) = claim_folder(&parent, base_id)?;
        let run = (|| {
            let run = RunDir {
                info: RunInfo::new(experiment, &id),
                _writer_lock: Some(lock_writer(&path)?),
                path: path.clone(),
            };
            run.write_experiment(experiment)?;
            run.save_info()?;
            Ok(run)
        })();
        if run.is_err() {
            let _ = fs::remove_dir_all(&path);
        }
        run
    }

    /// Opens an existing run folder (one that has a `run.json`).
    pub fn open(path: &Path) -> Result<RunDir> {
        let info_path = path.join(RUN_INFO_FILE);
        if !info_path.is_file() {
            bail!(
                "{} is not a run folder: it has no {RUN_INFO_FILE} (run folders are created by `ddexp run` under results/<experiment>/)",
                path.display()
            );
        }
        Ok(RunDir {
            info: RunInfo::load(&info_path)?,
            path: path.to_path_buf(),
            _writer_lock: None,
        })
    }

    /// Prepares a stopped run to continue from the checkpoint at `checkpoint_iter` (of
    /// `max_iters`): refuses a run that completed or that another process is writing, drops the
    /// CSV rows the resumed run writes again (so it neither repeats nor skips rows) and marks
    /// the run `running` in this process.
    pub fn resume(&mut self, checkpoint_iter: u64, max_iters: u64) -> Result<()> {
        if self.info.status == RunStatus::Completed {
            bail!(
                "{} already completed; nothing to resume (start a new run with `ddexp run {}`)",
                self.path.display(),
                self.experiment_path().display()
            );
        }
        // The writer's lock, not run.json's pid: a killed run still says `running`, and its
        // pid may since belong to another process.
        self._writer_lock = Some(lock_writer(&self.path)?);
        // No live process writes here, so temporary files are a killed writer's leftovers.
        for dir in [self.path.clone(), self.checkpoints_dir()] {
            atomic::remove_leftovers(&dir)?;
        }
        truncate_after::<TrainRow>(&self.csv_path::<TrainRow>(), checkpoint_iter)?;
        truncate_after::<ValRow>(&self.csv_path::<ValRow>(), checkpoint_iter)?;
        // The run's own final evaluation starts only once training reached max_iters; its
        // rows from an evaluation that did not finish with the run are written again. Rows
        // of `ddexp eval` on a run stopped earlier stay.
        if checkpoint_iter >= max_iters {
            retain_rows::<EvalRow>(&self.csv_path::<EvalRow>(), |row| {
                row.iter < checkpoint_iter
            })?;
        }
        self.info.claim();
        self.info.checkpoint_iter = Some(checkpoint_iter);
        self.save_info()
    }

    /// Records where this session of the run trains, when a resume moves it to another
    /// backend.
    pub fn record_devices(&mut self, backend: Backend, devices: &[usize]) -> Result<()> {
        if (self.info.backend, self.info.devices.as_slice()) == (backend, devices) {
            return Ok(());
        }
        self.info.backend = backend;
        self.info.devices = devices.to_vec();
        self.save_info()
    }

    /// Whether some process is writing into this folder now (a run or a resume that holds
    /// its lock).
    pub fn is_being_written(&self) -> bool {
        folder_lock::is_held(&self.path.join(LOCK_FILE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    pub fn experiment_path(&self) -> PathBuf {
        self.path.join(EXPERIMENT_FILE)
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.path.join(CHECKPOINTS_DIR)
    }

    /// Path of one of the CSV logs, e.g. `run.csv_path::<TrainRow>()`.
    pub fn csv_path<R: LogRow>(&self) -> PathBuf {
        self.path.join(R::FILE)
    }

    /// Opens one of the CSV logs for appending (creating it with its header).
    pub fn log<R: LogRow>(&self) -> Result<CsvLog<R>> {
        CsvLog::open(&self.csv_path::<R>())
    }

    /// Writes `experiment.ron`: the resolved experiment, exactly what runs ([`spec::to_ron`]).
    pub fn write_experiment(&self, experiment: &Experiment) -> Result<()> {
        self.write_experiment_text(&spec::to_ron(experiment))
    }

    /// Writes `experiment.ron` from text (for callers that keep the resolved file as text).
    pub fn write_experiment_text(&self, text: &str) -> Result<()> {
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        write_atomic(&self.experiment_path(), text.as_bytes())
    }

    /// Reads `experiment.ron` back.
    pub fn read_experiment(&self) -> Result<Experiment> {
        read_experiment(&self.experiment_path())
    }

    /// Records the latest checkpoint's step in `run.json`.
    pub fn set_checkpoint_iter(&mut self, iter: u64) -> Result<()> {
        self.info.checkpoint_iter = Some(iter);
        self.save_info()
    }

    /// Records how the run ended (`completed`, `failed` with its error, `interrupted`).
    pub fn finish(&mut self, status: RunStatus, error: Option<String>) -> Result<()> {
        self.info.status = status;
        self.info.error = error;
        self.info.ended = Some(now());
        self.save_info()
    }

    /// Redraws `loss.png` and `loss.svg` from the CSV logs on disk.
    pub fn redraw_loss_chart(&self) -> Result<Vec<String>> {
        loss_chart::draw_run_loss_chart(
            &self.path,
            &format!("{} / {}", self.info.experiment, self.info.run_id),
        )
    }

    fn save_info(&self) -> Result<()> {
        self.info.save(&self.path.join(RUN_INFO_FILE))
    }
}

/// Reads an `experiment.ron` with the experiment loader (schema and semantic checks; errors
/// located in the file).
pub fn read_experiment(path: &Path) -> Result<Experiment> {
    Ok(spec::load(path, &[])?.experiment)
}

/// Takes the folder's writer lock ([`folder_lock`]), or says who holds it.
fn lock_writer(dir: &Path) -> Result<FolderLock> {
    match FolderLock::try_acquire(&dir.join(LOCK_FILE))? {
        Attempt::Acquired(lock) => Ok(lock),
        Attempt::Held { pid } => bail!(
            "{} is in use: {} is writing into it (it holds {LOCK_FILE}); stop it before resuming",
            dir.display(),
            pid.map_or("another ddexp process".to_string(), |pid| format!(
                "ddexp process {pid}"
            ))
        ),
    }
}

/// Claims the first free folder among `base`, `base-2`, `base-3`, ... with `create_dir`.
fn claim_folder(parent: &Path, base_id: &str) -> Result<(PathBuf, String)> {
    for n in 1..=10_000u32 {
        let id = if n == 1 {
            base_id.to_string()
        } else {
            format!("{base_id}-{n}")
        };
        let path = parent.join(&id);
        match fs::create_dir(&path) {
            Ok(()) => return Ok((path, id)),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
            Err(err) => {
                return Err(err).with_context(|| format!("cannot create {}", path.display()));
            }
        }
    }
    bail!(
        "{}: 10000 runs named {base_id}[-N] already exist",
        parent.display()
    )
}

/// Whether `name` can be a folder name under results/: letters, digits, `_`, `.` and `-`, no
/// separators, nothing hidden, `.`/`..` or empty.
pub fn is_folder_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn check_path_component(what: &str, name: &str) -> Result<()> {
    if !is_folder_name(name) {
        bail!(
            "the {what} `{name}` cannot be a folder name: use letters, digits, `_`, `.` and `-`, not starting with `.`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::csv_log::{CsvRow, read_rows};
    use crate::results::test_support::synthetic_experiment;

    #[test]
    fn a_taken_run_id_gets_a_suffix() {
        let root = tempfile::tempdir().unwrap();
        let exp = synthetic_experiment("tiny", 1);
        let ids: Vec<String> = (0..3)
            .map(|_| {
                RunDir::create_with_id(root.path(), &exp, "2026-01-02T03-04-05")
                    .unwrap()
                    .info
                    .run_id
            })
            .collect();
        assert_eq!(
            ids,
            [
                "2026-01-02T03-04-05",
                "2026-01-02T03-04-05-2",
                "2026-01-02T03-04-05-3"
            ]
        );
        for id in &ids {
            assert!(
                root.path()
                    .join("tiny")
                    .join(id)
                    .join(RUN_INFO_FILE)
                    .is_file()
            );
        }
    }

    #[test]
    fn concurrent_creations_never_share_a_folder() {
        let root = tempfile::tempdir().unwrap();
        let exp = synthetic_experiment("tiny", 1);
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        RunDir::create_with_id(root.path(), &exp, "same")
                            .unwrap()
                            .info
                            .run_id
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 8, "{ids:?}");
        assert_eq!(fs::read_dir(root.path().join("tiny")).unwrap().count(), 8);
    }

    #[test]
    fn creation_writes_a_readable_experiment_and_run_info() {
        let root = tempfile::tempdir().unwrap();
        let exp = synthetic_experiment("tiny", 7);
        let run = RunDir::create(root.path(), &exp).unwrap();
        assert_eq!(run.path().parent().unwrap(), root.path().join("tiny"));
        assert_eq!(run.read_experiment().unwrap(), exp);
        let info = RunInfo::load(&run.path().join(RUN_INFO_FILE)).unwrap();
        assert_eq!(info.status, RunStatus::Running);
        assert_eq!(info.pid, std::process::id());
        assert_eq!(info.ddexp_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.experiment, "tiny");
    }

    #[test]
    fn bad_names_are_refused_and_leave_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let exp = synthetic_experiment("../escape", 1);
        let err = RunDir::create(root.path(), &exp).unwrap_err().to_string();
        assert!(err.contains("cannot be a folder name"), "{err}");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn finish_and_resume_update_the_status_and_trim_the_logs() {
        let root = tempfile::tempdir().unwrap();
        let exp = synthetic_experiment("tiny", 1);
        let mut run = RunDir::create(root.path(), &exp).unwrap();
        let mut train = run.log::<TrainRow>().unwrap();
        for iter in [10, 20, 30] {
            train
                .append(&TrainRow {
                    iter,
                    ..TrainRow::default()
                })
                .unwrap();
        }
        let mut val = run.log::<ValRow>().unwrap();
        val.append(&ValRow {
            iter: 20,
            ..ValRow::default()
        })
        .unwrap();
        val.append(&ValRow {
            iter: 30,
            ..ValRow::default()
        })
        .unwrap();

        // `ddexp eval` of the stopped run's checkpoint at 20.
        let eval_row = |iter| EvalRow {
            split: crate::spec::Split::Val,
            weights: crate::model::WeightSet::Ema,
            kl_bits: 1.0,
            kl_se: 0.1,
            recon_bits: 0.5,
            recon_se: 0.05,
            bits_per_token: 1.5,
            se: 0.11,
            kl_batches: 2,
            recon_batches: 1,
            batch_size: 4,
            iter,
            timestamp: String::new(),
        };
        let mut evals = run.log::<EvalRow>().unwrap();
        evals.append(&eval_row(20)).unwrap();

        // `run` still writes here: resuming now would share the folder.
        let mut same = RunDir::open(run.path()).unwrap();
        let err = same.resume(20, 40).unwrap_err().to_string();
        assert!(err.contains("is in use"), "{err}");

        // The writer stops (its process exits, which releases the lock).
        run.finish(RunStatus::Interrupted, None).unwrap();
        let path = run.path().to_path_buf();
        drop(run);
        let mut resumed = RunDir::open(&path).unwrap();
        assert_eq!(resumed.info().status, RunStatus::Interrupted);
        assert!(resumed.info().ended.is_some());
        resumed.resume(20, 40).unwrap();
        let info = RunInfo::load(&path.join(RUN_INFO_FILE)).unwrap();
        assert_eq!(info.status, RunStatus::Running);
        assert_eq!(info.ended, None);
        assert_eq!(info.resumed.len(), 1);
        assert_eq!(info.checkpoint_iter, Some(20));
        let train = read_rows::<TrainRow>(&path.join(TrainRow::FILE)).unwrap();
        assert_eq!(train.iter().map(|r| r.iter).collect::<Vec<_>>(), [10, 20]);
        let val = read_rows::<ValRow>(&path.join(ValRow::FILE)).unwrap();
        assert_eq!(val.iter().map(|r| r.iter).collect::<Vec<_>>(), [20]);
        let eval_iters = || {
            read_rows::<EvalRow>(&path.join(EvalRow::FILE))
                .unwrap()
                .iter()
                .map(|r| r.iter)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            eval_iters(),
            [20],
            "a user's evaluation is not the run's to drop"
        );

        resumed
            .finish(
                RunStatus::Failed,
                Some("non-finite loss at iteration 25".into()),
            )
            .unwrap();
        let info = RunInfo::load(&path.join(RUN_INFO_FILE)).unwrap();
        assert_eq!(info.status, RunStatus::Failed);
        assert_eq!(
            info.error.as_deref(),
            Some("non-finite loss at iteration 25")
        );

        // Stopped during its final evaluation (checkpoint at max_iters): that evaluation's
        // rows are written again by the resumed run, so they go.
        evals.append(&eval_row(40)).unwrap();
        drop(resumed);
        let mut last = RunDir::open(&path).unwrap();
        last.resume(40, 40).unwrap();
        assert_eq!(eval_iters(), [20]);
    }

    #[test]
    fn a_killed_run_can_be_resumed() {
        let root = tempfile::tempdir().unwrap();
        let exp = synthetic_experiment("tiny", 1);
        let run = RunDir::create(root.path(), &exp).unwrap();
        // SIGKILL leaves `running` with the pid of a process that no longer exists.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let mut info = run.info().clone();
        info.pid = dead_pid;
        info.save(&run.path().join(RUN_INFO_FILE)).unwrap();
        // ... and possibly a checkpoint it was writing when it died.
        let checkpoints = run.checkpoints_dir();
        fs::create_dir_all(&checkpoints).unwrap();
        let torn = atomic::temp_path(&checkpoints.join("latest.safetensors"));
        fs::write(&torn, b"half a checkpoint").unwrap();
        let path = run.path().to_path_buf();
        drop(run); // the process's exit releases the writer's lock
        let mut reopened = RunDir::open(&path).unwrap();
        assert!(!reopened.is_being_written());
        reopened.resume(0, 10).unwrap();
        assert_eq!(reopened.info().pid, std::process::id());
        assert!(
            !torn.exists(),
            "the killed writer's temporary file is removed"
        );
    }

    #[test]
    fn of_two_resumes_of_one_folder_only_the_first_gets_it() {
        let root = tempfile::tempdir().unwrap();
        let exp = synthetic_experiment("tiny", 1);
        let mut run = RunDir::create(root.path(), &exp).unwrap();
        run.finish(RunStatus::Interrupted, None).unwrap();
        let path = run.path().to_path_buf();
        drop(run);
        let mut first = RunDir::open(&path).unwrap();
        let mut second = RunDir::open(&path).unwrap();
        first.resume(0, 10).unwrap();
        assert!(second.is_being_written());
        let err = second.resume(0, 10).unwrap_err().to_string();
        assert!(
            err.contains("is in use") && err.contains(LOCK_FILE),
            "{err}"
        );
        drop(first);
        second.resume(0, 10).unwrap();
    }

    #[test]
    fn opening_a_folder_without_run_json_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = RunDir::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("is not a run folder") && err.contains("run.json"),
            "{err}"
        );
    }
}
