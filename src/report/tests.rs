//! `ddexp report` on hand-made run folders whose expected numbers are computed by hand here.

use std::fs;
use std::path::Path;

use super::*;
use crate::model::WeightSet;
use crate::results::test_support::{assert_png, assert_svg, synthetic_experiment};
use crate::results::{
    EvalRow, MemberStatus, RUN_INFO_FILE, RunDir, SweepMemberRow, TrainRow, ValRow, read_rows,
};
use crate::spec::{Split, TimeSampler};

const CHARTS: [(&str, &str); 5] = [
    ("train_loss", "Train loss (smoothed), mean over seeds"),
    ("val_bits_vs_iter", "Validation bits/token, mean over seeds"),
    (
        "val_bits_vs_tokens",
        "Validation bits/token against training tokens",
    ),
    (
        "loss_noise",
        "Loss noise: rolling standard deviation of the train loss",
    ),
    ("final_bits", "Final bits/token per run"),
];

/// A completed run whose train loss alternates 2 ± d over 60 logged steps (so its rolling
/// standard deviation over 3 points is 2d/√3 everywhere), with final val/test bits/token.
fn fake_run(
    root: &Path,
    sampler: TimeSampler,
    seed: u64,
    d: f64,
    val: f64,
    test: Option<f64>,
) -> PathBuf {
    let name = format!(
        "{}_s{seed}",
        if sampler == TimeSampler::Uniform {
            "uniform"
        } else {
            "lds"
        }
    );
    let mut exp = synthetic_experiment(&name, seed);
    exp.sampler = sampler;
    let mut run = RunDir::create_with_id(root, &exp, "2026-01-01T00-00-00").unwrap();
    let train: Vec<TrainRow> = (1..=60u64)
        .map(|i| TrainRow {
            iter: i * 10,
            tokens: i * 10 * 64,
            loss: 2.0 + if i % 2 == 0 { d } else { -d },
            tokens_per_s: 1000.0,
            ..TrainRow::default()
        })
        .collect();
    write_rows(&run.csv_path::<TrainRow>(), &train).unwrap();
    let vals: Vec<ValRow> = (1..=6u64)
        .map(|i| ValRow {
            iter: i * 100,
            tokens: i * 6400,
            bits_per_token: val + 0.1 * (6 - i) as f64,
            bits_se: 0.01,
            ..ValRow::default()
        })
        .collect();
    write_rows(&run.csv_path::<ValRow>(), &vals).unwrap();
    let eval = |split, bits, se| EvalRow {
        split,
        weights: WeightSet::Ema,
        kl_bits: bits,
        kl_se: se,
        recon_bits: 0.0,
        recon_se: 0.0,
        bits_per_token: bits,
        se,
        kl_batches: 2,
        recon_batches: 1,
        batch_size: 4,
        iter: 600,
        timestamp: "2026-01-01T01:00:00+00:00".into(),
    };
    let mut evals = Vec::new();
    if let Some(test) = test {
        // The last row per split counts: an earlier raw-weights row is ignored.
        evals.push(eval(Split::Val, 9.0, 0.5));
        evals.push(eval(Split::Val, val, 0.01));
        evals.push(eval(Split::Test, test, 0.02));
    }
    write_rows(&run.csv_path::<EvalRow>(), &evals).unwrap();
    run.finish(RunStatus::Completed, None).unwrap();
    run.path().to_path_buf()
}

const UNIFORM: [(u64, f64, f64, f64); 3] = [
    (1, 0.3, 1.50, 1.60),
    (2, 0.4, 1.52, 1.62),
    (3, 0.5, 1.54, 1.64),
];
const LDS: [(u64, f64, f64, f64); 3] = [
    (1, 0.1, 1.47, 1.60),
    (2, 0.15, 1.48, 1.62),
    (3, 0.2, 1.52, 1.64),
];

/// results/ with six runs and a sweep listing them (plus one member that never started).
fn sweep_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("results");
    let sweep = root.join("sweeps").join("cmp");
    fs::create_dir_all(&sweep).unwrap();
    let mut rows = Vec::new();
    for (sampler, members) in [
        (TimeSampler::Uniform, UNIFORM),
        (TimeSampler::LowDiscrepancy, LDS),
    ] {
        for (seed, d, val, test) in members {
            let dir = fake_run(&root, sampler, seed, d, val, Some(test));
            let rel = Path::new("../..").join(dir.strip_prefix(&root).unwrap());
            rows.push(SweepMemberRow {
                member: dir
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                run_dir: rel.display().to_string(),
                status: MemberStatus::Completed,
                val_bits: Some(val),
                val_se: Some(0.01),
                test_bits: Some(test),
                test_se: Some(0.02),
                wall_s: Some(1.0),
                tokens_per_s: Some(1000.0),
                error: None,
            });
        }
    }
    rows.push(SweepMemberRow::pending("late"));
    write_rows(&sweep.join(SweepMemberRow::FILE), &rows).unwrap();
    (tmp, root)
}

