//! The backends that run without a GPU, against flex: LibTorch on the CPU (`--features tch`)
//! and wgpu on the machine's first graphics adapter (`--features wgpu`; in CI that is Mesa's
//! software Vulkan driver, lavapipe). Each module exists only in a binary built with its
//! feature; `.ci/run` builds and runs both.
//!
//! Every comparison starts both backends from the same host-drawn weights and feeds them the
//! same batches, times and masks (all drawn on the host from the seed), with dropout off, so
//! the backends differ only by floating-point rounding. The tolerances below are stated with
//! the reason they hold.

mod common;

#[cfg(any(feature = "tch", feature = "wgpu"))]
mod compare {
    use std::path::{Path, PathBuf};

    use ddexp::backend::Backend;
    use ddexp::results::{EvalRow, TrainRow, read_rows};

    use crate::common::cli::{ddexp, run_killed_at, text};

    /// A small network on a small synthetic corpus, logging every step. Every tensor shape is
    /// the same in training, validation and evaluation (batches of 4 sequences of 32 tokens),
    /// so a GPU backend compiles few kernels.
    pub fn experiment(max_iters: u64) -> String {
        format!(
            r#"(
    name: "cmp",
    seed: 3,
    network: (n_embed: 32, n_heads: 2, n_blocks: 2, n_cond: 16, dropout: 0.0),
    dataset: Synthetic(seq_len: 32, train_tokens: 20000, eval_tokens: 5000),
    train: (batch_size: 4, grad_accum: 1, max_iters: {max_iters}, lr: 3e-3, warmup_iters: 5,
            log_interval: 1, eval_interval: 100, eval_iters: 2, checkpoint: (every: 5)),
    eval: (splits: [Val], kl_batches: 2, recon_batches: 1, batch_size: 4),
)"#
        )
    }

    /// Trains `experiment` on `backend` (its name in experiment files) in `dir`; returns the
    /// run folder.
    pub fn train(dir: &Path, experiment: &str, backend: &str) -> PathBuf {
        std::fs::write(dir.join("e.ron"), experiment).unwrap();
        let set = format!("topology.backend={backend}");
        let out = ddexp(&["run", "e.ron", "--set", &set], dir);
        assert!(out.status.success(), "{}", text(&out));
        run_dir(dir)
    }

    /// The one run folder under `dir`.
    pub fn run_dir(dir: &Path) -> PathBuf {
        let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("results/cmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(runs.len(), 1, "{runs:?}");
        runs[0].clone()
    }

    /// (iteration, loss) of every train.csv row.
    pub fn losses(run: &Path) -> Vec<(u64, f64)> {
        read_rows::<TrainRow>(&run.join("train.csv"))
            .unwrap()
            .into_iter()
            .map(|r| (r.iter, r.loss))
            .collect()
    }

    /// Asserts that two loss curves log the same iterations and differ by at most `tolerance`
    /// relative at every one; returns the largest difference.
    pub fn assert_close(a: &[(u64, f64)], b: &[(u64, f64)], tolerance: f64) -> f64 {
        assert_eq!(
            a.iter().map(|r| r.0).collect::<Vec<_>>(),
            b.iter().map(|r| r.0).collect::<Vec<_>>()
        );
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x.1 - y.1).abs() / y.1.abs())
            .fold(0.0, f64::max);
        eprintln!("{} losses, worst relative difference {worst:.3e}", a.len());
        assert!(worst <= tolerance, "worst relative difference {worst:.3e}");
        worst
    }

    /// The final evaluation's bits/token of a run folder.
    pub fn final_bits(run: &Path) -> f64 {
        let rows = read_rows::<EvalRow>(&run.join("eval.csv")).unwrap();
        rows.last().expect("an eval.csv row").bits_per_token
    }

    /// bits/token of `run` evaluated by `ddexp eval` on `backend` (its command-line name).
    pub fn eval_on(run: &Path, backend: &str) -> f64 {
        let out = ddexp(
            &[
                "eval",
                run.to_str().unwrap(),
                "--backend",
                backend,
                "--json",
            ],
            run,
        );
        assert!(out.status.success(), "{}", text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["estimates"][0]["bits_per_token"].as_f64().unwrap()
    }

    /// A run started on flex, killed after its checkpoint at iteration 5, resumed on `to`;
    /// returns the run folder.
    pub fn moved_run(dir: &Path, experiment: &str, to: Backend) -> PathBuf {
        std::fs::write(dir.join("e.ron"), experiment).unwrap();
        run_killed_at(dir, "iter 7:");
        let run = run_dir(dir);
        let out = ddexp(
            &[
                "run",
                "--resume",
                run.to_str().unwrap(),
                "--backend",
                to.name(),
            ],
            dir,
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("resuming {} at iteration", run.display())),
            "{}",
            text(&out)
        );
        let info = ddexp::results::RunInfo::load(&run.join("run.json")).unwrap();
        assert_eq!(info.backend, to, "run.json records where the run continued");
        run
    }
}

/// LibTorch on the CPU. Its kernels (MKL/oneDNN matmuls, its own reductions) round
/// differently from flex's, by a few units in the last place per operation.
#[cfg(feature = "tch")]
mod libtorch {
    use ddexp::backend::Backend;

