//! The batch sampler: determinism, rank and micro-step independence, window bounds, the
//! fixed evaluation stream, and the synthetic corpus it is usually fed by.

mod common;

use std::collections::HashSet;

use common::data::zip_bytes;
use ddexp::data::{self, Corpus, PrepareText8, Text8Source};
use ddexp::spec::{Dataset, Split};

fn synthetic(seq_len: usize, corpus_seed: u64) -> Corpus {
    data::open(&Dataset::Synthetic {
        seq_len,
        corpus_seed,
        train_tokens: 200_000,
        eval_tokens: 20_000,
    })
    .unwrap()
}

#[test]
fn training_batches_are_a_function_of_their_place() {
    let corpus = synthetic(32, 0);
    let batch = corpus.train_batch(7, 10, 1, 0, 16);
    assert_eq!(batch.len(), 16 * 32);
    assert_eq!(
        batch,
        corpus.train_batch(7, 10, 1, 0, 16),
        "same place, same batch"
    );
    assert_eq!(
        batch,
        synthetic(32, 0).train_batch(7, 10, 1, 0, 16),
        "a reopened corpus too"
    );
    for other in [
        corpus.train_batch(8, 10, 1, 0, 16),
        corpus.train_batch(7, 11, 1, 0, 16),
        corpus.train_batch(7, 10, 0, 0, 16),
        corpus.train_batch(7, 10, 1, 1, 16),
    ] {
        assert_ne!(batch, other);
    }
}

