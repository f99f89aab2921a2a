//! `ddexp doctor`: what this binary can run on, and a self-check of one backend.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use crate::backend::Backend;
use crate::train::doctor;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The backend to check (default: the first of cuda, libtorch-cuda, wgpu, libtorch, cpu
    /// that is built in and sees a device).
    #[arg(long, value_name = "BACKEND", value_parser = super::parse_backend)]
    backend: Option<Backend>,
    /// The device index on that backend.
    #[arg(long, value_name = "INDEX", default_value_t = 0)]
    device: usize,
    /// Seconds of training steps in the throughput probe.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    probe: f64,
}

/// Backends in the order `ddexp doctor` prefers them when not told which to check.
const PREFERENCE: [Backend; 5] = [
    Backend::Cuda,
    Backend::LibTorchCuda,
    Backend::Wgpu,
    Backend::LibTorch,
    Backend::Cpu,
];

pub fn run(args: DoctorArgs) -> Result<()> {
    if !(args.probe.is_finite() && (0.0..=3600.0).contains(&args.probe)) {
        bail!("--probe {}: give 0 to 3600 seconds", args.probe);
    }
    println!("backends in this binary:");
    let mut seen = vec![];
    for backend in Backend::ALL {
        let line = match backend.devices() {
            Ok(devices) if devices.is_empty() => "built; sees no device".to_string(),
            Ok(devices) => {
                seen.push(backend);
                let listed: Vec<String> = devices
                    .iter()
                    .map(|d| match d.memory {
                        Some(bytes) => format!(
                            "{}: {}, {:.1} GiB",
                            d.index,
                            d.name,
                            bytes as f64 / (1u64 << 30) as f64
                        ),
                        None => format!("{}: {}", d.index, d.name),
                    })
                    .collect();
                format!("built; {}", listed.join("; "))
            }
            Err(_) if !backend.is_built() => format!(
                "not built (cargo feature `{}`)",
                backend.feature().unwrap_or_default()
            ),
            Err(e) => format!("built; no devices: {e:#}"),
        };
        println!("  {:<14} {:<10} {line}", backend.name(), backend.library());
    }
    let backend = match args.backend {
        Some(backend) => backend,
        None => PREFERENCE
            .into_iter()
            .find(|b| seen.contains(b))
            .unwrap_or(Backend::Cpu),
    };
    println!();
    let check = doctor::self_check(backend, args.device, Duration::from_secs_f64(args.probe))?;
    print!("{}", check.render());
    if !check.passed() {
        bail!(
            "{} computes a training step differently from flex beyond rounding: this device \
             cannot be trusted with training",
            check.device
        );
    }
    println!("passed");
    Ok(())
}
