//! `ddexp data prepare text8`: Matt Mahoney's text8 (the first 10^8 characters of a cleaned
//! English Wikipedia dump: lower-case letters and spaces), split exactly as nanoDD's
//! prepare_text8.py does: train is the first int(n·0.9) characters, val the next up to
//! int(n·0.95), test the rest. Ids are text8's sorted alphabet (space 0, a–z 1–26), which is
//! the reference's vocabulary (`sorted(set(data))` of the real corpus).

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::download;
use super::store::{self, Kind, Meta, Prepared, SplitWriter, Staging};
use super::tokenizer::Vocab;

pub const TEXT8_URL: &str = "http://mattmahoney.net/dc/text8.zip";

/// Where the text8 corpus comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text8Source {
    /// Download `text8.zip` (resumable; kept beside the root until the prepare succeeds).
    Url(String),
    /// A local `text8.zip` or the unzipped `text8` file.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct PrepareText8 {
    pub root: PathBuf,
    pub source: Text8Source,
    /// Replace an existing dataset in `root`.
    pub force: bool,
}

/// Downloads or reads text8, checks its alphabet, and writes the three splits to `root`.
pub fn prepare_text8(args: &PrepareText8) -> Result<Prepared> {
    if let Text8Source::File(path) = &args.source {
        // Checked before anything is created, so a mistyped --from leaves no folders behind.
        if path.is_dir() {
            bail!(
                "{} is a folder; --from takes text8.zip or the unzipped text8 file",
                path.display()
            );
        }
        if !path.is_file() {
            bail!(
                "{} does not exist; --from takes text8.zip or the unzipped text8 file",
                path.display()
            );
        }
    }
    let command = format!("ddexp data prepare text8 --root {}", args.root.display());
    let staging = Staging::begin(&args.root, args.force, &command)?;
    let download_dir = download_dir(&args.root);
    let (path, source) = match &args.source {
        Text8Source::File(path) => (path.clone(), path.display().to_string()),
        Text8Source::Url(url) => {
            let name = download::file_name(url, "text8.zip");
            let dest = download_dir.join(name);
            download::download(url, &dest)?;
            (dest, url.clone())
        }
    };

    let started = Instant::now();
    let vocab = Vocab::text8();
    let stream = staging.dir().join("stream.bin");
    let mut writer = SplitWriter::create(stream.clone(), vocab.size())?;
    let input_bytes = match encode_file(&path, &mut writer) {
        Ok(bytes) => bytes,
        // A download that is not text8 (an error page, a truncated or foreign file) must
        // not be reused by the next prepare.
        Err(e) if matches!(args.source, Text8Source::Url(_)) => {
            if fs::remove_file(&path).is_err() {
                return Err(e);
            }
            bail!(
                "{e:#}\n(the downloaded {} was removed, so the next prepare downloads it again)",
                path.display()
            );
        }
        Err(e) => return Err(e),
    };
    writer.finish()?;
    let splits = store::split_contiguous(&staging, &stream, &vocab)?;
    let meta = Meta::new(Kind::Text8, &vocab, splits, vec![source]);
    staging.commit(&meta)?;
    if matches!(args.source, Text8Source::Url(_)) {
        let _ = fs::remove_dir_all(&download_dir);
    }
    Ok(Prepared {
        root: args.root.clone(),
        meta,
        input_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Where downloads for `root` are kept until its prepare succeeds: `<root>.download/`.
pub fn download_dir(root: &Path) -> PathBuf {
    let mut name = root.as_os_str().to_owned();
    name.push(".download");
    PathBuf::from(name)
}

/// Encodes a `text8.zip` (its single file, or the entry named `text8`) or a plain text8
/// file into `writer`; returns the number of characters.
fn encode_file(path: &Path, writer: &mut SplitWriter) -> Result<u64> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 4];
    let is_zip = file.read(&mut magic).is_ok_and(|n| n == 4) && &magic == b"PK\x03\x04";
    drop(file);
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !is_zip {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        return encode_stream(
            BufReader::new(file),
            size,
            &path.display().to_string(),
            writer,
        );
    }

    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .with_context(|| format!("{} is not a valid zip archive", path.display()))?;
    let files: Vec<String> = archive
        .file_names()
        .filter(|n| !n.ends_with('/'))
        .map(str::to_owned)
        .collect();
    let entry_name = match &files[..] {
        [only] => only.clone(),
        _ if files.iter().any(|n| n == "text8") => "text8".to_string(),
        _ => bail!(
            "{} holds {} files ({}); expected text8.zip with the single file text8",
            path.display(),
            files.len(),
            files.join(", ")
        ),
    };
    let entry = archive
        .by_name(&entry_name)
        .with_context(|| format!("cannot read {entry_name} in {}", path.display()))?;
    let size = entry.size();
    let label = format!("{}:{entry_name}", path.display());
    encode_stream(entry, size, &label, writer)
}

/// Maps text8's characters to ids chunk by chunk, rejecting anything outside its alphabet.
fn encode_stream(
    mut input: impl Read,
    size: u64,
    label: &str,
    writer: &mut SplitWriter,
) -> Result<u64> {
    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template(
            "encoding text8 [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut ids = Vec::with_capacity(buf.len());
    let mut offset = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .with_context(|| format!("cannot read {label} (is the archive corrupt?)"))?;
        if n == 0 {
            break;
        }
        ids.clear();
        for (i, &byte) in buf[..n].iter().enumerate() {
            ids.push(match byte {
                b' ' => 0,
                b'a'..=b'z' => u32::from(byte - b'a') + 1,
                _ => {
                    return Err(anyhow!(
                        "{label}: byte {byte:#04x} ({}) at offset {} is not in text8's alphabet (space and a-z); is this the text8 corpus?",
                        if byte.is_ascii() { format!("{:?}", char::from(byte)) } else { "not ASCII".to_string() },
                        offset + i as u64
                    ));
                }
            });
        }
        writer.write(&ids)?;
        offset += n as u64;
        bar.set_position(offset);
    }
    bar.finish_and_clear();
    Ok(offset)
}
