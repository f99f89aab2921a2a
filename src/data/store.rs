//! The on-disk format of a prepared dataset, and the reference (nanoDD) text8 format.
//!
//! A prepared dataset is a folder with one flat token file per split (`train.bin`,
//! `val.bin`, `test.bin`: little-endian u16 ids, no header) and `meta.json` (what it is, its
//! vocabulary, token counts and sha256 per split, the ddexp version). Splits are memory-mapped.
//!
//! Checks on open: the file sizes always (a truncated file is caught at once), and the full
//! sha256 and the id range of every split smaller than [`HASH_ON_OPEN_BYTES`] (text8 entirely,
//! OpenWebText's val and test). Hashing OpenWebText's 17 GB train split on every run would cost minutes, so
//! it is only hashed by `ddexp data verify`, which also checks every id against the vocabulary.
//!
//! A folder with `train.npy`, `val.npy`, `test.npy` (uint16, as nanoDD's prepare_text8.py
//! writes them) and no `meta.json` is read as text8 in the reference format. Having no
//! checksums, its ids are range-checked on open instead.
//!
//! Preparation writes into a hidden staging folder beside the target and renames it into
//! place only after `meta.json`, the last file, is written; a failed prepare removes the
//! staging folder, and one killed mid-way leaves only that hidden folder, which never looks
//! like a dataset and is removed by the next prepare of the same target.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tokenizer::{Vocab, VocabMeta};
use crate::spec::Split;

pub const META_FILE: &str = "meta.json";
/// Version of the folder layout; bumped when it changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// Splits up to this size are fully hashed every time a dataset is opened.
pub const HASH_ON_OPEN_BYTES: u64 = 256 << 20;

/// What a prepared dataset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Text8,
    OpenWebText,
    Text,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text8 => "text8",
            Kind::OpenWebText => "openwebtext",
            Kind::Text => "text",
        }
    }
}

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// [`FORMAT_VERSION`] of the folder.
    pub format: u32,
    pub kind: Kind,
    pub vocab: VocabMeta,
    pub vocab_size: usize,
    /// The absorbing-state id of a diffusion model on this vocabulary (= vocab_size).
    pub mask_id: u32,
    /// Encoding of the split files: always "u16le".
    pub dtype: String,
    pub splits: SplitsMeta,
    /// Where the text came from (URLs or paths), for the record and for re-preparing.
    pub sources: Vec<String>,
    pub ddexp_version: String,
    /// When it was prepared (RFC 3339).
    pub created: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitsMeta {
    pub train: SplitMeta,
    pub val: SplitMeta,
    pub test: SplitMeta,
}

impl SplitsMeta {
    pub fn get(&self, split: Split) -> &SplitMeta {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

/// One split file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitMeta {
    /// File name inside the dataset folder.
    pub file: String,
    pub tokens: u64,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// Documents in the split, where the corpus has documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<u64>,
}

impl Meta {
    /// A meta record for freshly written splits.
    pub fn new(kind: Kind, vocab: &Vocab, splits: [SplitMeta; 3], sources: Vec<String>) -> Meta {
        let [train, val, test] = splits;
        Meta {
            format: FORMAT_VERSION,
            kind,
            vocab: vocab.to_meta(),
            vocab_size: vocab.size(),
            mask_id: vocab.mask_id(),
            dtype: "u16le".to_string(),
            splits: SplitsMeta { train, val, test },
            sources,
            ddexp_version: env!("CARGO_PKG_VERSION").to_string(),
            created: chrono::Local::now().to_rfc3339(),
        }
    }
}

/// The ids of one split: memory-mapped from disk, or held in memory (synthetic corpus).
pub struct Tokens {
    data: Data,
    /// Byte offset of the first id in a mapped file (the .npy header).
    offset: usize,
    len: usize,
}

enum Data {
    Mapped(Mmap),
    Owned(Vec<u16>),
}

impl Tokens {
    pub fn from_vec(ids: Vec<u16>) -> Tokens {
        let len = ids.len();
        Tokens {
            data: Data::Owned(ids),
            offset: 0,
            len,
        }
    }

