//! OpenWebText and custom corpora: GPT-2 ids against published vectors, end-of-text after
//! every document, deterministic document splits, parquet + jsonl + txt inputs, the hub
//! download path against a local server, and character vocabularies.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use common::data::{Behaviour, Server, entries, write_jsonl, write_parquet};
use ddexp::data::{self, GPT2_EOT, OpenWebTextSource, PrepareOpenWebText, PrepareText};
use ddexp::spec::{Dataset, Split, Tokenizer};

/// Documents with GPT-2 ids published by others (GPT-2's encoder.json and the test vectors
/// of other GPT-2 tokenizers), never computed by ddexp.
const KNOWN: [(&str, &[u32]); 5] = [
    ("Hello world", &[15496, 995]),
    ("Hello, world!", &[15496, 11, 995, 0]),
    (" the", &[262]),
    (
        "I can feel the magic, can you?\nПривет мир!!!",
        &[
            40, 460, 1254, 262, 5536, 11, 460, 345, 30, 198, 140, 253, 21169, 18849, 38857, 16843,
            20375, 12466, 120, 18849, 21169, 10185,
        ],
    ),
    (
        "Hello world 1<|endoftext|>Hello world 2",
        &[
            15496, 995, 352, 27, 91, 437, 1659, 5239, 91, 29, 15496, 995, 362,
        ],
    ),
];

fn known_ids(doc: &str) -> &'static [u32] {
    KNOWN.iter().find(|(d, _)| *d == doc).unwrap().1
}

/// A folder with the known documents spread over parquet, jsonl and txt files (plus a file
/// that is none of those and must be ignored). Walk order: a.parquet, b/c.jsonl, d.txt.
fn mixed_folder(dir: &Path) -> Vec<&'static str> {
    fs::create_dir_all(dir.join("b")).unwrap();
    write_parquet(&dir.join("a.parquet"), &[KNOWN[0].0, KNOWN[1].0]);
    write_jsonl(&dir.join("b/c.jsonl"), &[KNOWN[2].0, KNOWN[3].0]);
    fs::write(dir.join("d.txt"), KNOWN[4].0).unwrap();
    fs::write(dir.join("README.md"), "not a document").unwrap();
    KNOWN.iter().map(|(d, _)| *d).collect()
}

/// The documents of a split stream: runs of ids, each ended by end-of-text.
fn documents(ids: &[u32]) -> Vec<Vec<u32>> {
    assert_eq!(ids.last(), Some(&GPT2_EOT), "a split ends with end-of-text");
    ids[..ids.len() - 1]
        .split(|&id| id == GPT2_EOT)
        .map(<[u32]>::to_vec)
        .collect()
}

fn open_owt(root: &Path) -> data::Corpus {
    data::open(&Dataset::OpenWebText {
        root: root.to_path_buf(),
        seq_len: 2,
    })
    .unwrap()
}

#[test]
fn openwebtext_from_mixed_files_has_gpt2_ids_eot_and_a_document_split() {
    let dir = tempfile::tempdir().unwrap();
    let docs = mixed_folder(&dir.path().join("in"));
    let root = dir.path().join("owt");
    let prepared = data::prepare_openwebtext(&PrepareOpenWebText {
        root: root.clone(),
        source: OpenWebTextSource::Files(dir.path().join("in")),
        force: false,
    })
    .unwrap();
    let splits = &prepared.meta.splits;
    assert_eq!(
        (
            splits.train.documents,
            splits.val.documents,
            splits.test.documents
        ),
        (Some(3), Some(1), Some(1))
    );
    assert_eq!(prepared.meta.vocab_size, 50257);
    assert_eq!(prepared.meta.mask_id, 50257);

    let corpus = open_owt(&root);
    let mut seen = Vec::new();
    for split in Split::ALL {
        let ids = corpus.tokens(split).to_vec();
        let split_docs = documents(&ids);
        let expected: Vec<Vec<u32>> = split_docs
            .iter()
            .map(|d| {
                let (doc, known) = KNOWN
                    .iter()
                    .find(|(_, k)| *k == d.as_slice())
                    .unwrap_or_else(|| {
                        panic!("{split}: {d:?} is not the GPT-2 encoding of any input document")
                    });
                seen.push(*doc);
                known.to_vec()
            })
            .collect();
        assert_eq!(split_docs, expected);
        // Each document is its ids then exactly one end-of-text.
        let total: usize = split_docs.iter().map(|d| d.len() + 1).sum();
        assert_eq!(ids.len(), total);
    }
    seen.sort();
    let mut all = docs.clone();
    all.sort();
    assert_eq!(seen, all, "every document lands in exactly one split");

    // Train keeps the input order of its documents.
    let train = documents(&corpus.tokens(Split::Train).to_vec());
    let order: Vec<usize> = train
        .iter()
        .map(|d| {
            docs.iter()
                .position(|doc| known_ids(doc) == d.as_slice())
                .unwrap()
        })
        .collect();
    assert!(order.is_sorted(), "{order:?}");
    assert_eq!(
        corpus.vocab().decode(&train.concat()),
        order.iter().map(|&i| docs[i]).collect::<String>()
    );
}