fn options(root: &Path, inputs: &[&str]) -> ReportOptions {
    ReportOptions {
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        results_root: root.to_path_buf(),
        out: None,
        window: 3,
        baseline: None,
    }
}

fn close(actual: Option<f64>, expected: f64, what: &str) {
    let actual = actual.unwrap_or_else(|| panic!("{what} is missing"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: {actual} != {expected}"
    );
}

#[test]
fn a_sweep_report_has_the_right_means_errors_and_ratios() {
    let (_tmp, root) = sweep_fixture();
    let sweep = root.join("sweeps/cmp");
    let report = report(&options(&root, &[sweep.to_str().unwrap()])).unwrap();
    assert_eq!(report.out_dir, sweep.join("report"));
    assert_eq!((report.runs, report.groups), (6, 2));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("late has not started")),
        "{:?}",
        report.notes
    );

    let summary = read_rows::<GroupSummaryRow>(&report.out_dir.join("summary.csv")).unwrap();
    assert_eq!(summary.len(), 2);
    let (u, l) = (&summary[0], &summary[1]);
    assert_eq!(
        (u.label.as_str(), u.baseline, u.runs, u.seeds.as_str()),
        ("sampler=Uniform", true, 3, "1 2 3")
    );
    assert_eq!(
        (l.label.as_str(), l.baseline, l.runs),
        ("sampler=LowDiscrepancy", false, 3)
    );
    assert_eq!((u.iters, u.window), (600, 3));

    // Loss noise: each run's rolling std over 3 points is 2d/√3 (see fake_run).
    let k = 2.0 / 3f64.sqrt();
    // Uniform d = 0.3, 0.4, 0.5: mean 0.4, sample sd 0.1. LDS d = 0.1, 0.15, 0.2: mean 0.15, sd 0.05.
    close(u.noise, 0.4 * k, "uniform noise");
    close(u.noise_se, 0.1 * k / 3f64.sqrt(), "uniform noise s.e.");
    close(l.noise, 0.15 * k, "lds noise");
    close(l.noise_se, 0.05 * k / 3f64.sqrt(), "lds noise s.e.");
    close(u.noise_ratio, 1.0, "baseline ratio");
    close(l.noise_ratio, 0.15 / 0.4, "noise ratio");
    // Relative errors (sd/√3)/mean of each group, added in quadrature.
    let rel = ((0.05f64 / 0.15).powi(2) / 3.0 + (0.1f64 / 0.4).powi(2) / 3.0).sqrt();
    close(l.noise_ratio_se, 0.375 * rel, "noise ratio s.e.");

    // Final val: Uniform 1.50, 1.52, 1.54 → 1.52 ± 0.02/√3; LDS 1.47, 1.48, 1.52 → 1.49, squared
    // deviations 0.0004 + 0.0001 + 0.0009 = 0.0014, variance 0.0007.
    close(u.val_bits, 1.52, "uniform val");
    close(u.val_bits_se, 0.02 / 3f64.sqrt(), "uniform val s.e.");
    close(l.val_bits, 1.49, "lds val");
    close(l.val_bits_se, (0.0007f64 / 3.0).sqrt(), "lds val s.e.");
    close(l.val_delta, -0.03, "val difference");
    close(
        l.val_delta_se,
        (0.0004f64 / 3.0 + 0.0007 / 3.0).sqrt(),
        "val difference s.e.",
    );
    close(l.test_bits, 1.62, "lds test");
    close(l.test_delta, 0.0, "test difference");
    // Final train loss: mean of the last 3 logged losses, 2 + d − d + d = 2 + d/3; mean d 0.4.
    close(
        u.final_train_loss,
        2.0 + 0.4 / 3.0,
        "uniform final train loss",
    );
    close(u.tokens_per_s, 1000.0, "tokens/s");

    let members = read_rows::<MemberSummaryRow>(&report.out_dir.join("members.csv")).unwrap();
    assert_eq!(members.len(), 6);
    assert_eq!(members[0].run, "uniform_s1");
    assert_eq!(
        (
            members[0].group,
            members[0].seed,
            members[0].val_source.as_str()
        ),
        (1, 1, "eval.csv")
    );
    close(
        members[0].val_bits,
        1.50,
        "member val (the EMA row, not the raw one)",
    );
    close(members[4].noise, 0.15 * k, "member noise");

    // In words: LDS noise is clearly lower (−0.25k ± ... is 3.9 s.e.), the val difference is not clear.
    let findings = report.findings.join("\n");
    assert!(
        findings.contains(
            "Loss noise of `sampler=LowDiscrepancy` relative to `sampler=Uniform`: ratio 0.3750 ± "
        ),
        "{findings}"
    );
    assert!(
        findings.contains("(clearly lower: 3.9 s.e. below)"),
        "{findings}"
    );
    assert!(findings.contains("Final val bits/token of `sampler=LowDiscrepancy` minus `sampler=Uniform`: -0.03000 ± 0.01915 (no clear difference: within 2 s.e. (-1.6))"), "{findings}");

    let md = fs::read_to_string(report.out_dir.join("report.md")).unwrap();
    for text in [
        "| `sampler=Uniform` (baseline) | 3 | 1.520 ± 0.012 |",
        "![Train loss (smoothed), mean over seeds](train_loss.png)",
        "[SVG](loss_noise.svg)",
        "**Loss noise (nats/token).**",
        "| **mean ± s.e.** | 1 2 3 |",
    ] {
        assert!(md.contains(text), "report.md lacks {text:?}:\n{md}");
    }
    for (stem, title) in CHARTS {
        assert_png(&report.out_dir.join(format!("{stem}.png")), (1100, 650));
        let svg = assert_svg(&report.out_dir.join(format!("{stem}.svg")));
        assert!(svg.contains(title), "{stem}.svg lacks its title");
    }
    let svg = fs::read_to_string(report.out_dir.join("train_loss.svg")).unwrap();
    assert!(
        svg.contains("sampler=LowDiscrepancy (3 runs)"),
        "legend names the groups"
    );
}

