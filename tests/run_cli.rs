//! `ddexp run` end to end through the binary: a complete run folder, exact resume after a
//! SIGKILL, divergence handling, and refusals that leave nothing behind.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::cli::{ddexp, eval_rows, tensors, text, train_rows, val_rows};
use ddexp::checkpoint::Checkpoint;
use ddexp::results::{EvalRow, RunInfo, RunStatus, TrainRow, ValRow, read_rows};

/// A DiT small enough to train in seconds on the synthetic corpus.
fn tiny(name: &str, train: &str) -> String {
    format!(
        r#"(
    name: "{name}",
    seed: 3,
    network: (n_embed: 32, n_heads: 2, n_blocks: 1, n_cond: 16, dropout: 0.1),
    dataset: Synthetic(seq_len: 16, train_tokens: 20000, eval_tokens: 2000),
    sampler: LowDiscrepancy,
    train: (batch_size: 4, grad_accum: 2, warmup_iters: 2, lr: 3e-3, min_lr: 1e-4, {train}),
    eval: (kl_batches: 3, recon_batches: 2, batch_size: 4),
)
"#
    )
}

/// The only run folder under `results/<name>/`.
fn run_dir(root: &Path, name: &str) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(root.join("results").join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "expected one run folder, found {runs:?}");
    runs.into_iter().next().unwrap()
}

fn finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}

#[test]
fn a_tiny_run_writes_a_complete_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny(
        "tiny",
        "max_iters: 12, log_interval: 3, eval_interval: 5, eval_iters: 2",
    );
    std::fs::write(dir.path().join("tiny.ron"), &exp).unwrap();
    let out = ddexp(&["run", "tiny.ron", "--set", "train.lr=2e-3"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let run = run_dir(dir.path(), "tiny");

    // The resolved experiment (with the override) is what ran.
    let resolved = ddexp::spec::load(&run.join("experiment.ron"), &[])
        .unwrap()
        .experiment;
    assert_eq!(resolved.train.lr, 2e-3);
    assert_eq!(resolved.train.max_iters, 12);

    let info = RunInfo::load(&run.join("run.json")).unwrap();
    assert_eq!(info.status, RunStatus::Completed);
    assert!(info.ended.is_some());

    let train: Vec<TrainRow> = read_rows(&run.join("train.csv")).unwrap();
    assert_eq!(
        train.iter().map(|r| r.iter).collect::<Vec<_>>(),
        [3, 6, 9, 12]
    );
    for r in &train {
        assert!(
            finite(&[
                r.lr,
                r.loss,
                r.kl,
                r.ce,
                r.l_t,
                r.bits_per_token,
                r.grad_norm,
                r.step_ms,
                r.tokens_per_s
            ]),
            "{r:?}"
        );
        assert_eq!(r.tokens, r.iter * 4 * 2 * 16);
        assert!(r.loss > 0.0 && r.step_ms > 0.0);
    }
    let val: Vec<ValRow> = read_rows(&run.join("val.csv")).unwrap();
    assert_eq!(val.iter().map(|r| r.iter).collect::<Vec<_>>(), [5, 10, 12]);
    assert!(
        val.iter()
            .all(|r| finite(&[r.loss, r.l_t, r.bits_per_token, r.bits_se]) && r.batches == 2)
    );

    let eval: Vec<EvalRow> = read_rows(&run.join("eval.csv")).unwrap();
    let splits: Vec<&str> = eval.iter().map(|r| r.split.name()).collect();
    assert_eq!(splits, ["val", "test"]);
    for r in &eval {
        assert!(
            finite(&[
                r.kl_bits,
                r.kl_se,
                r.recon_bits,
                r.recon_se,
                r.bits_per_token,
                r.se
            ]),
            "{r:?}"
        );
        assert!((r.bits_per_token - (r.kl_bits + r.recon_bits)).abs() < 1e-9);
        assert!(r.se > 0.0 && r.iter == 12 && r.kl_batches == 3 && r.recon_batches == 2);
    }
    // The table on stdout shows the same numbers.
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("{:.4}", eval[0].bits_per_token)),
        "{shown}"
    );

    let png = image::open(run.join("loss.png")).expect("loss.png decodes");
    assert!(png.width() >= 400 && png.height() >= 300);
    let svg = std::fs::read_to_string(run.join("loss.svg")).unwrap();
    assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    let latest = Checkpoint::load(&run.join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(latest.iteration, 12);
    assert_eq!(latest.optimizer_steps, 12);
    assert_eq!(latest.ema_updates, 12);
    assert!(run.join("checkpoints/best.safetensors").is_file());
    // No temporary files are left behind.
    for entry in walkdir::WalkDir::new(&run) {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "left a temporary file: {name}");
    }

    // A finished run cannot be resumed (or written into again).
    let again = ddexp(&["run", "--resume", run.to_str().unwrap()], dir.path());
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already completed"),
        "{}",
        text(&again)
    );
}

