//! The diffusion times of a batch: one per sequence, in the units of its process — a
//! transition index t ∈ {0, …, T−1} for D3PM, a time t ∈ [t_min, 1) for MDLM. Each process
//! names the range its times come from ([`TimeRange`]); the samplers are shared.
//!
//! - Uniform (the reference's choice): each t is drawn independently.
//! - LowDiscrepancy: one uniform offset u per global batch of N sequences, the quantiles
//!   v_i = (u + i/N) mod 1, and t_i the time at quantile v_i of the range (⌊v_i·T⌋ for D3PM,
//!   t_min + (1 − t_min)·v_i for MDLM, which calls it antithetic sampling) — a stratified draw
//!   with the same marginal distribution, which lowers the variance of the batch's loss
//!   estimate.
//!
//! Times are drawn for the whole global batch at once — every sequence of every micro-step
//! on every rank of one optimiser step — so that the low-discrepancy draw is stratified over
//! the global batch. Sequence `j` of micro-step `micro` on rank `rank` (of `world` ranks, each
//! with micro-batches of `batch` sequences) takes index `(micro·world + rank)·batch + j`;
//! [`local_times`] returns that slice.

use std::ops::Range;

use rand::Rng;

use crate::rng::{self, Stream};
use crate::spec::TimeSampler;

/// The diffusion time of each sequence of a batch, in the units of its process.
#[derive(Debug, Clone, PartialEq)]
pub enum Times {
    /// Transition indices t of a discrete-time process: the loss compares steps t + 1 → t.
    Steps(Vec<usize>),
    /// Times t ∈ (0, 1] of a continuous-time process.
    Continuous(Vec<f64>),
}

impl Times {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        match self {
            Times::Steps(t) => t.len(),
            Times::Continuous(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The times of the sequences in `range`.
    pub fn slice(&self, range: Range<usize>) -> Times {
        match self {
            Times::Steps(t) => Times::Steps(t[range].to_vec()),
            Times::Continuous(t) => Times::Continuous(t[range].to_vec()),
        }
    }
}

/// The range a process draws times from, uniformly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeRange {
    /// The integers `start..end`.
    Steps { start: usize, end: usize },
    /// The interval [start, end).
    Interval { start: f64, end: f64 },
}

impl TimeRange {
    /// `n` independent uniform draws from `rng`.
    pub fn uniform(self, rng: &mut impl Rng, n: usize) -> Times {
        match self {
            TimeRange::Steps { start, end } => {
                Times::Steps((0..n).map(|_| rng.random_range(start..end)).collect())
            }
            TimeRange::Interval { .. } => self.quantiles((0..n).map(|_| rng.random())),
        }
    }

