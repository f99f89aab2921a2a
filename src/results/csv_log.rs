//! The CSV logs of a run: `train.csv`, `val.csv` and `eval.csv`, as typed rows.
//!
//! Crash safety: each row is serialised in memory and handed to the kernel in a single append
//! write, so a crash or SIGKILL loses at most the rows the kernel had not yet received and at
//! worst leaves one unterminated line at the end. Every reader and the appender treat an
//! unterminated last line as torn and ignore it (the appender removes it before appending).
//! [`CsvLog::sync`] (fsync) is called at checkpoints so that rows up to a checkpoint also
//! survive a power loss. On resume, [`truncate_after`] drops the rows logged after the
//! checkpoint, so the resumed run neither duplicates nor loses rows.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;
use crate::model::WeightSet;
use crate::spec::Split;

/// A typed row of a CSV file that ddexp writes.
pub trait CsvRow: Serialize + DeserializeOwned {
    /// File name (inside the run, sweep or report folder).
    const FILE: &'static str;
    /// Column names, in field order (tests check they match what serde writes).
    const HEADER: &'static [&'static str];
}

/// A row of one of a run's logs, which belongs to an optimiser step.
pub trait LogRow: CsvRow {
    /// The optimiser step the row belongs to; resume drops rows after the checkpoint's step.
    fn iter(&self) -> u64;
}

/// One row of `train.csv`, written every `train.log_interval` optimiser steps.
/// Losses are per token in nats; `bits_per_token` = `l_t` / ln 2.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainRow {
    /// Optimiser steps completed.
    pub iter: u64,
    /// Training tokens seen so far (all devices and nodes).
    pub tokens: u64,
    /// Learning rate used for this step.
    pub lr: f64,
    /// The training objective (KL + λ·CE for t > 0, CE for t = 0), mean over the batch.
    pub loss: f64,
    /// Mean per-token KL over tokens with t > 0.
    pub kl: f64,
    /// Mean per-token cross-entropy.
    pub ce: f64,
    /// The T-step estimate of the negative log-likelihood per token: (T − 1) × the mean KL
    /// over tokens with t > 0, plus the mean CE over tokens with t = 0 (T × the mean KL when
    /// the batch has no t = 0).
    pub l_t: f64,
    pub bits_per_token: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall time of the optimiser step (all micro-steps) in milliseconds.
    pub step_ms: f64,
    pub tokens_per_s: f64,
}

impl CsvRow for TrainRow {
    const FILE: &'static str = "train.csv";
    const HEADER: &'static [&'static str] = &[
        "iter",
        "tokens",
        "lr",
        "loss",
        "kl",
        "ce",
        "l_t",
        "bits_per_token",
        "grad_norm",
        "step_ms",
        "tokens_per_s",
    ];
}

impl LogRow for TrainRow {
    fn iter(&self) -> u64 {
        self.iter
    }
}

/// One row of `val.csv`, written every `train.eval_interval` steps on the fixed val stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValRow {
    pub iter: u64,
    pub tokens: u64,
    /// Means over the validation batches, as in [`TrainRow`].
    pub loss: f64,
    pub kl: f64,
    pub ce: f64,
    pub l_t: f64,
    pub bits_per_token: f64,
    /// Standard error of `bits_per_token` over the validation batches.
    pub bits_se: f64,
    /// Validation batches averaged (`train.eval_iters`).
    pub batches: u64,
    #[serde(with = "weights_name")]
    pub weights: WeightSet,
    /// Wall time of the validation in milliseconds.
    pub eval_ms: f64,
}

impl CsvRow for ValRow {
    const FILE: &'static str = "val.csv";
    const HEADER: &'static [&'static str] = &[
        "iter",
        "tokens",
        "loss",
        "kl",
        "ce",
        "l_t",
        "bits_per_token",
        "bits_se",
        "batches",
        "weights",
        "eval_ms",
    ];
}

impl LogRow for ValRow {
    fn iter(&self) -> u64 {
        self.iter
    }
}