#[test]
fn the_baseline_can_be_chosen_and_must_be_unambiguous() {
    let (_tmp, root) = sweep_fixture();
    let mut opts = options(&root, &["sweeps/cmp"]);
    opts.baseline = Some("LowDiscrepancy".into());
    let report = report(&opts).unwrap();
    let summary = read_rows::<GroupSummaryRow>(&report.out_dir.join("summary.csv")).unwrap();
    assert_eq!(summary[0].label, "sampler=LowDiscrepancy");
    close(summary[1].noise_ratio, 0.4 / 0.15, "inverse ratio");

    // The summary file itself names the sweep just as well.
    let by_file = super::report(&options(&root, &["sweeps/cmp/summary.csv"])).unwrap();
    assert_eq!((by_file.runs, by_file.groups), (6, 2));

    opts.baseline = Some("sampler".into());
    let err = super::report(&opts).unwrap_err().to_string();
    assert!(
        err.contains("matches 2 groups") && err.contains("`sampler=Uniform`"),
        "{err}"
    );
}

#[test]
fn discovery_covers_results_names_and_skips_broken_runs() {
    let (_tmp, root) = sweep_fixture();
    // A running run without a final evaluation, differing in two fields.
    let mut exp = synthetic_experiment("other", 5);
    exp.train.lr = 3e-4;
    exp.sampler = TimeSampler::LowDiscrepancy;
    let run = RunDir::create_with_id(&root, &exp, "2026-02-01T00-00-00").unwrap();
    write_rows(
        &run.csv_path::<ValRow>(),
        &[ValRow {
            iter: 10,
            tokens: 640,
            bits_per_token: 2.5,
            bits_se: 0.1,
            ..ValRow::default()
        }],
    )
    .unwrap();
    // A broken run folder.
    let broken = root.join("broken/2026-01-01T00-00-00");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join(RUN_INFO_FILE), "{ not json").unwrap();

    let report = report(&options(&root, &[])).unwrap();
    assert_eq!(report.out_dir, root.join("report"));
    assert_eq!((report.runs, report.groups), (7, 3));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("skipped") && n.contains("broken")),
        "{:?}",
        report.notes
    );
    let summary = read_rows::<GroupSummaryRow>(&root.join("report/summary.csv")).unwrap();
    let labels: Vec<&str> = summary.iter().map(|s| s.label.as_str()).collect();
    // Sorted discovery: lds_s1 comes first, so LowDiscrepancy (lr 0.001) is the baseline.
    assert_eq!(
        labels,
        [
            "sampler=LowDiscrepancy, train.lr=0.001",
            "sampler=LowDiscrepancy, train.lr=0.0003",
            "sampler=Uniform, train.lr=0.001"
        ]
    );
    let members = read_rows::<MemberSummaryRow>(&root.join("report/members.csv")).unwrap();
    let other = members
        .iter()
        .find(|m| m.run.starts_with("other/"))
        .unwrap();
    assert_eq!(
        (other.status, other.val_source.as_str(), other.test_bits),
        (RunStatus::Running, "val.csv", None)
    );
    close(other.val_bits, 2.5, "val from val.csv");
    // ... but a run that is still going has no final bits/token for its group.
    assert_eq!(summary[1].runs, 1);
    assert_eq!((summary[1].val_bits, summary[1].test_bits), (None, None));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("other/") && n.contains("is running: listed, but left out")),
        "{:?}",
        report.notes
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("other/") && n.contains("too few logged train losses"))
    );

    // An experiment name, and an explicit broken run folder (an error, not a note).
    let report = super::report(&options(&root, &["uniform_s2"])).unwrap();
    assert_eq!((report.runs, report.groups), (1, 1));
    let summary = read_rows::<GroupSummaryRow>(&report.out_dir.join("summary.csv")).unwrap();
    assert_eq!(summary[0].label, "uniform_s2");
    assert_eq!(
        summary[0].val_bits_se, None,
        "one run has no standard error"
    );
    let err = super::report(&options(&root, &[broken.to_str().unwrap()])).unwrap_err();
    assert!(
        format!("{err:#}").contains("not a valid run.json"),
        "{err:#}"
    );
}

