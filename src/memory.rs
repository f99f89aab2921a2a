//! How much memory a job will take, estimated before anything is allocated, and the refusal
//! of a job that cannot fit: an allocation that fails aborts the process, which can then
//! record nothing (run.json would stay `running`).
//!
//! The estimate counts 4-byte floats. With P parameters, B sequences of L tokens, width d,
//! n blocks, H heads and K classes (vocabulary + mask), measured on the CPU backend with
//! `ddexp bench` and the peak resident set of `ddexp eval` and `ddexp sample`:
//!
//! ```text
//! training (per replica)  4.5·P                 weights, EMA, AdamW moments, gradients in flight
//!                       + B·(38·L·d·n + 2.7·H·L²·n + 3.4·L·K)  what backpropagation keeps
//! evaluation, validation  B·(15·L·d + 0.1·H·L² + 2.2·L·K)      one block at a time, the loss terms
//! sampling                B·(15·L·d + 0.1·H·L² + 2.2·L·K)
//! opening a saved model   2·P                   the weights on the host and in the network
//! every process           20 MiB, plus 3 bytes a token of a synthetic corpus
//! ```
//!
//! On the CPU every replica (`topology.devices`) is a thread of this process with a model of
//! its own, so the training terms count once per replica. A training run's peak is the
//! larger of training (with validation) and the final evaluation. On the CPU the estimate
//! is compared with MemAvailable of /proc/meminfo ([`crate::backend::available_memory`]);
//! backends that cannot say how much memory is free are not checked.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

use crate::backend::{self, Backend, Hardware};
use crate::data::{self, Corpus, GPT2_VOCAB_SIZE, TEXT8_ALPHABET};
use crate::model::DitConfig;
use crate::spec::{Dataset, Experiment, Network, Topology};

/// `--force`: run jobs the estimate says do not fit.
static FORCE: AtomicBool = AtomicBool::new(false);

/// Lets every later check pass, for those who know the estimate is wrong for their case
/// (`--force` on the command line).
pub fn force(yes: bool) {
    FORCE.store(yes, Ordering::Relaxed);
}

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;
const FLOAT: f64 = 4.0;
/// The process itself: code, runtime, thread stacks, small buffers.
const BASE_BYTES: f64 = 20.0 * MIB;
/// Bytes per token of the synthetic corpus while it is generated (text, then u16 ids).
const SYNTHETIC_BYTES_PER_TOKEN: f64 = 3.0;

/// Floats a training replica keeps per parameter: weights, EMA, two AdamW moments, and
/// the gradients and new weights of a step in flight.
const TRAIN_PER_PARAM: f64 = 4.5;
/// Floats a saved model takes while it is opened: the weights read on the host and the
/// network built from them.
const OPEN_PER_PARAM: f64 = 2.0;

/// Floats per sequence of one forward and backward pass, in terms of its shape.
#[derive(Debug, Clone, Copy)]
struct Activations {
    /// Per token and unit of width, per block (or once, when blocks run one at a time).
    per_width: f64,
    /// Per attention score (H·L² per block).
    per_score: f64,
    /// Per logit (L·K).
    per_logit: f64,
    /// Whether every block's values are kept (backpropagation) or one block at a time.
    all_blocks: bool,
}

const TRAINING: Activations = Activations {
    per_width: 38.0,
    per_score: 2.7,
    per_logit: 3.4,
    all_blocks: true,
};
const EVALUATION: Activations = Activations {
    per_width: 15.0,
    per_score: 0.1,
    per_logit: 2.2,
    all_blocks: false,
};
const SAMPLING: Activations = Activations {
    per_width: 15.0,
    per_score: 0.1,
    per_logit: 2.2,
    all_blocks: false,
};

/// What a job is estimated to need, with the parts that make it up.
#[derive(Debug, Clone)]
pub struct Need {
    /// What the job is, for the message ("training", "evaluation with batches of 512").
    pub what: String,
    pub parts: Vec<(String, f64)>,
    /// Bytes of the largest single tensor: a GPU API may bind no buffer that large.
    pub largest: f64,
}

impl Need {
    fn new(what: impl Into<String>) -> Need {
        Need {
            what: what.into(),
            parts: vec![("the process".into(), BASE_BYTES)],
            largest: 0.0,
        }
    }

    fn tensor(mut self, bytes: f64) -> Need {
        self.largest = self.largest.max(bytes);
        self
    }

