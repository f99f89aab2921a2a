//! Members run as child `ddexp run` processes: how one is started (its command, its log,
//! the devices it may use), how the sweep waits for it, and how Ctrl-C reaches it.
//!
//! Each child gets its own process group, so Ctrl-C in the terminal reaches only the sweep,
//! which then sends the children exactly one SIGINT each: a child saves a checkpoint and
//! exits with status 130, as `ddexp run` does. (A second Ctrl-C is passed on too, and stops
//! the children at once.)

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::Sender;

use anyhow::{Context, Result, bail};

use crate::backend::Hardware;
use crate::results::{RUN_INFO_FILE, RunInfo};
use crate::spec::Experiment;

/// What a child runs.
pub enum Job<'a> {
    /// `ddexp run <member file> --results <results>`: a new run folder under
    /// `<results>/<experiment name>/`.
    Start {
        member_file: &'a Path,
        results_root: &'a Path,
    },
    /// `ddexp run --resume <run folder>`.
    Resume { run_dir: &'a Path },
}

/// A started child.
pub struct Child {
    pub pid: u32,
}

/// Starts `exe` on `job` with its output appended to `log`, in its own process group, with
/// `env` added to its environment. When it exits, `(index, status)` is sent on `done`.
pub fn spawn(
    exe: &Path,
    job: &Job,
    log: &Path,
    env: &[(String, String)],
    index: usize,
    done: Sender<(usize, std::io::Result<ExitStatus>)>,
) -> Result<Child> {
    let mut command = Command::new(exe);
    command.arg("run");
    match job {
        Job::Start {
            member_file,
            results_root,
        } => {
            command.arg(member_file).arg("--results").arg(results_root);
        }
        Job::Resume { run_dir } => {
            command.arg("--resume").arg(run_dir);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));

    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let shown_env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    writeln!(
        out,
        "=== {} {}{:?}",
        chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        shown_env.concat(),
        command
    )?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    own_process_group(&mut command);

    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id();
    std::thread::spawn(move || {
        let status = child.wait();
        // The sweep may have stopped listening (it failed); nothing is left to tell.
        let _ = done.send((index, status));
    });
    Ok(Child { pid })
}

#[cfg(unix)]
fn own_process_group(command: &mut Command) {
    std::os::unix::process::CommandExt::process_group(command, 0);
}

#[cfg(not(unix))]
fn own_process_group(_: &mut Command) {}

/// Asks a child to stop as Ctrl-C would (SIGINT): it saves a checkpoint and exits 130.
#[cfg(unix)]
pub fn interrupt(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // It may have exited in the meantime; then there is nothing to stop.
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
}

/// Elsewhere the console delivers Ctrl-C to every process attached to it, children included.
#[cfg(not(unix))]
pub fn interrupt(_: u32) {}

/// The run folders under `<results>/<experiment name>/` now, to tell a new one apart later.
pub fn existing_runs(parent: &Path) -> HashSet<OsString> {
    fs::read_dir(parent)
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// The run folder a started child created: a folder in `parent` that was not in `before`
/// and whose run.json names the child's pid. (The pid is unique while the sweep has not yet
/// reaped the child, and the folder must be new, so an old run of a reused pid cannot match.)
pub fn find_new_run(parent: &Path, before: &HashSet<OsString>, pid: u32) -> Option<PathBuf> {
    fs::read_dir(parent)
        .ok()?
        .flatten()
        .filter(|e| !before.contains(&e.file_name()))
        .map(|e| e.path())
        .find(|dir| RunInfo::load(&dir.join(RUN_INFO_FILE)).is_ok_and(|info| info.pid == pid))
}

/// How the members running at once share the machine (docs/sweep.md, "Devices").
///
/// An experiment's `topology.devices` are read as indices into the devices its slot owns,
/// so a member's resolved experiment is the same whatever `--parallel` is.
/// - CUDA: slot s of N owns the GPUs s·W … s·W + W − 1, where W is the largest device index
///   plus one over the CUDA members; the child sees only those (`CUDA_VISIBLE_DEVICES`,
///   counted within the sweep's own `CUDA_VISIBLE_DEVICES` when that is set).
/// - CPU (flex or LibTorch): a member's devices are threads of its own process; the N
///   children share the cores, each with max(1, cores / N) threads (`RAYON_NUM_THREADS` for
///   flex, `OMP_NUM_THREADS` for LibTorch), unless the sweep's environment sets
///   `RAYON_NUM_THREADS` itself.
/// - Graphics adapters (wgpu): no variable selects them, so members share them.
///
/// With one member at a time (N = 1) children inherit the environment unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Devices {
    parallel: usize,
    /// W: GPUs per slot.
    gpus_per_slot: usize,
    /// The sweep's `CUDA_VISIBLE_DEVICES`, split.
    visible: Option<Vec<String>>,
    /// Rayon threads per CPU member; None leaves the environment alone.
    cpu_threads: Option<usize>,
}