#[test]
fn a_killed_run_resumes_to_the_same_weights_and_logs() {
    let exp = tiny(
        "resume",
        "max_iters: 30, log_interval: 2, eval_interval: 10, eval_iters: 2, checkpoint: (every: 4), \
         ema: (beta: 0.9, update_after_step: 5)",
    );
    // The EMA leaves its warm-up copies at update 5, before the kill: the resumed run must
    // go on averaging, not just copying or freezing.
    // The reference: one uninterrupted run.
    let straight = tempfile::tempdir().unwrap();
    std::fs::write(straight.path().join("e.ron"), &exp).unwrap();
    let out = ddexp(&["run", "e.ron"], straight.path());
    assert!(out.status.success(), "{}", text(&out));
    let reference = run_dir(straight.path(), "resume");

    // The same run, killed with SIGKILL once it has logged iteration 18 (after the
    // checkpoint at 16, before the one at 20), then resumed.
    let killed = tempfile::tempdir().unwrap();
    std::fs::write(killed.path().join("e.ron"), &exp).unwrap();
    common::cli::run_killed_at(killed.path(), "iter 18:");
    let run = run_dir(killed.path(), "resume");
    let info = RunInfo::load(&run.join("run.json")).unwrap();
    assert_eq!(
        info.status,
        RunStatus::Running,
        "a SIGKILLed run cannot record its end"
    );
    let ckpt_iter = Checkpoint::load(&run.join("checkpoints/latest.safetensors"))
        .unwrap()
        .iteration;
    assert!((16..30).contains(&ckpt_iter), "checkpoint at {ckpt_iter}");

    let out = ddexp(&["run", "--resume", run.to_str().unwrap()], killed.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!(
        "resuming {} at iteration {ckpt_iter}",
        run.display()
    )));

    // Bit for bit: weights, EMA and optimiser state.
    let a = tensors(&reference.join("checkpoints/latest.safetensors"));
    let b = tensors(&run.join("checkpoints/latest.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "tensor {name} differs after resume");
    }
    // Logs: every row exactly once, with the same values.
    assert_eq!(train_rows(&reference), train_rows(&run));
    assert_eq!(val_rows(&reference), val_rows(&run));
    assert_eq!(eval_rows(&reference), eval_rows(&run));
    assert_eq!(
        RunInfo::load(&run.join("run.json")).unwrap().status,
        RunStatus::Completed
    );
}