/// One row of `eval.csv`: bits/token on a split (see [`crate::eval`] for the estimator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    #[serde(with = "split_name")]
    pub split: Split,
    #[serde(with = "weights_name")]
    pub weights: WeightSet,
    /// KL term (t uniform in 1..T−1, times T − 1) in bits/token, and its standard error.
    pub kl_bits: f64,
    pub kl_se: f64,
    /// Reconstruction term (t = 0 cross-entropy) in bits/token, and its standard error.
    pub recon_bits: f64,
    pub recon_se: f64,
    /// kl_bits + recon_bits, and the standard error of the sum (the terms are independent).
    pub bits_per_token: f64,
    pub se: f64,
    pub kl_batches: u64,
    pub recon_batches: u64,
    pub batch_size: u64,
    /// Optimiser step of the evaluated weights.
    pub iter: u64,
    /// When the evaluation finished (RFC 3339, local time with offset).
    pub timestamp: String,
}

impl CsvRow for EvalRow {
    const FILE: &'static str = "eval.csv";
    const HEADER: &'static [&'static str] = &[
        "split",
        "weights",
        "kl_bits",
        "kl_se",
        "recon_bits",
        "recon_se",
        "bits_per_token",
        "se",
        "kl_batches",
        "recon_batches",
        "batch_size",
        "iter",
        "timestamp",
    ];
}

impl LogRow for EvalRow {
    fn iter(&self) -> u64 {
        self.iter
    }
}

/// Splits are written in lower case, as on the command line (`--split test`).
mod split_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::spec::Split;

    pub fn serialize<S: Serializer>(split: &Split, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(split.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Split, D::Error> {
        let name = String::deserialize(d)?;
        Split::ALL
            .into_iter()
            .find(|split| split.name() == name)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "unknown split `{name}`, expected train, val or test"
                ))
            })
    }
}

/// Weight sets are written `ema` and `raw` (the raw training weights).
mod weights_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::model::WeightSet;

    pub fn serialize<S: Serializer>(weights: &WeightSet, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match weights {
            WeightSet::Ema => "ema",
            WeightSet::Model => "raw",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WeightSet, D::Error> {
        match String::deserialize(d)?.as_str() {
            "ema" => Ok(WeightSet::Ema),
            "raw" => Ok(WeightSet::Model),
            other => Err(D::Error::custom(format!(
                "unknown weights `{other}`, expected ema or raw"
            ))),
        }
    }
}

/// An open CSV log that rows are appended to.
pub struct CsvLog<R> {
    path: PathBuf,
    file: File,
    torn_tail: Option<String>,
    row: PhantomData<R>,
}

impl<R: CsvRow> CsvLog<R> {
    /// Opens `path` for appending. A missing or empty file gets the header; an existing one
    /// must have the expected header and well-formed rows (checked, with file/line/column in
    /// the error), and a torn last line left by a crash is removed (see [`Self::torn_tail`]).
    pub fn open(path: &Path) -> Result<Self> {
        let existing = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        let (complete, torn) = split_torn_tail(&existing);
        let torn_tail = (!torn.is_empty()).then(|| String::from_utf8_lossy(torn).into_owned());
        if complete.is_empty() {
            write_atomic(path, header_line::<R>().as_bytes())?;
        } else {
            parse_rows::<R>(path, complete)?;
            if torn_tail.is_some() {
                let file = OpenOptions::new().write(true).open(path)?;
                file.set_len(complete.len() as u64)
                    .and_then(|()| file.sync_all())
                    .with_context(|| {
                        format!("cannot remove the torn last line of {}", path.display())
                    })?;
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok(CsvLog {
            path: path.to_path_buf(),
            file,
            torn_tail,
            row: PhantomData,
        })
    }

    /// Appends one row with a single write, so the kernel holds either all of it or none.
    pub fn append(&mut self, row: &R) -> Result<()> {
        let line = serialize_rows(std::slice::from_ref(row))?;
        self.file
            .write_all(&line)
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }

    /// Forces the appended rows to disk (called at checkpoints).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("cannot sync {}", self.path.display()))
    }

    /// The partial last line that [`Self::open`] removed, if the file had one (worth a warning).
    pub fn torn_tail(&self) -> Option<&str> {
        self.torn_tail.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every complete row of a CSV log. A torn (unterminated) last line is ignored, as the
/// appender would remove it. Malformed content is an error naming the file, line and column.
pub fn read_rows<R: CsvRow>(path: &Path) -> Result<Vec<R>> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_rows(path, split_torn_tail(&bytes).0)
}

/// Replaces the file with exactly `rows` under the header, atomically.
pub fn write_rows<R: CsvRow>(path: &Path, rows: &[R]) -> Result<()> {
    let mut bytes = header_line::<R>().into_bytes();
    bytes.extend(serialize_rows(rows)?);
    write_atomic(path, &bytes)
}

/// Drops the rows with `iter > iter` (logged after the checkpoint a run resumes from),
/// atomically. A missing file is left missing. Returns the number of rows dropped.
pub fn truncate_after<R: LogRow>(path: &Path, iter: u64) -> Result<usize> {
    retain_rows::<R>(path, |row| row.iter() <= iter)
}

/// Keeps only the rows for which `keep` holds (atomic rewrite); returns how many were dropped.
pub fn retain_rows<R: LogRow>(path: &Path, keep: impl Fn(&R) -> bool) -> Result<usize> {
    if !path.exists() {
        return Ok(0);
    }
    let rows = read_rows::<R>(path)?;
    let total = rows.len();
    let kept: Vec<R> = rows.into_iter().filter(|row| keep(row)).collect();
    write_rows(path, &kept)?;
    Ok(total - kept.len())
}

fn header_line<R: CsvRow>() -> String {
    format!("{}\n", R::HEADER.join(","))
}

/// Splits the bytes after the last newline (a line the writer did not finish) from the rest.
fn split_torn_tail(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.split_at(end)
}

fn serialize_rows<R: Serialize>(rows: &[R]) -> Result<Vec<u8>> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for row in rows {
        writer.serialize(row)?;
    }
    writer
        .into_inner()
        .map_err(|err| anyhow::anyhow!("cannot serialise a CSV row: {}", err.error()))
}

fn parse_rows<R: CsvRow>(path: &Path, bytes: &[u8]) -> Result<Vec<R>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|err| located(path, &err, R::HEADER))?
        .clone();
    if !header.iter().eq(R::HEADER.iter().copied()) {
        bail!(
            "{}:1: the header is `{}` but a {} written by this ddexp has `{}`; \
             was it written by another version or edited by hand?",
            path.display(),
            header.iter().collect::<Vec<_>>().join(","),
            R::FILE,
            R::HEADER.join(",")
        );
    }
    reader
        .deserialize()
        .map(|row| row.map_err(|err| located(path, &err, R::HEADER)))
        .collect()
}

