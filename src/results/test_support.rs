//! Helpers for the results tests: small experiments and checks that charts decode.

use std::path::Path;

use crate::spec::{Dataset, Eval, Experiment, Network, Process, TimeSampler, Topology, Train};

/// A small experiment on the synthetic corpus.
pub fn synthetic_experiment(name: &str, seed: u64) -> Experiment {
    Experiment {
        name: name.into(),
        seed,
        model: Process::default(),
        network: Network {
            n_embed: 32,
            n_heads: 2,
            n_blocks: 1,
            n_cond: 16,
            dropout: 0.0,
        },
        dataset: Dataset::Synthetic {
            seq_len: 16,
            corpus_seed: 0,
            train_tokens: 10_000,
            eval_tokens: 2_000,
        },
        sampler: TimeSampler::Uniform,
        train: Train {
            batch_size: 4,
            grad_accum: 1,
            max_iters: 100,
            warmup_iters: 10,
            log_interval: 1,
            eval_interval: 10,
            ..Train::default()
        },
        eval: Eval {
            kl_batches: 2,
            recon_batches: 1,
            batch_size: 4,
            ..Eval::default()
        },
        topology: Topology::default(),
    }
}

/// Decodes a PNG and checks its size and that something besides the white background is drawn.
pub fn assert_png(path: &Path, size: (u32, u32)) {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8();
    assert_eq!(image.dimensions(), size, "{}", path.display());
    let dark = image
        .pixels()
        .filter(|p| p.0.iter().all(|&c| c < 100))
        .count();
    assert!(
        dark > 500,
        "{} has almost nothing drawn ({dark} dark pixels)",
        path.display()
    );
}

/// Checks that an SVG file is well-formed XML with an `<svg>` root (every tag closed, in
/// order) and returns its text.
pub fn assert_svg(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut stack: Vec<String> = Vec::new();
    let mut roots = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find('<') {
        let end = rest[start..]
            .find('>')
            .unwrap_or_else(|| panic!("{}: unterminated tag", path.display()))
            + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "{}: mismatched </{name}>",
                path.display()
            );
            continue;
        }
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("")
            .to_string();
        if stack.is_empty() {
            roots.push(name.clone());
        }
        if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    assert!(
        stack.is_empty(),
        "{}: unclosed tags {stack:?}",
        path.display()
    );
    assert_eq!(
        roots,
        ["svg"],
        "{}: the document must have a single <svg> root",
        path.display()
    );
    text
}
