//! Training runs: `ddexp run` from an experiment, `ddexp run --resume` from a run folder.
//!
//! A run validates everything it can before it writes anything (the experiment, the data,
//! the backend, its place in the topology), then creates its run folder, trains, evaluates
//! bits/token on the experiment's splits with the EMA weights, and records how it ended in
//! run.json.
//!
//! With several devices or nodes (`topology`), each device holds a model replica trained by
//! a thread of its own; the replicas average their gradients through burn-collective every
//! step (see [`replicas`] and [`collective`]). Node 0's first device is the main replica:
//! only it writes the run folder. The other nodes [`join`] the run.

pub mod bench;
pub mod collective;
pub mod doctor;
pub mod ema;
mod interrupt;
pub mod launch;
pub mod optimizer;
mod replicas;
mod trainer;
pub mod validation;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};

use collective::{Group, Peer};
use launch::{Launch, Placement};

use crate::backend::{self, Devices, panic_message};
use crate::checkpoint::{self, Checkpoint};
use crate::data::Corpus;
use crate::diffusion::Diffusion;
use crate::eval::{self, Estimate, EvalSettings};
use crate::memory;
use crate::model::WeightSet;
use crate::results::{EvalRow, RunDir, RunStatus};
use crate::spec::{self, Experiment};
pub use trainer::Ending;
use trainer::{Outcome, Start};

/// How a `ddexp run` ended.
#[derive(Debug)]
pub struct RunReport {
    pub run_dir: PathBuf,
    pub ending: Ending,
    /// Final bits/token per split (empty when interrupted).
    pub estimates: Vec<Estimate>,
}

/// Starts a new run of a validated experiment under `results_root`, on one node.
pub fn run(loaded: &spec::Loaded, results_root: &Path) -> Result<RunReport> {
    run_with(loaded, results_root, &Launch::default())
}

/// [`run`] on node 0 of the experiment's topology (`launch` gives the node's place).
pub fn run_with(loaded: &spec::Loaded, results_root: &Path, launch: &Launch) -> Result<RunReport> {
    loaded.require_runnable()?;
    let experiment = &loaded.experiment;
    let placement = main_placement(experiment, launch)?;
    let corpus = open_corpus(experiment, false)?;
    let run = RunDir::create(results_root, experiment)?;
    eoutln!("run folder: {}", run.path().display());
    drive(experiment, &corpus, run, Start::Fresh, &placement)
}

/// Continues a stopped or killed run from its latest checkpoint, on one node.
pub fn resume(run_dir: &Path) -> Result<RunReport> {
    resume_with(run_dir, &Launch::default(), None)
}

/// [`resume`] on node 0 of the run's topology; the other nodes [`join`] it as they did at the
/// start, and receive the checkpoint's state from node 0. With `backend`, a one-node run
/// continues on that backend instead of the experiment's, with as many devices (the same
/// indices where the hardware is the same kind): the experiment, and so the rest of the run,
/// is unchanged.
pub fn resume_with(
    run_dir: &Path,
    launch: &Launch,
    backend: Option<spec::Backend>,
) -> Result<RunReport> {
    let mut run = RunDir::open(run_dir)?;
    let loaded = spec::load(&run.experiment_path(), &[])?;
    let experiment = &loaded.experiment;
    let mut placement = main_placement(experiment, launch)?;
    match backend {
        None => loaded.require_runnable()?,
        Some(_) if experiment.topology.nodes > 1 => bail!(
            "--backend moves a one-node run; this run trains on {} nodes, which would all \
             have to move",
            experiment.topology.nodes
        ),
        Some(backend) => {
            backend.require_built()?;
            if backend.hardware() != placement.backend.hardware() {
                placement.devices = (0..placement.devices.len()).collect();
            }
            placement.backend = backend;
        }
    }
    let latest = run.checkpoints_dir().join(checkpoint::LATEST);
    if !latest.is_file() {
        bail!(
            "{} has no checkpoint to resume from ({} is missing): the run stopped before its first checkpoint; start it again with `ddexp run {}`",
            run_dir.display(),
            latest.display(),
            run.experiment_path().display()
        );
    }
    let corpus = open_corpus(experiment, true)?;
    let ckpt = Checkpoint::load(&latest)?;
    if ckpt.experiment != spec::to_ron(experiment) {
        bail!(
            "{} does not match {}: the experiment file was edited after the run started; restore it or start a new run",
            latest.display(),
            run.experiment_path().display()
        );
    }
    ckpt.check_resumable(&latest, experiment, corpus.vocab().size())?;
    run.resume(ckpt.iteration, experiment.train.max_iters)?;
    run.record_devices(placement.backend, &placement.devices)?;
    eoutln!(
        "resuming {} at iteration {}",
        run.path().display(),
        ckpt.iteration
    );
    drive(
        experiment,
        &corpus,
        run,
        Start::Resume(Box::new(ckpt)),
        &placement,
    )
}

