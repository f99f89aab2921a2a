//! The `ddexp` command line: parses arguments and calls the library. No work happens here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::{results, spec};

const WORKFLOW: &str = "\
Workflow:
  ddexp validate experiments/                  check experiment files (schema + semantics)
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
    Report(ReportArgs),
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Run folders, sweep folders (or their summary.csv), experiment names, or folders to
    /// search for runs. None: every run under --results.
    inputs: Vec<String>,
    /// Folder for report.md, the charts, summary.csv and members.csv
    /// [default: <sweep>/report for a single sweep, else <results>/report].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The results folder that experiment names and sweep names are looked up in.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Rolling window, in logged points (odd, at least 3), for the smoothing and the loss noise.
    #[arg(long, default_value_t = results::DEFAULT_WINDOW)]
    window: usize,
    /// The group the others are compared with: text that appears in exactly one group's label,
    /// e.g. `sampler=Uniform` [default: the first group].
    #[arg(long)]
    baseline: Option<String>,
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
        Command::Validate { paths, overrides } => validate(&paths, &overrides.set),
        Command::Schema { check, dir } => schema(check, &dir),
        Command::Report(args) => report(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(paths: &[PathBuf], overrides: &[String]) -> Result<()> {
    let mut files = vec![];
    for p in paths {
        match spec::experiment_files(p) {
            Ok(found) if found.is_empty() => {
                bail!("no .ron experiment files under {}", p.display())
            }
            Ok(found) => files.extend(found),
            Err(e) => bail!("cannot read {}: {e}", p.display()),
        }
    }
    let mut invalid = 0;
    for file in &files {
        match spec::load(file, overrides) {
            Ok(loaded) => {
                eprint!("{}", loaded.warnings.render());
                println!("ok      {}", file.display());
            }
            Err(e) => {
                invalid += 1;
                eprint!("{}", e.render());
                println!("invalid {}", file.display());
            }
        }
    }
    if invalid > 0 {
        bail!("{invalid} of {} experiment file(s) invalid", files.len());
    }
    Ok(())
}

fn schema(check: bool, dir: &Path) -> Result<()> {
    if check {
        let stale = spec::schema::drift(dir);
        if !stale.is_empty() {
            let names: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "schema files out of date with the code: {}; run `ddexp schema` and commit the result",
                names.join(", ")
            );
        }
        println!("schemas in {} are up to date", dir.display());
        return Ok(());
    }
    for path in spec::schema::write_all(dir)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn report(args: ReportArgs) -> Result<()> {
    let report = results::report(&results::ReportOptions {
        inputs: args.inputs,
        results_root: args.results,
        out: args.out,
        window: args.window,
        baseline: args.baseline,
    })?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    for finding in &report.findings {
        println!("{finding}");
    }
    println!(
        "{} runs in {} groups: wrote {}",
        report.runs,
        report.groups,
        report.out_dir.join("report.md").display()
    );
    Ok(())
}
