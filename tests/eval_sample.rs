//! `ddexp eval` and `ddexp sample` on trained models: imported nanoDD fixtures (model folders)
//! and a run folder trained here for a few steps.
//!
//! Evaluation must report exactly the terms the model code computes on the same batches;
//! sampling must give text of the right length and alphabet, repeat for a seed, and the fast
//! exact sampler must draw from the same distribution as the step-by-step one while calling
//! the network only where a position unmasks. Bad folders and mismatched data fail precisely.

mod common;

use std::f64::consts::LN_2;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use common::fixtures::open_model;
use ddexp::checkpoint::import_nanodd;
use ddexp::data::{self, MASK_GLYPH, PrepareText, PrepareText8, TEXT8_ALPHABET, Text8Source};
use ddexp::diffusion::{Moments, Times};
use ddexp::model::WeightSet;
use ddexp::rng::{self, Stream};
use ddexp::sample::{AncestralSampler, SampleSettings, Sampled, sample_with};
use ddexp::spec::{Dataset, Split, Tokenizer};
use rand::Rng;

fn ddexp(args: &[&str]) -> Output {
    common::cli::command()
        .args(args)
        .output()
        .expect("ddexp runs")
}

/// The stdout of a command that must succeed.
fn succeeds(args: &[&str]) -> String {
    let out = ddexp(args);
    assert!(
        out.status.success(),
        "ddexp {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The stderr of a command that must fail.
fn fails(args: &[&str]) -> String {
    let out = ddexp(args);
    assert!(
        !out.status.success(),
        "ddexp {args:?} should have failed; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    let stdout = succeeds(args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("--json output {stdout:?}: {e}"))
}

fn fixture(name: &str) -> PathBuf {
    common::fixtures::fixture_cases()
        .into_iter()
        .find(|case| common::fixtures::case_name(case) == name)
        .unwrap_or_else(|| panic!("no fixture case {name}"))
}

/// The EMA weights of fixture `case` imported as a model folder under `dir`.
fn imported(dir: &Path, case: &str) -> PathBuf {
    let out = dir.join(case);
    import_nanodd(&fixture(case).join("ckpt.pt"), &out, WeightSet::Ema).unwrap();
    out
}

/// A text8-format dataset of 12 000 characters (val and test: 600 each, over the fixture's
/// seq_len of 256).
fn text8_dataset(dir: &Path) -> PathBuf {
    let words = [
        "the",
        "of",
        "and",
        "one",
        "in",
        "a",
        "zero",
        "nine",
        "anarchism",
        "x",
    ];
    let mut text = String::new();
    let mut i = 0usize;
    while text.len() < 12_000 {
        text.push_str(words[(i * 7 + i / 3) % words.len()]);
        text.push(' ');
        i += 1;
    }
    text.truncate(12_000);
    let file = dir.join("text8.txt");
    fs::write(&file, &text).unwrap();
    let root = dir.join("text8");
    data::prepare_text8(&PrepareText8 {
        root: root.clone(),
        source: Text8Source::File(file),
        force: false,
    })
    .unwrap();
    root
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn number(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` in {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn eval_reports_the_terms_the_model_code_computes_on_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let model = imported(dir.path(), "tiny_text8");
    let root = text8_dataset(dir.path());
    let (kl_batches, recon_batches, batch_size, seed) = (3u64, 2u64, 4usize, 7u64);
    let report = json(&[
        "eval",
        s(&model),
        "--data",
        s(&root),
        "--split",
        "val",
        "--split",
        "test",
        "--kl-batches",
        "3",
        "--recon-batches",
        "2",
        "--batch-size",
        "4",
        "--seed",
        "7",
        "--json",
    ]);
    assert_eq!(report["kind"], "model folder");
    assert_eq!(report["weights"], "ema");
    assert!(
        report["eval_csv"].is_null(),
        "a model folder has no eval.csv"
    );

    // The same batches through the model code: the split's fixed windows, times from
    // (seed, EvalTimes, [split, batch]) and noise per sequence from (seed, EvalNoise, ...).
    let device = Default::default();
    let (saved, loaded) = open_model::<Flex>(&model, &device);
    let timesteps = saved.experiment.model.timesteps().unwrap();
    let corpus = data::open(&Dataset::Text8 {
        root: root.clone(),
        seq_len: 256,
    })
    .unwrap();
    let estimates = report["estimates"].as_array().unwrap();
    assert_eq!(estimates.len(), 2);
    for (split, reported) in [Split::Val, Split::Test].into_iter().zip(estimates) {
        assert_eq!(reported["split"], split.name());
        let mut kl = Moments::default();
        let mut recon = Moments::default();
        for batch in 0..kl_batches + recon_batches {
            let is_kl = batch < kl_batches;
            let mut times_rng = rng::rng(seed, Stream::EvalTimes, &[split as u64, batch]);
            let times = Times::Steps(
                (0..batch_size)
                    .map(|_| {
                        if is_kl {
                            times_rng.random_range(1..timesteps)
                        } else {
                            0
                        }
                    })
                    .collect(),
            );
            let ids: Vec<i64> = corpus
                .eval_batch(split, batch, batch_size)
                .into_iter()
                .map(i64::from)
                .collect();
            let x0 =
                Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids, [batch_size, 256]), &device);
            let mut noise = rng::rows(
                seed,
                Stream::EvalNoise,
                &[split as u64, batch],
                0..batch_size as u64,
            );
            let terms = loaded
                .diffusion
                .token_terms(&loaded.net, x0, &times, &mut noise);
            if is_kl {
                kl.merge(&Moments::of_sequence_means(terms.kl));
            } else {
                recon.merge(&Moments::of_sequence_means(terms.ce));
            }
        }
        let scale = (timesteps - 1) as f64 / LN_2;
        let expected = [
            ("kl_bits", kl.mean() * scale),
            ("kl_se", kl.std_error() * scale),
            ("recon_bits", recon.mean() / LN_2),
            ("recon_se", recon.std_error() / LN_2),
            ("bits_per_token", kl.mean() * scale + recon.mean() / LN_2),
        ];
        for (key, value) in expected {
            assert!(
                close(number(reported, key), value),
                "{split} {key}: eval says {}, the model code {value}",
                number(reported, key)
            );
        }
        assert_eq!(reported["kl_sequences"], 12);
        assert_eq!(reported["recon_sequences"], 8);
    }
}

#[test]
fn standard_errors_shrink_with_more_batches() {
    let dir = tempfile::tempdir().unwrap();
    let model = imported(dir.path(), "tiny_text8");
    let root = text8_dataset(dir.path());
    let estimate = |batches: &str| {
        let report = json(&[
            "eval",
            s(&model),
            "--data",
            s(&root),
            "--split",
            "val",
            "--kl-batches",
            batches,
            "--recon-batches",
            batches,
            "--batch-size",
            "4",
            "--json",
        ]);
        report["estimates"][0].clone()
    };
    let few = estimate("2");
    let many = estimate("8");
    for key in ["kl_se", "recon_se", "se"] {
        // 4× the sequences: about half the standard error.
        assert!(
            number(&many, key) < 0.8 * number(&few, key),
            "{key}: {} with 8 batches, {} with 2",
            number(&many, key),
            number(&few, key)
        );
    }
}

/// A few steps of training on the synthetic corpus, so that a real run folder exists.
fn tiny_run(dir: &Path) -> PathBuf {
    tiny_run_with(dir, &[])
}

/// [`tiny_run`] with `--set` overrides.
fn tiny_run_with(dir: &Path, overrides: &[&str]) -> PathBuf {
    let experiment = dir.join("tiny.ron");
    fs::write(
        &experiment,
        r#"(
    name: "tiny",
    seed: 3,
    model: D3pmAbsorbing(timesteps: 40),
    network: (n_embed: 16, n_heads: 2, n_blocks: 1, n_cond: 8, dropout: 0.0),
    dataset: Synthetic(seq_len: 24, train_tokens: 4000, eval_tokens: 2000),
    train: (batch_size: 4, grad_accum: 1, max_iters: 3, warmup_iters: 1,
            log_interval: 1, eval_interval: 3, eval_iters: 1),
    eval: (splits: [Val], kl_batches: 3, recon_batches: 2, batch_size: 4),
)"#,
    )
    .unwrap();
    let results = dir.join("results");
    let mut args = vec!["run", s(&experiment), "--results", s(&results)];
    for o in overrides {
        args.extend(["--set", o]);
    }
    succeeds(&args);
    let runs: Vec<PathBuf> = fs::read_dir(results.join("tiny"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1);
    runs.into_iter().next().unwrap()
}

#[test]
fn a_run_folder_is_evaluated_logged_and_sampled() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path());
    let eval_csv = run.join("eval.csv");
    let rows = |path: &Path| -> Vec<csv::StringRecord> {
        csv::Reader::from_path(path)
            .unwrap()
            .records()
            .map(Result::unwrap)
            .collect()
    };
    let header = csv::Reader::from_path(&eval_csv)
        .unwrap()
        .headers()
        .unwrap()
        .clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let final_eval = rows(&eval_csv)[0].clone();

    // Defaults (the experiment's eval section, seed 0) reproduce the run's own evaluation.
    let report = json(&["eval", s(&run), "--json"]);
    assert_eq!(report["kind"], "run folder");
    assert_eq!(report["iteration"], 3);
    assert_eq!(report["kl_batches"], 3);
    let estimate = &report["estimates"][0];
    assert_eq!(estimate["split"], "val");
    let logged: f64 = final_eval[col("bits_per_token")].parse().unwrap();
    assert!(close(number(estimate, "bits_per_token"), logged));

    succeeds(&[
        "eval",
        s(&run),
        "--weights",
        "model",
        "--split",
        "test",
        "--kl-batches",
        "2",
    ]);
    let all = rows(&eval_csv);
    assert_eq!(all.len(), 3, "one row per evaluation appended");
    for (row, split, weights, kl_batches) in
        [(&all[1], "val", "ema", "3"), (&all[2], "test", "raw", "2")]
    {
        assert_eq!(&row[col("split")], split);
        assert_eq!(&row[col("weights")], weights);
        assert_eq!(&row[col("iter")], "3");
        assert_eq!(&row[col("kl_batches")], kl_batches);
    }
    let bits = |row: &csv::StringRecord| -> f64 { row[col("bits_per_token")].parse().unwrap() };
    assert!(
        !close(bits(&all[1]), bits(&all[2])),
        "other split and weights, other number"
    );

    // Samples go to the run's samples.txt, decoded with text8's alphabet.
    let stdout = succeeds(&["sample", s(&run), "--batch", "2", "--seed", "4"]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l.chars().count() == 24));
    let samples = fs::read_to_string(run.join("samples.txt")).unwrap();
    let header = samples.lines().next().unwrap();
    for part in [
        "run folder, latest checkpoint, iteration 3, ema weights",
        "seed=4",
        "steps=40",
        "sampler=exact",
    ] {
        assert!(header.contains(part), "{part} in {header}");
    }
    assert_eq!(samples.lines().nth(1), Some(lines[0]));
}

#[test]
fn the_best_checkpoint_is_the_one_with_the_lowest_validation_l_t() {
    let dir = tempfile::tempdir().unwrap();
    // Validation at every step of a fast, noisy run, so the best need not be the last.
    let run = tiny_run_with(
        dir.path(),
        &[
            "train.max_iters=6",
            "train.eval_interval=1",
            "train.lr=0.05",
            "train.min_lr=0.05",
        ],
    );
    let val: Vec<(u64, f64)> = csv::Reader::from_path(run.join("val.csv"))
        .unwrap()
        .deserialize::<std::collections::HashMap<String, String>>()
        .map(|row| {
            let row = row.unwrap();
            (row["iter"].parse().unwrap(), row["l_t"].parse().unwrap())
        })
        .collect();
    assert_eq!(val.len(), 6);
    let lowest = val
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|&(iter, _)| iter)
        .unwrap();
    let args = |checkpoint: &'static str| {
        let mut a = vec!["eval", s(&run), "--json", "--kl-batches", "1"];
        a.extend(["--recon-batches", "1", "--checkpoint", checkpoint]);
        a
    };
    let best = json(&args("best"));
    assert_eq!(best["iteration"], lowest, "val.csv: {val:?}");
    let latest = json(&args("latest"));
    assert_eq!(latest["iteration"], 6);
    let samples = succeeds(&["sample", s(&run), "--checkpoint", "best", "--no-animate"]);
    assert_eq!(samples.lines().count(), 1);
    let header = fs::read_to_string(run.join("samples.txt")).unwrap();
    let expected = format!("best checkpoint, iteration {lowest}");
    assert!(header.contains(&expected), "{expected} in {header}");

    // A run that keeps no best checkpoint says so.
    fs::remove_file(run.join("checkpoints/best.safetensors")).unwrap();
    let err = fails(&args("best"));
    assert!(err.contains("has no best checkpoint"), "{err}");
    assert!(err.contains("--checkpoint latest"), "{err}");
}

#[test]
fn a_gpu_trained_model_runs_on_the_cpu_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = text8_dataset(dir.path());
    let cpu_model = imported(dir.path(), "tiny_text8");
    // The same model, as if trained on CUDA device 2.
    let gpu_model = dir.path().join("gpu");
    fs::create_dir(&gpu_model).unwrap();
    for file in ["model.json", "weights.safetensors"] {
        fs::copy(cpu_model.join(file), gpu_model.join(file)).unwrap();
    }
    let ron = fs::read_to_string(cpu_model.join("experiment.ron")).unwrap();
    let start = ron
        .find("topology:")
        .expect("the experiment names its topology");
    let end = start + ron[start..].find(')').unwrap() + 1;
    let gpu_ron = format!(
        "{}topology: (backend: Cuda, devices: [2]){}",
        &ron[..start],
        &ron[end..]
    );
    fs::write(gpu_model.join("experiment.ron"), gpu_ron).unwrap();
    fn eval<'a>(model: &'a Path, root: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["eval", s(model), "--data", s(root), "--json"];
        a.extend([
            "--kl-batches",
            "2",
            "--recon-batches",
            "1",
            "--batch-size",
            "2",
        ]);
        a.extend_from_slice(extra);
        a
    }

    if !cfg!(feature = "cuda") {
        let err = fails(&eval(&gpu_model, &root, &[]));
        assert!(err.contains("built without CUDA"), "{err}");
        assert!(err.contains("--backend cpu"), "{err}");
    }
    let on_cpu = json(&eval(&gpu_model, &root, &["--backend", "cpu"]));
    let reference = json(&eval(&cpu_model, &root, &[]));
    assert_eq!(on_cpu["estimates"], reference["estimates"]);
    succeeds(&[
        "sample",
        s(&gpu_model),
        "--data",
        s(&root),
        "--backend",
        "cpu",
        "--seq-len",
        "8",
        "--no-animate",
    ]);

    let err = fails(&eval(
        &gpu_model,
        &root,
        &["--backend", "cpu", "--device", "1"],
    ));
    assert!(
        err.contains("--device 1: the CPU backend is a single device"),
        "{err}"
    );
    let err = fails(&eval(&cpu_model, &root, &["--checkpoint", "best"]));
    assert!(
        err.contains("is a model folder, which holds one set of weights"),
        "{err}"
    );
    let err = fails(&eval(&cpu_model, &root, &["--backend", "tpu"]));
    assert!(
        err.contains("unknown backend `tpu`, expected one of"),
        "{err}"
    );
    for backend in ddexp::backend::Backend::ALL {
        assert!(err.contains(backend.name()), "{err}");
    }
}

#[test]
fn samples_have_the_length_and_alphabet_and_repeat_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let model = imported(dir.path(), "tiny_text8");
    let out = dir.path().join("samples.txt");
    let args = |seed: &'static str| {
        vec![
            "sample",
            s(&model),
            "--batch",
            "3",
            "--seq-len",
            "40",
            "--steps",
            "60",
            "--seed",
            seed,
            "--out",
            s(&out),
        ]
    };
    let first = succeeds(&args("5"));
    // Not a terminal: only the text, no animation.
    assert!(!first.contains('\x1b'), "escape codes in {first:?}");
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line.chars().count(), 40, "{line:?}");
        assert!(!line.contains(MASK_GLYPH), "a mask is left in {line:?}");
        assert!(line.chars().all(|c| TEXT8_ALPHABET.contains(c)), "{line:?}");
    }
    assert_eq!(succeeds(&args("5")), first, "same seed, same samples");
    assert_ne!(succeeds(&args("6")), first);

    let written = fs::read_to_string(&out).unwrap();
    let blocks: Vec<&str> = written.split_terminator("\n\n").collect();
    assert_eq!(blocks.len(), 3, "three appended blocks");
    assert!(blocks[0].starts_with("# "));
    for part in [
        "seed=5",
        "steps=60",
        "sampler=exact",
        "ema weights",
        "batch=3",
        "seq_len=40",
    ] {
        assert!(blocks[0].lines().next().unwrap().contains(part), "{part}");
    }
    assert_eq!(blocks[0].lines().skip(1).collect::<Vec<_>>(), lines);
    assert!(
        !model.join("samples.txt").exists(),
        "--out replaces samples.txt"
    );
}

#[test]
fn coarse_grids_and_the_reference_sampler_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = imported(dir.path(), "tiny_text8");
    for extra in [
        &["--steps", "1"][..],
        &["--steps", "7"],
        &["--steps", "7", "--every-step"],
        &["--steps", "7", "--reference-sampler"],
    ] {
        let mut args = vec!["sample", s(&model), "--batch", "2", "--seq-len", "12"];
        args.extend_from_slice(extra);
        let stdout = succeeds(&args);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{extra:?}");
        for line in lines {
            assert_eq!(line.chars().count(), 12, "{extra:?}: {line:?}");
            // The reference sampler may keep mask mass in its last draw; the others never.
            let alphabet = if extra.contains(&"--reference-sampler") {
                format!("{TEXT8_ALPHABET}{MASK_GLYPH}")
            } else {
                TEXT8_ALPHABET.to_string()
            };
            assert!(
                line.chars().all(|c| alphabet.contains(c)),
                "{extra:?}: {line:?}"
            );
        }
    }
    let samples = fs::read_to_string(model.join("samples.txt")).unwrap();
    for header in [
        "steps=1 ",
        "steps=7 ",
        "sampler=exact-every-step",
        "sampler=reference",
    ] {
        assert!(samples.contains(header), "{header} in {samples}");
    }
    let err = fails(&["sample", s(&model), "--steps", "1001"]);
    assert!(err.contains("between 1 and the model's T = 1000"), "{err}");
}

/// Samples `batches` batches of `settings` (seeds 0..batches) with the fixture network.
fn draws(settings: SampleSettings, batches: u64) -> Vec<Sampled> {
    let dir = tempfile::tempdir().unwrap();
    let model = imported(dir.path(), "tiny_text8");
    let device = Default::default();
    let (_, loaded) = open_model::<Flex>(&model, &device);
    (0..batches)
        .map(|seed| {
            let network = |x: Tensor<Flex, 2, Int>, time: f32| {
                let b = x.dims()[0];
                let t = Tensor::from_data(TensorData::new(vec![time; b], [b]), &device);
                loaded.net.forward(x, t)
            };
            let settings = SampleSettings { seed, ..settings };
            sample_with(network, &loaded.diffusion, &settings, &device, |_| {}).unwrap()
        })
        .collect()
}

#[test]
fn the_fast_sampler_draws_from_the_step_by_step_distribution() {
    // 8 steps on T = 1000, 12 tokens, 5 batches of 64: 320 sequences per sampler.
    let settings = SampleSettings {
        batch: 64,
        seq_len: 12,
        steps: 8,
        seed: 0,
        sampler: AncestralSampler::Exact,
    };
    let fast = draws(settings, 5);
    let slow = draws(
        SampleSettings {
            sampler: AncestralSampler::ExactEveryStep,
            ..settings
        },
        5,
    );
    let grid = &fast[0].grid;
    let alpha_bar = |s: f64| (1000.0 - s) / 1000.0;
    let positions = (5 * 64 * 12) as f64;

    // Reveals per step. Positions reveal independently in both samplers, each in step i with
    // probability q_i = ᾱ(τ_{i+1}) − ᾱ(τ_i), so the count over all positions is
    // Binomial(n, q_i): |z| < 5 fails a correct sampler with probability < 1e-5 over the 16
    // comparisons, while a wrong reveal rate (1/s instead of q_i on this grid is 125× too
    // small) is hundreds of standard deviations off.
    for (name, sampled) in [("fast", &fast), ("step-by-step", &slow)] {
        for i in 0..8 {
            let q = alpha_bar(grid[i + 1]) - alpha_bar(grid[i]);
            let count: usize = sampled.iter().map(|b| b.revealed[i]).sum();
            let z = (count as f64 - positions * q) / (positions * q * (1.0 - q)).sqrt();
            assert!(
                z.abs() < 5.0,
                "{name} step {i}: {count} reveals, z = {z:.1}"
            );
        }
    }

    // Token frequencies. Sequences are the independent units (tokens of one sequence share
    // the network's context), so each token's frequency per sequence is averaged over the
    // 320 sequences with its standard error, and the two samplers' means must agree within
    // 5 standard errors of their difference for every class (a false alarm over 27 classes
    // has probability < 2e-5). Seeds are fixed, so the outcome is too.
    let frequencies = |sampled: &[Sampled]| -> Vec<Moments> {
        let mut moments = vec![Moments::default(); 28];
        for row in sampled.iter().flat_map(|b| &b.tokens) {
            let mut counts = [0usize; 28];
            for &t in row {
                counts[t as usize] += 1;
            }
            for (m, c) in moments.iter_mut().zip(counts) {
                let f = c as f64 / row.len() as f64;
                m.merge(&Moments {
                    count: 1,
                    sum: f,
                    sum_sq: f * f,
                });
            }
        }
        moments
    };
    let (a, b) = (frequencies(&fast), frequencies(&slow));
    assert_eq!(a[27].sum + b[27].sum, 0.0, "no mask is left");
    for class in 0..27 {
        let se = a[class].std_error().hypot(b[class].std_error());
        let diff = a[class].mean() - b[class].mean();
        assert!(
            diff.abs() <= 5.0 * se.max(1e-4),
            "class {class}: {:.4} fast vs {:.4} step-by-step (se {se:.4})",
            a[class].mean(),
            b[class].mean()
        );
    }
}

#[test]
fn the_fast_sampler_calls_the_network_only_where_positions_unmask_at_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let model = imported(dir.path(), "tiny_text8");
    let device = Default::default();
    let (_, loaded) = open_model::<Flex>(&model, &device);
    for (steps, seq_len) in [(1000, 8), (50, 20)] {
        let mut calls: Vec<(f32, usize)> = vec![];
        let network = |x: Tensor<Flex, 2, Int>, time: f32| {
            let masked = x.clone().equal_elem(27).int().sum().into_scalar() as usize;
            calls.push((time, masked));
            let b = x.dims()[0];
            let t = Tensor::from_data(TensorData::new(vec![time; b], [b]), &device);
            loaded.net.forward(x, t)
        };
        let settings = SampleSettings {
            batch: 2,
            seq_len,
            steps,
            seed: 11,
            sampler: AncestralSampler::Exact,
        };
        let sampled = sample_with(network, &loaded.diffusion, &settings, &device, |_| {}).unwrap();
        assert_eq!(sampled.network_calls, calls.len());
        assert_eq!(sampled.revealed.iter().sum::<usize>(), 2 * seq_len);
        // One call per step that reveals something, at that step's time, seeing the state
        // before the step (every position not yet revealed still masked).
        let mut expected = vec![];
        let mut masked = 2 * seq_len;
        for (i, &revealed) in sampled.revealed.iter().enumerate() {
            if revealed > 0 {
                expected.push((sampled.grid[i] as f32, masked));
            }
            masked -= revealed;
        }
        assert_eq!(calls, expected, "steps = {steps}");
        assert!(calls.len() < steps.min(2 * seq_len) + 1);
        if steps == 1000 {
            assert!(calls.len() <= 16, "at most one call per position");
        }
    }
}

#[test]
fn length_256_at_t_1000_needs_about_226_network_calls() {
    // Which steps call the network does not depend on the network, so a stand-in that
    // predicts uniform logits gives the full-size model's count. Each position unmasks at a
    // step uniform in 1..=1000, so the calls are the distinct values among 256 such draws:
    // mean m(1 − (1 − 1/m)^n) ≈ 225.9 for m = 1000, n = 256.
    let device = Default::default();
    let diffusion = ddexp::diffusion::Diffusion::new(
        &ddexp::spec::Process::D3pmAbsorbing {
            timesteps: 1000,
            lambda_ce: 0.05,
            time_conditioning: true,
        },
        27,
    );
    let runs = 30;
    let calls: Vec<f64> = (0..runs)
        .map(|seed| {
            let network = |x: Tensor<Flex, 2, Int>, _time: f32| {
                Tensor::<Flex, 3>::zeros([1, x.dims()[1], 28], &device)
            };
            let settings = SampleSettings {
                batch: 1,
                seq_len: 256,
                steps: 1000,
                seed,
                sampler: AncestralSampler::Exact,
            };
            let sampled = sample_with(network, &diffusion, &settings, &device, |_| {}).unwrap();
            assert!(sampled.tokens[0].iter().all(|&t| t < 27));
            sampled.network_calls as f64
        })
        .collect();
    let (m, n) = (1000.0f64, 256.0f64);
    let mean = m * (1.0 - (1.0 - 1.0 / m).powf(n));
    // Variance of the number of empty cells when n balls fall into m cells.
    let var = m * (m - 1.0) * (1.0 - 2.0 / m).powf(n) + m * (1.0 - 1.0 / m).powf(n)
        - m * m * (1.0 - 1.0 / m).powf(2.0 * n);
    let average = calls.iter().sum::<f64>() / runs as f64;
    let z = (average - mean) / (var / runs as f64).sqrt();
    assert!((225.0..227.0).contains(&mean));
    assert!(
        z.abs() < 5.0,
        "average {average:.1} calls, expected {mean:.1} (z = {z:.1})"
    );
}

#[test]
fn missing_or_corrupt_models_fail_precisely_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = text8_dataset(dir.path());
    let model = imported(dir.path(), "tiny_text8");
    let data = ["--data", s(&root)];
    let both = |target: &Path, expected: &[&str]| {
        for command in ["eval", "sample"] {
            let mut args = vec![command, s(target), "--batch-size", "2"];
            if command == "sample" {
                args = vec![command, s(target), "--seq-len", "8"];
            }
            args.extend_from_slice(&data);
            let err = fails(&args);
            for part in expected {
                assert!(err.contains(part), "`ddexp {command}`: {part:?} in {err}");
            }
        }
    };

    both(
        &dir.path().join("nowhere"),
        &["nowhere does not exist", "run folder", "model folder"],
    );
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    both(&empty, &["neither a run folder", "it is empty"]);
    both(
        &fixture("tiny_text8").join("ckpt.pt"),
        &["nanoDD checkpoint", "ddexp import nanodd"],
    );

    // A model folder with a corrupt weights file, then with none.
    let corrupt = dir.path().join("corrupt");
    fs::create_dir(&corrupt).unwrap();
    for file in ["model.json", "experiment.ron", "weights.safetensors"] {
        fs::copy(model.join(file), corrupt.join(file)).unwrap();
    }
    let weights = fs::read(corrupt.join("weights.safetensors")).unwrap();
    fs::write(
        corrupt.join("weights.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    both(
        &corrupt,
        &["weights.safetensors is not a valid safetensors file"],
    );
    fs::remove_file(corrupt.join("weights.safetensors")).unwrap();
    both(&corrupt, &["is incomplete: weights.safetensors is missing"]);
    fs::write(corrupt.join("model.json"), "{ not json").unwrap();
    both(&corrupt, &["model.json is not a valid model.json"]);
    both(
        &model.join("weights.safetensors"),
        &["is a file, not a folder"],
    );

    // Only the EMA weights were imported.
    for command in ["eval", "sample"] {
        let err = fails(&[command, s(&model), "--weights", "model", "--data", s(&root)]);
        assert!(err.contains("holds only the ema weights"), "{err}");
        assert!(err.contains("--weights model"), "{err}");
    }

    // A run folder stopped before its first checkpoint, and the experiment folder above it.
    let results = dir.path().join("results");
    let experiment = ddexp::spec::load(&model.join("experiment.ron"), &[])
        .unwrap()
        .experiment;
    let run = ddexp::results::RunDir::create_with_id(&results, &experiment, "r1").unwrap();
    both(
        run.path(),
        &[
            "has no checkpoint",
            "checkpoints/latest.safetensors is missing",
        ],
    );
    both(
        &results.join(&experiment.name),
        &["holds 1 run folder(s)", "r1"],
    );

    for folder in [&model, &corrupt, &run.path().to_path_buf()] {
        assert!(
            !folder.join("samples.txt").exists(),
            "a failed sample wrote into {folder:?}"
        );
    }
    assert!(!run.path().join("eval.csv").exists());
}

#[test]
fn a_dataset_with_another_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // small_wide_vocab reads 301 ids; nanoDD does not record its corpus, so the import names
    // a character corpus, here given with --data: 11 letters, the space and the newline.
    let model = imported(dir.path(), "small_wide_vocab");
    let docs = dir.path().join("docs.txt");
    fs::write(&docs, "abcdef ghijk\n".repeat(500)).unwrap();
    let root = dir.path().join("chars");
    data::prepare_text(&PrepareText {
        root: root.clone(),
        from: vec![docs],
        tokenizer: Tokenizer::Char,
        force: false,
    })
    .unwrap();
    for args in [
        vec!["eval", s(&model), "--data", s(&root), "--batch-size", "2"],
        vec!["sample", s(&model), "--data", s(&root), "--seq-len", "8"],
    ] {
        let err = fails(&args);
        assert!(err.contains("vocabulary of 13 ids"), "{err}");
        assert!(err.contains("built for 301"), "{err}");
    }
    // The fixture's text8 model on a dataset of another kind than its experiment names.
    let text8_model = imported(dir.path(), "tiny_text8");
    let err = fails(&["eval", s(&text8_model), "--data", s(&root)]);
    assert!(err.contains("holds text data"), "{err}");
    assert!(!model.join("samples.txt").exists());
}
