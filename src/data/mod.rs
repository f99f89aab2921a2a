//! Datasets: preparation (`ddexp data prepare`), the on-disk token format, vocabularies, the
//! synthetic corpus, and the batch windows that training and evaluation read.
//!
//! Training, evaluation and sampling need only:
//! - [`open`] an experiment's [`Dataset`](crate::spec::Dataset) into a [`Corpus`] (checked:
//!   missing, truncated or corrupt files, wrong kind or tokenizer, splits too short);
//! - [`Corpus::vocab`] for the vocabulary size, mask id and decoding, and
//!   [`Corpus::check_model_vocab`] to check that a model fits the data;
//! - [`Corpus::train_batch`] and [`Corpus::eval_batch`] for windows of token ids.

mod corpus;
mod documents;
mod download;
mod inspect;
mod openwebtext;
mod store;
mod synthetic;
mod text;
mod text8;
mod tokenizer;
mod windows;

pub use corpus::{Corpus, open};
pub use inspect::{info, verify};
pub use openwebtext::{HUB_URL, OpenWebTextSource, PrepareOpenWebText, prepare_openwebtext};
pub use store::{Check, Folder, HASH_ON_OPEN_BYTES, Meta, Prepared, Tokens, open_folder};
pub use synthetic::Language;
pub use text::{PrepareText, prepare_text};
pub use text8::{PrepareText8, TEXT8_URL, Text8Source, prepare_text8};
pub use tokenizer::{GPT2_EOT, GPT2_VOCAB_SIZE, MASK_GLYPH, TEXT8_ALPHABET, Vocab};
