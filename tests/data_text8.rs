//! text8 preparation: local zip, plain file and HTTP sources, the reference split, the
//! reference .npy format, failures that leave nothing behind, and the checks on open.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::data::{Behaviour, Server, entries, text8_ids, zip_bytes, zip_stored};
use ddexp::data::{self, PrepareText8, Text8Source};
use ddexp::spec::{Dataset, Split};

/// 1234 characters of text8-like text, so the reference cuts are int(1110.6) = 1110 and
/// int(1172.3) = 1172 (Python: `int(1234 * 0.9), int(1234 * 0.95)`).
fn known_text() -> String {
    let sentence =
        "anarchism originated as a term of abuse first used against early working class radicals ";
    sentence.repeat(20)[..1234].to_string()
}

fn prepare(root: &Path, source: Text8Source) -> anyhow::Result<data::Prepared> {
    data::prepare_text8(&PrepareText8 {
        root: root.to_path_buf(),
        source,
        force: false,
    })
}

fn open(root: &Path, seq_len: usize) -> anyhow::Result<data::Corpus> {
    data::open(&Dataset::Text8 {
        root: root.to_path_buf(),
        seq_len,
    })
}

/// Lower-case hex sha256, as meta.json records it.
fn sha_of(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_zip(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("text8.zip");
    fs::write(&path, zip_bytes(&[("text8", text.as_bytes())])).unwrap();
    path
}

#[test]
fn zip_gives_the_reference_split_and_ids() {
    let inputs = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let text = known_text();
    let root = out.path().join("text8");
    let prepared = prepare(&root, Text8Source::File(write_zip(inputs.path(), &text))).unwrap();

    let splits = &prepared.meta.splits;
    assert_eq!(
        (splits.train.tokens, splits.val.tokens, splits.test.tokens),
        (1110, 62, 62)
    );
    assert_eq!(prepared.meta.vocab_size, 27);
    assert_eq!(prepared.meta.mask_id, 27);

    let corpus = open(&root, 16).unwrap();
    assert_eq!(
        corpus.tokens(Split::Train).to_vec(),
        text8_ids(&text[..1110])
    );
    assert_eq!(
        corpus.tokens(Split::Val).to_vec(),
        text8_ids(&text[1110..1172])
    );
    assert_eq!(
        corpus.tokens(Split::Test).to_vec(),
        text8_ids(&text[1172..])
    );
    // "anarchism" = a n a r c h i s m
    assert_eq!(
        corpus.tokens(Split::Train).to_vec()[..9],
        [1, 14, 1, 18, 3, 8, 9, 19, 13]
    );
    assert_eq!(
        corpus.vocab().decode(&corpus.tokens(Split::Val).to_vec()),
        &text[1110..1172]
    );

    assert_eq!(
        entries(out.path()),
        ["text8"],
        "no staging folder may remain"
    );
    assert_eq!(
        entries(&root),
        ["meta.json", "test.bin", "train.bin", "val.bin"]
    );
}

/// Writes a .npy file of uint16 ids the way numpy does (format 1.0, header padded to 64).
fn write_npy(path: &Path, ids: &[u32]) {
    let mut header = format!(
        "{{'descr': '<u2', 'fortran_order': False, 'shape': ({},), }}",
        ids.len()
    );
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for &id in ids {
        bytes.extend_from_slice(&(id as u16).to_le_bytes());
    }
    fs::write(path, bytes).unwrap();
}

/// A nanoDD-prepared folder (train/val/test.npy, meta.pkl) of the same text.
fn reference_folder(dir: &Path, text: &str) -> PathBuf {
    let root = dir.join("reference");
    fs::create_dir(&root).unwrap();
    write_npy(&root.join("train.npy"), &text8_ids(&text[..1110]));
    write_npy(&root.join("val.npy"), &text8_ids(&text[1110..1172]));
    write_npy(&root.join("test.npy"), &text8_ids(&text[1172..]));
    fs::write(root.join("meta.pkl"), b"pickled vocabulary, not read").unwrap();
    root
}

#[test]
fn same_streams_as_the_reference_format_from_zip_and_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = known_text();
    let reference = open(&reference_folder(dir.path(), &text), 16).unwrap();

    let from_zip = dir.path().join("from_zip");
    prepare(&from_zip, Text8Source::File(write_zip(dir.path(), &text))).unwrap();
    let plain = dir.path().join("text8");
    fs::write(&plain, &text).unwrap();
    let from_plain = dir.path().join("from_plain");
    prepare(&from_plain, Text8Source::File(plain)).unwrap();

    for root in [&from_zip, &from_plain] {
        let corpus = open(root, 16).unwrap();
        for split in Split::ALL {
            assert_eq!(
                corpus.tokens(split).to_vec(),
                reference.tokens(split).to_vec(),
                "{split}"
            );
        }
    }
    assert_eq!(
        fs::read(from_zip.join("train.bin")).unwrap(),
        fs::read(from_plain.join("train.bin")).unwrap()
    );
    let info = data::info(&dir.path().join("reference")).unwrap();
    assert!(info.contains("reference format"), "{info}");
}

