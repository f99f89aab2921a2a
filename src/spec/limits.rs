//! Upper bounds on every count and size an experiment or a command line can give.
//!
//! Each is far above any real use (the reference recipe's value is named) and low enough
//! that the arithmetic on it cannot overflow: products of these bounds fit in 64 bits where
//! the code multiplies them (tokens per step, tensor shapes), and the memory estimate
//! ([`crate::memory`]) decides what fits on a machine. The experiment schema carries them as
//! `maximum`s, so `ddexp validate` names the bound; the command line's flags use the same
//! constants.

/// Diffusion steps T (reference: 1000). The schedule holds a few values per step, and exact
/// sampling makes up to T network calls.
pub const MAX_TIMESTEPS: u64 = 1_000_000;
/// Width of the residual stream and of the time conditioning (reference: 768 and 128).
pub const MAX_WIDTH: u64 = 65_536;
/// Attention heads and DiT blocks (reference: 12 and 12).
pub const MAX_HEADS: u64 = 1_024;
pub const MAX_BLOCKS: u64 = 1_024;
/// Tokens per sequence (reference: 256 on text8, 1024 on OpenWebText). Attention holds
/// seq_len² scores per head.
pub const MAX_SEQ_LEN: u64 = 1 << 20;
/// Tokens of the synthetic corpus's train split, and of each of its val and test splits;
/// the corpus is generated in memory (about 3 bytes a token while it is made).
pub const MAX_SYNTHETIC_TRAIN_TOKENS: u64 = 1_000_000_000;
pub const MAX_SYNTHETIC_EVAL_TOKENS: u64 = 100_000_000;
/// Sequences in one batch on one device, for training, evaluation and sampling (reference:
/// 256 and 512).
pub const MAX_BATCH: u64 = 65_536;
/// Micro-steps accumulated per optimiser step (reference: 4).
pub const MAX_GRAD_ACCUM: u64 = 65_536;
/// Sequences per optimiser step over every device and node: a diffusion time is drawn for
/// each, every step.
pub const MAX_GLOBAL_BATCH: u64 = 1 << 20;
/// Optimiser steps, and every interval counted in them (reference: 500 000 steps).
pub const MAX_ITERS: u64 = 1_000_000_000_000;
/// Batches of one validation pass (reference: 1000); the statistics of each are kept until
/// the pass ends.
pub const MAX_EVAL_ITERS: u64 = 1_000_000;
/// Batches of each term of the bits/token estimate (reference: 10 000 and 100).
pub const MAX_EVAL_BATCHES: u64 = 10_000_000;
/// Devices (model replicas) on one node; on the CPU each is a thread holding a replica.
pub const MAX_DEVICES: u64 = 64;
/// A device index (a GPU number).
pub const MAX_DEVICE_INDEX: u64 = 1_023;
/// Nodes (machines) training together.
pub const MAX_NODES: u64 = 1_024;
/// Reverse steps of `ddexp sample --steps`, and timed or warm-up steps of `ddexp bench`.
pub const MAX_STEPS: u64 = 1_000_000;
