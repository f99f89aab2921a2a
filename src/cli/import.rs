//! `ddexp import`: models trained elsewhere become ddexp model folders.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::checkpoint;
use crate::model::WeightSet;

#[derive(Debug, Subcommand)]
pub enum Import {
    /// A nanoDD training checkpoint (`ckpt.pt`): writes experiment.ron, weights.safetensors
    /// and model.json into --out, for `ddexp eval` and `ddexp sample`.
    #[command(after_help = "Examples:
  ddexp import nanodd ckpt.pt --out models/text8
  ddexp import nanodd ckpt.pt --out models/text8-raw --weights model")]
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

pub fn run(command: Import) -> Result<()> {
    match command {
        Import::Nanodd { ckpt, out, weights } => {
            let summary = checkpoint::import_nanodd(&ckpt, &out, weights)?;
            let net = &summary.experiment.network;
            outln!(
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
                eoutln!("note: {note}");
            }
            Ok(())
        }
    }
}
