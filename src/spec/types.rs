//! The experiment file as Rust types. These types are the contract: the JSON Schema in
//! `schemas/` is generated from them, and every default here follows the reference recipe
//! (nanoDD's Absorbing D3PM on text8: 12 blocks × 768, T = 1000, λ = 0.05, AdamW with
//! betas (0.9, 0.98), weight decay 0.1, lr 1e-3 → 1e-5, clipping at 0.1, EMA 0.9999), so a
//! minimal experiment file is short.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits::*;
pub use crate::backend::Backend;

/// The folder under the results folder where sweeps keep their summaries.
pub const SWEEPS_FOLDER: &str = "sweeps";
/// The folder under the results folder where `ddexp report` writes by default.
pub const REPORT_FOLDER: &str = "report";
/// Names no experiment may have: the folders ddexp itself writes under the results folder,
/// next to the experiments' folders (compared without case, as some file systems do).
pub const RESERVED_NAMES: [&str; 2] = [SWEEPS_FOLDER, REPORT_FOLDER];

/// One experiment: what to train, on what data, how, and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Name of the experiment; results go to `results/<name>/<run id>/`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"), length(max = 100))]
    pub name: String,
    /// Seed for initialisation, data windows, diffusion times and dropout.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// The diffusion process and its arguments.
    #[serde(default)]
    pub model: Process,
    /// The denoising network (a Diffusion Transformer).
    #[serde(default)]
    pub network: Network,
    /// The corpus and the sequence length.
    pub dataset: Dataset,
    /// How diffusion times are drawn for a training batch.
    #[serde(default)]
    pub sampler: TimeSampler,
    /// Optimisation, schedule, batching, EMA, logging and checkpoints.
    #[serde(default)]
    pub train: Train,
    /// The final evaluation (bits/token on each split, EMA weights).
    #[serde(default)]
    pub eval: Eval,
    /// Backend, devices and nodes.
    #[serde(default)]
    pub topology: Topology,
}

/// The discrete diffusion process. New processes are new variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub enum Process {
    /// D3PM with an absorbing (mask) state, trained with the hybrid loss KL + lambda_ce·CE.
    D3pmAbsorbing {
        /// Number of diffusion steps T.
        #[serde(default = "defaults::timesteps")]
        #[schemars(range(min = 2, max = MAX_TIMESTEPS))]
        timesteps: usize,
        /// Weight of the auxiliary cross-entropy term.
        #[serde(default = "defaults::lambda_ce")]
        #[schemars(range(min = 0.0))]
        lambda_ce: f64,
        /// Whether the network sees the diffusion time (the step s, as the reference) or a
        /// constant (a time-free network, whose predictions sampling reuses until a token
        /// changes). Written out only when false: checkpoints compare the experiment they
        /// record with the run folder's, and a record without the field means true.
        #[serde(default = "defaults::yes", skip_serializing_if = "defaults::is_true")]
        time_conditioning: bool,
    },
    /// Continuous-time masked diffusion (MDLM, Sahoo et al. 2024): t ∈ (0, 1], a token is
    /// still unmasked at time t with probability α_t, the network predicts x_0 with the SUBS
    /// parameterisation, and the loss is the continuous-time NELBO.
    Mdlm {
        /// How α_t falls from 1 at t = 0 to eps at t = 1.
        #[serde(default)]
        schedule: MaskSchedule,
        /// α_1: the probability that a token survives to t = 1, kept above 0 so the noise
        /// level σ_t = −ln α_t the network sees stays finite.
        #[serde(default = "defaults::mdlm_eps")]
        #[schemars(extend("exclusiveMinimum" = 0.0, "exclusiveMaximum" = 1.0))]
        eps: f64,
        /// Training times are uniform in [t_min, 1) (MDLM's sampling_eps); evaluation adds a
        /// reconstruction term at t_min for the part of the bound below it.
        #[serde(default = "defaults::mdlm_t_min")]
        #[schemars(extend("exclusiveMinimum" = 0.0, "exclusiveMaximum" = 1.0))]
        t_min: f64,
        /// Whether the network sees the noise level σ_t = −ln α_t or a constant (false,
        /// MDLM's default: a time-free network, whose predictions sampling reuses until a
        /// token changes).
        #[serde(default)]
        time_conditioning: bool,
    },
}

