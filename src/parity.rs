//! Agreement with the reference implementation, on any backend: the tensors recorded from
//! nanoDD for a fixture case, computed again by ddexp and compared.
//!
//! A fixture case is a folder with nanoDD's `ckpt.pt`, `cases.safetensors` (inputs and the
//! reference's outputs) and `meta.json`. For both weight sets of the checkpoint, every recorded
//! tensor is compared: the schedule, the network's intermediates and logits, the posteriors
//! (built by the reference's own formulation from ddexp's logits), the per-token KL and CE of
//! the closed-form loss, the loss, both variants of the reverse step, and, for the raw
//! weights, the gradient of the loss for every parameter.
//!
//! The error of a tensor is max |ours − reference| / max |reference| over the entries where the
//! reference is finite; infinite reference entries must be matched exactly. `ddexp parity` and
//! the parity tests fail above [`THRESHOLD`].

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use crate::backend::{self, Devices, Job};
use crate::checkpoint::{load_nanodd, tensor_file};
use crate::diffusion::{Diffusion, LossTrace, ReverseMode};
use crate::model::{StateDict, WeightSet};

/// The largest relative error that passes.
pub const THRESHOLD: f64 = 1e-4;

/// Recorded tensors that are inputs of a case, not outputs to compare.
const INPUTS: [&str; 3] = ["x0", "t", "x_tplus1"];

/// The files of a fixture case.
const CASE_FILES: [&str; 3] = ["ckpt.pt", "cases.safetensors", "meta.json"];

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub shape: Vec<usize>,
    pub max_abs: f64,
    /// max |reference| over its finite entries.
    pub scale: f64,
    pub rel: f64,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.rel <= THRESHOLD // false for NaN
    }
}

/// One case and weight set.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub case: String,
    pub weights: WeightSet,
    pub rows: Vec<Row>,
}

impl CaseReport {
    pub fn worst(&self) -> f64 {
        self.rows.iter().map(|r| r.rel).fold(0.0, f64::max)
    }
}

/// Every case of a fixture root on one device.
#[derive(Debug, Clone)]
pub struct ParityReport {
    pub device: String,
    pub cases: Vec<CaseReport>,
    /// Recorded tensors that nothing compared, per case: a fixture this code does not cover.
    pub missed: Vec<(String, Vec<String>)>,
}

impl ParityReport {
    pub fn passed(&self) -> bool {
        self.missed.is_empty() && self.cases.iter().all(|c| c.rows.iter().all(Row::passed))
    }

    pub fn worst(&self) -> f64 {
        self.cases.iter().map(CaseReport::worst).fold(0.0, f64::max)
    }

    /// A table per case and weight set.
    pub fn render(&self) -> String {
        let mut s = format!("parity with nanoDD on {}\n", self.device);
        for case in &self.cases {
            let _ = writeln!(
                s,
                "\n{} / {} weights: worst relative error {:.3e} (max|ours-ref| / max|ref|, \
                 threshold {THRESHOLD:e})",
                case.case,
                case.weights.name(),
                case.worst()
            );
            let _ = writeln!(
                s,
                "  {:<48} {:>14} {:>11} {:>11} {:>11}",
                "tensor", "shape", "max abs err", "max |ref|", "rel err"
            );
            for row in &case.rows {
                let flag = if row.passed() { "" } else { "  <-- FAIL" };
                let _ = writeln!(
                    s,
                    "  {:<48} {:>14} {:>11.3e} {:>11.3e} {:>11.3e}{flag}",
                    row.name,
                    format!("{:?}", row.shape),
                    row.max_abs,
                    row.scale,
                    row.rel
                );
            }
        }
        for (case, names) in &self.missed {
            let _ = writeln!(s, "\n{case}: recorded tensors not compared: {names:?}");
        }
        s
    }
}

/// The case folders under `root` (every folder is a case; an incomplete one is an error, not
/// skipped).
pub fn fixture_cases(root: &Path) -> Result<Vec<PathBuf>> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("cannot list the fixture folder {}", root.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list the fixture folder {}", root.display()))?
        .into_iter()
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    if cases.is_empty() {
        bail!(
            "{} holds no fixture case (a folder with {})",
            root.display(),
            CASE_FILES.join(", ")
        );
    }
    for case in &cases {
        for file in CASE_FILES {
            if !case.join(file).is_file() {
                bail!("fixture case {} has no {file}", case.display());
            }
        }
    }
    Ok(cases)
}

/// Compares every case under `root` on device `device` of `backend`.
pub fn check(root: &Path, backend: backend::Backend, device: usize) -> Result<ParityReport> {
    let cases = fixture_cases(root)?;
    backend::run(backend, &[device], ParityJob { cases: &cases })
}

struct ParityJob<'a> {
    cases: &'a [PathBuf],
}

impl Job for ParityJob<'_> {
    type Output = ParityReport;

    fn run<B: Backend>(self, devices: &Devices<B>) -> Result<ParityReport> {
        let mut report = ParityReport {
            device: devices.label(),
            cases: vec![],
            missed: vec![],
        };
        for case in self.cases {
            let name = case_name(case);
            let recorded = tensor_file::read(&case.join("cases.safetensors"))?;
            let mut compared = BTreeSet::new();
            for which in [WeightSet::Model, WeightSet::Ema] {
                let rows = run_case::<Autodiff<B>>(
                    case,
                    which,
                    &recorded,
                    &mut compared,
                    &devices.devices[0],
                )?;
                report.cases.push(CaseReport {
                    case: name.clone(),
                    weights: which,
                    rows,
                });
            }
            let missed: Vec<String> = recorded
                .names()
                .filter(|n| !INPUTS.contains(n) && !compared.contains(*n))
                .map(String::from)
                .collect();
            if !missed.is_empty() {
                report.missed.push((name, missed));
            }
        }
        Ok(report)
    }
}