#[test]
fn reference_format_with_wrong_dtype_or_length_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let root = reference_folder(dir.path(), &known_text());
    let val = root.join("val.npy");
    let good = fs::read(&val).unwrap();

    fs::write(&val, &good[..good.len() - 2]).unwrap();
    let err = format!("{:#}", open(&root, 16).err().unwrap());
    assert!(
        err.contains("val.npy is truncated") && err.contains("62 uint16 values"),
        "{err}"
    );

    let mut int64 = good.clone();
    let at = int64.windows(3).position(|w| w == b"<u2").unwrap();
    int64[at..at + 3].copy_from_slice(b"<i8");
    fs::write(&val, &int64).unwrap();
    let err = format!("{:#}", open(&root, 16).err().unwrap());
    assert!(
        err.contains("val.npy") && err.contains("\"<i8\"") && err.contains("'<u2'"),
        "{err}"
    );

    let mut out_of_range = good;
    let last = out_of_range.len() - 2;
    out_of_range[last..].copy_from_slice(&27u16.to_le_bytes());
    fs::write(&val, &out_of_range).unwrap();
    let err = format!("{:#}", open(&root, 16).err().unwrap());
    assert!(err.contains("id 27") && err.contains("27"), "{err}");
}

#[test]
fn downloads_over_http_and_resumes_a_broken_download() {
    let out = tempfile::tempdir().unwrap();
    let text = known_text();
    let zip = zip_bytes(&[("text8", text.as_bytes())]);
    let half = zip.len() / 2;
    let server = Server::start(
        Behaviour {
            ranges: true,
            cut_first_at: Some(half),
        },
        |_| HashMap::from([("/dc/text8.zip".to_string(), zip.clone())]),
    );
    let url = format!("{}/dc/text8.zip", server.url);
    let root = out.path().join("text8");

    let err = format!(
        "{:#}",
        prepare(&root, Text8Source::Url(url.clone())).unwrap_err()
    );
    assert!(err.contains("again to resume"), "{err}");
    assert!(!root.exists(), "a failed download must not leave a dataset");
    let part = out.path().join("text8.download/text8.zip.part");
    assert_eq!(fs::metadata(&part).unwrap().len(), half as u64);

    let prepared = prepare(&root, Text8Source::Url(url.clone())).unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].range, None);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(prepared.meta.sources, [url]);
    assert_eq!(
        open(&root, 16).unwrap().tokens(Split::Test).to_vec(),
        text8_ids(&text[1172..])
    );
    assert_eq!(
        entries(out.path()),
        ["text8"],
        "the download folder is removed after success"
    );
}

#[test]
fn restarts_when_the_server_ignores_ranges() {
    let out = tempfile::tempdir().unwrap();
    let text = known_text();
    let zip = zip_bytes(&[("text8", text.as_bytes())]);
    let server = Server::start(
        Behaviour {
            ranges: false,
            cut_first_at: Some(100),
        },
        |_| HashMap::from([("/text8.zip".to_string(), zip.clone())]),
    );
    let url = format!("{}/text8.zip", server.url);
    let root = out.path().join("text8");
    assert!(prepare(&root, Text8Source::Url(url.clone())).is_err());
    prepare(&root, Text8Source::Url(url)).unwrap();
    assert_eq!(server.seen()[1].range.as_deref(), Some("bytes=100-"));
    assert_eq!(
        open(&root, 16).unwrap().tokens(Split::Train).to_vec(),
        text8_ids(&known_text()[..1110])
    );
}

