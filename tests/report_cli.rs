//! `ddexp report` through the command line, on run folders written with the public results API.

mod common;

use std::path::Path;

use ddexp::model::WeightSet;
use ddexp::results::{EvalRow, RunDir, RunStatus, TrainRow, ValRow};
use ddexp::spec::{Experiment, Split};

/// A finished run whose train loss alternates 3 ± d (noise grows with d).
fn run(root: &Path, sampler: &str, seed: u64, d: f64) {
    let text = format!(
        "(name: \"cmp\", seed: {seed}, dataset: Synthetic(), sampler: {sampler}, train: (log_interval: 5))"
    );
    let experiment: Experiment = ron::from_str(&text).unwrap();
    let mut run = RunDir::create_with_id(root, &experiment, "2026-03-01T12-00-00").unwrap();
    let mut train = run.log::<TrainRow>().unwrap();
    for i in 1..=40u64 {
        let loss = 3.0 + if i % 2 == 0 { d } else { -d };
        train
            .append(&TrainRow {
                iter: i * 5,
                tokens: i * 5 * 512,
                loss,
                ..TrainRow::default()
            })
            .unwrap();
    }
    let mut val = run.log::<ValRow>().unwrap();
    val.append(&ValRow {
        iter: 200,
        tokens: 102_400,
        bits_per_token: 2.0,
        ..ValRow::default()
    })
    .unwrap();
    let mut eval = run.log::<EvalRow>().unwrap();
    for split in [Split::Val, Split::Test] {
        eval.append(&EvalRow {
            split,
            weights: WeightSet::Ema,
            kl_bits: 1.9,
            kl_se: 0.01,
            recon_bits: 0.1,
            recon_se: 0.001,
            bits_per_token: 2.0 + 0.01 * seed as f64,
            se: 0.01,
            kl_batches: 4,
            recon_batches: 1,
            batch_size: 8,
            iter: 200,
            timestamp: "2026-03-01T12:05:00+00:00".into(),
        })
        .unwrap();
    }
    run.redraw_loss_chart().unwrap();
    run.finish(RunStatus::Completed, None).unwrap();
}

#[test]
fn report_command_compares_two_samplers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("results");
    for (seed, d) in [(1, 0.2), (2, 0.3)] {
        run(&root, "Uniform", seed, d);
        run(&root, "LowDiscrepancy", seed, d / 2.0);
    }
    assert!(
        root.join("cmp/2026-03-01T12-00-00-4/loss.png").is_file(),
        "four runs share a time stamp"
    );

    let out = common::cli::command()
        .args([
            "report",
            "cmp",
            "--window",
            "5",
            "--baseline",
            "Uniform",
            "--results",
        ])
        .arg(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each run's noise is proportional to d, so the ratio of group means is exactly 1/2.
    assert!(
        stdout.contains(
            "Loss noise of `sampler=LowDiscrepancy` relative to `sampler=Uniform`: ratio 0.5000"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("4 runs in 2 groups"), "{stdout}");
    for file in [
        "report.md",
        "summary.csv",
        "members.csv",
        "train_loss.png",
        "final_bits.svg",
    ] {
        assert!(root.join("report").join(file).is_file(), "{file} missing");
    }
    let png = image::open(root.join("report/loss_noise.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1100, 650));
}

#[test]
fn report_command_fails_cleanly_on_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("results");
    let out = common::cli::command()
        .args(["report", "nothing_here", "--results"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: `nothing_here` is neither a run folder"),
        "{stderr}"
    );
    assert!(!root.exists(), "nothing is written");
}
