//! Everything a run writes, and how it is written: run folders and run.json, the CSV logs,
//! the loss chart, the sweep summary, atomic files and folder locks. Comparing runs is
//! [`crate::report`]'s job, on top of this.
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
pub mod plot;
mod run_dir;
mod run_info;
pub mod stats;
mod sweep_summary;
#[cfg(test)]
pub(crate) mod test_support;

pub use atomic::{finish as finish_atomic, temp_path, write_atomic};
pub use csv_log::{
    CsvLog, CsvRow, EvalRow, LogRow, TrainRow, ValRow, read_rows, retain_rows, truncate_after,
    write_rows,
};
pub use folder_lock::{Attempt, FolderLock, is_held as is_lock_held};
pub use loss_chart::draw_run_loss_chart;
pub use run_dir::{
    CHECKPOINTS_DIR, EXPERIMENT_FILE, RUN_INFO_FILE, RunDir, is_folder_name, read_experiment,
};
pub use run_info::{RunInfo, RunStatus, now};
pub use sweep_summary::{MemberStatus, SweepMemberRow};
