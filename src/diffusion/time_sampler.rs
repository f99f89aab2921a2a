//! The diffusion times of a training batch: a transition index t ∈ {0, …, T−1} per sequence.
//!
//! - Uniform (the reference's choice): each t is drawn independently.
//! - LowDiscrepancy: one uniform offset u per global batch of N sequences, and
//!   t_i = ⌊((u + i/N) mod 1)·T⌋ — a stratified draw with the same marginal distribution,
//!   which lowers the variance of the batch's loss estimate.
//!
//! Times are drawn for the whole global batch at once — every sequence of every micro-step
//! on every rank of one optimiser step — so that the low-discrepancy draw is stratified over
//! the global batch. Sequence `j` of micro-step `micro` on rank `rank` (of `world` ranks, each
//! with micro-batches of `batch` sequences) takes index `(micro·world + rank)·batch + j`;
//! [`local_times`] returns that slice.

use rand::Rng;

use crate::rng::{self, Stream};
use crate::spec::TimeSampler;

/// The transition indices t ∈ {0, …, T−1} of the `n` sequences of the global batch of
/// optimiser step `iteration`, a pure function of its arguments.
///
/// Uniform: independent draws. LowDiscrepancy: one offset u ~ U[0, 1) per global batch and
/// t_i = ⌊((u + i/n) mod 1)·T⌋, which covers [0, T) evenly and lowers the variance of the
/// loss estimate.
pub fn sample_times(
    sampler: TimeSampler,
    seed: u64,
    iteration: u64,
    n: usize,
    timesteps: usize,
) -> Vec<usize> {
    let mut rng = rng::rng(seed, Stream::Times, &[iteration]);
    match sampler {
        TimeSampler::Uniform => (0..n).map(|_| rng.random_range(0..timesteps)).collect(),
        TimeSampler::LowDiscrepancy => {
            let u: f64 = rng.random();
            (0..n)
                .map(|i| {
                    let v = (u + i as f64 / n as f64).fract();
                    // v < 1, but guard the product against rounding up to T.
                    ((v * timesteps as f64) as usize).min(timesteps - 1)
                })
                .collect()
        }
    }
}

/// The slice of the global batch's times for one micro-step on one rank.
pub fn local_times(
    global: &[usize],
    micro: usize,
    rank: usize,
    world: usize,
    batch: usize,
) -> &[usize] {
    let start = (micro * world + rank) * batch;
    &global[start..start + batch]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_discrepancy_is_stratified() {
        let (n, t) = (64, 1000);
        let times = sample_times(TimeSampler::LowDiscrepancy, 3, 7, n, t);
        // Exactly one time in each of the n strata [k·T/n, (k+1)·T/n) (in sorted order).
        let mut sorted = times.clone();
        sorted.sort();
        for (k, &time) in sorted.iter().enumerate() {
            let lo = k * t / n;
            let hi = (k + 1) * t / n + 1;
            assert!(
                (lo..hi).contains(&time),
                "time {time} outside stratum {k}: {lo}..{hi}"
            );
        }
        // Consecutive sequences are T/n apart (mod T).
        for pair in times.windows(2) {
            let gap = (pair[1] + t - pair[0]) % t;
            assert!((15..=16).contains(&gap), "gap {gap}");
        }
    }

    #[test]
    fn times_are_a_function_of_seed_and_iteration() {
        for sampler in [TimeSampler::Uniform, TimeSampler::LowDiscrepancy] {
            let a = sample_times(sampler, 1, 5, 32, 1000);
            assert_eq!(a, sample_times(sampler, 1, 5, 32, 1000));
            assert_ne!(a, sample_times(sampler, 1, 6, 32, 1000));
            assert_ne!(a, sample_times(sampler, 2, 5, 32, 1000));
            assert!(a.iter().all(|&t| t < 1000));
        }
    }

    #[test]
    fn uniform_covers_the_range() {
        let times = sample_times(TimeSampler::Uniform, 1, 0, 20_000, 10);
        for value in 0..10 {
            let count = times.iter().filter(|&&t| t == value).count();
            assert!(
                (1700..2300).contains(&count),
                "t = {value} drawn {count} times"
            );
        }
    }

    #[test]
    fn slices_partition_the_global_batch() {
        let (world, accum, batch) = (3, 2, 4);
        let global: Vec<usize> = (0..world * accum * batch).collect();
        let mut seen = Vec::new();
        for micro in 0..accum {
            for rank in 0..world {
                seen.extend_from_slice(local_times(&global, micro, rank, world, batch));
            }
        }
        assert_eq!(seen, global);
    }
}
