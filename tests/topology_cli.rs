//! Data-parallel training through the binary, on the CPU: two nodes (processes) on
//! 127.0.0.1 train exactly as two peers (threads) of one process; a killed node stops the
//! other with an error and the run resumes to the same weights; Ctrl-C stops every peer at
//! the same iteration.
//!
//! All runs train the same tiny experiment, whose reference is one process with two CPU
//! peers. Two peers sum their gradients in one order whatever carries them, so every run here
//! must match the reference bit for bit.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::cli::{eval_rows, tensors, text, train_rows, val_rows};
use ddexp::checkpoint::Checkpoint;
use ddexp::results::{RunInfo, RunStatus};

/// Bounds every wait of these tests, so that a hang fails instead of blocking CI. Generous:
/// the machine may be busy; nothing asserts how fast anything is.
const PATIENCE: Duration = Duration::from_secs(600);

const MAX_ITERS: u64 = 120;

/// The experiment: one device per node in the file; the tests set devices or nodes.
fn experiment() -> String {
    format!(
        r#"(
    name: "dp",
    seed: 4,
    network: (n_embed: 32, n_heads: 2, n_blocks: 1, n_cond: 16, dropout: 0.0),
    dataset: Synthetic(seq_len: 16, train_tokens: 20000, eval_tokens: 2000),
    sampler: LowDiscrepancy,
    train: (batch_size: 3, grad_accum: 2, max_iters: {MAX_ITERS}, warmup_iters: 5, lr: 3e-3,
            log_interval: 1, eval_interval: 40, eval_iters: 3, checkpoint: (every: 10)),
    eval: (kl_batches: 3, recon_batches: 2, batch_size: 4),
)
"#
    )
}

fn ddexp() -> Command {
    let mut c = common::cli::command();
    // A hang anywhere fails within the test's patience, with the collective's own message.
    c.env("DDEXP_COLLECTIVE_TIMEOUT", "120");
    for var in [
        "DDEXP_NODE_RANK",
        "DDEXP_ORCHESTRATOR",
        "DDEXP_NODE_ADDRESS",
    ] {
        c.env_remove(var);
    }
    c
}

/// A folder holding the experiment file.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dp.ron"), experiment()).unwrap();
    dir
}

/// The only run folder under `results/dp/`.
fn run_dir(root: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(root.join("results/dp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "expected one run folder, found {runs:?}");
    runs.into_iter().next().unwrap()
}

/// The reference run: one process, two CPU peers. Computed once for all tests.
fn reference() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = workdir();
        let out = ddexp()
            .args(["run", "dp.ron", "--set", "topology.devices=[0, 1]"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let run = run_dir(dir.path());
        (dir, run)
    })
    .1
}

/// `n` ports free on 127.0.0.1 right now.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A running ddexp whose stderr lines arrive on `lines`; `output` collects all of them.
struct Running {
    child: Child,
    lines: Receiver<String>,
    output: std::thread::JoinHandle<String>,
}

fn start(mut command: Command, dir: &Path) -> Running {
    let mut child = command
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, lines) = mpsc::channel();
    let output = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines() {
            let line = line.unwrap_or_default();
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    Running {
        child,
        lines,
        output,
    }
}

impl Running {
    /// Waits for a stderr line starting with `prefix`.
    fn wait_for_line(&self, prefix: &str) {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) if line.starts_with(prefix) => return,
                Ok(_) => {}
                Err(e) => panic!("no line `{prefix}…` ({e})"),
            }
        }
    }

    /// Waits for the process to exit; returns its status and everything it wrote to stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        let (tx, rx) = mpsc::channel();
        let pid = self.child.id();
        let waiter = std::thread::spawn(move || {
            let status = self.child.wait();
            let _ = tx.send(());
            status.unwrap()
        });
        if rx.recv_timeout(PATIENCE).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("ddexp (pid {pid}) did not exit");
        }
        let status = waiter.join().unwrap();
        (status, self.output.join().unwrap())
    }
}

/// `ddexp run` as node `rank` of two, with the orchestrator at `ports[0]` and node r's
/// tensor service at `ports[1 + r]`. Node 1 gets its place from the environment, node 0
/// from flags: both routes are in use.
fn node(rank: usize, ports: &[u16], resume: Option<&Path>) -> Command {
    let orchestrator = format!("127.0.0.1:{}", ports[0]);
    let address = format!("127.0.0.1:{}", ports[1 + rank]);
    let mut c = ddexp();
    match resume {
        Some(run) => c.args(["run", "--resume", run.to_str().unwrap()]),
        None => c.args(["run", "dp.ron", "--set", "topology.nodes=2"]),
    };
    if rank == 0 {
        c.args(["--orchestrator", &orchestrator, "--node-address", &address]);
    } else {
        c.env("DDEXP_NODE_RANK", rank.to_string())
            .env("DDEXP_ORCHESTRATOR", &orchestrator)
            .env("DDEXP_NODE_ADDRESS", &address);
    }
    c
}

