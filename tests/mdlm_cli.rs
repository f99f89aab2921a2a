//! MDLM runs end to end through the binary: a run killed and resumed ends exactly where an
//! uninterrupted one does; its logs carry the continuous-time bound; `ddexp eval` reproduces
//! its final evaluation; `ddexp sample` draws text; D3PM weights do not open as MDLM.

mod common;

use std::f64::consts::LN_2;
use std::path::{Path, PathBuf};

use common::cli::{ddexp, eval_rows, tensors, text, train_rows, val_rows};
use ddexp::checkpoint::{Checkpoint, import_nanodd};
use ddexp::data::TEXT8_ALPHABET;
use ddexp::model::WeightSet;
use ddexp::results::{RunInfo, RunStatus};

/// A time-free MDLM on a DiT small enough to train in seconds on the synthetic corpus, with
/// dropout (so resuming must also restore where the dropout draws are).
const EXPERIMENT: &str = r#"(
    name: "mdlm",
    seed: 3,
    model: Mdlm(schedule: LogLinear, eps: 1e-3, t_min: 1e-3),
    network: (n_embed: 32, n_heads: 2, n_blocks: 1, n_cond: 16, dropout: 0.1),
    dataset: Synthetic(seq_len: 16, train_tokens: 20000, eval_tokens: 2000),
    sampler: LowDiscrepancy,
    train: (
        batch_size: 4, grad_accum: 2, warmup_iters: 2, lr: 3e-3, min_lr: 1e-4, max_iters: 30,
        log_interval: 2, eval_interval: 10, eval_iters: 2, checkpoint: (every: 4),
        ema: (beta: 0.9, update_after_step: 5),
    ),
    eval: (kl_batches: 6, recon_batches: 4, batch_size: 8),
)
"#;

