//! The `ddexp` command line: parses arguments and calls the library. No work happens here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::backend::Backend;
use crate::backend::DeviceChoice;
use crate::checkpoint::CheckpointChoice;
use crate::model::WeightSet;

mod bench;
mod data;
mod doctor;
mod eval;
mod experiments;
mod import;
mod parity;
mod report;
mod run;
mod sample;
mod sweep;

const WORKFLOW: &str = "\
Workflow:
  ddexp run experiments/quickstart.ron         train (CPU, synthetic corpus), then bits/token
  ddexp run --resume results/<name>/<run>      continue a stopped run exactly
  ddexp eval results/<name>/<run> --split test  bits/token with standard errors
  ddexp sample results/<name>/<run> --batch 4   watch text unmask in the terminal
  ddexp validate experiments/                  check experiment files (schema + semantics)
  ddexp data prepare text8                     download and tokenise a corpus into data/
  ddexp schema                                 regenerate schemas/ from the Rust types
  ddexp sweep experiments/lds_vs_uniform/      run every member of a sweep folder (resumable)
  ddexp report [RUN|SWEEP|EXPERIMENT]...       compare runs: charts, tables, summary.csv
  ddexp doctor                                 backends and devices here, and a self-check

Every command that takes an experiment also takes --set path=value (RON syntax), e.g.
  --set train.lr=3e-4 --set sampler=Uniform --set \"topology.devices=[0, 1]\"";

#[derive(Debug, Parser)]
#[command(
    name = "ddexp",
    version,
    about = "Train, evaluate and sample discrete diffusion language models from experiment files",
    after_help = WORKFLOW
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train an experiment (or resume a stopped run), then evaluate bits/token.
    #[command(after_help = "Examples:
  ddexp run experiments/quickstart.ron
  ddexp run experiments/d3pm_text8.ron --set train.lr=3e-4 --set seed=2
  ddexp run --resume results/d3pm_text8/2026-11-27T10-00-00
  ddexp run e.ron --set \"topology.devices=[0, 1, 2, 3]\"      # 4 GPUs (or CPU peers)
  ddexp run e.ron --node-rank 1 --orchestrator 10.0.0.1:29500   # node 1 of topology.nodes

See docs/topology.md for several GPUs and machines.")]
    Run(run::RunArgs),
    /// Bits/token of a run folder or a model folder, with standard errors.
    #[command(after_help = "Examples:
  ddexp eval results/d3pm_text8/2026-11-27T10-00-00 --split test
  ddexp eval models/text8 --data data/text8 --kl-batches 100 --json")]
    Eval(eval::EvalArgs),
    /// Draw text from a run folder or a model folder by ancestral sampling.
    #[command(after_help = "Examples:
  ddexp sample results/d3pm_text8/2026-11-27T10-00-00 --batch 4
  ddexp sample models/text8 --steps 100 --seed 7 --no-animate")]
    Sample(sample::SampleArgs),
    /// Time the training step (forward, backward, optimiser) of an experiment.
    #[command(after_help = "Examples:
  ddexp bench experiments/quickstart.ron
  ddexp bench experiments/d3pm_text8.ron --set train.grad_accum=1 --steps 20
  ddexp bench experiments/d3pm_text8.ron --set topology.backend=Cpu --set train.batch_size=4 --set train.grad_accum=1 --steps 3")]
    Bench(bench::BenchArgs),
    /// List the backends and devices this binary can use, and check one against flex.
    #[command(after_help = "Examples:
  ddexp doctor                      # the first GPU backend that sees a device, else the CPU
  ddexp doctor --backend cuda --device 1
  ddexp doctor --backend wgpu --probe 10

The check trains one step of a small network on the device and on flex (the pure-Rust CPU
backend) from the same weights and inputs, compares logits, loss, gradients, optimiser state
and weights, then times steps for --probe seconds. Exit status 1 when the check fails.")]
    Doctor(doctor::DoctorArgs),
    /// Compute the nanoDD fixtures again on a backend and compare with the recorded tensors.
    #[command(after_help = "Examples:
  ddexp parity                                  # the fixtures in tests/fixtures/nanodd, on flex
  ddexp parity tests/fixtures/nanodd --backend cuda

