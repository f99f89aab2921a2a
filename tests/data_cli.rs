//! `ddexp data ...` end to end through the binary.

mod common;

use std::fs;

use common::cli::ddexp;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn prepare_info_verify_text8() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = "the quick brown fox jumps over the lazy dog ".repeat(100); // 4400 chars
    fs::write(
        dir.path().join("text8.zip"),
        common::data::zip_bytes(&[("text8", corpus.as_bytes())]),
    )
    .unwrap();

    let out = ddexp(
        &["data", "prepare", "text8", "--from", "text8.zip"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("prepared text8 in data/text8"), "{stdout}");
    assert!(
        stdout.contains("3,960 tokens") && stdout.contains("220 tokens"),
        "{stdout}"
    );

    let out = ddexp(&["data", "info", "data/text8"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("27 characters (mask id 27)"),
        "{}",
        text(&out.stdout)
    );

    let out = ddexp(&["data", "verify", "data/text8"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok: sizes, sha256 and id range"));

    // Preparing over it again needs --force.
    let out = ddexp(
        &["data", "prepare", "text8", "--from", "text8.zip"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    let out = ddexp(
        &["data", "prepare", "text8", "--from", "text8.zip", "--force"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A corrupted split fails verification with a non-zero exit.
    let train = dir.path().join("data/text8/train.bin");
    let mut bytes = fs::read(&train).unwrap();
    bytes[0] ^= 3;
    fs::write(&train, bytes).unwrap();
    let out = ddexp(&["data", "verify", "data/text8"], dir.path());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("train.bin (split train) is corrupt"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn prepare_text_with_chars() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("poem.txt"),
        "Roses are red,\nviolets are blue.\n".repeat(40),
    )
    .unwrap();
    let out = ddexp(
        &[
            "data",
            "prepare",
            "text",
            "--from",
            "poem.txt",
            "--tokenizer",
            "char",
            "--root",
            "poems",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ddexp(&["data", "info", "poems"], dir.path());
    assert!(
        text(&out.stdout).contains("kind        text"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn missing_input_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = ddexp(
        &["data", "prepare", "text8", "--from", "nowhere.zip"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("nowhere.zip does not exist"));
    let out = ddexp(&["data", "prepare", "text8", "--from", "."], dir.path());
    assert!(text(&out.stderr).contains(". is a folder; --from takes text8.zip"));
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a bad --from creates nothing, not even data/"
    );
}

#[test]
fn help_has_examples() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["text8", "openwebtext", "text"] {
        let out = ddexp(&["data", "prepare", command, "--help"], dir.path());
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(help.contains("ddexp data prepare"), "{command}: {help}");
        assert!(help.contains("--force"), "{command}: {help}");
    }
}
