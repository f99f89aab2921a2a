//! `run.json`: what ran, where, with which code, and how it ended.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use crate::spec::{Backend, Experiment};

/// Where a run stands. A run killed without warning (SIGKILL, power loss) stays `running`;
/// [`RunDir::is_being_written`](super::RunDir::is_being_written) tells such a run from one
/// that is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    /// Stopped on purpose (Ctrl-C, SIGTERM) after saving a checkpoint; resumable.
    Interrupted,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        })
    }
}

/// The contents of `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Version of the ddexp binary that created the run (Cargo package version).
    pub ddexp_version: String,
    /// Commit of the checkout the binary was built from, recorded at build time by build.rs;
    /// absent when built outside git.
    pub git_commit: Option<String>,
    /// Whether tracked files differed from that commit at build time.
    pub git_dirty: Option<bool>,
    /// Experiment name and run id: the run folder is `<results>/<experiment>/<run_id>`.
    pub experiment: String,
    pub run_id: String,
    pub backend: Backend,
    pub devices: Vec<usize>,
    pub nodes: usize,
    /// Host name and process id of the process that last started or resumed the run.
    pub host: Option<String>,
    pub pid: u32,
    /// The command line of that process.
    pub command: Vec<String>,
    /// RFC 3339 times (local time with offset).
    pub started: String,
    pub ended: Option<String>,
    pub status: RunStatus,
    /// Why the run failed (status `failed`).
    pub error: Option<String>,
    /// Optimiser step of the latest checkpoint.
    pub checkpoint_iter: Option<u64>,
    /// When the run was resumed, oldest first.
    pub resumed: Vec<String>,
}

impl RunInfo {
    /// A run of `experiment` starting now in this process.
    pub fn new(experiment: &Experiment, run_id: &str) -> RunInfo {
        RunInfo {
            ddexp_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: option_env!("DDEXP_GIT_COMMIT").map(str::to_string),
            git_dirty: option_env!("DDEXP_GIT_DIRTY").map(|d| d == "true"),
            experiment: experiment.name.clone(),
            run_id: run_id.to_string(),
            backend: experiment.topology.backend,
            devices: experiment.topology.devices.clone(),
            nodes: experiment.topology.nodes,
            host: host_name(),
            pid: std::process::id(),
            command: std::env::args().collect(),
            started: now(),
            ended: None,
            status: RunStatus::Running,
            error: None,
            checkpoint_iter: None,
            resumed: Vec::new(),
        }
    }

    /// Marks the run as running in this process again (on resume).
    pub fn claim(&mut self) {
        self.host = host_name();
        self.pid = std::process::id();
        self.command = std::env::args().collect();
        self.status = RunStatus::Running;
        self.ended = None;
        self.error = None;
        self.resumed.push(now());
    }

    pub fn load(path: &Path) -> Result<RunInfo> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid run.json (written by another ddexp version?)",
                path.display()
            )
        })
    }

    /// Writes the file atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        write_atomic(path, text.as_bytes())
    }
}

/// The current local time as RFC 3339 with the UTC offset, to the second.
pub fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// The kernel's host name (Linux), else the HOSTNAME / COMPUTERNAME variable.
pub fn host_name() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}