Every recorded tensor of every case and weight set is compared: intermediates, logits,
posteriors, per-token KL and CE, the loss, reverse steps and every gradient. Exit status 1
when any relative error exceeds 1e-4.")]
    Parity(parity::ParityArgs),
    /// Check experiment files: RON syntax, the JSON Schema, and semantic rules.
    #[command(after_help = "Examples:
  ddexp validate experiments/
  ddexp validate experiments/d3pm_text8.ron --set train.lr=3e-4")]
    Validate {
        /// Experiment files, or folders searched recursively for .ron files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Write the JSON Schemas generated from the experiment types into schemas/.
    #[command(after_help = "Examples:
  ddexp schema             # regenerate schemas/*.json
  ddexp schema --check     # exit non-zero if schemas/ is out of date")]
    Schema {
        /// Only check that the files match the code; write nothing.
        #[arg(long)]
        check: bool,
        /// Folder holding the schema files.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
    /// Run every member of a sweep folder; re-running skips completed members and resumes stopped ones.
    #[command(after_help = "Examples:
  ddexp sweep experiments/lds_vs_uniform/ --dry-run    # list the members and what would happen
  ddexp sweep experiments/lds_vs_uniform/
  ddexp sweep experiments/lds_vs_uniform_text8/ --parallel 4     # 4 GPUs, one member on each")]
    Sweep(sweep::SweepArgs),
    /// Compare runs: charts, tables and summary.csv from their logs (nothing is re-run).
    #[command(after_help = "Examples:
  ddexp report                                  # every run under results/
  ddexp report results/sweeps/lds_vs_uniform    # a sweep; writes results/sweeps/lds_vs_uniform/report/
  ddexp report d3pm_text8 --baseline sampler=Uniform")]
    Report(report::ReportArgs),
    /// Prepare, inspect and verify datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Turn a model trained elsewhere into a ddexp model folder.
    #[command(subcommand)]
    Import(import::Import),
}

/// A command stopped on request (Ctrl-C) after saving its work.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// `--set path=value`, repeatable.
#[derive(Debug, Args)]
pub struct Overrides {
    /// Override a field: path=value with the value in RON syntax (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
}

/// Which checkpoint and device `ddexp eval` and `ddexp sample` use.
#[derive(Debug, Args)]
pub struct ModelChoice {
    /// Which weights: the EMA or the raw training weights.
    #[arg(long, value_enum, default_value_t = WeightSet::Ema)]
    weights: WeightSet,
    /// A run folder's latest checkpoint or its best by validation l_T.
    #[arg(long, value_enum, default_value_t = CheckpointChoice::Latest)]
    checkpoint: CheckpointChoice,
    /// Run on this backend instead of the experiment's (e.g. a GPU-trained model on a laptop).
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    backend: Option<Backend>,
    /// GPU index on that backend (default: the experiment's first device).
    #[arg(long, value_name = "INDEX")]
    device: Option<usize>,
    #[command(flatten)]
    memory: MemoryCheck,
}

/// `--force`: the memory estimate's refusal overridden.
#[derive(Debug, Args)]
pub struct MemoryCheck {
    /// Start even when the memory estimate says the job does not fit in the memory free now
    /// (the process may then be killed by the system).
    #[arg(long)]
    force: bool,
}

impl MemoryCheck {
    /// Records the choice for every check of this process.
    fn apply(&self) {
        crate::memory::force(self.force);
    }
}

impl ModelChoice {
    fn device(&self) -> DeviceChoice {
        DeviceChoice {
            backend: self.backend,
            device: self.device,
        }
    }
}

pub(crate) fn parse_backend(name: &str) -> Result<Backend, String> {
    Backend::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
        format!(
            "unknown backend `{name}`, expected one of {}",
            names.join(", ")
        )
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Sample(args) => sample::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Parity(args) => parity::run(args),
        Command::Validate { paths, overrides } => experiments::validate(&paths, &overrides.set),
        Command::Schema { check, dir } => experiments::schema(check, &dir),
        Command::Sweep(args) => sweep::run(args),
        Command::Report(args) => report::run(args),
        Command::Data(command) => data::run(command),
        Command::Import(command) => import::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Already explained where it happened; 130 is the shell's code for Ctrl-C.
        Err(e) if e.is::<Interrupted>() => ExitCode::from(130),
        // Experiment errors render their own located, multi-line report.
        Err(e) if e.is::<crate::spec::SpecError>() => {
            eoutln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eoutln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