impl Devices {
    /// Plans the shares for `parallel` members at once among `experiments`. `visible` is the
    /// sweep's `CUDA_VISIBLE_DEVICES`, `rayon_set` whether it sets `RAYON_NUM_THREADS`, and
    /// `cores` the CPU cores available.
    pub fn new<'a>(
        parallel: usize,
        experiments: impl IntoIterator<Item = &'a Experiment>,
        visible: Option<&str>,
        rayon_set: bool,
        cores: usize,
    ) -> Result<Devices> {
        let gpus_per_slot = experiments
            .into_iter()
            .filter(|e| e.topology.backend.hardware() == Hardware::CudaGpus)
            .filter_map(|e| e.topology.devices.iter().max())
            .map(|&d| d + 1)
            .max()
            .unwrap_or(0);
        let visible: Option<Vec<String>> = visible.map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        });
        if parallel > 1
            && gpus_per_slot > 0
            && let Some(list) = &visible
            && list.len() < parallel * gpus_per_slot
        {
            bail!(
                "--parallel {parallel} with CUDA members that use {gpus_per_slot} GPU(s) each needs {} GPUs, \
                 but CUDA_VISIBLE_DEVICES lists {}; lower --parallel",
                parallel * gpus_per_slot,
                list.len()
            );
        }
        Ok(Devices {
            parallel,
            gpus_per_slot,
            visible,
            cpu_threads: (parallel > 1 && !rayon_set).then(|| (cores / parallel).max(1)),
        })
    }

    /// The environment of a child that runs `experiment` in `slot` (0-based, < parallel).
    pub fn env(&self, experiment: &Experiment, slot: usize) -> Vec<(String, String)> {
        if self.parallel <= 1 {
            return vec![];
        }
        match experiment.topology.backend.hardware() {
            Hardware::Adapters => vec![],
            Hardware::Cpu => self
                .cpu_threads
                .map(|n| {
                    ["RAYON_NUM_THREADS", "OMP_NUM_THREADS"]
                        .map(|var| (var.to_string(), n.to_string()))
                        .to_vec()
                })
                .unwrap_or_default(),
            Hardware::CudaGpus => {
                let owned: Vec<String> = (slot * self.gpus_per_slot
                    ..(slot + 1) * self.gpus_per_slot)
                    .map(|i| match &self.visible {
                        Some(list) => list[i].clone(),
                        None => i.to_string(),
                    })
                    .collect();
                vec![("CUDA_VISIBLE_DEVICES".to_string(), owned.join(","))]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Backend;

    fn experiment(backend: Backend, devices: Vec<usize>) -> Experiment {
        let text = format!(
            "(name: \"t\", dataset: Synthetic(seq_len: 16), topology: (backend: {backend:?}, devices: {devices:?}))"
        );
        crate::spec::load_str(Path::new("t.ron"), &text, &[])
            .unwrap()
            .experiment
    }

    #[test]
    fn gpus_are_split_into_disjoint_slots() {
        let one = experiment(Backend::Cuda, vec![0]);
        let two = experiment(Backend::Cuda, vec![0, 1]);
        let devices = Devices::new(3, [&one, &two], None, false, 16).unwrap();
        let env = |e: &Experiment, slot| devices.env(e, slot);
        // W = 2: slot s owns GPUs 2s and 2s + 1 whatever its member uses of them.
        assert_eq!(
            env(&two, 0),
            [("CUDA_VISIBLE_DEVICES".into(), "0,1".into())]
        );
        assert_eq!(
            env(&one, 1),
            [("CUDA_VISIBLE_DEVICES".into(), "2,3".into())]
        );
        assert_eq!(
            env(&two, 2),
            [("CUDA_VISIBLE_DEVICES".into(), "4,5".into())]
        );

        // Counted within the sweep's own visible devices.
        let devices = Devices::new(2, [&one], Some("4, 6,7"), false, 16).unwrap();
        assert_eq!(
            devices.env(&one, 1),
            [("CUDA_VISIBLE_DEVICES".into(), "6".into())]
        );
        let err = Devices::new(2, [&two], Some("4,6,7"), false, 16).unwrap_err();
        assert!(err.to_string().contains("needs 4 GPUs"), "{err}");
    }

    #[test]
    fn cpu_members_share_the_cores() {
        let cpu = experiment(Backend::Cpu, vec![0]);
        let devices = Devices::new(3, [&cpu], None, false, 16).unwrap();
        assert_eq!(
            devices.env(&cpu, 2),
            [
                ("RAYON_NUM_THREADS".into(), "5".into()),
                ("OMP_NUM_THREADS".into(), "5".into())
            ]
        );
        let devices = Devices::new(4, [&cpu], None, false, 2).unwrap();
        assert_eq!(
            devices.env(&cpu, 0),
            [
                ("RAYON_NUM_THREADS".into(), "1".into()),
                ("OMP_NUM_THREADS".into(), "1".into())
            ]
        );
        // The user's own setting wins; one member at a time changes nothing.
        assert!(
            Devices::new(2, [&cpu], None, true, 16)
                .unwrap()
                .env(&cpu, 0)
                .is_empty()
        );
        assert!(
            Devices::new(1, [&cpu], None, false, 16)
                .unwrap()
                .env(&cpu, 0)
                .is_empty()
        );
    }
}