/// Node `launch.node_rank` (1 or more) of a multi-node run: trains its replicas with the
/// other nodes. Node 0 owns the run folder, so nothing is written here; this node needs the
/// experiment (the same file and overrides as node 0) and the dataset. A resumed run is
/// joined the same way: the state comes from node 0.
pub fn join(loaded: &spec::Loaded, launch: &Launch) -> Result<Ending> {
    loaded.require_runnable()?;
    let experiment = &loaded.experiment;
    let placement = Placement::new(&experiment.topology, launch)?;
    if placement.is_main() {
        bail!("node 0 owns the run folder: start it with `ddexp run` (or `ddexp run --resume`)");
    }
    let corpus = open_corpus(experiment, false)?;
    eoutln!(
        "node {} of {}: replicas {}..{} of {}; node 0 logs and writes the checkpoints",
        placement.node_rank,
        experiment.topology.nodes,
        placement.first_rank,
        placement.first_rank + placement.devices.len(),
        placement.world
    );
    interrupt::install();
    let (ending, _) = guarded(|| on_backend(experiment, &corpus, None, Start::Fresh, &placement))?;
    Ok(ending)
}

/// The experiment's corpus, opened once the memory estimate of training it says the job fits
/// (before any run folder is created or changed).
fn open_corpus(experiment: &Experiment, resuming: bool) -> Result<Corpus> {
    let replicas = memory::replicas_in_process(&experiment.topology);
    memory::open_corpus(&experiment.dataset, experiment.topology.backend, |vocab| {
        memory::training(experiment, vocab, replicas, resuming)
    })
}

/// The placement of the node that writes the run folder.
fn main_placement(experiment: &Experiment, launch: &Launch) -> Result<Placement> {
    let placement = Placement::new(&experiment.topology, launch)?;
    if !placement.is_main() {
        bail!(
            "node {} does not keep a run folder: it joins node 0's run with `ddexp run <experiment> --node-rank {}` (the same command for a resumed run)",
            placement.node_rank,
            placement.node_rank
        );
    }
    Ok(placement)
}

/// Trains and evaluates on the placement's backend, recording the outcome in run.json.
fn drive(
    experiment: &Experiment,
    corpus: &Corpus,
    mut run: RunDir,
    start: Start,
    placement: &Placement,
) -> Result<RunReport> {
    interrupt::install();
    let outcome = guarded(|| on_backend(experiment, corpus, Some(&mut run), start, placement));
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

/// `f`, with a panic turned into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(anyhow::anyhow!(
            "internal error: {}",
            panic_message(&*panic)
        ))
    })
}

/// Trains (and, on node 0, evaluates) on the placement's backend.
fn on_backend(
    experiment: &Experiment,
    corpus: &Corpus,
    run: Option<&mut RunDir>,
    start: Start,
    placement: &Placement,
) -> Result<(Ending, Vec<Estimate>)> {
    let job = TrainJob {
        experiment,
        corpus,
        run,
        start,
        placement,
    };
    backend::run(placement.backend, &placement.devices, job)
}

/// Training as a [`backend::Job`]: the backend's devices get an autodiff wrapper.
struct TrainJob<'a> {
    experiment: &'a Experiment,
    corpus: &'a Corpus,
    run: Option<&'a mut RunDir>,
    start: Start,
    placement: &'a Placement,
}

impl backend::Job for TrainJob<'_> {
    type Output = (Ending, Vec<Estimate>);

    fn run<B: Backend>(self, devices: &Devices<B>) -> Result<Self::Output> {
        train_and_evaluate::<Autodiff<B>>(
            self.experiment,
            self.corpus,
            self.run,
            self.start,
            &devices.devices,
            self.placement,
        )
    }
}