    fn mapped(path: &Path, offset: usize, len: usize) -> Result<Tokens> {
        if len == 0 {
            // Empty files cannot be mapped; an empty split is still a valid (useless) split.
            return Ok(Tokens::from_vec(Vec::new()));
        }
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only and ddexp never writes a split in place (preparation
        // writes a new folder and renames it); another program truncating the file while it
        // is mapped is outside what any reader can defend against.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        Ok(Tokens {
            data: Data::Mapped(map),
            offset,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the ids `start..start + len` to `out`.
    pub fn extend_window(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        assert!(
            start + len <= self.len,
            "window {start}+{len} beyond {} tokens",
            self.len
        );
        match &self.data {
            Data::Mapped(map) => {
                let bytes = &map[self.offset + 2 * start..self.offset + 2 * (start + len)];
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
                );
            }
            Data::Owned(ids) => out.extend(ids[start..start + len].iter().map(|&id| id as u32)),
        }
    }

    /// All ids (copies; for small splits and tests).
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len);
        self.extend_window(0, self.len, &mut out);
        out
    }

    /// The largest id, or None for an empty split.
    pub fn max_id(&self) -> Option<u32> {
        match &self.data {
            Data::Mapped(map) => map[self.offset..self.offset + 2 * self.len]
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .max(),
            Data::Owned(ids) => ids.iter().copied().max(),
        }
        .map(u32::from)
    }
}

/// What a preparation produced, for the summary the CLI prints.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub root: PathBuf,
    pub meta: Meta,
    /// Bytes of input text read (text8: characters; corpora: UTF-8 bytes of the documents).
    pub input_bytes: u64,
    pub seconds: f64,
}

/// How thoroughly [`open_folder`] checks the split files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Sizes always; sha256 and ids of splits up to [`HASH_ON_OPEN_BYTES`].
    Open,
    /// Sizes, sha256 of every split, and every id against the vocabulary.
    Full,
}

/// A prepared dataset folder, opened.
pub struct Folder {
    pub root: PathBuf,
    /// None for the reference (nanoDD .npy) text8 format.
    pub meta: Option<Meta>,
    pub kind: Kind,
    pub vocab: Vocab,
    /// train, val, test.
    pub splits: [Tokens; 3],
}

/// Opens the dataset in `root`, checking it as `check` says. Errors say which file is wrong
/// and how; the caller adds the command that fixes it.
pub fn open_folder(root: &Path, check: Check) -> Result<Folder> {
    if !root.exists() {
        bail!("{} does not exist", root.display());
    }
    if !root.is_dir() {
        bail!("{} is not a folder", root.display());
    }
    let meta_path = root.join(META_FILE);
    if meta_path.exists() {
        open_ddexp(root, &meta_path, check)
    } else if root.join("train.npy").exists() {
        open_reference(root)
    } else {
        bail!(
            "{} holds no prepared dataset: {META_FILE} is missing (and there is no train.npy of the reference format)",
            root.display()
        )
    }
}

