//! Documents from files: parquet (a string column `text`, one document per row), JSON lines
//! (field `text`, one document per line) and plain text (one document per file), and the
//! pipeline that tokenises them on all cores.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{HumanCount, ProgressBar, ProgressStyle};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use rayon::prelude::*;
use walkdir::WalkDir;

/// A file of documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocFile {
    pub path: PathBuf,
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Jsonl,
    Text,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "parquet" => Some(Format::Parquet),
            "jsonl" => Some(Format::Jsonl),
            "txt" => Some(Format::Text),
            _ => None,
        }
    }
}

/// The document files under `paths`: folders are walked (sorted by path, files ending in
/// .parquet, .jsonl or .txt); a file named directly is read by its extension, and as plain
/// text when it has none of those. Symbolic links are followed, to files and folders alike;
/// one that leads back into a folder above it, or to nothing, is an error that names it.
pub fn find_files(paths: &[PathBuf]) -> Result<Vec<DocFile>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = files.len();
            for entry in WalkDir::new(path).follow_links(true).sort_by_file_name() {
                let entry = entry.with_context(|| format!("cannot walk {}", path.display()))?;
                if entry.file_type().is_file()
                    && let Some(format) = Format::of(entry.path())
                {
                    files.push(DocFile {
                        path: entry.into_path(),
                        format,
                    });
                }
            }
            if files.len() == before {
                bail!("{} holds no .parquet, .jsonl or .txt files", path.display());
            }
        } else if path.is_file() {
            files.push(DocFile {
                path: path.clone(),
                format: Format::of(path).unwrap_or(Format::Text),
            });
        } else {
            bail!("{} does not exist", path.display());
        }
    }
    if files.is_empty() {
        bail!("no input files were given");
    }
    Ok(files)
}

/// Documents in `file`, counted without tokenising (parquet: from its metadata).
pub fn count(file: &DocFile) -> Result<u64> {
    match file.format {
        Format::Parquet => Ok(parquet_reader(&file.path)?
            .metadata()
            .file_metadata()
            .num_rows() as u64),
        Format::Jsonl => {
            let reader = BufReader::new(open(&file.path)?);
            let mut n = 0;
            for line in reader.lines() {
                let line = line.with_context(|| format!("cannot read {}", file.path.display()))?;
                n += u64::from(!line.trim().is_empty());
            }
            Ok(n)
        }
        Format::Text => Ok(1),
    }
}

/// Calls `f` with each document of `file`, in order.
pub fn for_each(file: &DocFile, mut f: impl FnMut(String) -> Result<()>) -> Result<()> {
    let path = &file.path;
    match file.format {
        Format::Text => f(std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?),
        Format::Jsonl => {
            #[derive(serde::Deserialize)]
            struct Line {
                text: String,
            }
            let reader = BufReader::new(open(path)?);
            for (i, line) in reader.lines().enumerate() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let doc: Line = serde_json::from_str(&line).with_context(|| {
                    format!(
                        "{}:{}: expected a JSON object with a string field \"text\"",
                        path.display(),
                        i + 1
                    )
                })?;
                f(doc.text)?;
            }
            Ok(())
        }
        Format::Parquet => {
            let reader = parquet_reader(path)?;
            let schema = reader.metadata().file_metadata().schema();
            let column = schema
                .get_fields()
                .iter()
                .find(|c| c.name() == "text")
                .ok_or_else(|| {
                    let names: Vec<_> = schema.get_fields().iter().map(|c| c.name()).collect();
                    anyhow!(
                        "{} has no column \"text\" (its columns: {})",
                        path.display(),
                        names.join(", ")
                    )
                })?;
            let projection = Type::group_type_builder(schema.name())
                .with_fields(vec![column.clone()])
                .build()
                .expect("a projection of one existing column is valid");
            let rows = reader
                .get_row_iter(Some(projection))
                .with_context(|| format!("cannot read column \"text\" of {}", path.display()))?;
            for (i, row) in rows.enumerate() {
                let row =
                    row.with_context(|| format!("{}: cannot read row {i}", path.display()))?;
                match row.into_columns().pop().map(|(_, field)| field) {
                    Some(Field::Str(text)) => f(text)?,
                    Some(Field::Bytes(bytes)) => f(String::from_utf8(bytes.data().to_vec())
                        .with_context(|| {
                            format!("{}: row {i}: text is not UTF-8", path.display())
                        })?)?,
                    // A missing text is an empty document (kept, so that document
                    // indices agree with the row count in the metadata).
                    Some(Field::Null) => f(String::new())?,
                    other => bail!(
                        "{}: row {i}: column \"text\" holds {other:?}, expected a string",
                        path.display()
                    ),
                }
            }
            Ok(())
        }
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open {}", path.display()))
}

fn parquet_reader(path: &Path) -> Result<SerializedFileReader<File>> {
    SerializedFileReader::new(open(path)?)
        .with_context(|| format!("{} is not a readable parquet file", path.display()))
}

/// Totals of a tokenisation pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub documents: u64,
    pub tokens: u64,
    pub bytes: u64,
}

/// Tokenises every document of `files` with `encode` on all cores and hands the ids to
/// `sink` in document order, with the document's index. An empty document has no tokens
/// (`encode` is not called, so no end-of-text is added). One thread reads while rayon
/// encodes batches of documents; a progress bar counts documents and tokens per second.
pub fn tokenize(
    files: &[DocFile],
    documents: u64,
    encode: impl Fn(&str) -> Result<Vec<u32>> + Sync,
    mut sink: impl FnMut(u64, &[u32]) -> Result<()>,
) -> Result<Totals> {
    // Batches of about this many bytes keep every core busy and memory bounded.
    const BATCH_BYTES: usize = 8 << 20;
    let bar = ProgressBar::new(documents).with_style(
        ProgressStyle::with_template(
            "tokenising [{bar:30}] {human_pos}/{human_len} documents {msg} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut totals = Totals::default();

    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Result<Vec<String>>>(2);
        scope.spawn(move || {
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            let read = files.iter().try_for_each(|file| {
                for_each(file, |doc| {
                    batch_bytes += doc.len();
                    batch.push(doc);
                    if batch_bytes >= BATCH_BYTES {
                        batch_bytes = 0;
                        // A closed channel means the consumer failed; stop reading.
                        tx.send(Ok(std::mem::take(&mut batch)))
                            .map_err(|_| anyhow!("tokeniser stopped"))?;
                    }
                    Ok(())
                })
            });
            let last = read.map(|()| batch);
            let _ = tx.send(last);
        });

        for batch in rx {
            let batch = batch?;
            let encoded: Vec<Vec<u32>> = batch
                .par_iter()
                // Empty documents too: GPT-2 corpora end every document with end-of-text.
                .map(|doc| encode(doc))
                .collect::<Result<_>>()?;
            for (doc, ids) in batch.iter().zip(&encoded) {
                sink(totals.documents, ids)?;
                totals.documents += 1;
                totals.tokens += ids.len() as u64;
                totals.bytes += doc.len() as u64;
            }
            let rate = totals.tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(totals.documents);
            bar.set_message(format!(
                "{} tokens, {} tokens/s",
                HumanCount(totals.tokens),
                HumanCount(rate as u64)
            ));
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(totals)
}