/// Trains on this node's devices; the main replica then evaluates the EMA weights.
fn train_and_evaluate<B: AutodiffBackend>(
    experiment: &Experiment,
    corpus: &Corpus,
    mut run: Option<&mut RunDir>,
    start: Start,
    devices: &[B::Device],
    placement: &Placement,
) -> Result<(Ending, Vec<Estimate>)> {
    let ron = spec::to_ron(experiment);
    let trained = train_replicas::<B>(
        experiment,
        &ron,
        corpus,
        run.as_deref_mut(),
        start,
        devices,
        placement,
    )?;
    let Some(run) = run else {
        return Ok((trained.ending, vec![]));
    };
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
        let stop = interrupt::requested;
        let Some(estimate) =
            eval::evaluate_with_progress(&trained.ema, &diffusion, corpus, split, &settings, &stop)
        else {
            // The checkpoint at max_iters is on disk: a resumed run evaluates again.
            log.sync()?;
            eoutln!("final evaluation interrupted");
            let iteration = trained.iteration;
            return Ok((Ending::Interrupted { iteration }, vec![]));
        };
        eval::check_finite(&estimate)?;
        log.append(&eval::eval_row(
            &estimate,
            &settings,
            WeightSet::Ema,
            trained.iteration,
        ))?;
        estimates.push(estimate);
    }
    log.sync()?;
    run.redraw_loss_chart().context("drawing loss.png")?;
    Ok((Ending::Completed, estimates))
}

/// One replica per device, each trained by a thread of its own (the calling thread alone
/// for a one-device run). Returns the first local replica's result; when replicas fail,
/// the error that caused the others'.
fn train_replicas<B: AutodiffBackend>(
    experiment: &Experiment,
    ron: &str,
    corpus: &Corpus,
    run: Option<&mut RunDir>,
    start: Start,
    devices: &[B::Device],
    placement: &Placement,
) -> Result<Outcome<B>> {
    if placement.world == 1 {
        let mut peer = Peer::solo();
        return trainer::train::<B>(experiment, ron, corpus, run, start, &devices[0], &mut peer);
    }
    if let Some(port) = placement.hosts_orchestrator {
        launch::host_orchestrator(port)?;
    }
    if placement.global.is_some() {
        launch::quiet_burn_logs();
    }
    let group = Group::<B::InnerBackend>::new(
        placement.first_rank,
        devices.len(),
        placement.world,
        placement.global.as_ref(),
        placement.timeout,
    )?;
    let mut run = run;
    let mut start = Some(start);
    let results: Vec<Result<Outcome<B>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = group
            .peers()
            .into_iter()
            .zip(devices)
            .map(|(mut peer, device)| {
                let main = peer.rank() == 0;
                let run = if main { run.take() } else { None };
                let start = match main {
                    true => start.take().unwrap_or(Start::Fresh),
                    false => Start::Fresh,
                };
                std::thread::Builder::new()
                    .name(format!("ddexp-replica-{}", peer.rank()))
                    .spawn_scoped(scope, move || {
                        let trained = trainer::train::<B>(
                            experiment, ron, corpus, run, start, device, &mut peer,
                        )
                        .with_context(|| format!("replica {}", peer.rank()))?;
                        if let Err(e) = peer.finish() {
                            eoutln!("warning: leaving the collective after training: {e:#}");
                        }
                        Ok(trained)
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|panic| {
                    Err(anyhow::anyhow!(
                        "internal error in a replica: {}",
                        panic_message(&*panic)
                    ))
                }),
                // The replicas that did start stop at their first collective call, which
                // this one never makes.
                Err(e) => Err(anyhow::anyhow!(
                    "cannot start a thread for a replica ({e}): the system limits how many \
                     threads a process may have; use fewer topology.devices"
                )),
            })
            .collect()
    });
    drop(group);
    let mut trained = None;
    let mut errors = vec![];
    for result in results {
        match result {
            Ok(t) => {
                trained.get_or_insert(t);
            }
            Err(e) => errors.push(e),
        }
    }
    if let Some(e) = collective::root_cause(errors) {
        return Err(e);
    }
    Ok(trained.expect("one replica per device"))
}
