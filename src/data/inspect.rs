//! Human-readable accounts of datasets: `ddexp data info`, `ddexp data verify`, and the
//! summary printed after a prepare.

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use indicatif::HumanCount;

use super::store::{Check, Folder, Prepared, open_folder};
use crate::spec::Split;

/// What the dataset in `root` holds (sizes checked, small splits hashed).
pub fn info(root: &Path) -> Result<String> {
    Ok(describe(&open_folder(root, Check::Open)?))
}

/// Hashes every split in full and checks every id against the vocabulary.
pub fn verify(root: &Path) -> Result<String> {
    let started = Instant::now();
    let folder = open_folder(root, Check::Full)?;
    let what = if folder.meta.is_some() {
        "sizes, sha256 and id range"
    } else {
        "sizes, .npy headers and id range (the reference format has no checksums)"
    };
    Ok(format!(
        "{}ok: {what} of every split ({:.1} s)\n",
        describe(&folder),
        started.elapsed().as_secs_f64()
    ))
}

fn describe(folder: &Folder) -> String {
    let mut out = String::new();
    let format = if folder.meta.is_some() {
        "ddexp format"
    } else {
        "nanoDD reference format (.npy)"
    };
    let _ = writeln!(out, "{} ({format})", folder.root.display());
    let _ = writeln!(out, "  kind        {}", folder.kind.name());
    let _ = writeln!(
        out,
        "  vocabulary  {} (mask id {})",
        folder.vocab.describe(),
        folder.vocab.mask_id()
    );
    if let Some(meta) = &folder.meta {
        let _ = writeln!(out, "  sources     {}", meta.sources.join(", "));
        let _ = writeln!(
            out,
            "  prepared    {} by ddexp {}",
            meta.created, meta.ddexp_version
        );
    }
    for split in Split::ALL {
        let tokens = folder.splits[split as usize].len();
        let _ = write!(
            out,
            "  {:<5}  {:>15} tokens",
            split.name(),
            HumanCount(tokens as u64).to_string()
        );
        if let Some(meta) = &folder.meta {
            let record = meta.splits.get(split);
            if let Some(docs) = record.documents {
                let _ = write!(out, "  {:>12} documents", HumanCount(docs).to_string());
            }
            let _ = write!(out, "  sha256 {}", record.sha256);
        }
        out.push('\n');
    }
    out
}

impl Prepared {
    /// What a prepare wrote, and how fast.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "prepared {} in {} ({:.1} s, {:.1} MB/s of text",
            self.meta.kind.name(),
            self.root.display(),
            self.seconds,
            self.input_bytes as f64 / 1e6 / self.seconds.max(1e-9)
        );
        let tokens: u64 = Split::ALL
            .iter()
            .map(|&s| self.meta.splits.get(s).tokens)
            .sum();
        let _ = writeln!(
            out,
            ", {} tokens/s)",
            HumanCount((tokens as f64 / self.seconds.max(1e-9)) as u64)
        );
        for split in Split::ALL {
            let record = self.meta.splits.get(split);
            let _ = write!(
                out,
                "  {:<5}  {:>15} tokens",
                split.name(),
                HumanCount(record.tokens).to_string()
            );
            if let Some(docs) = record.documents {
                let _ = write!(out, "  {:>12} documents", HumanCount(docs).to_string());
            }
            out.push('\n');
        }
        out
    }
}