#[test]
fn bad_input_leaves_nothing_behind() {
    let (_tmp, root) = sweep_fixture();
    let mut opts = options(&root, &[]);
    opts.window = 4;
    let err = report(&opts).unwrap_err().to_string();
    assert!(err.contains("odd number"), "{err}");
    let err = report(&options(&root, &["no_such_experiment"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neither a run folder") && err.contains("sweeps/no_such_experiment"),
        "{err}"
    );
    assert!(!root.join("report").exists());
    let empty = tempfile::tempdir().unwrap();
    let err = report(&options(&empty.path().join("results"), &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("there are no runs yet"), "{err}");
    // The sweep's definition folder instead of its results: the error points at the results.
    let definition = empty.path().join("experiments").join("cmp");
    fs::create_dir_all(&definition).unwrap();
    fs::write(definition.join("a.ron"), "()").unwrap();
    let err = report(&options(&root, &[definition.to_str().unwrap()]))
        .unwrap_err()
        .to_string();
    let results = root.join("sweeps").join("cmp");
    assert!(
        err.contains("holds no run folders")
            && err.contains(&format!("`ddexp report {}`", results.display())),
        "{err}"
    );
    assert!(!root.join("report").exists());
}

#[test]
fn groups_of_different_processes_are_labelled_by_variant() {
    use crate::spec::{MaskSchedule, Process};
    let flat = |model: Process, sampler: TimeSampler| {
        let mut exp = synthetic_experiment("x", 1);
        exp.model = model;
        exp.sampler = sampler;
        let mut out = std::collections::BTreeMap::new();
        compare::flatten("", &serde_json::to_value(&exp).unwrap(), &mut out);
        out
    };
    let d3pm = |time_conditioning| Process::D3pmAbsorbing {
        timesteps: 1000,
        lambda_ce: 0.05,
        time_conditioning,
    };
    let mdlm = |time_conditioning| Process::Mdlm {
        schedule: MaskSchedule::LogLinear,
        eps: 1e-3,
        t_min: 1e-3,
        time_conditioning,
    };
    let lds = TimeSampler::LowDiscrepancy;
    let flats = [
        flat(d3pm(true), lds),
        flat(d3pm(false), lds),
        flat(mdlm(true), lds),
        flat(mdlm(false), TimeSampler::Uniform),
    ];
    assert_eq!(flats[2]["model"], "Mdlm");
    assert_eq!(flats[2]["model.t_min"], "0.001");
    let labels: Vec<Vec<String>> = compare::distinguishing_fields(&flats)
        .into_iter()
        .map(|fields| {
            fields
                .into_iter()
                .map(|(p, v)| format!("{p}={v}"))
                .collect()
        })
        .collect();
    // D3PM writes time_conditioning only when false; MDLM's own fields are the same in both
    // MDLM groups, so they are not shown; the sampler differs at the top level.
    assert_eq!(
        labels,
        [
            vec!["model=D3pmAbsorbing", "sampler=LowDiscrepancy"],
            vec![
                "model=D3pmAbsorbing",
                "model.time_conditioning=false",
                "sampler=LowDiscrepancy"
            ],
            vec![
                "model=Mdlm",
                "model.time_conditioning=true",
                "sampler=LowDiscrepancy"
            ],
            vec![
                "model=Mdlm",
                "model.time_conditioning=false",
                "sampler=Uniform"
            ],
        ]
    );
}
