//! Batches of windows: `seq_len` consecutive tokens starting at a uniformly random offset in
//! `0..n − seq_len` of a split (as nanoDD's `get_batch`).
//!
//! Training windows are a pure function of (seed, iteration, micro-step, global row): row j
//! of rank r with per-rank batch b is global row r·b + j, drawn from
//! `rng(seed, TrainWindows, [iter, micro, r·b + j])`. So ranks and micro-steps draw
//! independent windows, a resumed run draws what the uninterrupted one did, and 2 ranks × b
//! rows are exactly the rows of 1 rank × 2b.
//!
//! Evaluation windows form one fixed stream per split that depends on nothing else: row k of
//! the stream comes from `rng(0, EvalWindows, [split, k])`, and batch i of size b holds rows
//! i·b .. i·b + b. Val numbers are therefore comparable across runs, seeds and resumes.

use rand::Rng;

use super::corpus::Corpus;
use crate::rng::{Stream, rng};
use crate::spec::Split;

impl Corpus {
    /// Start offsets of the training windows of `rank` at (`iter`, `micro`).
    pub fn train_starts(
        &self,
        seed: u64,
        iter: u64,
        micro: u64,
        rank: u64,
        batch_size: usize,
    ) -> Vec<usize> {
        let first_row = rank * batch_size as u64;
        (0..batch_size as u64)
            .map(|j| {
                let mut rng = rng(seed, Stream::TrainWindows, &[iter, micro, first_row + j]);
                self.window_start(Split::Train, &mut rng)
            })
            .collect()
    }

    /// The training batch of `rank` at (`iter`, `micro`): `batch_size` × `seq_len` ids,
    /// row-major.
    pub fn train_batch(
        &self,
        seed: u64,
        iter: u64,
        micro: u64,
        rank: u64,
        batch_size: usize,
    ) -> Vec<u32> {
        self.gather(
            Split::Train,
            &self.train_starts(seed, iter, micro, rank, batch_size),
        )
    }

    /// Start offsets of batch `index` of the fixed evaluation stream of `split`.
    pub fn eval_starts(&self, split: Split, index: u64, batch_size: usize) -> Vec<usize> {
        let first_row = index * batch_size as u64;
        (0..batch_size as u64)
            .map(|j| {
                let mut rng = rng(0, Stream::EvalWindows, &[split as u64, first_row + j]);
                self.window_start(split, &mut rng)
            })
            .collect()
    }

    /// Batch `index` of the fixed evaluation stream of `split`: `batch_size` × `seq_len` ids,
    /// row-major.
    pub fn eval_batch(&self, split: Split, index: u64, batch_size: usize) -> Vec<u32> {
        self.gather(split, &self.eval_starts(split, index, batch_size))
    }

    fn window_start(&self, split: Split, rng: &mut impl Rng) -> usize {
        // open() guarantees every split is longer than seq_len.
        rng.random_range(0..self.tokens(split).len() - self.seq_len())
    }

    fn gather(&self, split: Split, starts: &[usize]) -> Vec<u32> {
        let tokens = self.tokens(split);
        let mut out = Vec::with_capacity(starts.len() * self.seq_len());
        for &start in starts {
            tokens.extend_window(start, self.seq_len(), &mut out);
        }
        out
    }
}
