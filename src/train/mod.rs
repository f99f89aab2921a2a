//! Training runs: `ddexp run` from an experiment, `ddexp run --resume` from a run folder.
//!
//! A run validates everything it can before it writes anything (the experiment, the data,
//! the backend), then creates its run folder, trains, evaluates bits/token on the
//! experiment's splits with the EMA weights, and records how it ended in run.json.

pub mod bench;
pub mod checkpoint;
pub mod ema;
mod interrupt;
pub mod optimizer;
mod trainer;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;

use crate::data::{self, Corpus};
use crate::diffusion::Diffusion;
use crate::eval::{self, Estimate, EvalSettings};
use crate::results::{EvalRow, RunDir, RunStatus, Weights};
use crate::spec::{self, Experiment};
use checkpoint::Checkpoint;
pub use trainer::Ending;
use trainer::Start;

/// How a `ddexp run` ended.
#[derive(Debug)]
pub struct RunReport {
    pub run_dir: PathBuf,
    pub ending: Ending,
    /// Final bits/token per split (empty when interrupted).
    pub estimates: Vec<Estimate>,
}

/// Starts a new run of a validated experiment under `results_root`.
pub fn run(loaded: &spec::Loaded, results_root: &Path) -> Result<RunReport> {
    loaded.require_runnable()?;
    let experiment = &loaded.experiment;
    let corpus = data::open(&experiment.dataset)?;
    let run = RunDir::create(results_root, experiment)?;
    eprintln!("run folder: {}", run.path().display());
    drive(experiment, &corpus, run, Start::Fresh)
}

/// Continues a stopped or killed run from its latest checkpoint.
pub fn resume(run_dir: &Path) -> Result<RunReport> {
    let mut run = RunDir::open(run_dir)?;
    let loaded = spec::load(&run.experiment_path(), &[])?;
    loaded.require_runnable()?;
    let experiment = &loaded.experiment;
    let latest = run.checkpoints_dir().join(checkpoint::LATEST);
    if !latest.is_file() {
        bail!(
            "{} has no checkpoint to resume from ({} is missing): the run stopped before its first checkpoint; start it again with `ddexp run {}`",
            run_dir.display(),
            latest.display(),
            run.experiment_path().display()
        );
    }
    let ckpt = Checkpoint::load(&latest)?;
    if ckpt.experiment != spec::to_ron(experiment) {
        bail!(
            "{} does not match {}: the experiment file was edited after the run started; restore it or start a new run",
            latest.display(),
            run.experiment_path().display()
        );
    }
    let corpus = data::open(&experiment.dataset)?;
    run.resume(ckpt.iteration)?;
    eprintln!(
        "resuming {} at iteration {}",
        run.path().display(),
        ckpt.iteration
    );
    drive(experiment, &corpus, run, Start::Resume(Box::new(ckpt)))
}

/// Trains and evaluates on the experiment's backend, recording the outcome in run.json.
fn drive(
    experiment: &Experiment,
    corpus: &Corpus,
    mut run: RunDir,
    start: Start,
) -> Result<RunReport> {
    interrupt::install();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        on_backend(experiment, corpus, &mut run, start)
    }))
    .unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(anyhow::anyhow!("internal error: {message}"))
    });
    match outcome {
        Ok((Ending::Completed, estimates)) => {
            run.finish(RunStatus::Completed, None)?;
            Ok(RunReport {
                run_dir: run.path().to_path_buf(),
                ending: Ending::Completed,
                estimates,
            })
        }
        Ok((ending @ Ending::Interrupted { .. }, _)) => {
            run.finish(RunStatus::Interrupted, None)?;
            Ok(RunReport {
                run_dir: run.path().to_path_buf(),
                ending,
                estimates: vec![],
            })
        }
        Err(e) => {
            run.finish(RunStatus::Failed, Some(format!("{e:#}")))?;
            Err(e.context(format!("run {} failed", run.path().display())))
        }
    }
}

fn on_backend(
    experiment: &Experiment,
    corpus: &Corpus,
    run: &mut RunDir,
    start: Start,
) -> Result<(Ending, Vec<Estimate>)> {
    let topology = &experiment.topology;
    if topology.devices.len() > 1 || topology.nodes > 1 {
        bail!(
            "this ddexp trains on one device; topology.devices lists {} and topology.nodes is {}",
            topology.devices.len(),
            topology.nodes
        );
    }
    match topology.backend {
        spec::Backend::Cpu => {
            let device = burn::backend::flex::FlexDevice;
            train_and_evaluate::<Autodiff<burn::backend::Flex>>(
                experiment, corpus, run, start, &device,
            )
        }
        spec::Backend::Cuda => cuda(experiment, corpus, run, start),
    }
}

#[cfg(feature = "cuda")]
fn cuda(
    experiment: &Experiment,
    corpus: &Corpus,
    run: &mut RunDir,
    start: Start,
) -> Result<(Ending, Vec<Estimate>)> {
    let device = crate::backend::cuda_device(experiment.topology.devices[0])?;
    train_and_evaluate::<Autodiff<crate::backend::Cuda>>(experiment, corpus, run, start, &device)
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &Experiment, _: &Corpus, _: &mut RunDir, _: Start) -> Result<(Ending, Vec<Estimate>)> {
    bail!(spec::cuda_missing_message())
}

fn train_and_evaluate<B: AutodiffBackend>(
    experiment: &Experiment,
    corpus: &Corpus,
    run: &mut RunDir,
    start: Start,
    device: &B::Device,
) -> Result<(Ending, Vec<Estimate>)> {
    let ron = spec::to_ron(experiment);
    let trained = trainer::train::<B>(experiment, &ron, corpus, run, start, device)?;
    if trained.ending != Ending::Completed {
        return Ok((trained.ending, vec![]));
    }
    let diffusion = Diffusion::new(&experiment.model, corpus.vocab().size());
    let settings = EvalSettings {
        kl_batches: experiment.eval.kl_batches,
        recon_batches: experiment.eval.recon_batches,
        batch_size: experiment.eval.batch_size,
        seed: 0,
    };
    let mut log = run.log::<EvalRow>()?;
    let mut estimates = vec![];
    for &split in &experiment.eval.splits {
        let estimate =
            eval::evaluate_with_progress(&trained.ema, &diffusion, corpus, split, &settings);
        log.append(&EvalRow {
            split,
            weights: Weights::Ema,
            kl_bits: estimate.kl.bits,
            kl_se: estimate.kl.std_error,
            recon_bits: estimate.recon.bits,
            recon_se: estimate.recon.std_error,
            bits_per_token: estimate.bits_per_token(),
            se: estimate.std_error(),
            kl_batches: settings.kl_batches,
            recon_batches: settings.recon_batches,
            batch_size: settings.batch_size as u64,
            iter: trained.iteration,
            timestamp: chrono::Local::now().to_rfc3339(),
        })?;
        estimates.push(estimate);
    }
    log.sync()?;
    run.redraw_loss_chart().context("drawing loss.png")?;
    Ok((Ending::Completed, estimates))
}