#[test]
fn a_download_that_is_not_text8_is_not_reused() {
    let out = tempfile::tempdir().unwrap();
    let good = zip_bytes(&[("text8", known_text().as_bytes())]);
    let server = Server::start(Behaviour::default(), |_| {
        HashMap::from([
            (
                "/bad/text8.zip".to_string(),
                b"<html>not here</html>".to_vec(),
            ),
            ("/good/text8.zip".to_string(), good.clone()),
        ])
    });
    let root = out.path().join("text8");
    let err = format!(
        "{:#}",
        prepare(
            &root,
            Text8Source::Url(format!("{}/bad/text8.zip", server.url))
        )
        .unwrap_err()
    );
    assert!(
        err.contains("was removed, so the next prepare downloads it again"),
        "{err}"
    );
    assert!(!root.exists());
    prepare(
        &root,
        Text8Source::Url(format!("{}/good/text8.zip", server.url)),
    )
    .unwrap();
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/bad/text8.zip", "/good/text8.zip"]);
    assert_eq!(
        open(&root, 16).unwrap().tokens(Split::Val).to_vec(),
        text8_ids(&known_text()[1110..1172])
    );
}

#[test]
fn http_errors_are_reported() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start(Behaviour::default(), |_| HashMap::new());
    let err = format!(
        "{:#}",
        prepare(
            &out.path().join("text8"),
            Text8Source::Url(format!("{}/nothing.zip", server.url))
        )
        .unwrap_err()
    );
    assert!(err.contains("404"), "{err}");
    assert!(!out.path().join("text8").exists());
    assert!(
        !out.path().join("text8.download").exists(),
        "nothing was downloaded, so no download folder"
    );
}

#[test]
fn corrupt_zip_fails_cleanly() {
    let inputs = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("text8");

    // Flip bytes inside the compressed data: inflating fails or the CRC-32 does not match.
    let mut zip = zip_bytes(&[("text8", known_text().as_bytes())]);
    let middle = zip.len() / 3;
    for b in &mut zip[middle..middle + 8] {
        *b ^= 0x5a;
    }
    let corrupt = inputs.path().join("corrupt.zip");
    fs::write(&corrupt, &zip).unwrap();
    let err = format!(
        "{:#}",
        prepare(&root, Text8Source::File(corrupt)).unwrap_err()
    );
    assert!(
        err.contains("corrupt.zip") && err.contains("corrupt deflate stream"),
        "{err}"
    );

    // A changed letter is still text8's alphabet: only the CRC-32 of the entry catches it.
    let text = known_text();
    let mut stored = zip_stored(&[("text8", text.as_bytes())]);
    let at = stored.windows(9).position(|w| w == b"anarchism").unwrap();
    stored[at] = b'b';
    let changed = inputs.path().join("changed.zip");
    fs::write(&changed, &stored).unwrap();
    let err = format!(
        "{:#}",
        prepare(&root, Text8Source::File(changed)).unwrap_err()
    );
    assert!(
        err.contains("changed.zip") && err.to_lowercase().contains("checksum"),
        "{err}"
    );

    // A truncated archive has no central directory.
    let truncated = inputs.path().join("truncated.zip");
    let whole = zip_bytes(&[("text8", known_text().as_bytes())]);
    fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    let err = format!(
        "{:#}",
        prepare(&root, Text8Source::File(truncated)).unwrap_err()
    );
    assert!(
        err.contains("truncated.zip is not a valid zip archive"),
        "{err}"
    );

    assert!(
        entries(out.path()).is_empty(),
        "left behind: {:?}",
        entries(out.path())
    );
}

#[test]
fn wrong_alphabet_fails_cleanly() {
    let inputs = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("text8");
    let zip = write_zip(inputs.path(), "hello World of text");
    let err = format!("{:#}", prepare(&root, Text8Source::File(zip)).unwrap_err());
    assert!(
        err.contains("byte 0x57 ('W') at offset 6 is not in text8's alphabet"),
        "{err}"
    );
    assert!(
        entries(out.path()).is_empty(),
        "left behind: {:?}",
        entries(out.path())
    );
}

