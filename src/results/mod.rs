//! Everything a run writes and how runs are compared (DESIGN.md §4): run folders and run.json,
//! the CSV logs, the loss chart, sweep summaries and `ddexp report`.
//!
//! The training loop uses it like this:
//!
//! ```text
//! let mut run = RunDir::create(Path::new("results"), &experiment)?;   // or RunDir::open + resume(iter)
//! let mut train_log = run.log::<TrainRow>()?;                         // also ValRow, EvalRow
//! train_log.append(&row)?;                                            // every log interval
//! train_log.sync()?; run.set_checkpoint_iter(iter)?;                  // at each checkpoint
//! run.redraw_loss_chart()?;                                           // at each eval and at the end
//! run.finish(RunStatus::Completed, None)?;
//! ```

mod atomic;
mod csv_log;
mod folder_lock;
mod loss_chart;
mod plot;
mod report;
mod run_dir;
mod run_info;
mod stats;
mod sweep_summary;
#[cfg(test)]
mod test_support;

pub use atomic::{finish as finish_atomic, temp_path, write_atomic};
pub use csv_log::{
    CsvLog, CsvRow, EvalRow, LogRow, TrainRow, ValRow, Weights, read_rows, retain_rows,
    truncate_after, write_rows,
};
pub use folder_lock::{Attempt, FolderLock, is_held as is_lock_held};
pub use loss_chart::draw_run_loss_chart;
pub use report::{
    DEFAULT_WINDOW, GroupSummaryRow, MemberSummaryRow, Report, ReportOptions, report,
};
pub use run_dir::{
    CHECKPOINTS_DIR, EXPERIMENT_FILE, RUN_INFO_FILE, RunDir, is_folder_name, read_experiment,
};
pub use run_info::{RunInfo, RunStatus};
pub use sweep_summary::{MemberStatus, SweepMemberRow};