/// How the probability α_t that a token is still unmasked at time t ∈ [0, 1] falls from 1 to
/// eps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MaskSchedule {
    /// α_t = 1 − (1 − eps)·t: tokens are masked at a constant rate (MDLM's default).
    #[default]
    LogLinear,
    /// α_t = eps + (1 − eps)·cos(πt/2): slow masking early, fast late.
    Cosine,
}

impl Default for Process {
    fn default() -> Self {
        Process::D3pmAbsorbing {
            timesteps: defaults::timesteps(),
            lambda_ce: defaults::lambda_ce(),
            time_conditioning: true,
        }
    }
}

impl Process {
    /// Number of diffusion steps T of a discrete-time process; `None` for continuous time.
    pub fn timesteps(&self) -> Option<usize> {
        match self {
            Process::D3pmAbsorbing { timesteps, .. } => Some(*timesteps),
            Process::Mdlm { .. } => None,
        }
    }

    /// Whether the network sees the diffusion time.
    pub fn time_conditioning(&self) -> bool {
        match self {
            Process::D3pmAbsorbing {
                time_conditioning, ..
            }
            | Process::Mdlm {
                time_conditioning, ..
            } => *time_conditioning,
        }
    }
}

/// Sizes of the Diffusion Transformer. The vocabulary size comes from the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Width of the residual stream d.
    #[serde(default = "defaults::n_embed")]
    #[schemars(range(min = 2, max = MAX_WIDTH))]
    pub n_embed: usize,
    /// Attention heads; must divide n_embed into an even head dimension (rotary embedding).
    #[serde(default = "defaults::n_heads")]
    #[schemars(range(min = 1, max = MAX_HEADS))]
    pub n_heads: usize,
    /// Number of DiT blocks.
    #[serde(default = "defaults::n_blocks")]
    #[schemars(range(min = 1, max = MAX_BLOCKS))]
    pub n_blocks: usize,
    /// Width of the time-conditioning vector.
    #[serde(default = "defaults::n_cond")]
    #[schemars(range(min = 1, max = MAX_WIDTH))]
    pub n_cond: usize,
    /// Dropout probability on the attention and MLP branches (training only).
    #[serde(default = "defaults::dropout")]
    #[schemars(range(min = 0.0, max = 0.99))]
    pub dropout: f64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            n_embed: defaults::n_embed(),
            n_heads: defaults::n_heads(),
            n_blocks: defaults::n_blocks(),
            n_cond: defaults::n_cond(),
            dropout: defaults::dropout(),
        }
    }
}

impl Network {
    pub fn head_dim(&self) -> usize {
        self.n_embed / self.n_heads
    }
}

/// Where the tokens come from. Real corpora are prepared once with `ddexp data prepare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub enum Dataset {
    /// text8 (characters: space and a–z), prepared with `ddexp data prepare text8`.
    Text8 {
        #[serde(default = "defaults::text8_root")]
        root: PathBuf,
        #[serde(default = "defaults::text8_seq_len")]
        #[schemars(range(min = 2, max = MAX_SEQ_LEN))]
        seq_len: usize,
    },
    /// OpenWebText in GPT-2 BPE, prepared with `ddexp data prepare openwebtext`.
    OpenWebText {
        #[serde(default = "defaults::openwebtext_root")]
        root: PathBuf,
        #[serde(default = "defaults::openwebtext_seq_len")]
        #[schemars(range(min = 2, max = MAX_SEQ_LEN))]
        seq_len: usize,
    },
    /// A custom corpus prepared with `ddexp data prepare text --tokenizer char|gpt2`.
    Text {
        root: PathBuf,
        #[schemars(range(min = 2, max = MAX_SEQ_LEN))]
        seq_len: usize,
        /// The tokenizer the corpus was prepared with (checked against its meta.json).
        tokenizer: Tokenizer,
    },
    /// A small structured corpus generated in-process from a seed: no files, no download.
    Synthetic {
        #[serde(default = "defaults::synthetic_seq_len")]
        #[schemars(range(min = 2, max = MAX_SEQ_LEN))]
        seq_len: usize,
        /// Seed of the corpus generator (independent of the experiment seed, so runs with
        /// different seeds see the same corpus).
        #[serde(default)]
        corpus_seed: u64,
        /// Tokens in the training split.
        #[serde(default = "defaults::synthetic_train_tokens")]
        #[schemars(range(min = 1000, max = MAX_SYNTHETIC_TRAIN_TOKENS))]
        train_tokens: usize,
        /// Tokens in each of the val and test splits.
        #[serde(default = "defaults::synthetic_eval_tokens")]
        #[schemars(range(min = 1000, max = MAX_SYNTHETIC_EVAL_TOKENS))]
        eval_tokens: usize,
    },
}