#[test]
fn an_existing_dataset_is_replaced_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let text = known_text();
    let zip = write_zip(dir.path(), &text);
    let root = dir.path().join("data");
    prepare(&root, Text8Source::File(zip.clone())).unwrap();

    let other_dir = dir.path().join("other");
    fs::create_dir(&other_dir).unwrap();
    let other = write_zip(&other_dir, &text[..1000]);
    let err = format!(
        "{:#}",
        prepare(&root, Text8Source::File(other.clone())).unwrap_err()
    );
    assert!(
        err.contains("already holds a prepared text8 dataset") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(open(&root, 16).unwrap().tokens(Split::Train).len(), 1110);

    data::prepare_text8(&PrepareText8 {
        root: root.clone(),
        source: Text8Source::File(other.clone()),
        force: true,
    })
    .unwrap();
    assert_eq!(open(&root, 16).unwrap().tokens(Split::Train).len(), 900);

    // A folder holding anything else is never replaced, not even with --force.
    fs::write(root.join("notes.txt"), "mine").unwrap();
    let err = format!(
        "{:#}",
        data::prepare_text8(&PrepareText8 {
            root: root.clone(),
            source: Text8Source::File(other),
            force: true,
        })
        .unwrap_err()
    );
    assert!(err.contains("notes.txt"), "{err}");
    assert!(root.join("notes.txt").exists());
}

#[test]
fn open_names_the_problem_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("text8");

    let err = format!("{:#}", open(&root, 16).err().unwrap());
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        err.contains(&format!(
            "ddexp data prepare text8 --root {}",
            root.display()
        )),
        "{err}"
    );
    assert!(!err.contains("--force"), "{err}");

    prepare(
        &root,
        Text8Source::File(write_zip(dir.path(), &known_text())),
    )
    .unwrap();
    let val = root.join("val.bin");
    let good = fs::read(&val).unwrap();

    // Truncated.
    fs::write(&val, &good[..good.len() - 2]).unwrap();
    let err = format!("{:#}", open(&root, 16).err().unwrap());
    assert!(
        err.contains("val.bin (split val) is truncated")
            && err.contains("62 tokens (124 bytes)")
            && err.contains("122 bytes"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");

    // Same size, one id changed: the checksum catches it.
    let mut corrupt = good.clone();
    corrupt[10] ^= 1;
    fs::write(&val, &corrupt).unwrap();
    let err = format!("{:#}", open(&root, 16).err().unwrap());
    assert!(
        err.contains("val.bin (split val) is corrupt") && err.contains("sha256"),
        "{err}"
    );
    let err = format!("{:#}", data::verify(&root).unwrap_err());
    assert!(err.contains("corrupt"), "{err}");

    // An id outside the vocabulary, with a checksum that agrees (a buggy writer, not a
    // damaged disk): refused on open, before it could reach the network.
    let mut foreign = good.clone();
    foreign[10..12].copy_from_slice(&1000u16.to_le_bytes());
    fs::write(&val, &foreign).unwrap();
    let meta = fs::read_to_string(root.join("meta.json")).unwrap();
    let fixed = meta.replace(&sha_of(&good), &sha_of(&foreign));
    assert_ne!(fixed, meta, "meta.json records the val checksum");
    fs::write(root.join("meta.json"), fixed).unwrap();
    let err = format!("{:#}", open(&root, 16).err().unwrap());
    assert!(
        err.contains("val.bin holds id 1000, outside its vocabulary"),
        "{err}"
    );
    fs::write(root.join("meta.json"), meta).unwrap();

    fs::write(&val, &good).unwrap();
    assert!(data::verify(&root).unwrap().contains("ok"));

    // Windows longer than a split.
    let err = format!("{:#}", open(&root, 62).err().unwrap());
    assert!(
        err.contains("split val") && err.contains("62 tokens") && err.contains("need at least 63"),
        "{err}"
    );
    assert!(open(&root, 61).is_ok());

    // The wrong kind of dataset for the experiment.
    let err = format!(
        "{:#}",
        data::open(&Dataset::OpenWebText {
            root: root.clone(),
            seq_len: 16
        })
        .err()
        .unwrap()
    );
    assert!(
        err.contains("holds text8 data") && err.contains("ddexp data prepare openwebtext"),
        "{err}"
    );

    // A missing split file.
    fs::remove_file(root.join("test.bin")).unwrap();
    let err = format!("{:#}", open(&root, 16).err().unwrap());
    assert!(err.contains("test.bin (split test) is missing"), "{err}");
}
