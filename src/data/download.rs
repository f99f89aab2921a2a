//! HTTP downloads for dataset preparation: a progress bar with bytes and rate, a `.part`
//! file that only becomes the real file once complete, and resumption of an interrupted
//! `.part` with a Range request (restarting from zero when the server ignores ranges).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        // A stalled connection fails after this long without data; the .part file is kept.
        .timeout_per_read(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

/// Fetches a small text resource (an API listing) into memory.
pub fn get_text(url: &str) -> Result<String> {
    let mut response = agent()
        .get(url)
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url} answered HTTP {status}");
    }
    response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("cannot read the answer of {url}"))
}

/// Downloads `url` to `dest` unless `dest` already exists. Bytes go to `dest.part` first,
/// which is resumed on the next call if this one fails or is interrupted.
pub fn download(url: &str, dest: &Path) -> Result<()> {
    if dest.exists() {
        return Ok(());
    }
    let part = part_path(dest);
    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);

    // Byte ranges must count the file's own bytes, never a compressed transfer of them.
    let mut request = agent().get(url).header("Accept-Encoding", "identity");
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status().as_u16();
    let content_length = response.body().content_length();
    let resumed = have > 0 && status == 206 && content_range_starts_at(&response, have);
    let (mut file, start, total) = match status {
        _ if resumed => {
            let file = OpenOptions::new()
                .append(true)
                .open(&part)
                .with_context(|| format!("cannot open {}", part.display()))?;
            (file, have, content_length.map(|n| n + have))
        }
        200 => {
            // The folder only once there are bytes to keep: a wrong URL leaves nothing behind.
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let file =
                File::create(&part).with_context(|| format!("cannot create {}", part.display()))?;
            (file, 0, content_length)
        }
        // A range that does not continue the .part (the file changed on the server, or the
        // .part is already whole): start again from zero.
        206 | 416 if have > 0 => {
            fs::remove_file(&part).with_context(|| format!("cannot remove {}", part.display()))?;
            return download(url, dest);
        }
        _ => bail!("{url} answered HTTP {}", response.status()),
    };

    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    bar.set_message(if start > 0 {
        format!("{name} (resuming)")
    } else {
        name
    });
    bar.set_position(start);

    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    loop {
        let n = body.read(&mut buf).with_context(|| {
            format!(
                "download of {url} broke off after {written} bytes; run the same command again to resume"
            )
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.display()))?;
        written += n as u64;
        bar.set_position(written);
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", part.display()))?;
    bar.finish_and_clear();
    if let Some(total) = total
        && written != total
    {
        bail!(
            "download of {url} ended at {written} of {total} bytes; run the same command again to resume"
        );
    }
    fs::rename(&part, dest)
        .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))
}

/// A safe local file name for what `url` serves: its last path segment when that is a plain
/// name, `fallback` otherwise.
pub fn file_name<'a>(url: &'a str, fallback: &'a str) -> &'a str {
    url.split(['?', '#'])
        .next()
        .and_then(|path| path.rsplit('/').next())
        .filter(|name| {
            !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or(fallback)
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Whether a 206 answer continues at byte `offset` (`Content-Range: bytes offset-...`).
fn content_range_starts_at(response: &ureq::http::Response<ureq::Body>, offset: u64) -> bool {
    response
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
        == Some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_of_urls() {
        assert_eq!(
            file_name("http://mattmahoney.net/dc/text8.zip", "x"),
            "text8.zip"
        );
        assert_eq!(
            file_name("https://hub/train/0000.parquet?download=true", "x"),
            "0000.parquet"
        );
        assert_eq!(file_name("https://hub/dir/", "x"), "x");
        assert_eq!(file_name("https://hub/..", "x"), "x");
        assert_eq!(file_name("https://hub/a%2Fb", "x"), "x");
    }
}