impl Dataset {
    pub fn seq_len(&self) -> usize {
        match self {
            Dataset::Text8 { seq_len, .. }
            | Dataset::OpenWebText { seq_len, .. }
            | Dataset::Text { seq_len, .. }
            | Dataset::Synthetic { seq_len, .. } => *seq_len,
        }
    }
}

/// How a corpus is split into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Tokenizer {
    /// One token per character; the vocabulary is the sorted set of characters in the corpus.
    Char,
    /// GPT-2 byte-pair encoding (50257 ids).
    Gpt2,
}

/// How the diffusion times t of a training batch are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TimeSampler {
    /// Independently and uniformly per sequence (the reference).
    #[default]
    Uniform,
    /// One uniform offset per global batch, stratified over its sequences: lower loss variance.
    LowDiscrepancy,
}

/// Optimisation and bookkeeping of the training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// Sequences per device per micro-step.
    #[serde(default = "defaults::batch_size")]
    #[schemars(range(min = 1, max = MAX_BATCH))]
    pub batch_size: usize,
    /// Micro-steps accumulated per optimiser step.
    #[serde(default = "defaults::grad_accum")]
    #[schemars(range(min = 1, max = MAX_GRAD_ACCUM))]
    pub grad_accum: usize,
    /// Optimiser steps in the whole run.
    #[serde(default = "defaults::max_iters")]
    #[schemars(range(min = 1, max = MAX_ITERS))]
    pub max_iters: u64,
    /// Peak learning rate (after warm-up).
    #[serde(default = "defaults::lr")]
    #[schemars(extend("exclusiveMinimum" = 0.0))]
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    #[serde(default = "defaults::min_lr")]
    #[schemars(range(min = 0.0))]
    pub min_lr: f64,
    /// Linear warm-up steps from 0 to lr.
    #[serde(default = "defaults::warmup_iters")]
    #[schemars(range(max = MAX_ITERS))]
    pub warmup_iters: u64,
    /// AdamW weight decay, applied to parameters with 2 or more dimensions only.
    #[serde(default = "defaults::weight_decay")]
    #[schemars(range(min = 0.0))]
    pub weight_decay: f64,
    /// AdamW (beta1, beta2).
    #[serde(default = "defaults::betas")]
    pub betas: (f64, f64),
    /// Clip the global gradient norm to this value; 0 disables clipping.
    #[serde(default = "defaults::grad_clip")]
    #[schemars(range(min = 0.0))]
    pub grad_clip: f64,
    /// Exponential moving average of the weights.
    #[serde(default)]
    pub ema: Ema,
    /// Optimiser steps between rows of train.csv.
    #[serde(default = "defaults::log_interval")]
    #[schemars(range(min = 1, max = MAX_ITERS))]
    pub log_interval: u64,
    /// Optimiser steps between validations (and latest/best checkpoints).
    #[serde(default = "defaults::eval_interval")]
    #[schemars(range(min = 1, max = MAX_ITERS))]
    pub eval_interval: u64,
    /// Batches of the fixed val stream per validation.
    #[serde(default = "defaults::eval_iters")]
    #[schemars(range(min = 1, max = MAX_EVAL_ITERS))]
    pub eval_iters: u64,
    /// What is kept in `checkpoints/`.
    #[serde(default)]
    pub checkpoint: Checkpointing,
}