#[test]
fn ctrl_c_during_the_final_evaluation_stops_it() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // A final evaluation far too long to wait for.
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny("final", "max_iters: 4, eval_interval: 4, eval_iters: 1")
        .replace("kl_batches: 3", "kl_batches: 10000000");
    std::fs::write(dir.path().join("e.ron"), &exp).unwrap();
    let mut child = common::cli::command()
        .args(["run", "e.ron"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in stderr.by_ref() {
        if line.unwrap().starts_with("val @ 4:") {
            break;
        }
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let rest: Vec<String> = stderr.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("final evaluation interrupted")),
        "{rest:?}"
    );
    let run = run_dir(dir.path(), "final");
    let info = RunInfo::load(&run.join("run.json")).unwrap();
    assert_eq!(info.status, RunStatus::Interrupted);
    let ckpt = Checkpoint::load(&run.join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(
        ckpt.iteration, 4,
        "the resumable checkpoint is the last one"
    );
}

#[test]
fn a_validation_without_kl_term_is_not_divergence() {
    // One validation sequence at T = 10: with this seed it draws t = 0 at every validation,
    // so there is a loss but no KL term and no l_T (NaN, as in the reference).
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny("no_kl", "max_iters: 10, eval_interval: 5, eval_iters: 1")
        .replace(
            "batch_size: 4, grad_accum: 2",
            "batch_size: 1, grad_accum: 1",
        )
        .replace(
            "    sampler: LowDiscrepancy,\n",
            "    sampler: LowDiscrepancy,\n    model: D3pmAbsorbing(timesteps: 10),\n",
        );
    std::fs::write(dir.path().join("e.ron"), &exp).unwrap();
    let out = ddexp(&["run", "e.ron"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let run = run_dir(dir.path(), "no_kl");
    let val = val_rows(&run);
    assert!(!val.is_empty());
    assert!(
        val.iter().all(|r| r.kl.is_nan() && r.loss.is_finite()),
        "the case under test: no KL term at any validation, {val:?}"
    );
    assert!(
        !run.join("checkpoints/best.safetensors").exists(),
        "no l_T, so no best checkpoint"
    );
}

#[test]
fn divergence_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // lr(0) = 0 keeps the first step harmless; from the second the rate is absurd.
    let exp = tiny(
        "diverge",
        "max_iters: 20, log_interval: 1, eval_interval: 1, eval_iters: 1, grad_clip: 0.0",
    )
    .replace("warmup_iters: 2, lr: 3e-3", "warmup_iters: 10, lr: 1e32");
    std::fs::write(dir.path().join("d.ron"), &exp).unwrap();
    let out = ddexp(&["run", "d.ron"], dir.path());
    assert!(!out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("non-finite"), "{shown}");
    assert!(
        shown.contains("the last good checkpoint (iteration 1)"),
        "{shown}"
    );
    let run = run_dir(dir.path(), "diverge");
    let info = RunInfo::load(&run.join("run.json")).unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    assert!(
        info.error
            .as_deref()
            .unwrap_or_default()
            .contains("non-finite")
    );
    let ckpt = Checkpoint::load(&run.join("checkpoints/latest.safetensors")).unwrap();
    assert_eq!(ckpt.iteration, 1);
    for (name, data) in ckpt.model.0 {
        if let Ok(values) = data.to_vec::<f32>() {
            assert!(values.iter().all(|v| v.is_finite()), "{name} is not finite");
        }
    }
}

#[test]
fn a_missing_dataset_names_the_prepare_command_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny("nodata", "max_iters: 4").replace(
        "Synthetic(seq_len: 16, train_tokens: 20000, eval_tokens: 2000)",
        "Text8(root: \"data/text8\", seq_len: 16)",
    );
    std::fs::write(dir.path().join("n.ron"), &exp).unwrap();
    let out = ddexp(&["run", "n.ron"], dir.path());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("ddexp data prepare text8"),
        "{}",
        text(&out)
    );
    assert!(
        !dir.path().join("results").exists(),
        "a failed start wrote results/"
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cuda_experiment_needs_a_cuda_build() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.ron"), tiny("cuda", "max_iters: 4")).unwrap();
    let out = ddexp(
        &["run", "c.ron", "--set", "topology.backend=Cuda"],
        dir.path(),
    );
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(shown.contains("error: `topology.backend`"), "{shown}");
    assert!(
        shown.contains("cargo build --release --features cuda"),
        "{shown}"
    );
    assert!(!dir.path().join("results").exists());
}