fn open_ddexp(root: &Path, meta_path: &Path, check: Check) -> Result<Folder> {
    let text = fs::read_to_string(meta_path)
        .with_context(|| format!("cannot read {}", meta_path.display()))?;
    let meta: Meta = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid ddexp dataset record",
            meta_path.display()
        )
    })?;
    ensure!(
        meta.format == FORMAT_VERSION,
        "{} has format version {}, this ddexp reads version {FORMAT_VERSION}",
        meta_path.display(),
        meta.format
    );
    ensure!(
        meta.dtype == "u16le",
        "{}: dtype is {:?}, expected \"u16le\"",
        meta_path.display(),
        meta.dtype
    );
    let vocab = Vocab::from_meta(&meta.vocab)
        .with_context(|| format!("{}: invalid vocabulary", meta_path.display()))?;
    ensure!(
        meta.vocab_size == vocab.size() && meta.mask_id == vocab.mask_id(),
        "{}: vocab_size {} and mask_id {} disagree with its vocabulary of {} ids",
        meta_path.display(),
        meta.vocab_size,
        meta.mask_id,
        vocab.size()
    );

    let mut splits = Vec::with_capacity(3);
    for split in Split::ALL {
        let record = meta.splits.get(split);
        ensure!(
            !record.file.is_empty() && !record.file.contains(['/', '\\']) && record.file != "..",
            "{}: split {split} names the file {:?}; split files must be plain names inside the folder",
            meta_path.display(),
            record.file
        );
        let path = root.join(&record.file);
        let expected_bytes = record.tokens * 2;
        let found = fs::metadata(&path)
            .map_err(|e| anyhow!("{} (split {split}) is missing: {e}", path.display()))?
            .len();
        ensure!(
            found == expected_bytes,
            "{} (split {split}) is {}: {META_FILE} records {} tokens ({expected_bytes} bytes) but the file has {found} bytes",
            path.display(),
            if found < expected_bytes {
                "truncated"
            } else {
                "too long"
            },
            record.tokens,
        );
        // Small splits are read whole on every open, so their ids are checked too (an id
        // outside the vocabulary would otherwise surface as a panic inside the network).
        let read_whole = check == Check::Full || found <= HASH_ON_OPEN_BYTES;
        if read_whole {
            let digest = sha256_file(&path)?;
            ensure!(
                digest == record.sha256,
                "{} (split {split}) is corrupt: its sha256 is {digest}, {META_FILE} records {}",
                path.display(),
                record.sha256
            );
        }
        let tokens = Tokens::mapped(&path, 0, record.tokens as usize)?;
        if read_whole {
            check_ids(&tokens, &vocab, &path)?;
        }
        splits.push(tokens);
    }
    Ok(Folder {
        root: root.to_path_buf(),
        kind: meta.kind,
        meta: Some(meta),
        vocab,
        splits: splits
            .try_into()
            .unwrap_or_else(|_| unreachable!("three splits")),
    })
}

/// The sources `root/meta.json` records, if it can be read (for the command that
/// re-prepares a damaged dataset).
pub fn recorded_sources(root: &Path) -> Vec<String> {
    fs::read_to_string(root.join(META_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<Meta>(&text).ok())
        .map(|meta| meta.sources)
        .unwrap_or_default()
}

/// nanoDD's text8 folder: `{train,val,test}.npy` of uint16 ids over text8's alphabet.
fn open_reference(root: &Path) -> Result<Folder> {
    let vocab = Vocab::text8();
    let mut splits = Vec::with_capacity(3);
    for split in Split::ALL {
        let path = root.join(format!("{}.npy", split.name()));
        let mut file = File::open(&path).map_err(|e| {
            anyhow!(
                "{} (split {split} of a reference-format text8 folder) is missing: {e}",
                path.display()
            )
        })?;
        let mut head = Vec::new();
        (&mut file)
            .take(65_536 + 12)
            .read_to_end(&mut head)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let header = parse_npy_header(&head).with_context(|| format!("{}", path.display()))?;
        let found = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        let expected = (header.data_offset + 2 * header.len) as u64;
        ensure!(
            found == expected,
            "{} is {}: its header says {} uint16 values ({expected} bytes with the header) but the file has {found} bytes",
            path.display(),
            if found < expected {
                "truncated"
            } else {
                "too long"
            },
            header.len
        );
        let tokens = Tokens::mapped(&path, header.data_offset, header.len)?;
        check_ids(&tokens, &vocab, &path)?;
        splits.push(tokens);
    }
    Ok(Folder {
        root: root.to_path_buf(),
        meta: None,
        kind: Kind::Text8,
        vocab,
        splits: splits
            .try_into()
            .unwrap_or_else(|_| unreachable!("three splits")),
    })
}

fn check_ids(tokens: &Tokens, vocab: &Vocab, path: &Path) -> Result<()> {
    if let Some(max) = tokens.max_id() {
        ensure!(
            (max as usize) < vocab.size(),
            "{} holds id {max}, outside its vocabulary of {} ({})",
            path.display(),
            vocab.size(),
            vocab.describe()
        );
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the ids start in a .npy file and how many there are.
#[derive(Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub data_offset: usize,
    pub len: usize,
}

/// Parses a .npy header (format versions 1–3) and accepts exactly a 1-D, C-order array of
/// little-endian uint16 (`'<u2'`), which is what nanoDD writes.
pub fn parse_npy_header(bytes: &[u8]) -> Result<NpyHeader> {
    ensure!(
        bytes.starts_with(b"\x93NUMPY") && bytes.len() >= 10,
        "not a .npy file (it does not start with the \\x93NUMPY magic)"
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!(
            "unsupported .npy format version {v}.{} (expected 1, 2 or 3)",
            bytes[7]
        ),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| anyhow!(".npy header is truncated"))?;
    let header = std::str::from_utf8(header).context(".npy header is not text")?;
    let fields = parse_py_dict(header).with_context(|| format!(".npy header {header:?}"))?;

    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("descr", PyValue::Str(s)) => descr = Some(s),
            ("fortran_order", PyValue::Bool(b)) => fortran = Some(b),
            ("shape", PyValue::Tuple(t)) => shape = Some(t),
            (key, value) => bail!("unexpected .npy header entry {key:?}: {value:?}"),
        }
    }
    let descr = descr.ok_or_else(|| anyhow!(".npy header has no 'descr'"))?;
    ensure!(
        descr == "<u2",
        "dtype is {descr:?}, expected '<u2' (little-endian uint16, as nanoDD writes)"
    );
    let fortran = fortran.ok_or_else(|| anyhow!(".npy header has no 'fortran_order'"))?;
    ensure!(!fortran, "array is in Fortran order, expected C order");
    let shape = shape.ok_or_else(|| anyhow!(".npy header has no 'shape'"))?;
    let [len] = shape[..] else {
        bail!("array has shape {shape:?}, expected one dimension");
    };
    Ok(NpyHeader {
        data_offset: start + header_len,
        len: len as usize,
    })
}