    fn add(mut self, part: impl Into<String>, bytes: f64) -> Need {
        if bytes > 0.0 {
            self.parts.push((part.into(), bytes));
        }
        self
    }

    /// Estimated bytes.
    pub fn bytes(&self) -> f64 {
        self.parts.iter().map(|(_, b)| b).sum()
    }

    /// The largest parts, for the message: `weights and optimiser 1.2 GiB, activations ...`.
    fn breakdown(&self) -> String {
        let mut parts: Vec<&(String, f64)> = self.parts.iter().collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        parts
            .iter()
            .take(3)
            .map(|(name, bytes)| format!("{name} {}", size(*bytes)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `1.2 GiB`, `340 MiB` or `3.5 TiB`.
pub fn size(bytes: f64) -> String {
    if bytes >= 1024.0 * GIB {
        format!("{:.1} TiB", bytes / (1024.0 * GIB))
    } else if bytes >= GIB {
        format!("{:.1} GiB", bytes / GIB)
    } else {
        format!("{:.0} MiB", (bytes / MIB).max(1.0))
    }
}

/// The vocabulary size of a dataset when it is known without opening it (every corpus but
/// a custom one, whose vocabulary is in its folder).
pub fn known_vocab(dataset: &Dataset) -> Option<usize> {
    match dataset {
        Dataset::Text8 { .. } | Dataset::Synthetic { .. } => Some(TEXT8_ALPHABET.chars().count()),
        Dataset::OpenWebText { .. } => Some(GPT2_VOCAB_SIZE),
        Dataset::Text { .. } => None,
    }
}

/// Bytes a dataset takes in memory (the synthetic corpus is generated; the others are
/// memory-mapped files, paged in and out by the kernel).
fn corpus_bytes(dataset: &Dataset) -> f64 {
    match dataset {
        Dataset::Synthetic {
            train_tokens,
            eval_tokens,
            ..
        } => SYNTHETIC_BYTES_PER_TOKEN * (*train_tokens as f64 + 2.0 * *eval_tokens as f64),
        _ => 0.0,
    }
}

/// Parameters of the network of `network` for `vocab` ids, without building it. Counted
/// in f64: the estimate must not overflow for any network the schema lets through.
fn parameters(network: &Network, vocab: usize) -> f64 {
    let config = DitConfig::from_spec(network, vocab);
    match config {
        // Exact where the sizes are valid (the count is small enough for usize then).
        Ok(c) if network.n_embed <= 1 << 16 && network.n_blocks <= 1 << 10 => {
            c.param_count() as f64
        }
        _ => {
            let (d, c, n) = (
                network.n_embed as f64,
                network.n_cond as f64,
                network.n_blocks as f64,
            );
            (vocab as f64 + 1.0) * d + 12.0 * d * d * n + 6.0 * c * d * n + 2.0 * c * d
        }
    }
}

/// Floats of the activations of `batch` sequences of `seq_len` tokens.
fn activations(
    shape: Activations,
    network: &Network,
    vocab: usize,
    batch: usize,
    seq_len: usize,
) -> f64 {
    let (b, l) = (batch as f64, seq_len as f64);
    let (d, h, k) = (
        network.n_embed as f64,
        network.n_heads as f64,
        vocab as f64 + 1.0,
    );
    let blocks = if shape.all_blocks {
        network.n_blocks as f64
    } else {
        1.0
    };
    b * (shape.per_width * l * d * blocks
        + shape.per_score * h * l * l * blocks
        + shape.per_logit * l * k)
}

/// Bytes of the largest tensor of a pass over `batch` sequences of `seq_len` tokens: the
/// logits [B, L, K], the attention scores [B, H, L, L] or the embedding table [K, d].
fn largest_tensor(network: &Network, vocab: usize, batch: usize, seq_len: usize) -> f64 {
    let (b, l) = (batch as f64, seq_len as f64);
    let (d, h, k) = (
        network.n_embed as f64,
        network.n_heads as f64,
        vocab as f64 + 1.0,
    );
    (b * l * k).max(b * h * l * l).max(k * d) * FLOAT
}

/// Model replicas that live in this process: on the CPU every device of the node is a
/// thread with a replica; a GPU holds its replica in its own memory.
pub fn replicas_in_process(topology: &Topology) -> usize {
    match topology.backend.hardware() {
        Hardware::Cpu => topology.devices.len(),
        _ => 1,
    }
}

/// Floats of a training checkpoint as it is read to resume (weights, EMA, two moments),
/// next to the state built from it.
const CHECKPOINT_PER_PARAM: f64 = 4.0;

/// A training run of `experiment` for a vocabulary of `vocab` ids, through its final
/// evaluation; `devices` replicas share this process ([`replicas_in_process`]; 1 for
/// `ddexp bench`), and `resuming` reads a checkpoint first.
pub fn training(experiment: &Experiment, vocab: usize, devices: usize, resuming: bool) -> Need {
    let net = &experiment.network;
    let params = parameters(net, vocab);
    let seq_len = experiment.dataset.seq_len();
    let train = activations(TRAINING, net, vocab, experiment.train.batch_size, seq_len);
    let validation = activations(EVALUATION, net, vocab, experiment.train.batch_size, seq_len);
    let eval = activations(EVALUATION, net, vocab, experiment.eval.batch_size, seq_len);
    let replicas = devices.max(1) as f64;
    let reading = if resuming {
        CHECKPOINT_PER_PARAM * params * FLOAT
    } else {
        0.0
    };
    let during = replicas * (TRAIN_PER_PARAM * params + train.max(validation)) * FLOAT + reading;
    let at_end = (params + eval) * FLOAT;
    let what = format!(
        "training {} ({} parameters, batches of {} × {} tokens{})",
        experiment.name,
        params as u64,
        experiment.train.batch_size,
        seq_len,
        if devices > 1 {
            format!(", {devices} replicas in this process")
        } else {
            String::new()
        }
    );
    let need = Need::new(what)
        .add("the corpus", corpus_bytes(&experiment.dataset))
        .tensor(largest_tensor(
            net,
            vocab,
            experiment.train.batch_size.max(experiment.eval.batch_size),
            seq_len,
        ));
    if at_end > during {
        need.add(
            format!(
                "the final evaluation's batches of {} sequences",
                experiment.eval.batch_size
            ),
            at_end,
        )
    } else {
        need.add(
            "weights, EMA and optimiser state",
            replicas * TRAIN_PER_PARAM * params * FLOAT,
        )
        .add("activations", replicas * train.max(validation) * FLOAT)
        .add("the checkpoint being read", reading)
    }
}

/// The training step alone, as `ddexp bench` times it (one replica, no validation or final
/// evaluation).
pub fn training_step(experiment: &Experiment, vocab: usize) -> Need {
    let net = &experiment.network;
    let params = parameters(net, vocab);
    let seq_len = experiment.dataset.seq_len();
    Need::new(format!(
        "the training step of {} ({} parameters, batches of {} × {seq_len} tokens)",
        experiment.name, params as u64, experiment.train.batch_size
    ))
    .add("the corpus", corpus_bytes(&experiment.dataset))
    .tensor(largest_tensor(
        net,
        vocab,
        experiment.train.batch_size,
        seq_len,
    ))
    .add(
        "weights, EMA and optimiser state",
        TRAIN_PER_PARAM * params * FLOAT,
    )
    .add(
        "activations",
        activations(TRAINING, net, vocab, experiment.train.batch_size, seq_len) * FLOAT,
    )
}

/// Evaluating a saved model of `experiment` with batches of `batch` sequences.
pub fn evaluation(experiment: &Experiment, vocab: usize, batch: usize) -> Need {
    let net = &experiment.network;
    let seq_len = experiment.dataset.seq_len();
    Need::new(format!(
        "evaluating with batches of {batch} × {seq_len} tokens"
    ))
    .add("the corpus", corpus_bytes(&experiment.dataset))
    .tensor(largest_tensor(net, vocab, batch, seq_len))
    .add(
        "the weights",
        OPEN_PER_PARAM * parameters(net, vocab) * FLOAT,
    )
    .add(
        "activations",
        activations(EVALUATION, net, vocab, batch, seq_len) * FLOAT,
    )
}

/// Sampling `batch` sequences of `seq_len` tokens from a saved model of `network`.
pub fn sampling(network: &Network, vocab: usize, batch: usize, seq_len: usize) -> Need {
    Need::new(format!("sampling {batch} × {seq_len} tokens"))
        .tensor(largest_tensor(network, vocab, batch, seq_len))
        .add(
            "the weights",
            OPEN_PER_PARAM * parameters(network, vocab) * FLOAT,
        )
        .add(
            "activations",
            activations(SAMPLING, network, vocab, batch, seq_len) * FLOAT,
        )
}

/// Reading `bytes` of tensors from a foreign file, and checking them in a network.
pub fn import(bytes: f64) -> Need {
    Need::new("importing the checkpoint").add("its tensors, read and checked", 3.0 * bytes)
}

/// Opens the corpus of `dataset` for a job that needs `need(vocabulary size)`, checked
/// before the corpus is generated (synthetic) where the vocabulary is known without it.
pub fn open_corpus(
    dataset: &Dataset,
    backend: Backend,
    need: impl Fn(usize) -> Need,
) -> Result<Corpus> {
    if let Some(vocab) = known_vocab(dataset) {
        require(&need(vocab), backend)?;
        return data::open(dataset);
    }
    let corpus = data::open(dataset)?;
    require(&need(corpus.vocab().size()), backend)?;
    Ok(corpus)
}

/// Refuses a job that `backend` says cannot fit in the memory free now, unless
/// [`force`]d.
pub fn require(need: &Need, backend: Backend) -> Result<()> {
    let bytes = need.bytes();
    let forced = FORCE.load(Ordering::Relaxed);
    if let Some(limit) = backend::largest_buffer(backend)
        && need.largest > limit.bytes as f64
        && !forced
    {
        bail!(
            "{} needs a tensor of {} (the logits, B × L × K floats, or the attention scores), \
             larger than {} ({}); make the batch smaller, or pass --force to try anyway",
            need.what,
            size(need.largest),
            size(limit.bytes as f64),
            limit.what
        );
    }
    match backend::available_memory(backend) {
        Some(free) if bytes > free.bytes as f64 && !forced => bail!(
            "{} needs ≈ {}, this machine has {} ({}): {}; make the batch or the network \
             smaller, or pass --force to try anyway",
            need.what,
            size(bytes),
            size(free.bytes as f64),
            free.what,
            need.breakdown()
        ),
        Some(_) => Ok(()),
        None => {
            eoutln!(
                "note: {} needs ≈ {} per device; {} cannot say how much memory is free, so \
                 this is not checked",
                need.what,
                size(bytes),
                backend.name()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(extra: &[&str]) -> Experiment {
        let mut sets = vec![
            "network=(n_embed: 64, n_heads: 2, n_blocks: 3, n_cond: 32)".to_string(),
            "dataset=Synthetic(seq_len: 64)".to_string(),
            "train.batch_size=32".to_string(),
            "train.grad_accum=1".to_string(),
        ];
        sets.extend(extra.iter().map(|s| s.to_string()));
        crate::spec::load_str(
            std::path::Path::new("m.ron"),
            "(name: \"m\", dataset: Synthetic())",
            &sets,
        )
        .unwrap()
        .experiment
    }

    #[test]
    fn the_estimate_grows_with_every_size() {
        let base = training(&experiment(&[]), 27, 1, false).bytes();
        for set in [
            "train.batch_size=64",
            "dataset.seq_len=128",
            "network.n_embed=128",
            "network.n_blocks=6",
            "eval.batch_size=60000",
        ] {
            let bigger = training(&experiment(&[set]), 27, 1, false).bytes();
            assert!(bigger > base, "{set}: {bigger} <= {base}");
        }
        assert!(training(&experiment(&[]), 27, 4, false).bytes() > 2.0 * base - 2.0 * BASE_BYTES);
        let small_eval = experiment(&["eval.batch_size=4"]);
        assert!(
            training(&small_eval, 27, 1, true).bytes()
                > training(&small_eval, 27, 1, false).bytes()
        );
        assert!(training(&experiment(&[]), 50_257, 1, false).bytes() > 10.0 * base);
    }

    #[test]
    fn the_largest_networks_the_schema_allows_give_finite_estimates() {
        let huge = experiment(&[
            "network=(n_embed: 65536, n_heads: 1024, n_blocks: 1024, n_cond: 65536)",
            "dataset=Synthetic(seq_len: 1048576, train_tokens: 1000000000, eval_tokens: 2000000)",
            "train.batch_size=65536",
        ]);
        let need = training(&huge, 27, 64, true).bytes();
        assert!(need.is_finite() && need > 1e18, "{need}");
        let err = require(&training(&huge, 27, 64, true), Backend::Cpu);
        if let Err(e) = err {
            let text = e.to_string();
            assert!(
                text.contains("needs ≈") && text.contains("this machine has"),
                "{text}"
            );
        }
    }
}
