//! Parity with the reference: every fixture case under the fixture root (see
//! `common::fixtures::fixture_cases`), both weight sets, every recorded tensor — the network's
//! intermediates, logits, posteriors, per-token KL and CE, the loss, both reverse-step
//! variants, and the gradient of the loss for every parameter — in float32 on flex.
//!
//! Relative error of a tensor = max |ours − reference| / max |reference| over the entries
//! where the reference is finite (infinite reference entries must be matched exactly).
//! The test prints a table per case and weight set and fails above 1e-4.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use common::fixtures::open_model;
use ddexp::checkpoint::{import_nanodd, tensor_file};
use ddexp::diffusion::{Diffusion, LossTrace, ReverseMode};
use ddexp::model::{StateDict, WeightSet};

type B = Autodiff<Flex>;

const THRESHOLD: f64 = 1e-4;

/// Inputs of a case, not outputs to compare.
const INPUTS: [&str; 3] = ["x0", "t", "x_tplus1"];

struct Row {
    name: String,
    shape: Vec<usize>,
    max_abs: f64,
    scale: f64,
    rel: f64,
}

#[test]
fn every_fixture_case_matches_the_reference() {
    let mut report = String::new();
    let mut failed = false;
    for case in common::fixtures::fixture_cases() {
        let recorded =
            tensor_file::read(&case.join("cases.safetensors")).expect("cases.safetensors");
        let mut compared = BTreeSet::new();
        for which in [WeightSet::Model, WeightSet::Ema] {
            let rows = run_case(&case, which, &recorded, &mut compared);
            let worst = rows.iter().map(|r| r.rel).fold(0.0, f64::max);
            let _ = writeln!(
                report,
                "\n{} / {} weights: worst relative error {worst:.3e} (max|ours-ref| / max|ref|, threshold {THRESHOLD:e})",
                common::fixtures::case_name(&case),
                which.name()
            );
            let _ = writeln!(
                report,
                "  {:<40} {:>14} {:>11} {:>11} {:>11}",
                "tensor", "shape", "max abs err", "max |ref|", "rel err"
            );
            for row in &rows {
                let passed = row.rel <= THRESHOLD; // false for NaN too
                let flag = if passed { "" } else { "  <-- FAIL" };
                let _ = writeln!(
                    report,
                    "  {:<40} {:>14} {:>11.3e} {:>11.3e} {:>11.3e}{flag}",
                    row.name,
                    format!("{:?}", row.shape),
                    row.max_abs,
                    row.scale,
                    row.rel
                );
                failed |= !passed;
            }
        }
        let missed: Vec<&str> = recorded
            .names()
            .filter(|n| !INPUTS.contains(n) && !compared.contains(*n))
            .collect();
        if !missed.is_empty() {
            failed = true;
            let _ = writeln!(
                report,
                "\n{}: recorded tensors not compared: {missed:?}",
                common::fixtures::case_name(&case)
            );
        }
    }
    eprintln!("{report}");
    assert!(!failed, "parity with nanoDD failed:\n{report}");
}