#[test]
fn ranks_and_micro_steps_draw_different_windows() {
    let corpus = synthetic(32, 0);
    let mut groups = Vec::new();
    for micro in 0..4 {
        for rank in 0..4 {
            groups.push(
                corpus
                    .train_starts(1, 5, micro, rank, 32)
                    .into_iter()
                    .collect::<HashSet<_>>(),
            );
        }
    }
    // Shared streams would share all 32 windows; independent draws of 32 out of ~200k
    // offsets share one at most by chance (about 0.5 % per pair).
    for (i, a) in groups.iter().enumerate() {
        for b in &groups[i + 1..] {
            assert!(
                a.intersection(b).count() <= 1,
                "{:?}",
                a.intersection(b).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn two_ranks_of_b_rows_are_one_rank_of_2b_rows() {
    let corpus = synthetic(16, 0);
    let mut two = corpus.train_batch(3, 2, 1, 0, 8);
    two.extend(corpus.train_batch(3, 2, 1, 1, 8));
    assert_eq!(two, corpus.train_batch(3, 2, 1, 0, 16));
}

#[test]
fn windows_are_in_bounds_and_cover_the_split() {
    let corpus = synthetic(64, 1);
    let train = corpus.tokens(Split::Train).to_vec();
    let n = train.len();
    let mut lowest = usize::MAX;
    let mut highest = 0;
    for iter in 0..200 {
        let starts = corpus.train_starts(0, iter, 0, 0, 50);
        let batch = corpus.train_batch(0, iter, 0, 0, 50);
        for (row, &start) in starts.iter().enumerate() {
            assert!(start + 64 < n, "window {start}..{} beyond {n}", start + 64);
            assert_eq!(batch[row * 64..(row + 1) * 64], train[start..start + 64]);
            lowest = lowest.min(start);
            highest = highest.max(start);
        }
    }
    // 10 000 uniform draws reach within a few hundred tokens of either end.
    assert!(
        lowest < n / 100 && highest > n - 64 - n / 100,
        "{lowest} {highest} of {n}"
    );
}

#[test]
fn the_only_window_of_a_minimal_split() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("text8.zip");
    let text = "the quick brown fox jumps over the lazy dog ".repeat(50); // 2200 chars
    std::fs::write(&zip, zip_bytes(&[("text8", text.as_bytes())])).unwrap();
    let root = dir.path().join("text8");
    data::prepare_text8(&PrepareText8 {
        root: root.clone(),
        source: Text8Source::File(zip),
        force: false,
    })
    .unwrap();
    // val and test have 110 tokens; seq_len 109 leaves exactly one window, at 0.
    let corpus = data::open(&Dataset::Text8 { root, seq_len: 109 }).unwrap();
    assert_eq!(corpus.tokens(Split::Val).len(), 110);
    for index in 0..20 {
        assert!(
            corpus
                .eval_starts(Split::Val, index, 4)
                .iter()
                .all(|&s| s == 0)
        );
    }
    assert_eq!(
        corpus.eval_batch(Split::Test, 0, 1),
        corpus.tokens(Split::Test).to_vec()[..109]
    );
}

#[test]
fn the_evaluation_stream_is_fixed() {
    let corpus = synthetic(32, 0);
    let batch = corpus.eval_batch(Split::Val, 3, 8);
    // Same batch from a corpus opened again, and the same rows however they are batched.
    assert_eq!(batch, synthetic(32, 0).eval_batch(Split::Val, 3, 8));
    let wide = corpus.eval_batch(Split::Val, 1, 16);
    assert_eq!(batch, wide[8 * 32..]);
    assert_eq!(
        corpus.eval_starts(Split::Val, 3, 8),
        corpus.eval_starts(Split::Val, 1, 16)[8..]
    );
    // Batches and splits differ.
    assert_ne!(batch, corpus.eval_batch(Split::Val, 4, 8));
    assert_ne!(
        corpus.eval_starts(Split::Val, 0, 8),
        corpus.eval_starts(Split::Test, 0, 8)
    );
    // And nothing about training moves it: training draws do not touch it.
    let before = corpus.eval_batch(Split::Test, 0, 8);
    let _ = corpus.train_batch(1, 0, 0, 0, 64);
    assert_eq!(before, corpus.eval_batch(Split::Test, 0, 8));
}

#[test]
fn synthetic_corpus_is_text8_shaped_and_reproducible() {
    let corpus = synthetic(64, 0);
    assert_eq!(corpus.vocab().size(), 27);
    assert_eq!(corpus.vocab().mask_id(), 27);
    assert!(corpus.vocab().is_text8());
    assert_eq!(corpus.tokens(Split::Train).len(), 200_000);
    assert_eq!(corpus.tokens(Split::Val).len(), 20_000);
    let entropy = corpus.entropy_bits_per_token().unwrap();
    assert!(entropy < 27f64.log2() / 2.0, "{entropy}");
    let text = corpus
        .vocab()
        .decode(&corpus.tokens(Split::Train).to_vec()[..200]);
    assert!(
        text.split(' ').filter(|w| !w.is_empty()).count() > 20,
        "{text}"
    );
    assert_ne!(
        synthetic(64, 0).tokens(Split::Train).to_vec(),
        synthetic(64, 1).tokens(Split::Train).to_vec()
    );

    let err = data::open(&Dataset::Synthetic {
        seq_len: 20_000,
        corpus_seed: 0,
        train_tokens: 200_000,
        eval_tokens: 20_000,
    })
    .err()
    .unwrap();
    assert!(
        format!("{err:#}").contains("need at least 20001"),
        "{err:#}"
    );
}

#[test]
fn model_vocabulary_must_match() {
    let corpus = synthetic(16, 0);
    assert!(corpus.check_model_vocab(27).is_ok());
    let err = format!("{:#}", corpus.check_model_vocab(20).unwrap_err());
    assert!(
        err.contains("ids up to 26") && err.contains("out of range"),
        "{err}"
    );
    let err = format!("{:#}", corpus.check_model_vocab(50257).unwrap_err());
    assert!(err.contains("different vocabulary"), "{err}");
}

#[test]
fn ranks_on_threads_share_one_corpus() {
    let corpus = std::sync::Arc::new(synthetic(16, 0));
    let serial: Vec<Vec<u32>> = (0..2)
        .map(|rank| corpus.train_batch(9, 4, 0, rank, 8))
        .collect();
    let threaded: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let corpus = corpus.clone();
                s.spawn(move || corpus.train_batch(9, 4, 0, rank, 8))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(serial, threaded);
}
