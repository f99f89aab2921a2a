//! A dataset opened for training, evaluation and sampling: its vocabulary and its three
//! splits, checked before any work starts.

use std::path::Path;

use anyhow::{Result, anyhow, bail, ensure};

use super::store::{self, Check, Kind, Tokens};
use super::synthetic::Language;
use super::text;
use super::tokenizer::Vocab;
use crate::spec::{Dataset, Split, Tokenizer};

/// The tokens of a dataset's splits and their vocabulary.
pub struct Corpus {
    /// What and where it is, for messages ("text8 in data/text8").
    description: String,
    vocab: Vocab,
    seq_len: usize,
    /// train, val, test.
    splits: [Tokens; 3],
    /// The true entropy rate, where it is known (the synthetic language).
    entropy: Option<f64>,
}

/// Opens the dataset an experiment names and checks it: the folder and files exist, sizes
/// and checksums match `meta.json` (see [`store`] for which splits are hashed), it is the
/// kind and tokenizer the experiment expects, and every split holds more than `seq_len`
/// tokens. Each error names the file, what was expected and found, and the command that
/// prepares the dataset. The synthetic corpus is generated here.
pub fn open(dataset: &Dataset) -> Result<Corpus> {
    match dataset {
        Dataset::Text8 { root, seq_len } => from_folder(root, Kind::Text8, None, *seq_len),
        Dataset::OpenWebText { root, seq_len } => {
            from_folder(root, Kind::OpenWebText, None, *seq_len)
        }
        Dataset::Text {
            root,
            seq_len,
            tokenizer,
        } => from_folder(root, Kind::Text, Some(*tokenizer), *seq_len),
        Dataset::Synthetic {
            seq_len,
            corpus_seed,
            train_tokens,
            eval_tokens,
        } => synthetic(*seq_len, *corpus_seed, *train_tokens, *eval_tokens),
    }
}

fn from_folder(
    root: &Path,
    kind: Kind,
    tokenizer: Option<Tokenizer>,
    seq_len: usize,
) -> Result<Corpus> {
    // The command that (re)prepares this dataset; `--force` when something is in the way.
    let fix = |sources: &[String]| {
        let command = match kind {
            Kind::Text8 => format!("ddexp data prepare text8 --root {}", root.display()),
            Kind::OpenWebText => {
                format!("ddexp data prepare openwebtext --root {}", root.display())
            }
            Kind::Text => {
                text::prepare_command(root, sources, tokenizer.unwrap_or(Tokenizer::Char))
            }
        };
        let force = if root.exists() { " --force" } else { "" };
        format!("\n  to prepare it, run: {command}{force}")
    };
    let folder = store::open_folder(root, Check::Open).map_err(|e| {
        let sources = store::recorded_sources(root);
        anyhow!("dataset {}: {e:#}{}", root.display(), fix(&sources))
    })?;
    let sources = folder
        .meta
        .as_ref()
        .map(|m| m.sources.clone())
        .unwrap_or_default();
    if folder.kind != kind {
        bail!(
            "dataset {} holds {} data, but the experiment's dataset is {}{}",
            root.display(),
            folder.kind.name(),
            kind.name(),
            fix(&[])
        );
    }
    if let Some(expected) = tokenizer
        && folder.vocab.tokenizer() != expected
    {
        bail!(
            "dataset {} was prepared with the {} tokenizer, but the experiment asks for {}{}",
            root.display(),
            text::tokenizer_flag(folder.vocab.tokenizer()),
            text::tokenizer_flag(expected),
            fix(&sources)
        );
    }
    if kind == Kind::Text8 {
        ensure!(
            folder.vocab.is_text8(),
            "dataset {}: its vocabulary ({}) is not text8's alphabet{}",
            root.display(),
            folder.vocab.describe(),
            fix(&[])
        );
    }
    let corpus = Corpus {
        description: format!("{} in {}", kind.name(), root.display()),
        vocab: folder.vocab,
        seq_len,
        splits: folder.splits,
        entropy: None,
    };
    corpus.check_split_lengths()?;
    Ok(corpus)
}

fn synthetic(
    seq_len: usize,
    corpus_seed: u64,
    train_tokens: usize,
    eval_tokens: usize,
) -> Result<Corpus> {
    let language = Language::new(corpus_seed);
    let split = |split, n| Tokens::from_vec(language.generate(corpus_seed, split, n).0);
    let corpus = Corpus {
        description: format!("the synthetic corpus (corpus_seed {corpus_seed})"),
        vocab: Vocab::text8(),
        seq_len,
        splits: [
            split(Split::Train, train_tokens),
            split(Split::Val, eval_tokens),
            split(Split::Test, eval_tokens),
        ],
        entropy: Some(language.entropy_bits_per_char()),
    };
    corpus.check_split_lengths()?;
    Ok(corpus)
}

impl Corpus {
    /// The vocabulary: size, mask id (= size), decoding.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Tokens per window.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// All tokens of a split.
    pub fn tokens(&self, split: Split) -> &Tokens {
        &self.splits[split as usize]
    }

    /// What and where the corpus is, e.g. "text8 in data/text8".
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The true entropy rate in bits per token, where it is known (the synthetic corpus): the
    /// floor that a perfect model's bits/token approaches.
    pub fn entropy_bits_per_token(&self) -> Option<f64> {
        self.entropy
    }

    /// Checks that a model whose vocabulary (without the mask) has `model_vocab` ids reads
    /// this corpus: every id must be a valid embedding row other than the mask, and the ids
    /// must mean the same tokens, so the sizes must be equal.
    pub fn check_model_vocab(&self, model_vocab: usize) -> Result<()> {
        let size = self.vocab.size();
        if size > model_vocab {
            bail!(
                "{} has ids up to {} ({}), but the model's vocabulary has only {model_vocab} ids (mask {model_vocab}); its ids would be out of range",
                self.description,
                size - 1,
                self.vocab.describe()
            );
        }
        ensure!(
            size == model_vocab,
            "{} has a vocabulary of {size} ids ({}), but the model was built for {model_vocab}: it is a different vocabulary",
            self.description,
            self.vocab.describe()
        );
        Ok(())
    }

    fn check_split_lengths(&self) -> Result<()> {
        for split in Split::ALL {
            let n = self.tokens(split).len();
            ensure!(
                n > self.seq_len,
                "split {split} of {} has {n} tokens, but windows of seq_len {} need at least {}; use a smaller seq_len or a larger corpus",
                self.description,
                self.seq_len,
                self.seq_len + 1
            );
        }
        Ok(())
    }
}