impl Default for Train {
    fn default() -> Self {
        Train {
            batch_size: defaults::batch_size(),
            grad_accum: defaults::grad_accum(),
            max_iters: defaults::max_iters(),
            lr: defaults::lr(),
            min_lr: defaults::min_lr(),
            warmup_iters: defaults::warmup_iters(),
            weight_decay: defaults::weight_decay(),
            betas: defaults::betas(),
            grad_clip: defaults::grad_clip(),
            ema: Ema::default(),
            log_interval: defaults::log_interval(),
            eval_interval: defaults::eval_interval(),
            eval_iters: defaults::eval_iters(),
            checkpoint: Checkpointing::default(),
        }
    }
}

/// EMA of the weights, as ema_pytorch with power 1: a copy for the first
/// `update_after_step` updates, then decay min(beta, (n − k)/(n − k + 1)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ema {
    #[serde(default = "defaults::ema_beta")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta: f64,
    #[serde(default = "defaults::ema_update_after_step")]
    #[schemars(range(max = MAX_ITERS))]
    pub update_after_step: u64,
}

impl Default for Ema {
    fn default() -> Self {
        Ema {
            beta: defaults::ema_beta(),
            update_after_step: defaults::ema_update_after_step(),
        }
    }
}

/// Checkpoint policy. The latest checkpoint is always written at each validation and when
/// a run stops (end, Ctrl-C); it is what `--resume` continues from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpointing {
    /// Also write the latest checkpoint every this many steps between validations.
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_ITERS))]
    pub every: Option<u64>,
    /// Keep a copy of the checkpoint with the lowest val l_T.
    #[serde(default = "defaults::yes")]
    pub keep_best: bool,
}

impl Default for Checkpointing {
    fn default() -> Self {
        Checkpointing {
            every: None,
            keep_best: true,
        }
    }
}

/// A data split.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// Lower-case name, as used in file names and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The final bits/token evaluation (EMA weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// Splits evaluated at the end of a run.
    #[serde(default = "defaults::eval_splits")]
    #[schemars(length(min = 1))]
    pub splits: Vec<Split>,
    /// Batches for the KL term (D3PM: t uniform in 1..T−1; MDLM: the diffusion term, t uniform
    /// in [t_min, 1)).
    #[serde(default = "defaults::kl_batches")]
    #[schemars(range(min = 1, max = MAX_EVAL_BATCHES))]
    pub kl_batches: u64,
    /// Batches for the reconstruction term (D3PM: t = 0; MDLM: t = t_min).
    #[serde(default = "defaults::recon_batches")]
    #[schemars(range(min = 1, max = MAX_EVAL_BATCHES))]
    pub recon_batches: u64,
    /// Sequences per evaluation batch.
    #[serde(default = "defaults::eval_batch_size")]
    #[schemars(range(min = 1, max = MAX_BATCH))]
    pub batch_size: usize,
}

impl Default for Eval {
    fn default() -> Self {
        Eval {
            splits: defaults::eval_splits(),
            kl_batches: defaults::kl_batches(),
            recon_batches: defaults::recon_batches(),
            batch_size: defaults::eval_batch_size(),
        }
    }
}

/// Devices and nodes. Global batch = batch_size × grad_accum × devices × nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub backend: Backend,
    /// Device indices on each node, one model replica per device. On Cpu, each entry is one
    /// CPU peer (a thread), which exercises the same data-parallel code path.
    #[serde(default = "defaults::devices")]
    #[schemars(length(min = 1, max = MAX_DEVICES), inner(range(max = MAX_DEVICE_INDEX)))]
    pub devices: Vec<usize>,
    /// Number of nodes (machines) training together.
    #[serde(default = "defaults::nodes")]
    #[schemars(range(min = 1, max = MAX_NODES))]
    pub nodes: usize,
    /// Address (host:port) of the orchestrator that joins the nodes; needed when nodes > 1,
    /// and may instead come from the environment at launch so one file serves every node.
    #[serde(default)]
    pub orchestrator: Option<String>,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            backend: Backend::Cpu,
            devices: defaults::devices(),
            nodes: defaults::nodes(),
            orchestrator: None,
        }
    }
}