#[derive(Debug, PartialEq)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
}

/// The small subset of Python literal syntax that .npy headers use:
/// `{'key': 'str' | True | False | (int, ...), ...}`.
fn parse_py_dict(text: &str) -> Result<Vec<(String, PyValue)>> {
    let mut s = text.trim();
    s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| anyhow!("not a dict literal"))?;
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if s.is_empty() {
            return Ok(out);
        }
        let (key, rest) = py_str(s)?;
        s = rest
            .trim_start()
            .strip_prefix(':')
            .ok_or_else(|| anyhow!("expected ':' after {key:?}"))?
            .trim_start();
        let value;
        if s.starts_with('\'') || s.starts_with('"') {
            let (v, rest) = py_str(s)?;
            value = PyValue::Str(v);
            s = rest;
        } else if let Some(rest) = s.strip_prefix("True") {
            value = PyValue::Bool(true);
            s = rest;
        } else if let Some(rest) = s.strip_prefix("False") {
            value = PyValue::Bool(false);
            s = rest;
        } else if let Some(rest) = s.strip_prefix('(') {
            let end = rest.find(')').ok_or_else(|| anyhow!("unclosed tuple"))?;
            let dims = rest[..end]
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(|d| d.parse::<u64>().map_err(|_| anyhow!("bad dimension {d:?}")))
                .collect::<Result<Vec<_>>>()?;
            value = PyValue::Tuple(dims);
            s = &rest[end + 1..];
        } else {
            bail!("unsupported value for {key:?}");
        }
        out.push((key, value));
        s = s.trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn py_str(s: &str) -> Result<(String, &str)> {
    let quote = s
        .chars()
        .next()
        .filter(|&c| c == '\'' || c == '"')
        .ok_or_else(|| anyhow!("expected a quoted string at {s:?}"))?;
    let body = &s[1..];
    let end = body
        .find(quote)
        .ok_or_else(|| anyhow!("unterminated string at {s:?}"))?;
    Ok((body[..end].to_string(), &body[end + 1..]))
}

/// Writes the ids of one split, counting and hashing as it goes.
pub struct SplitWriter {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: Sha256,
    tokens: u64,
    documents: Option<u64>,
    vocab_size: usize,
    buf: Vec<u8>,
}

