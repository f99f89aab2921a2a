//! The `ddexp` command line: parses arguments and calls the library. No work happens here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::model::{self, WeightSet};

#[derive(Debug, Parser)]
#[command(name = "ddexp", version, about = "Discrete diffusion experiments")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Turn a model trained elsewhere into a ddexp model folder.
    #[command(subcommand)]
    Import(Import),
}

#[derive(Debug, Subcommand)]
enum Import {
    /// A nanoDD training checkpoint (`ckpt.pt`): writes experiment.ron, weights.safetensors
    /// and model.json into --out, for `ddexp eval` and `ddexp sample`.
    Nanodd {
        /// The checkpoint written by nanoDD's train.py.
        ckpt: PathBuf,
        /// The model folder to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Which weights to import.
        #[arg(long, value_enum, default_value_t = WeightSet::Ema)]
        weights: WeightSet,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Import(Import::Nanodd { ckpt, out, weights }) => {
            model::import_nanodd(&ckpt, &out, weights).map(|summary| {
                let net = &summary.experiment.network;
                println!(
                    "imported the {} weights of {} ({} blocks × {}, {} heads, K = {}) into {}",
                    summary.info.weights.name(),
                    ckpt.display(),
                    net.n_blocks,
                    net.n_embed,
                    net.n_heads,
                    summary.info.num_classes,
                    summary.out.display()
                );
                for note in &summary.info.notes {
                    eprintln!("note: {note}");
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