/// Turns a csv error into "file:line: column N `name`: what went wrong".
fn located(path: &Path, err: &csv::Error, header: &[&str]) -> anyhow::Error {
    let line = err.position().map(|p| p.line());
    let (column, message) = match err.kind() {
        csv::ErrorKind::Deserialize { err: de, .. } => (de.field(), de.kind().to_string()),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => (
            None,
            format!("the row has {len} fields but the header has {expected_len}"),
        ),
        _ => (None, err.to_string()),
    };
    let place = match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    };
    match column {
        Some(col) => {
            let name = header.get(col as usize).copied().unwrap_or("?");
            anyhow::anyhow!("{place}: column {} `{name}`: {message}", col + 1)
        }
        None => anyhow::anyhow!("{place}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train_row(iter: u64) -> TrainRow {
        TrainRow {
            iter,
            tokens: iter * 1024,
            lr: 1e-3,
            loss: 3.0 / (1.0 + iter as f64),
            kl: 0.1,
            ce: 2.5,
            l_t: 2.0,
            bits_per_token: 2.0 / std::f64::consts::LN_2,
            grad_norm: 0.5,
            step_ms: 12.5,
            tokens_per_s: 81920.0,
        }
    }

    /// The header constants must be what serde writes, or files would not read back.
    #[test]
    fn headers_match_the_serialised_field_names() {
        fn written_header<R: CsvRow>(row: &R) -> String {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.serialize(row).unwrap();
            let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
            text.lines().next().unwrap().to_string()
        }
        assert_eq!(written_header(&train_row(1)), TrainRow::HEADER.join(","));
        assert_eq!(written_header(&ValRow::default()), ValRow::HEADER.join(","));
        let eval = EvalRow {
            split: Split::Test,
            weights: WeightSet::Ema,
            kl_bits: 1.0,
            kl_se: 0.01,
            recon_bits: 0.1,
            recon_se: 0.001,
            bits_per_token: 1.1,
            se: 0.01,
            kl_batches: 10,
            recon_batches: 2,
            batch_size: 4,
            iter: 100,
            timestamp: "2026-01-01T00:00:00+00:00".into(),
        };
        assert_eq!(written_header(&eval), EvalRow::HEADER.join(","));
    }

    #[test]
    fn appended_rows_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.csv");
        let mut log = CsvLog::<TrainRow>::open(&path).unwrap();
        let rows: Vec<_> = (1..=5).map(|i| train_row(i * 10)).collect();
        for row in &rows {
            log.append(row).unwrap();
        }
        log.sync().unwrap();
        assert_eq!(read_rows::<TrainRow>(&path).unwrap(), rows);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("iter,tokens,lr,loss,"));
        assert_eq!(text.lines().count(), 6);
    }

    #[test]
    fn eval_rows_use_lower_case_split_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eval.csv");
        let row = EvalRow {
            split: Split::Val,
            weights: WeightSet::Model,
            kl_bits: 1.25,
            kl_se: 0.5,
            recon_bits: 0.125,
            recon_se: 0.25,
            bits_per_token: 1.375,
            se: 0.5,
            kl_batches: 3,
            recon_batches: 1,
            batch_size: 8,
            iter: 7,
            timestamp: "2026-01-01T00:00:00+01:00".into(),
        };
        write_rows(&path, std::slice::from_ref(&row)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().nth(1).unwrap().starts_with("val,raw,1.25,"),
            "{text}"
        );
        assert_eq!(read_rows::<EvalRow>(&path).unwrap(), vec![row]);
    }

    #[test]
    fn reopening_after_a_torn_write_drops_the_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.csv");
        let mut log = CsvLog::<TrainRow>::open(&path).unwrap();
        log.append(&train_row(10)).unwrap();
        log.append(&train_row(20)).unwrap();
        drop(log);
        // A crash in the middle of the third row's write: a prefix that even parses as numbers.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"30,30720,0.001,0.09").unwrap();
        drop(file);
        assert_eq!(
            read_rows::<TrainRow>(&path).unwrap().len(),
            2,
            "readers ignore the torn line"
        );

        let mut log = CsvLog::<TrainRow>::open(&path).unwrap();
        assert_eq!(log.torn_tail(), Some("30,30720,0.001,0.09"));
        log.append(&train_row(30)).unwrap();
        drop(log);
        let rows = read_rows::<TrainRow>(&path).unwrap();
        assert_eq!(rows, vec![train_row(10), train_row(20), train_row(30)]);
        assert!(fs::read_to_string(&path).unwrap().ends_with('\n'));
    }

    #[test]
    fn a_torn_header_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val.csv");
        fs::write(&path, "iter,tok").unwrap();
        let mut log = CsvLog::<ValRow>::open(&path).unwrap();
        log.append(&ValRow {
            iter: 5,
            ..ValRow::default()
        })
        .unwrap();
        assert_eq!(read_rows::<ValRow>(&path).unwrap()[0].iter, 5);
    }

    #[test]
    fn truncate_after_keeps_exactly_the_rows_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.csv");
        let rows: Vec<_> = (1..=10).map(|i| train_row(i * 10)).collect();
        write_rows(&path, &rows).unwrap();

        assert_eq!(truncate_after::<TrainRow>(&path, 55).unwrap(), 5);
        assert_eq!(read_rows::<TrainRow>(&path).unwrap(), rows[..5]);
        // A checkpoint exactly at a logged step keeps that step's row.
        assert_eq!(truncate_after::<TrainRow>(&path, 30).unwrap(), 2);
        assert_eq!(read_rows::<TrainRow>(&path).unwrap(), rows[..3]);
        assert_eq!(truncate_after::<TrainRow>(&path, 1000).unwrap(), 0);
        assert_eq!(truncate_after::<TrainRow>(&path, 0).unwrap(), 3);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            header_line::<TrainRow>()
        );
        assert_eq!(
            truncate_after::<TrainRow>(&dir.path().join("none.csv"), 3).unwrap(),
            0
        );
        assert!(!dir.path().join("none.csv").exists());
    }

    #[test]
    fn malformed_rows_are_reported_with_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.csv");
        write_rows(&path, &[train_row(10), train_row(20)]).unwrap();
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("0.001,", "fast,");
        fs::write(&path, text).unwrap();
        let err = read_rows::<TrainRow>(&path).unwrap_err().to_string();
        assert!(err.contains("train.csv:2: column 3 `lr`"), "{err}");

        fs::write(&path, "iter,tokens\n1,2\n").unwrap();
        let err = read_rows::<TrainRow>(&path).unwrap_err().to_string();
        assert!(
            err.contains("train.csv:1: the header is `iter,tokens`"),
            "{err}"
        );

        write_rows(&path, &[train_row(10)]).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"20,1\n").unwrap();
        let err = CsvLog::<TrainRow>::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("train.csv:3: the row has 2 fields but the header has 11"),
            "{err}"
        );
    }
}