#[test]
fn document_split_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir(&input).unwrap();
    let many: Vec<String> = (0..40)
        .map(|i| format!("document number {i} says hello"))
        .collect();
    write_jsonl(
        &input.join("docs.jsonl"),
        &many.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let prepare = |name: &str| {
        data::prepare_openwebtext(&PrepareOpenWebText {
            root: dir.path().join(name),
            source: OpenWebTextSource::Files(input.clone()),
            force: false,
        })
        .unwrap()
        .meta
    };
    let (a, b) = (prepare("a"), prepare("b"));
    assert_eq!(a.splits, b.splits);
    assert_eq!(
        (a.splits.val.documents, a.splits.test.documents),
        (Some(1), Some(1))
    );
    assert_eq!(a.splits.train.documents, Some(38));
}

#[test]
fn openwebtext_from_the_hub_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    fs::create_dir(&shards).unwrap();
    write_parquet(&shards.join("0.parquet"), &[KNOWN[0].0, KNOWN[1].0]);
    write_parquet(
        &shards.join("1.parquet"),
        &[KNOWN[2].0, KNOWN[3].0, KNOWN[4].0],
    );
    let server = Server::start(
        Behaviour {
            ranges: true,
            cut_first_at: None,
        },
        |url| {
            let listing = serde_json::json!([
                format!(
                    "{url}/api/datasets/Skylion007/openwebtext/parquet/plain_text/train/0.parquet"
                ),
                format!(
                    "{url}/api/datasets/Skylion007/openwebtext/parquet/plain_text/train/1.parquet"
                ),
            ]);
            let base = "/api/datasets/Skylion007/openwebtext/parquet/plain_text/train";
            HashMap::from([
                (base.to_string(), listing.to_string().into_bytes()),
                (
                    format!("{base}/0.parquet"),
                    fs::read(shards.join("0.parquet")).unwrap(),
                ),
                (
                    format!("{base}/1.parquet"),
                    fs::read(shards.join("1.parquet")).unwrap(),
                ),
            ])
        },
    );
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("openwebtext");
    let prepared = data::prepare_openwebtext(&PrepareOpenWebText {
        root: root.clone(),
        source: OpenWebTextSource::Hub {
            url: server.url.clone(),
        },
        force: false,
    })
    .unwrap();
    assert_eq!(prepared.meta.sources.len(), 2);
    assert_eq!(server.seen().len(), 3, "the listing and two shards");

    // Same documents in the same order as the local folder: the same splits.
    let local = dir.path().join("local");
    fs::create_dir(&local).unwrap();
    fs::copy(shards.join("0.parquet"), local.join("0.parquet")).unwrap();
    fs::copy(shards.join("1.parquet"), local.join("1.parquet")).unwrap();
    let from_files = data::prepare_openwebtext(&PrepareOpenWebText {
        root: dir.path().join("from_files"),
        source: OpenWebTextSource::Files(local),
        force: false,
    })
    .unwrap();
    assert_eq!(prepared.meta.splits, from_files.meta.splits);
    assert_eq!(
        entries(out.path()),
        ["openwebtext"],
        "downloads are removed after success"
    );
}

#[test]
fn bad_inputs_fail_with_the_file_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir(&input).unwrap();
    fs::write(
        input.join("a.jsonl"),
        "{\"text\": \"fine\"}\n{\"body\": \"no text field\"}\n{\"text\": \"x\"}\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = data::prepare_openwebtext(&PrepareOpenWebText {
        root: out.path().join("owt"),
        source: OpenWebTextSource::Files(input.clone()),
        force: false,
    })
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("a.jsonl:2") && err.contains("\"text\""),
        "{err}"
    );
    assert!(
        entries(out.path()).is_empty(),
        "left behind: {:?}",
        entries(out.path())
    );

    fs::remove_file(input.join("a.jsonl")).unwrap();
    write_parquet(&input.join("p.parquet"), &["a", "b", "c"]);
    fs::write(
        input.join("p.parquet"),
        &fs::read(input.join("p.parquet")).unwrap()[..40],
    )
    .unwrap();
    let err = data::prepare_openwebtext(&PrepareOpenWebText {
        root: out.path().join("owt"),
        source: OpenWebTextSource::Files(input),
        force: false,
    })
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("p.parquet is not a readable parquet file"),
        "{err:#}"
    );
    assert!(entries(out.path()).is_empty());
}