/// Imports `which` weights of the case's checkpoint, runs the recorded inputs and compares.
fn run_case(
    case: &Path,
    which: WeightSet,
    recorded: &StateDict,
    compared: &mut BTreeSet<String>,
) -> Vec<Row> {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join(which.name());
    import_nanodd(&case.join("ckpt.pt"), &folder, which).expect("import");
    let (_, model) = open_model::<B>(&folder, &device);
    let Diffusion::Absorbing(process) = &model.diffusion else {
        panic!("nanoDD models are D3PM");
    };
    let w = which.name();

    let get = |name: &str| -> &TensorData {
        recorded
            .get(name)
            .unwrap_or_else(|| panic!("{}: cases.safetensors has no `{name}`", case.display()))
    };
    let ints = |name: &str| -> Vec<usize> {
        get(name)
            .clone()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect()
    };
    let x0 = Tensor::<B, 2, Int>::from_data(get("x0").clone(), &device);
    let x_next = Tensor::<B, 2, Int>::from_data(get("x_tplus1").clone(), &device);
    let t = ints("t");
    let s = ints(&format!("{w}.reverse_s"));
    // An input of the reverse step, recorded per weight set.
    compared.insert(format!("{w}.reverse_s"));

    let mut rows = Vec::new();
    let mut check = |name: String, ours: TensorData| {
        rows.push(compare(&name, ours, get(&name)));
        compared.insert(name);
    };

    let buffers = model.diffusion.buffers();
    check("betas".into(), buffers.get("betas").unwrap().clone());
    check(
        "alpha_bars".into(),
        buffers.get("alpha_bars").unwrap().clone(),
    );

    let mut trace = LossTrace::default();
    let terms =
        process.token_terms_traced(&model.net, x0.clone(), x_next.clone(), &t, Some(&mut trace));
    let out = process.loss_from_terms(terms.clone(), &t);

    check("log_q".into(), trace.log_q.unwrap().into_data());
    check(
        format!("{w}.timestep_freq"),
        trace.net.timestep_freq.unwrap().into_data(),
    );
    check(format!("{w}.cond"), trace.net.cond.unwrap().into_data());
    check(format!("{w}.embed"), trace.net.embed.unwrap().into_data());
    for (i, block) in trace.net.blocks.into_iter().enumerate() {
        check(format!("{w}.block{i}"), block.into_data());
    }
    check(format!("{w}.logits"), trace.logits.unwrap().into_data());
    check(format!("{w}.log_p"), trace.log_p.unwrap().into_data());
    check(format!("{w}.l_kl"), terms.kl.into_data());
    check(format!("{w}.l_ce"), terms.ce.into_data());
    check(format!("{w}.loss"), out.loss.clone().into_data());

    let s_prev: Vec<usize> = s.iter().map(|&s| s - 1).collect();
    for (mode, name) in [
        (ReverseMode::Reference, "reverse_logits"),
        (ReverseMode::Exact, "reverse_logits_masked"),
    ] {
        let log_probs = process.reverse_log_probs(&model.net, x_next.clone(), &s, &s_prev, mode);
        check(format!("{w}.{name}"), log_probs.into_data());
    }

    // The recorded gradients are those of the raw weights' loss.
    if which == WeightSet::Model {
        let grads = out.loss.backward();
        let ours = model.net.grads_state_dict(&grads);
        let recorded_grads: Vec<String> = recorded
            .names()
            .filter(|n| n.starts_with("grad."))
            .map(String::from)
            .collect();
        assert!(
            !recorded_grads.is_empty(),
            "{}: no recorded gradients",
            case.display()
        );
        for name in recorded_grads {
            let param = name.strip_prefix("grad.net.").unwrap_or_else(|| {
                panic!(
                    "{}: gradient `{name}` is not of a `net.` parameter",
                    case.display()
                )
            });
            let grad = ours
                .get(param)
                .unwrap_or_else(|| panic!("no parameter `{param}` for recorded `{name}`"))
                .clone();
            check(name, grad);
        }
    }
    rows
}

fn compare(name: &str, ours: TensorData, reference: &TensorData) -> Row {
    let shape = reference.shape.to_vec();
    let mut row = Row {
        name: name.to_string(),
        shape: shape.clone(),
        max_abs: f64::INFINITY,
        scale: f64::NAN,
        rel: f64::INFINITY,
    };
    if ours.shape.as_slice() != shape.as_slice() {
        row.name = format!("{name} (shape {:?})", ours.shape.as_slice());
        return row;
    }
    let a = ours.convert::<f64>().to_vec::<f64>().unwrap();
    let b = reference.clone().convert::<f64>().to_vec::<f64>().unwrap();
    let scale = b
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let mut max_abs = 0.0f64;
    for (x, y) in a.iter().zip(&b) {
        let err = if y.is_finite() {
            (x - y).abs() // NaN if ours is NaN or infinite: fails below
        } else if x == y {
            0.0 // equal infinities
        } else {
            f64::INFINITY
        };
        max_abs = if err.is_nan() {
            f64::INFINITY
        } else {
            max_abs.max(err)
        };
    }
    row.max_abs = max_abs;
    row.scale = scale;
    row.rel = max_abs / scale.max(1e-30);
    row
}
