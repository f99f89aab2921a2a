//! The `ddexp` command line: parses arguments and calls the library. No work happens here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod data;
mod experiments;
mod import;
mod report;

const WORKFLOW: &str = "\
Workflow:
  ddexp validate experiments/                  check experiment files (schema + semantics)
  ddexp data prepare text8                     download and tokenise a corpus into data/
  ddexp schema                                 regenerate schemas/ from the Rust types
  ddexp report [RUN|SWEEP|EXPERIMENT]...       compare runs: charts, tables, summary.csv

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

/// `--set path=value`, repeatable.
#[derive(Debug, Args)]
struct Overrides {
    /// Override a field: path=value with the value in RON syntax (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { paths, overrides } => experiments::validate(&paths, &overrides.set),
        Command::Schema { check, dir } => experiments::schema(check, &dir),
        Command::Report(args) => report::run(args),
        Command::Data(command) => data::run(command),
        Command::Import(command) => import::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
