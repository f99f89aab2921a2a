//! The validation pass of the training loop: the training loss and its bound estimate on
//! the first batches of the split's fixed val stream, with times drawn uniformly from the
//! training range (D3PM: {0, …, T−1}; MDLM: [t_min, 1)) from a seed of their own, so every
//! validation of a run sees the same tokens, times and noise, and only the weights change.

use crate::data::Corpus;
use crate::diffusion::{Diffusion, LossStats, Moments};
use crate::model::{Dit, token_tensor};
use crate::rng::{self, Stream};
use crate::spec::Split;
use burn::module::Module;
use burn::tensor::backend::Backend;

/// The validation result on `batches` batches: the merged statistics and the standard error
/// of bits/token over batches; `None` when `stop()` turned true before a batch (Ctrl-C).
pub fn validation_loss<B: Backend>(
    net: &Dit<B>,
    diffusion: &Diffusion,
    corpus: &Corpus,
    batches: u64,
    batch_size: usize,
    stop: &dyn Fn() -> bool,
) -> Option<(LossStats, f64)> {
    let mut stats = vec![];
    for batch in 0..batches {
        if stop() {
            return None;
        }
        stats.push(validation_batch(net, diffusion, corpus, batch, batch_size));
    }
    Some(summarise_validation(&stats))
}

/// The statistics of batch `batch` of the validation pass (each batch is the same whoever
/// evaluates it, so replicas can share the pass).
pub fn validation_batch<B: Backend>(
    net: &Dit<B>,
    diffusion: &Diffusion,
    corpus: &Corpus,
    batch: u64,
    batch_size: usize,
) -> LossStats {
    let device = net.devices()[0].clone();
    let mut rng = rng::rng(0, Stream::Validation, &[batch, 0]);
    let times = diffusion.training_range().uniform(&mut rng, batch_size);
    let ids = corpus.eval_batch(Split::Val, batch, batch_size);
    let x0 = token_tensor::<B>(&ids, batch_size, corpus.seq_len(), &device);
    let mut noise = rng::rows(0, Stream::Validation, &[batch, 1], 0..batch_size as u64);
    diffusion.loss(net, x0, &times, &mut noise).stats()
}

/// The validation result from the statistics of its batches, in batch order: the merged
/// statistics and the standard error of bits/token over batches.
pub fn summarise_validation(batches: &[LossStats]) -> (LossStats, f64) {
    let mut total = LossStats::default();
    let mut per_batch = Moments::default();
    for stats in batches {
        let bits = stats.bits_per_token();
        per_batch.merge(&Moments {
            count: 1,
            sum: bits,
            sum_sq: bits * bits,
        });
        total.merge(stats);
    }
    (total, per_batch.std_error())
}