    /// The times at quantiles `v` ∈ [0, 1).
    fn quantiles(self, v: impl Iterator<Item = f64>) -> Times {
        match self {
            TimeRange::Steps { start, end } => Times::Steps(
                // v < 1, but guard the product against rounding up to the end.
                v.map(|v| start + ((v * (end - start) as f64) as usize).min(end - start - 1))
                    .collect(),
            ),
            TimeRange::Interval { start, end } => {
                Times::Continuous(v.map(|v| start + (end - start) * v).collect())
            }
        }
    }
}

/// The times of the `n` sequences of the global batch of optimiser step `iteration`, drawn
/// from `range`, a pure function of its arguments.
///
/// Uniform: independent draws. LowDiscrepancy: one offset u ~ U[0, 1) per global batch and
/// the times at quantiles (u + i/n) mod 1, which cover the range evenly and lower the
/// variance of the loss estimate.
pub fn sample_times(
    sampler: TimeSampler,
    seed: u64,
    iteration: u64,
    n: usize,
    range: TimeRange,
) -> Times {
    let mut rng = rng::rng(seed, Stream::Times, &[iteration]);
    match sampler {
        TimeSampler::Uniform => range.uniform(&mut rng, n),
        TimeSampler::LowDiscrepancy => {
            let u: f64 = rng.random();
            range.quantiles((0..n).map(|i| (u + i as f64 / n as f64).fract()))
        }
    }
}

/// The slice of the global batch's times for one micro-step on one rank.
pub fn local_times(global: &Times, micro: usize, rank: usize, world: usize, batch: usize) -> Times {
    let start = (micro * world + rank) * batch;
    global.slice(start..start + batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: TimeRange = TimeRange::Steps {
        start: 0,
        end: 1000,
    };

    fn steps(times: Times) -> Vec<usize> {
        match times {
            Times::Steps(t) => t,
            Times::Continuous(_) => panic!("expected steps"),
        }
    }

    fn continuous(times: Times) -> Vec<f64> {
        match times {
            Times::Continuous(t) => t,
            Times::Steps(_) => panic!("expected continuous times"),
        }
    }

    #[test]
    fn low_discrepancy_is_stratified() {
        let (n, t) = (64, 1000);
        let times = steps(sample_times(TimeSampler::LowDiscrepancy, 3, 7, n, STEPS));
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
    fn low_discrepancy_on_an_interval_is_stratified() {
        let n = 50;
        let range = TimeRange::Interval {
            start: 0.2,
            end: 1.0,
        };
        let mut times = continuous(sample_times(TimeSampler::LowDiscrepancy, 3, 7, n, range));
        times.sort_by(f64::total_cmp);
        // One time in each of the n strata of [0.2, 1), all at the same offset in theirs.
        let width = 0.8 / n as f64;
        let offset = (times[0] - 0.2) / width;
        assert!((0.0..1.0).contains(&offset));
        for (k, &time) in times.iter().enumerate() {
            let expected = 0.2 + (k as f64 + offset) * width;
            assert!((time - expected).abs() < 1e-12, "stratum {k}: {time}");
        }
    }

    #[test]
    fn discrete_draws_are_the_ones_of_a_plain_integer_range() {
        // D3PM's times stay exactly what runs drew before processes named their ranges:
        // `random_range(0..T)` per sequence, and ⌊v·T⌋ for the stratified draw.
        let mut rng = rng::rng(4, Stream::Times, &[9]);
        let expected: Vec<usize> = (0..32).map(|_| rng.random_range(0..1000)).collect();
        assert_eq!(
            steps(sample_times(TimeSampler::Uniform, 4, 9, 32, STEPS)),
            expected
        );
        let mut rng = rng::rng(4, Stream::Times, &[9]);
        let u: f64 = rng.random();
        let expected: Vec<usize> = (0..32)
            .map(|i| (((u + i as f64 / 32.0).fract() * 1000.0) as usize).min(999))
            .collect();
        assert_eq!(
            steps(sample_times(TimeSampler::LowDiscrepancy, 4, 9, 32, STEPS)),
            expected
        );
    }

    #[test]
    fn times_are_a_function_of_seed_and_iteration() {
        for sampler in [TimeSampler::Uniform, TimeSampler::LowDiscrepancy] {
            let a = sample_times(sampler, 1, 5, 32, STEPS);
            assert_eq!(a, sample_times(sampler, 1, 5, 32, STEPS));
            assert_ne!(a, sample_times(sampler, 1, 6, 32, STEPS));
            assert_ne!(a, sample_times(sampler, 2, 5, 32, STEPS));
            assert!(steps(a).iter().all(|&t| t < 1000));
        }
    }

    #[test]
    fn uniform_covers_the_range() {
        let range = TimeRange::Steps { start: 0, end: 10 };
        let times = steps(sample_times(TimeSampler::Uniform, 1, 0, 20_000, range));
        for value in 0..10 {
            let count = times.iter().filter(|&&t| t == value).count();
            assert!(
                (1700..2300).contains(&count),
                "t = {value} drawn {count} times"
            );
        }
        let range = TimeRange::Interval {
            start: 0.5,
            end: 1.0,
        };
        let times = continuous(sample_times(TimeSampler::Uniform, 1, 0, 20_000, range));
        assert!(times.iter().all(|t| (0.5..1.0).contains(t)));
        let below = times.iter().filter(|&&t| t < 0.75).count();
        assert!((9700..10300).contains(&below), "{below} below the middle");
    }

    #[test]
    fn slices_partition_the_global_batch() {
        let (world, accum, batch) = (3, 2, 4);
        let global = Times::Steps((0..world * accum * batch).collect());
        let mut seen = Vec::new();
        for micro in 0..accum {
            for rank in 0..world {
                seen.extend(steps(local_times(&global, micro, rank, world, batch)));
            }
        }
        assert_eq!(Times::Steps(seen), global);
    }
}