    use super::compare::*;
    use crate::common::cli::{ddexp, text};
    use crate::common::fixtures::fixture_root;

    /// Relative loss difference allowed at every logged step. Both backends start ~1e-7 apart
    /// (float rounding of the same operations), and AdamW's first updates (about ±lr whatever
    /// the gradient's size) amplify a difference only where a gradient is zero up to
    /// rounding, so over 30 steps the curves stay within 1.4e-7 of each other (measured on
    /// 2026-11-30; 1.7e-7 for the resumed run). 1e-5 leaves a 60-fold margin and still fails
    /// on any real difference: a wrong gradient moves the loss by 1e-2 within a few steps.
    const LOSS_TOLERANCE: f64 = 1e-5;

    #[test]
    fn every_fixture_case_matches_the_reference() {
        let report = ddexp::parity::check(&fixture_root(), Backend::LibTorch, 0).unwrap();
        eprintln!("{}", report.render());
        assert!(report.passed(), "{}", report.render());
    }

    #[test]
    fn thirty_steps_train_as_on_flex_and_each_evaluates_the_others_weights() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let on_libtorch = train(a.path(), &experiment(30), "LibTorch");
        let on_flex = train(b.path(), &experiment(30), "Cpu");
        assert_close(&losses(&on_libtorch), &losses(&on_flex), LOSS_TOLERANCE);
        // Checkpoints written by one backend evaluate on the other to the same estimate.
        let (x, y) = (
            eval_on(&on_libtorch, "cpu"),
            eval_on(&on_libtorch, "libtorch"),
        );
        assert!((x - y).abs() <= 1e-5 * y.abs(), "{x} vs {y}");
        let (x, y) = (eval_on(&on_flex, "libtorch"), eval_on(&on_flex, "cpu"));
        assert!((x - y).abs() <= 1e-5 * y.abs(), "{x} vs {y}");
    }

    #[test]
    fn doctor_passes() {
        let dir = tempfile::tempdir().unwrap();
        let out = ddexp(
            &["doctor", "--backend", "libtorch", "--probe", "0"],
            dir.path(),
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("passed"), "{}", text(&out));
    }

    #[test]
    fn a_run_started_on_flex_resumes_on_libtorch() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let straight = train(a.path(), &experiment(15), "Cpu");
        let moved = moved_run(b.path(), &experiment(15), Backend::LibTorch);
        // Identical up to the checkpoint (flex wrote both), close after it.
        let (s, m) = (losses(&straight), losses(&moved));
        assert_eq!(&s[..5], &m[..5]);
        assert_close(&m, &s, LOSS_TOLERANCE);
        let (x, y) = (final_bits(&moved), final_bits(&straight));
        assert!((x - y).abs() <= LOSS_TOLERANCE * y, "{x} vs {y}");
    }
}

/// wgpu on the machine's first adapter. Its matmul and reduction kernels accumulate in other
/// orders than flex's (tiles, tree reductions), a few units in the last place per operation.
#[cfg(feature = "wgpu")]
mod wgpu {
    use ddexp::backend::Backend;

    use super::compare::*;
    use crate::common::cli::{ddexp, text};
    use crate::common::fixtures::fixture_root;

    /// Relative loss difference allowed over 20 steps, for the reasons given for LibTorch
    /// (measured on lavapipe on 2026-11-30: 1.4e-7).
    const LOSS_TOLERANCE: f64 = 1e-5;

    #[test]
    fn every_fixture_case_matches_the_reference() {
        let report = ddexp::parity::check(&fixture_root(), Backend::Wgpu, 0).unwrap();
        eprintln!("{}", report.render());
        assert!(report.passed(), "{}", report.render());
    }

    #[test]
    fn twenty_steps_train_as_on_flex() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let on_wgpu = train(a.path(), &experiment(20), "Wgpu");
        let on_flex = train(b.path(), &experiment(20), "Cpu");
        assert_close(&losses(&on_wgpu), &losses(&on_flex), LOSS_TOLERANCE);
    }

    /// A tensor larger than any buffer the adapter binds is refused before anything is
    /// allocated, with the sizes in the message (cubecl would panic in its server thread).
    /// Logits of 32 × 1024 × 50 258 floats are 6.1 GiB, above every adapter's 4 GiB or less.
    #[test]
    fn a_tensor_beyond_the_adapters_largest_buffer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("e.ron"), experiment(10)).unwrap();
        let out = ddexp(
            &[
                "bench",
                "e.ron",
                "--set",
                "topology.backend=Wgpu",
                "--set",
                "dataset=OpenWebText(seq_len: 1024)",
                "--set",
                "train.batch_size=32",
                "--steps",
                "1",
            ],
            dir.path(),
        );
        assert!(!out.status.success(), "{}", text(&out));
        let message = text(&out);
        assert!(
            message.contains("needs a tensor of 6.1 GiB")
                && message.contains("the largest buffer wgpu adapter 0 binds"),
            "{message}"
        );
        assert!(!message.contains("panicked"), "{message}");
    }

    #[test]
    fn doctor_passes() {
        let dir = tempfile::tempdir().unwrap();
        let out = ddexp(&["doctor", "--backend", "wgpu", "--probe", "0"], dir.path());
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("passed"), "{}", text(&out));
    }
}