/// The case's folder name.
pub fn case_name(case: &Path) -> String {
    case.file_name().map_or_else(
        || case.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Loads `which` weights of the case's checkpoint, runs the recorded inputs and compares.
fn run_case<B: AutodiffBackend>(
    case: &Path,
    which: WeightSet,
    recorded: &StateDict,
    compared: &mut BTreeSet<String>,
    device: &B::Device,
) -> Result<Vec<Row>> {
    let model = load_nanodd::<B>(&case.join("ckpt.pt"), which, device)?;
    let Diffusion::Absorbing(process) = &model.diffusion else {
        bail!("{}: nanoDD checkpoints hold D3PM models", case.display());
    };
    let w = which.name();

    let get = |name: &str| -> Result<&TensorData> {
        recorded
            .get(name)
            .with_context(|| format!("{}: cases.safetensors has no `{name}`", case.display()))
    };
    let ints = |name: &str| -> Result<Vec<usize>> {
        Ok(get(name)?
            .clone()
            .convert::<i64>()
            .to_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{}: `{name}` is not integer: {e:?}", case.display()))?
            .into_iter()
            .map(|v| v as usize)
            .collect())
    };
    let x0 = Tensor::<B, 2, Int>::from_data(get("x0")?.clone(), device);
    let x_next = Tensor::<B, 2, Int>::from_data(get("x_tplus1")?.clone(), device);
    let t = ints("t")?;
    let s = ints(&format!("{w}.reverse_s"))?;
    // An input of the reverse step, recorded per weight set.
    compared.insert(format!("{w}.reverse_s"));

    let mut rows = Vec::new();
    let mut check = |name: String, ours: TensorData| -> Result<()> {
        rows.push(compare(&name, ours, get(&name)?));
        compared.insert(name);
        Ok(())
    };

    let buffers = model.diffusion.buffers();
    for name in ["betas", "alpha_bars"] {
        check(
            name.into(),
            buffers.get(name).expect("schedule buffers").clone(),
        )?;
    }

    let mut trace = LossTrace::default();
    let terms =
        process.token_terms_traced(&model.net, x0.clone(), x_next.clone(), &t, Some(&mut trace));
    let out = process.loss_from_terms(terms.clone(), &t);
    let logits = trace.logits.expect("traced logits");
    // The posteriors that the closed-form loss never builds, from the same logits.
    let posteriors = process.reference_posteriors(logits.clone(), x0.clone(), x_next.clone(), &t);

    check("log_q".into(), posteriors.log_q.clone().into_data())?;
    let net = trace.net;
    check(
        format!("{w}.timestep_freq"),
        net.timestep_freq.expect("traced").into_data(),
    )?;
    check(format!("{w}.cond"), net.cond.expect("traced").into_data())?;
    check(format!("{w}.embed"), net.embed.expect("traced").into_data())?;
    for (i, block) in net.blocks.into_iter().enumerate() {
        check(format!("{w}.block{i}"), block.into_data())?;
    }
    check(format!("{w}.logits"), logits.into_data())?;
    check(format!("{w}.log_p"), posteriors.log_p.clone().into_data())?;
    check(format!("{w}.l_kl"), terms.kl.into_data())?;
    check(format!("{w}.l_ce"), terms.ce.into_data())?;
    check(format!("{w}.loss"), out.loss.clone().into_data())?;

    let s_prev: Vec<usize> = s.iter().map(|&s| s - 1).collect();
    for (mode, name) in [
        (ReverseMode::Reference, "reverse_logits"),
        (ReverseMode::Exact, "reverse_logits_masked"),
    ] {
        let log_probs = process.reverse_log_probs(&model.net, x_next.clone(), &s, &s_prev, mode);
        check(format!("{w}.{name}"), log_probs.into_data())?;
    }

    // The recorded gradients are those of the raw weights' loss.
    if which == WeightSet::Model {
        let ours = model.net.grads_state_dict(&out.loss.backward());
        let recorded_grads: Vec<String> = recorded
            .names()
            .filter(|n| n.starts_with("grad."))
            .map(String::from)
            .collect();
        if recorded_grads.is_empty() {
            bail!("{}: no recorded gradients", case.display());
        }
        for name in recorded_grads {
            let param = name.strip_prefix("grad.net.").with_context(|| {
                format!(
                    "{}: gradient `{name}` is not of a `net.` parameter",
                    case.display()
                )
            })?;
            let grad = ours
                .get(param)
                .with_context(|| format!("no parameter `{param}` for recorded `{name}`"))?
                .clone();
            check(name, grad)?;
        }
    }

    // The KL of the reference's own formulation too: the unit tests hold the closed form to it.
    let name = format!("{w}.l_kl");
    let mut row = compare(&name, posteriors.kl().into_data(), get(&name)?);
    row.name = format!("{name} (reference formulation)");
    rows.push(row);
    Ok(rows)
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
    let (Ok(a), Ok(b)) = (
        ours.convert::<f64>().to_vec::<f64>(),
        reference.clone().convert::<f64>().to_vec::<f64>(),
    ) else {
        return row;
    };
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