impl SplitWriter {
    pub fn create(path: PathBuf, vocab_size: usize) -> Result<SplitWriter> {
        assert!(
            vocab_size <= 1 << 16,
            "u16 ids need a vocabulary of at most 65536"
        );
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(SplitWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            tokens: 0,
            documents: None,
            vocab_size,
            buf: Vec::new(),
        })
    }

    pub fn write(&mut self, ids: &[u32]) -> Result<()> {
        self.buf.clear();
        for &id in ids {
            ensure!(
                (id as usize) < self.vocab_size,
                "id {id} is outside the vocabulary of {} while writing {}",
                self.vocab_size,
                self.path.display()
            );
            self.buf.extend_from_slice(&(id as u16).to_le_bytes());
        }
        self.hasher.update(&self.buf);
        self.out
            .write_all(&self.buf)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.tokens += ids.len() as u64;
        Ok(())
    }

    /// Counts one more document in this split.
    pub fn add_document(&mut self) {
        *self.documents.get_or_insert(0) += 1;
    }

    /// Flushes to disk and returns the split's record.
    pub fn finish(self) -> Result<SplitMeta> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| anyhow!("cannot write {}: {}", self.path.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync {}", self.path.display()))?;
        Ok(SplitMeta {
            file: self
                .path
                .file_name()
                .expect("split files have names")
                .to_string_lossy()
                .into_owned(),
            tokens: self.tokens,
            sha256: hex(&self.hasher.finalize()),
            documents: self.documents,
        })
    }
}

/// Where the reference cuts a stream of `n` tokens: train is `..int(n·0.9)`, val is
/// `..int(n·0.95)`, test the rest (Python's float arithmetic, reproduced exactly).
pub fn reference_cuts(n: u64) -> (u64, u64) {
    ((n as f64 * 0.9) as u64, (n as f64 * 0.95) as u64)
}

/// Splits a token stream written to `stream` (a scratch file in the staging folder) into
/// train, val and test at [`reference_cuts`], then deletes the stream.
pub fn split_contiguous(staging: &Staging, stream: &Path, vocab: &Vocab) -> Result<[SplitMeta; 3]> {
    let n = fs::metadata(stream)
        .with_context(|| format!("cannot read {}", stream.display()))?
        .len()
        / 2;
    let (a, b) = reference_cuts(n);
    ensure!(
        0 < a && a < b && b < n,
        "the corpus has only {n} tokens, too few for a train, val and test split (90/5/5)"
    );
    let tokens = Tokens::mapped(stream, 0, n as usize)?;
    let mut records = Vec::with_capacity(3);
    for (split, range) in Split::ALL.into_iter().zip([0..a, a..b, b..n]) {
        let mut writer = staging.split_writer(split, vocab)?;
        let mut chunk = Vec::with_capacity(1 << 20);
        let mut at = range.start as usize;
        while at < range.end as usize {
            let len = (range.end as usize - at).min(1 << 20);
            chunk.clear();
            tokens.extend_window(at, len, &mut chunk);
            writer.write(&chunk)?;
            at += len;
        }
        records.push(writer.finish()?);
    }
    drop(tokens);
    fs::remove_file(stream).with_context(|| format!("cannot remove {}", stream.display()))?;
    Ok(records
        .try_into()
        .unwrap_or_else(|_| unreachable!("three splits")))
}

/// A dataset being prepared: a hidden folder beside the target, renamed into place by
/// [`Staging::commit`] and removed if dropped uncommitted.
pub struct Staging {
    target: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    /// Checks that `target` may be (re)placed and creates the staging folder. An existing
    /// dataset is only replaced with `force`, and a folder holding anything else never is.
    pub fn begin(target: &Path, force: bool, prepare_command: &str) -> Result<Staging> {
        check_target(target, force, prepare_command)?;
        let (parent, name) = parent_and_name(target)?;
        fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        remove_stale_staging(&parent, &name);
        let dir = parent.join(format!(".{name}.preparing-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Staging {
            target: target.to_path_buf(),
            dir,
            committed: false,
        })
    }

