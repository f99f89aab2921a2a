//! `ddexp parity`: the nanoDD fixtures computed again on a backend and compared.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::backend::Backend;
use crate::parity;

#[derive(Debug, Args)]
pub struct ParityArgs {
    /// A folder of fixture cases (each with ckpt.pt, cases.safetensors and meta.json).
    #[arg(default_value = "tests/fixtures/nanodd")]
    fixtures: PathBuf,
    /// The backend to compute on.
    #[arg(long, value_name = "BACKEND", value_parser = super::parse_backend, default_value = "cpu")]
    backend: Backend,
    /// The device index on that backend.
    #[arg(long, value_name = "INDEX", default_value_t = 0)]
    device: usize,
}

pub fn run(args: ParityArgs) -> Result<()> {
    let report = parity::check(&args.fixtures, args.backend, args.device)?;
    print!("{}", report.render());
    if !report.passed() {
        bail!(
            "parity with nanoDD failed on {} (worst relative error {:.3e}, threshold {:e})",
            report.device,
            report.worst(),
            parity::THRESHOLD
        );
    }
    println!(
        "\npassed: worst relative error {:.3e} (threshold {:e})",
        report.worst(),
        parity::THRESHOLD
    );
    Ok(())
}