/// The only run folder under `results/<name>/`.
fn run_dir(root: &Path, name: &str) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(root.join("results").join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "expected one run folder, found {runs:?}");
    runs.into_iter().next().unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn an_mdlm_run_resumes_exactly_evaluates_and_samples() {
    // The reference: one uninterrupted run.
    let straight = tempfile::tempdir().unwrap();
    std::fs::write(straight.path().join("e.ron"), EXPERIMENT).unwrap();
    let out = ddexp(&["run", "e.ron"], straight.path());
    assert!(out.status.success(), "{}", text(&out));
    let reference = run_dir(straight.path(), "mdlm");

    // The same run, killed with SIGKILL once it has logged iteration 18 (after the checkpoint
    // at 16), then resumed.
    let killed = tempfile::tempdir().unwrap();
    std::fs::write(killed.path().join("e.ron"), EXPERIMENT).unwrap();
    common::cli::run_killed_at(killed.path(), "iter 18:");
    let run = run_dir(killed.path(), "mdlm");
    let ckpt_iter = Checkpoint::load(&run.join("checkpoints/latest.safetensors"))
        .unwrap()
        .iteration;
    assert!((16..30).contains(&ckpt_iter), "checkpoint at {ckpt_iter}");
    let out = ddexp(&["run", "--resume", s(&run)], killed.path());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        RunInfo::load(&run.join("run.json")).unwrap().status,
        RunStatus::Completed
    );

    // Bit for bit: weights, EMA and optimiser state; every log row once, the same.
    let a = tensors(&reference.join("checkpoints/latest.safetensors"));
    let b = tensors(&run.join("checkpoints/latest.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "tensor {name} differs after resume");
    }
    assert_eq!(train_rows(&reference), train_rows(&run));
    assert_eq!(val_rows(&reference), val_rows(&run));
    assert_eq!(eval_rows(&reference), eval_rows(&run));
    // MDLM's schedule is a formula: the weights hold the network and nothing else.
    let weights = Checkpoint::load(&run.join("checkpoints/latest.safetensors")).unwrap();
    assert!(weights.model.names().all(|n| n.starts_with("net.")));

    // The logs: the loss is the NELBO integrand (so it is the kl column), l_T is
    // (1 − t_min) × it, and the weights w(t) ≥ 1 make it at least the unweighted CE.
    for row in train_rows(&run) {
        assert_eq!(row.loss, row.kl, "{row:?}");
        assert!((row.l_t - 0.999 * row.kl).abs() < 1e-9 * row.kl, "{row:?}");
        assert!(
            (row.bits_per_token - row.l_t / LN_2).abs() < 1e-9,
            "{row:?}"
        );
        assert!(row.kl >= row.ce && row.ce > 0.0, "{row:?}");
    }
    for row in val_rows(&run) {
        assert!((row.l_t - 0.999 * row.kl).abs() < 1e-9 * row.kl, "{row:?}");
        assert!(row.bits_se > 0.0, "{row:?}");
    }
    let evals = eval_rows(&run);
    assert_eq!(evals.len(), 2);
    for row in &evals {
        assert!(row.kl_bits > 0.0 && row.kl_se > 0.0, "{row:?}");
        assert!(row.recon_bits >= 0.0 && row.recon_bits < 0.1 * row.kl_bits);
        assert!((row.bits_per_token - row.kl_bits - row.recon_bits).abs() < 1e-9);
    }

    // `ddexp eval` with no options reproduces the run's final evaluation.
    let out = ddexp(&["eval", s(&run), "--json"], killed.path());
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["process"].as_str().unwrap().starts_with("MDLM"),
        "{report}"
    );
    assert!(report["timesteps"].is_null());
    for (estimate, row) in report["estimates"].as_array().unwrap().iter().zip(&evals) {
        assert_eq!(estimate["split"], row.split.name());
        assert_eq!(estimate["kl_bits"].as_f64().unwrap(), row.kl_bits);
        assert_eq!(estimate["recon_bits"].as_f64().unwrap(), row.recon_bits);
        assert_eq!(
            estimate["bits_per_token"].as_f64().unwrap(),
            row.bits_per_token
        );
    }

    // Sampling: 1000 steps by default, text of the right length and alphabet, no mask left.
    for extra in [&[][..], &["--no-cache"], &["--every-step", "--steps", "7"]] {
        let mut args = vec!["sample", s(&run), "--batch", "3", "--no-animate"];
        args.extend_from_slice(extra);
        let out = ddexp(&args, killed.path());
        assert!(out.status.success(), "{extra:?}: {}", text(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{extra:?}: {stdout}");
        for line in lines {
            assert_eq!(line.chars().count(), 16, "{line:?}");
            assert!(line.chars().all(|c| TEXT8_ALPHABET.contains(c)), "{line:?}");
        }
    }
    let samples = std::fs::read_to_string(run.join("samples.txt")).unwrap();
    for header in [
        "sampler=exact steps=1000 ",
        "sampler=exact-uncached steps=1000 ",
        "sampler=exact-every-step steps=7 ",
    ] {
        assert!(samples.contains(header), "{header} in {samples}");
    }
    let out = ddexp(&["sample", s(&run), "--reference-sampler"], killed.path());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("nanoDD's sampler, for D3PM models"),
        "{}",
        text(&out)
    );
}

#[test]
fn d3pm_weights_do_not_open_as_mdlm() {
    // `ddexp import nanodd` writes a D3PM model folder (nanoDD trains D3PM only); an
    // experiment.ron edited to MDLM is refused, naming the schedule buffers MDLM has not.
    let dir = tempfile::tempdir().unwrap();
    let case = common::fixtures::fixture_cases()
        .into_iter()
        .find(|case| common::fixtures::case_name(case) == "tiny_text8")
        .expect("the tiny_text8 fixture");
    let folder = dir.path().join("tiny");
    import_nanodd(&case.join("ckpt.pt"), &folder, WeightSet::Ema).unwrap();
    let experiment_file = folder.join("experiment.ron");
    let experiment = std::fs::read_to_string(&experiment_file).unwrap();
    assert!(experiment.contains("model: D3pmAbsorbing("), "{experiment}");
    let start = experiment.find("D3pmAbsorbing(").unwrap();
    let end = start + experiment[start..].find(')').unwrap() + 1;
    let edited = format!("{}Mdlm(){}", &experiment[..start], &experiment[end..]);
    std::fs::write(&experiment_file, edited).unwrap();
    let out = ddexp(&["sample", s(&folder), "--no-animate"], dir.path());
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("unexpected tensor `alpha_bars`")
            && message.contains("the weights of MDLM")
            && message.contains("hold `net.*` only"),
        "{message}"
    );
}