#[test]
fn text_corpus_with_characters() {
    let dir = tempfile::tempdir().unwrap();
    let book = "To be, or not to be: that is the question.\n".repeat(30);
    fs::write(dir.path().join("book.txt"), &book).unwrap();
    fs::write(dir.path().join("note.md"), "zebra").unwrap();
    let root = dir.path().join("chars");
    let prepared = data::prepare_text(&PrepareText {
        root: root.clone(),
        from: vec![dir.path().join("book.txt"), dir.path().join("note.md")],
        tokenizer: Tokenizer::Char,
        force: false,
    })
    .unwrap();
    // The book ends with a newline; the note gets one so the documents stay apart.
    let text = format!("{book}zebra\n");
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort();
    chars.dedup();
    let corpus = data::open(&Dataset::Text {
        root: root.clone(),
        seq_len: 8,
        tokenizer: Tokenizer::Char,
    })
    .unwrap();
    assert_eq!(corpus.vocab().chars_in_order().unwrap(), chars.as_slice());
    assert_eq!(prepared.meta.vocab_size, chars.len());

    let n = text.len(); // 1296 ASCII characters
    let (a, b) = ((n as f64 * 0.9) as usize, (n as f64 * 0.95) as usize);
    assert_eq!((n, a, b), (1296, 1166, 1231));
    let id = |c: char| chars.iter().position(|&x| x == c).unwrap() as u32;
    let ids: Vec<u32> = text.chars().map(id).collect();
    assert_eq!(corpus.tokens(Split::Train).to_vec(), ids[..a]);
    assert_eq!(corpus.tokens(Split::Val).to_vec(), ids[a..b]);
    assert_eq!(corpus.tokens(Split::Test).to_vec(), ids[b..]);
    assert_eq!(
        corpus.vocab().decode(&corpus.tokens(Split::Test).to_vec()),
        &text[b..]
    );

    // The experiment must ask for the tokenizer the corpus was prepared with.
    let err = data::open(&Dataset::Text {
        root: root.clone(),
        seq_len: 8,
        tokenizer: Tokenizer::Gpt2,
    })
    .err()
    .unwrap();
    let err = format!("{err:#}");
    assert!(
        err.contains("prepared with the char tokenizer, but the experiment asks for gpt2")
            && err.contains("ddexp data prepare text --from")
            && err.contains("book.txt")
            && err.contains("--tokenizer gpt2")
            && err.contains("--force"),
        "{err}"
    );

    // A damaged split: the fix is the same command with the recorded sources and --force.
    let val = root.join("val.bin");
    let bytes = fs::read(&val).unwrap();
    fs::write(&val, &bytes[..bytes.len() - 2]).unwrap();
    let err = data::open(&Dataset::Text {
        root: root.clone(),
        seq_len: 8,
        tokenizer: Tokenizer::Char,
    })
    .err()
    .unwrap();
    let err = format!("{err:#}");
    let command = format!(
        "ddexp data prepare text --from {} {} --tokenizer char --root {} --force",
        dir.path().join("book.txt").display(),
        dir.path().join("note.md").display(),
        root.display()
    );
    assert!(
        err.contains("val.bin (split val) is truncated") && err.contains(&command),
        "{err}"
    );
}

#[test]
fn text_corpus_with_gpt2_appends_eot_to_every_document() {
    let dir = tempfile::tempdir().unwrap();
    // An empty document still ends with end-of-text, as in the reference's preparation.
    let docs: Vec<&str> = std::iter::repeat_n(KNOWN.map(|(d, _)| d), 8)
        .flatten()
        .chain([""])
        .collect();
    write_jsonl(&dir.path().join("docs.jsonl"), &docs);
    let root = dir.path().join("gpt2");
    data::prepare_text(&PrepareText {
        root: root.clone(),
        from: vec![dir.path().join("docs.jsonl")],
        tokenizer: Tokenizer::Gpt2,
        force: false,
    })
    .unwrap();
    let corpus = data::open(&Dataset::Text {
        root,
        seq_len: 4,
        tokenizer: Tokenizer::Gpt2,
    })
    .unwrap();
    let expected: Vec<u32> = docs
        .iter()
        .flat_map(|d| {
            let ids = if d.is_empty() { &[][..] } else { known_ids(d) };
            ids.iter().copied().chain([GPT2_EOT])
        })
        .collect();
    let all: Vec<u32> = Split::ALL
        .iter()
        .flat_map(|&s| corpus.tokens(s).to_vec())
        .collect();
    assert_eq!(all, expected);
    let n = expected.len();
    assert_eq!(corpus.tokens(Split::Train).len(), (n as f64 * 0.9) as usize);
}