    /// The staging folder (for scratch files that are removed before commit).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn split_writer(&self, split: Split, vocab: &Vocab) -> Result<SplitWriter> {
        SplitWriter::create(self.dir.join(format!("{}.bin", split.name())), vocab.size())
    }

    /// Writes `meta.json` last, then moves the folder into place (replacing what `begin`
    /// allowed to be replaced).
    pub fn commit(mut self, meta: &Meta) -> Result<()> {
        let json = serde_json::to_string_pretty(meta).expect("meta serialises");
        let tmp = self.dir.join(format!("{META_FILE}.tmp"));
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(json.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, self.dir.join(META_FILE))
            .with_context(|| format!("cannot rename {}", tmp.display()))?;

        let (parent, name) = parent_and_name(&self.target)?;
        let old = parent.join(format!(".{name}.replaced-{}", std::process::id()));
        let had_old = self.target.exists();
        if had_old {
            fs::rename(&self.target, &old)
                .with_context(|| format!("cannot move the old {} aside", self.target.display()))?;
        }
        if let Err(e) = fs::rename(&self.dir, &self.target) {
            if had_old {
                // Put the old dataset back rather than leave nothing.
                let _ = fs::rename(&old, &self.target);
            }
            return Err(e).with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.dir.display(),
                    self.target.display()
                )
            });
        }
        self.committed = true;
        if had_old {
            fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove the replaced {}", old.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn parent_and_name(target: &Path) -> Result<(PathBuf, String)> {
    let name = target
        .file_name()
        .ok_or_else(|| anyhow!("{} does not name a folder", target.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Files a dataset folder may hold (ddexp's and the reference's), so that `--force` never
/// deletes a folder that holds anything else.
fn is_dataset_file(name: &str) -> bool {
    matches!(
        name,
        "meta.json" | "meta.pkl" | "text8" | "text8.zip" | "meta.json.tmp"
    ) || name.ends_with(".bin")
        || name.ends_with(".npy")
}

fn check_target(target: &Path, force: bool, prepare_command: &str) -> Result<()> {
    if !target.exists() {
        return Ok(());
    }
    ensure!(
        target.is_dir(),
        "{} exists and is not a folder; choose another --root",
        target.display()
    );
    let mut entries = Vec::new();
    for entry in
        fs::read_dir(target).with_context(|| format!("cannot read {}", target.display()))?
    {
        entries.push(entry?.file_name().to_string_lossy().into_owned());
    }
    if entries.is_empty() {
        return Ok(());
    }
    if let Some(other) = entries.iter().find(|n| !is_dataset_file(n)) {
        bail!(
            "{} holds {other:?}, which is not part of a dataset; refusing to replace the folder (choose another --root or remove it yourself)",
            target.display()
        );
    }
    if force {
        return Ok(());
    }
    match open_folder(target, Check::Open) {
        Ok(found) => bail!(
            "{} already holds a prepared {} dataset ({} train tokens); to replace it run: {prepare_command} --force",
            target.display(),
            found.kind.name(),
            found.splits[0].len()
        ),
        Err(e) => bail!(
            "{} exists but is not a valid dataset ({e:#}); to replace it run: {prepare_command} --force",
            target.display()
        ),
    }
}

/// Removes staging folders of `name` left by prepares that were killed (their process is
/// gone). Only Linux can tell a live process from a dead one here; elsewhere they are kept.
fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}.preparing-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && process_is_gone(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn process_is_gone(pid: u32) -> bool {
    cfg!(target_os = "linux") && !Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out
    }

    #[test]
    fn npy_header_accepts_nanodd_output() {
        let bytes = npy("{'descr': '<u2', 'fortran_order': False, 'shape': (90000000,), }");
        assert_eq!(bytes.len(), 128);
        assert_eq!(
            parse_npy_header(&bytes).unwrap(),
            NpyHeader {
                data_offset: 128,
                len: 90_000_000
            }
        );
    }

    #[test]
    fn npy_header_rejects_other_arrays() {
        for (header, why) in [
            (
                "{'descr': '<i8', 'fortran_order': False, 'shape': (10,), }",
                "dtype",
            ),
            (
                "{'descr': '>u2', 'fortran_order': False, 'shape': (10,), }",
                "dtype",
            ),
            (
                "{'descr': '<u2', 'fortran_order': True, 'shape': (10,), }",
                "Fortran",
            ),
            (
                "{'descr': '<u2', 'fortran_order': False, 'shape': (2, 5), }",
                "one dimension",
            ),
            (
                "{'descr': '<u2', 'fortran_order': False, 'shape': (), }",
                "one dimension",
            ),
            ("{'descr': '<u2', 'shape': (10,), }", "fortran_order"),
        ] {
            let err = format!("{:#}", parse_npy_header(&npy(header)).unwrap_err());
            assert!(err.contains(why), "{header}: {err}");
        }
        assert!(parse_npy_header(b"PK\x03\x04 not numpy").is_err());
    }
}
