//! `ddexp data prepare openwebtext`: OpenWebText in GPT-2 BPE.
//!
//! Documents come from the Hugging Face hub's parquet conversion of `Skylion007/openwebtext`
//! (the shard list is asked from the hub API; shards are downloaded beside the root and
//! resumed if interrupted), or from a local folder of parquet, JSON lines or text files.
//! Each document is encoded as ordinary text followed by end-of-text (50256).
//!
//! Splits are by document with a fixed seed: val and test each get about 0.05% of the
//! documents (at least one), drawn once the documents are counted, so the split depends only
//! on the document order of the input.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use rayon::prelude::*;

use super::documents::{self, DocFile, Format};
use super::download;
use super::store::{Kind, Meta, Prepared, Staging};
use super::text8::download_dir;
use super::tokenizer::{GPT2_EOT, Vocab};
use crate::rng::{Stream, rng};
use crate::spec::Split;

pub const HUB_URL: &str = "https://huggingface.co";
/// The hub API path that lists the parquet shards of OpenWebText's train split.
const HUB_SHARDS: &str = "api/datasets/Skylion007/openwebtext/parquet/plain_text/train";
/// Fraction of documents in each of val and test.
const HELD_OUT_FRACTION: f64 = 0.0005;
/// The seed of the document split (nanoGPT's OpenWebText split seed), fixed so that every
/// preparation of the same documents gives the same split.
const SPLIT_SEED: u64 = 2357;

/// Where OpenWebText's documents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenWebTextSource {
    /// The parquet shards on a Hugging Face hub (`HUB_URL` or a mirror / test server).
    Hub { url: String },
    /// A local folder of .parquet, .jsonl or .txt files.
    Files(PathBuf),
}

#[derive(Debug, Clone)]
pub struct PrepareOpenWebText {
    pub root: PathBuf,
    pub source: OpenWebTextSource,
    /// Replace an existing dataset in `root`.
    pub force: bool,
}

/// Fetches (or finds) the documents, tokenises them on all cores and writes the splits.
pub fn prepare_openwebtext(args: &PrepareOpenWebText) -> Result<Prepared> {
    let command = format!(
        "ddexp data prepare openwebtext --root {}",
        args.root.display()
    );
    let staging = Staging::begin(&args.root, args.force, &command)?;
    let (files, sources) = match &args.source {
        OpenWebTextSource::Files(dir) => (
            documents::find_files(std::slice::from_ref(dir))?,
            vec![dir.display().to_string()],
        ),
        OpenWebTextSource::Hub { url } => {
            let shards = list_hub_shards(url)?;
            (download_shards(&args.root, &shards)?, shards)
        }
    };

    let started = Instant::now();
    let counts = files
        .par_iter()
        .map(documents::count)
        .collect::<Result<Vec<u64>>>()?;
    let total: u64 = counts.iter().sum();
    ensure!(
        total >= 3,
        "found {total} documents; a train, val and test split needs at least 3"
    );
    let held_out = held_out_documents(total);

    let vocab = Vocab::gpt2();
    let mut writers = [
        staging.split_writer(Split::Train, &vocab)?,
        staging.split_writer(Split::Val, &vocab)?,
        staging.split_writer(Split::Test, &vocab)?,
    ];
    let encode = |doc: &str| -> Result<Vec<u32>> {
        let mut ids = vocab.encode(doc)?;
        ids.push(GPT2_EOT);
        Ok(ids)
    };
    let totals = documents::tokenize(&files, total, encode, |index, ids| {
        let split = held_out.get(&index).copied().unwrap_or(Split::Train);
        let writer = &mut writers[split as usize];
        writer.add_document();
        writer.write(ids)
    })?;
    ensure!(
        totals.documents == total,
        "read {} documents but counted {total}; did the input change while preparing?",
        totals.documents
    );
    let [train, val, test] = writers;
    let splits = [train.finish()?, val.finish()?, test.finish()?];
    let meta = Meta::new(Kind::OpenWebText, &vocab, splits, sources);
    staging.commit(&meta)?;
    if matches!(args.source, OpenWebTextSource::Hub { .. }) {
        let _ = fs::remove_dir_all(download_dir(&args.root));
    }
    Ok(Prepared {
        root: args.root.clone(),
        meta,
        input_bytes: totals.bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Which documents (by index in input order) go to val and test.
fn held_out_documents(total: u64) -> HashMap<u64, Split> {
    let each = ((total as f64 * HELD_OUT_FRACTION).round() as usize).max(1);
    let mut rng = rng(SPLIT_SEED, Stream::Data, &[]);
    let picked = rand::seq::index::sample(&mut rng, total as usize, 2 * each);
    picked
        .iter()
        .enumerate()
        .map(|(i, doc)| (doc as u64, if i < each { Split::Val } else { Split::Test }))
        .collect()
}

/// The parquet shard URLs of OpenWebText's train split, as the hub API lists them.
fn list_hub_shards(hub: &str) -> Result<Vec<String>> {
    let api = format!("{}/{HUB_SHARDS}", hub.trim_end_matches('/'));
    let listing = download::get_text(&api)?;
    let shards: Vec<String> = serde_json::from_str(&listing)
        .with_context(|| format!("{api} did not answer a JSON list of URLs: {listing:.200}"))?;
    if shards.is_empty() {
        bail!("{api} lists no parquet shards");
    }
    Ok(shards)
}

/// Downloads the shards into `<root>.download/` (completed shards are kept across runs, a
/// partial one is resumed) and returns them in listing order.
fn download_shards(root: &std::path::Path, shards: &[String]) -> Result<Vec<DocFile>> {
    let dir = download_dir(root);
    shards
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let name = download::file_name(url, "shard.parquet");
            let dest = dir.join(format!("{i:05}-{name}"));
            eoutln!("shard {}/{}: {url}", i + 1, shards.len());
            download::download(url, &dest)?;
            Ok(DocFile {
                path: dest,
                format: Format::Parquet,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_sizes_and_determinism() {
        let small = held_out_documents(3);
        assert_eq!(small.len(), 2);
        assert_eq!(small.values().filter(|&&s| s == Split::Val).count(), 1);
        assert_eq!(small.values().filter(|&&s| s == Split::Test).count(), 1);

        let big = held_out_documents(100_000);
        assert_eq!(big.values().filter(|&&s| s == Split::Val).count(), 50);
        assert_eq!(big.values().filter(|&&s| s == Split::Test).count(), 50);
        assert!(big.keys().all(|&i| i < 100_000));
        assert_eq!(big, held_out_documents(100_000));
    }
}
