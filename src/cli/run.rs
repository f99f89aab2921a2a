//! `ddexp run`: train an experiment, or resume a stopped run, on one node or as one node of
//! several.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use super::{Interrupted, MemoryCheck, Overrides};
use crate::backend::Backend;
use crate::eval;
use crate::spec;
use crate::train::launch::Launch;
use crate::train::{self, Ending};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The experiment file to train.
    #[arg(required_unless_present = "resume")]
    experiment: Option<PathBuf>,
    /// Continue a stopped or killed run from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["experiment", "set"])]
    resume: Option<PathBuf>,
    /// With --resume: continue on this backend instead of the experiment's (e.g. a run
    /// started on flex, continued with LibTorch); the experiment itself is unchanged.
    #[arg(long, value_name = "BACKEND", requires = "resume", value_parser = super::parse_backend)]
    backend: Option<Backend>,
    #[command(flatten)]
    overrides: Overrides,
    /// Folder that holds one folder per experiment.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    #[command(flatten)]
    launch: LaunchArgs,
    #[command(flatten)]
    memory: MemoryCheck,
}

/// Where this process sits in a multi-node topology. Each flag overrides its environment
/// variable.
#[derive(Debug, Args)]
#[command(next_help_heading = "Several machines (topology.nodes > 1)")]
pub struct LaunchArgs {
    /// This machine's rank, 0 to topology.nodes − 1; node 0 writes the run folder [env: DDEXP_NODE_RANK] [default: 0]
    #[arg(long, value_name = "RANK")]
    node_rank: Option<usize>,
    /// host:port of node 0, which hosts the orchestrator; overrides topology.orchestrator [env: DDEXP_ORCHESTRATOR]
    #[arg(long, value_name = "HOST:PORT")]
    orchestrator: Option<String>,
    /// host[:port] at which the other nodes reach this one [env: DDEXP_NODE_ADDRESS] [default: this machine's address on the route to the orchestrator, port = orchestrator port + 1 + node rank]
    #[arg(long, value_name = "HOST[:PORT]")]
    node_address: Option<String>,
    /// Seconds a replica waits for the others at a collective call before it stops with an error [env: DDEXP_COLLECTIVE_TIMEOUT] [default: 600]
    #[arg(long, value_name = "SECONDS")]
    collective_timeout: Option<u64>,
}

impl LaunchArgs {
    fn resolve(&self) -> Result<Launch> {
        let mut launch = Launch::from_env()?;
        if let Some(rank) = self.node_rank {
            launch.node_rank = rank;
        }
        if let Some(a) = &self.orchestrator {
            launch.orchestrator = Some(a.clone());
        }
        if let Some(a) = &self.node_address {
            launch.node_address = Some(a.clone());
        }
        if let Some(s) = self.collective_timeout {
            launch.timeout = Duration::from_secs(s);
        }
        Ok(launch)
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    args.memory.apply();
    let launch = args.launch.resolve()?;
    if launch.node_rank > 0 {
        return join(&args, &launch);
    }
    let report = match (&args.resume, &args.experiment) {
        (Some(dir), _) => train::resume_with(dir, &launch, args.backend)?,
        (None, Some(file)) => {
            let loaded = spec::load(file, &args.overrides.set)?;
            // A warning that is an error here (Cuda in a CPU-only build) is reported once.
            loaded.require_runnable()?;
            eout!("{}", loaded.warnings.render());
            train::run_with(&loaded, &args.results, &launch)?
        }
        (None, None) => unreachable!("clap requires an experiment or --resume"),
    };
    match report.ending {
        Ending::Completed => {
            out!("{}", eval::format_estimates(&report.estimates));
            outln!("results: {}", report.run_dir.display());
            Ok(())
        }
        Ending::Interrupted { iteration } => {
            eoutln!(
                "interrupted at iteration {iteration}; checkpoint saved. Resume with:\n  ddexp run --resume {}",
                report.run_dir.display()
            );
            Err(Interrupted.into())
        }
    }
}

/// A node other than 0: trains with node 0, writes nothing.
fn join(args: &RunArgs, launch: &Launch) -> Result<()> {
    let Some(file) = &args.experiment else {
        bail!(
            "node {} keeps no run folder to resume: run the command it started with (`ddexp run <experiment> --node-rank {}`); it receives the checkpoint's state from node 0, which runs `ddexp run --resume`",
            launch.node_rank,
            launch.node_rank
        );
    };
    let loaded = spec::load(file, &args.overrides.set)?;
    eout!("{}", loaded.warnings.render());
    match train::join(&loaded, launch)? {
        Ending::Completed => {
            eoutln!(
                "node {}: training completed; node 0 evaluates and writes the results",
                launch.node_rank
            );
            Ok(())
        }
        Ending::Interrupted { iteration } => {
            eoutln!(
                "node {}: interrupted at iteration {iteration}; node 0 saved the checkpoint",
                launch.node_rank
            );
            Err(Interrupted.into())
        }
    }
}
