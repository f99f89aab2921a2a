//! `ddexp data prepare text`: a custom corpus from parquet, JSON lines or plain text files,
//! tokenised by characters or with GPT-2 BPE.
//!
//! Documents are concatenated in file order (folders walked in sorted order) and the stream
//! is split like text8: train is the first int(n·0.9) tokens, val the next up to int(n·0.95),
//! test the rest. So a single text file (a book, Shakespeare) splits sensibly.
//! - `char`: the vocabulary is the sorted set of characters of the corpus, saved in
//!   `meta.json`; every document ends with a newline (one is added where it is missing) so
//!   that documents stay apart.
//! - `gpt2`: each document is encoded as ordinary text followed by end-of-text (50256).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, ensure};
use rayon::prelude::*;

use super::documents::{self, DocFile};
use super::store::{self, Kind, Meta, Prepared, SplitWriter, Staging};
use super::tokenizer::{GPT2_EOT, Vocab};
use crate::spec::Tokenizer;

#[derive(Debug, Clone)]
pub struct PrepareText {
    pub root: PathBuf,
    /// Files or folders of documents.
    pub from: Vec<PathBuf>,
    pub tokenizer: Tokenizer,
    /// Replace an existing dataset in `root`.
    pub force: bool,
}

/// The command that prepares a text corpus (for messages).
pub fn prepare_command(root: &std::path::Path, from: &[String], tokenizer: Tokenizer) -> String {
    let from = if from.is_empty() {
        "<your files>".to_string()
    } else {
        from.join(" ")
    };
    format!(
        "ddexp data prepare text --from {from} --tokenizer {} --root {}",
        tokenizer_flag(tokenizer),
        root.display()
    )
}

pub fn tokenizer_flag(tokenizer: Tokenizer) -> &'static str {
    match tokenizer {
        Tokenizer::Char => "char",
        Tokenizer::Gpt2 => "gpt2",
    }
}

/// Tokenises the documents of `from` and writes the three splits to `root`.
pub fn prepare_text(args: &PrepareText) -> Result<Prepared> {
    let sources: Vec<String> = args.from.iter().map(|p| p.display().to_string()).collect();
    let command = prepare_command(&args.root, &sources, args.tokenizer);
    let staging = Staging::begin(&args.root, args.force, &command)?;
    let started = Instant::now();
    let files = documents::find_files(&args.from)?;
    let count = files
        .par_iter()
        .map(documents::count)
        .collect::<Result<Vec<u64>>>()?
        .iter()
        .sum();

    let vocab = match args.tokenizer {
        Tokenizer::Char => char_vocab(&files)?,
        Tokenizer::Gpt2 => Vocab::gpt2(),
    };
    let newline = vocab.encode("\n").ok().map(|ids| ids[0]);
    let encode = |doc: &str| -> Result<Vec<u32>> {
        let mut ids = vocab.encode(doc)?;
        match args.tokenizer {
            Tokenizer::Gpt2 => ids.push(GPT2_EOT),
            Tokenizer::Char if !doc.ends_with('\n') => {
                ids.push(newline.expect("char_vocab adds the newline when a document lacks it"))
            }
            Tokenizer::Char => {}
        }
        Ok(ids)
    };

    let stream = staging.dir().join("stream.bin");
    let mut writer = SplitWriter::create(stream.clone(), vocab.size())?;
    let totals = documents::tokenize(&files, count, encode, |_, ids| writer.write(ids))?;
    writer.finish()?;
    let splits = store::split_contiguous(&staging, &stream, &vocab)?;
    let meta = Meta::new(Kind::Text, &vocab, splits, sources);
    staging.commit(&meta)?;
    Ok(Prepared {
        root: args.root.clone(),
        meta,
        input_bytes: totals.bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The sorted characters of every document, plus the newline that separates documents.
fn char_vocab(files: &[DocFile]) -> Result<Vocab> {
    let per_file = files
        .par_iter()
        .map(|file| {
            let mut chars = BTreeSet::new();
            documents::for_each(file, |doc| {
                chars.extend(doc.chars());
                if !doc.is_empty() && !doc.ends_with('\n') {
                    chars.insert('\n');
                }
                Ok(())
            })?;
            Ok(chars)
        })
        .collect::<Result<Vec<_>>>()?;
    let chars: BTreeSet<char> = per_file.into_iter().flatten().collect();
    ensure!(!chars.is_empty(), "the corpus is empty");
    Vocab::chars(chars.into_iter().collect())
}