/// `host` and `port` of `host:port` (an optional `ws://` prefix is allowed).
pub fn split_host_port(address: &str) -> anyhow::Result<(String, u16)> {
    let a = address
        .trim()
        .trim_start_matches("ws://")
        .trim_end_matches('/');
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("no `:port`"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("bad port `{port}`"))?;
    if host.is_empty() || port == 0 {
        anyhow::bail!("empty host or port 0");
    }
    Ok((host.to_string(), port))
}

impl Topology {
    /// Model replicas over all nodes.
    pub fn world_size(&self) -> usize {
        self.devices.len() * self.nodes
    }
}

impl Experiment {
    /// Sequences per optimiser step over all devices and nodes.
    pub fn global_batch(&self) -> usize {
        self.train.batch_size * self.train.grad_accum * self.topology.world_size()
    }

    /// Tokens per optimiser step over all devices and nodes.
    pub fn tokens_per_iter(&self) -> usize {
        self.global_batch() * self.dataset.seq_len()
    }
}

/// Default values: the reference recipe.
mod defaults {
    use super::Split;
    use std::path::PathBuf;

    pub fn seed() -> u64 {
        1
    }
    pub fn timesteps() -> usize {
        1000
    }
    pub fn lambda_ce() -> f64 {
        0.05
    }
    pub fn mdlm_eps() -> f64 {
        1e-3
    }
    pub fn mdlm_t_min() -> f64 {
        1e-3
    }
    pub fn n_embed() -> usize {
        768
    }
    pub fn n_heads() -> usize {
        12
    }
    pub fn n_blocks() -> usize {
        12
    }
    pub fn n_cond() -> usize {
        128
    }
    pub fn dropout() -> f64 {
        0.025
    }
    pub fn text8_root() -> PathBuf {
        "data/text8".into()
    }
    pub fn text8_seq_len() -> usize {
        256
    }
    pub fn openwebtext_root() -> PathBuf {
        "data/openwebtext".into()
    }
    pub fn openwebtext_seq_len() -> usize {
        1024
    }
    pub fn synthetic_seq_len() -> usize {
        64
    }
    pub fn synthetic_train_tokens() -> usize {
        2_000_000
    }
    pub fn synthetic_eval_tokens() -> usize {
        100_000
    }
    pub fn batch_size() -> usize {
        256
    }
    pub fn grad_accum() -> usize {
        4
    }
    pub fn max_iters() -> u64 {
        500_000
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn min_lr() -> f64 {
        1e-5
    }
    pub fn warmup_iters() -> u64 {
        2500
    }
    pub fn weight_decay() -> f64 {
        0.1
    }
    pub fn betas() -> (f64, f64) {
        (0.9, 0.98)
    }
    pub fn grad_clip() -> f64 {
        0.1
    }
    pub fn ema_beta() -> f64 {
        0.9999
    }
    pub fn ema_update_after_step() -> u64 {
        100
    }
    pub fn log_interval() -> u64 {
        10
    }
    pub fn eval_interval() -> u64 {
        25_000
    }
    pub fn eval_iters() -> u64 {
        1000
    }
    pub fn yes() -> bool {
        true
    }
    pub fn is_true(value: &bool) -> bool {
        *value
    }
    pub fn eval_splits() -> Vec<Split> {
        vec![Split::Val, Split::Test]
    }
    pub fn kl_batches() -> u64 {
        10_000
    }
    pub fn recon_batches() -> u64 {
        100
    }
    pub fn eval_batch_size() -> usize {
        512
    }
    pub fn devices() -> Vec<usize> {
        vec![0]
    }
    pub fn nodes() -> usize {
        1
    }
}