/// Asserts that two runs logged the same numbers and saved the same weights, EMA and
/// optimiser state, bit for bit (times and timestamps aside).
fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(train_rows(a).len() as u64, MAX_ITERS);
    assert_eq!(train_rows(a), train_rows(b), "train.csv differs");
    assert_eq!(val_rows(a), val_rows(b), "val.csv differs");
    assert_eq!(eval_rows(a), eval_rows(b), "eval.csv differs");
    for file in ["latest.safetensors", "best.safetensors"] {
        let (x, y) = (
            tensors(&a.join("checkpoints").join(file)),
            tensors(&b.join("checkpoints").join(file)),
        );
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
        for (name, bytes) in &x {
            assert!(bytes == &y[name], "{file}: tensor {name} differs");
        }
    }
    let ckpt = Checkpoint::load(&b.join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(
        (ckpt.iteration, ckpt.optimizer_steps),
        (MAX_ITERS, MAX_ITERS)
    );
}

#[test]
fn two_nodes_on_loopback_train_as_two_peers_of_one_process() {
    let ports = free_ports(3);
    let (dir0, dir1) = (workdir(), workdir());
    let n1 = start(node(1, &ports, None), dir1.path());
    let n0 = start(node(0, &ports, None), dir0.path());
    let (s0, err0) = n0.finish();
    let (s1, err1) = n1.finish();
    assert!(s0.success(), "node 0: {err0}");
    assert!(s1.success(), "node 1: {err1}");
    assert!(err1.contains("node 1: training completed"), "{err1}");
    // Node 1 writes nothing: node 0's run folder is the run.
    assert!(!dir1.path().join("results").exists());
    let run = run_dir(dir0.path());
    let info = RunInfo::load(&run.join("run.json")).unwrap();
    assert_eq!((info.status, info.nodes), (RunStatus::Completed, 2));
    assert_same_run(reference(), &run);
}

#[test]
fn a_killed_node_stops_the_other_and_the_run_resumes() {
    let ports = free_ports(3);
    let (dir0, dir1) = (workdir(), workdir());
    let mut n1 = start(node(1, &ports, None), dir1.path());
    let n0 = start(node(0, &ports, None), dir0.path());
    // Mid-run (after the checkpoint at 10), node 1 dies without a word.
    n0.wait_for_line("iter 12:");
    n1.child.kill().unwrap();
    let (s1, _) = n1.finish();
    assert!(!s1.success());
    let (s0, err0) = n0.finish();
    assert!(!s0.success(), "node 0 went on without node 1: {err0}");
    assert!(err0.contains("a peer or node stopped"), "{err0}");
    assert!(err0.contains("the last good checkpoint"), "{err0}");

    let run = run_dir(dir0.path());
    let info = RunInfo::load(&run.join("run.json")).unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    let kept = Checkpoint::load(&run.join("checkpoints/latest.safetensors"))
        .unwrap()
        .iteration;
    assert!((10..MAX_ITERS).contains(&kept), "checkpoint at {kept}");

    // Resume with the same topology: node 0 from its run folder, node 1 as it started.
    let ports = free_ports(3);
    let n1 = start(node(1, &ports, None), dir1.path());
    let n0 = start(node(0, &ports, Some(&run)), dir0.path());
    let (s0, err0) = n0.finish();
    let (s1, err1) = n1.finish();
    assert!(s0.success(), "node 0: {err0}");
    assert!(s1.success(), "node 1: {err1}");
    assert!(err0.contains(&format!("at iteration {kept}")), "{err0}");
    assert_same_run(reference(), &run);
}

#[test]
fn ctrl_c_stops_every_peer_at_the_same_iteration() {
    let dir = workdir();
    let mut command = ddexp();
    command.args(["run", "dp.ron", "--set", "topology.devices=[0, 1]"]);
    let running = start(command, dir.path());
    running.wait_for_line("iter 12:");
    let pid = running.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (status, err) = running.finish();
    assert_eq!(status.code(), Some(130), "{err}");

    let run = run_dir(dir.path());
    assert_eq!(
        RunInfo::load(&run.join("run.json")).unwrap().status,
        RunStatus::Interrupted
    );
    let stopped: u64 = err
        .split("interrupted at iteration ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no iteration in: {err}"));
    let ckpt = Checkpoint::load(&run.join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(
        ckpt.iteration, stopped,
        "the checkpoint is where every peer stopped"
    );

    let out = ddexp()
        .args(["run", "--resume", run.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_same_run(reference(), &run);
}

#[test]
fn a_node_rank_outside_the_topology_is_refused_before_anything_is_written() {
    let dir = workdir();
    let out = ddexp()
        .args([
            "run",
            "dp.ron",
            "--set",
            "topology.nodes=2",
            "--node-rank",
            "2",
        ])
        .args(["--orchestrator", "127.0.0.1:1"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the ranks are 0 to 1"),
        "{}",
        text(&out)
    );
    let out = ddexp()
        .args(["run", "dp.ron", "--set", "topology.nodes=2"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no orchestrator address"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("results").exists());
}
