//! Randomness as a pure function of where it is used.
//!
//! Every random draw in ddexp (initial weights, data windows, diffusion times, the noise of
//! q(x_t | x_0), dropout, sampling) comes from a generator seeded by the experiment seed, a
//! [`Stream`] naming the purpose, and the indices that locate the draw (iteration,
//! micro-step, rank, ...). Nothing carries hidden state from one step to the next, so a run
//! resumed at iteration n draws exactly what the uninterrupted run drew at n, and two ranks
//! never share a stream.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a random stream is used for. The discriminant is part of the seed, so streams with
/// the same indices but different purposes are independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Initial weights of the network.
    Init = 1,
    /// Training windows of a micro-batch.
    TrainWindows = 2,
    /// Diffusion times of a training step.
    Times = 3,
    /// The forward-process noise (which tokens get masked).
    Noise = 4,
    /// Dropout masks.
    Dropout = 5,
    /// The fixed evaluation stream of a split.
    EvalWindows = 6,
    /// Ancestral sampling.
    Sample = 7,
    /// Corpus generation and document splits during data preparation.
    Data = 8,
    /// Times of a bits/token evaluation.
    EvalTimes = 9,
    /// Forward noise of a bits/token evaluation.
    EvalNoise = 11,
    /// Times and noise of the training loop's validation pass.
    Validation = 10,
}

/// A generator for `stream` at `indices` under `seed`.
pub fn rng(seed: u64, stream: Stream, indices: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(seed, stream, indices))
}

/// One generator per row `r` in `rows`, each at `indices` followed by `r`: per-sequence
/// streams, so a sequence draws the same numbers whatever batch or device it is part of.
pub fn rows(
    seed: u64,
    stream: Stream,
    indices: &[u64],
    rows: std::ops::Range<u64>,
) -> Vec<ChaCha8Rng> {
    rows.map(|r| {
        let mut at = indices.to_vec();
        at.push(r);
        rng(seed, stream, &at)
    })
    .collect()
}

/// A 64-bit seed for `stream` at `indices` under `seed`, for APIs that take a plain seed
/// (e.g. a backend's own generator).
pub fn derive_seed(seed: u64, stream: Stream, indices: &[u64]) -> u64 {
    let mut h = splitmix64(seed ^ 0x6464_6578_7000_0000);
    h = splitmix64(h ^ stream as u64);
    for &i in indices {
        h = splitmix64(h ^ i);
    }
    h
}

/// SplitMix64's finaliser: a bijective mix with good avalanche, so nearby inputs give
/// unrelated outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn same_place_same_draws() {
        let a: Vec<u32> = rng(7, Stream::Times, &[3, 1])
            .random_iter()
            .take(8)
            .collect();
        let b: Vec<u32> = rng(7, Stream::Times, &[3, 1])
            .random_iter()
            .take(8)
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn different_places_differ() {
        let base = derive_seed(7, Stream::Times, &[3, 1]);
        assert_ne!(base, derive_seed(8, Stream::Times, &[3, 1]));
        assert_ne!(base, derive_seed(7, Stream::Noise, &[3, 1]));
        assert_ne!(base, derive_seed(7, Stream::Times, &[1, 3]));
        assert_ne!(base, derive_seed(7, Stream::Times, &[3, 1, 0]));
    }
}
