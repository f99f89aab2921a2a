//! One training step (loss forward + backward) of the text8-sized network on the flex CPU
//! backend: 12 blocks × 768, 12 heads, K = 28, sequences of 256, a micro-batch of 4.
//!
//! `cargo bench --bench step` (set DDEXP_BENCH_STEPS to time more steps; default 3 after one
//! warm-up step). Prints seconds per step and tokens per second.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ddexp::diffusion::{Diffusion, sample_times};
use ddexp::model::{Dit, DitConfig};
use ddexp::rng::{self, Stream};
use ddexp::spec::{Network, Process, TimeSampler};

type B = Autodiff<Flex>;

const BATCH: usize = 4;
const SEQ_LEN: usize = 256;
const VOCAB: usize = 27;

fn main() {
    let steps: usize = std::env::var("DDEXP_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let device = Default::default();
    let network = Network {
        dropout: 0.0,
        ..Network::default()
    };
    let config = DitConfig::from_spec(&network, VOCAB).unwrap();
    let net: Dit<B> = config.init(1, &device);
    let diffusion = Diffusion::new(&Process::default(), VOCAB);
    let tokens: Vec<i64> = (0..BATCH * SEQ_LEN)
        .map(|i| ((i * 7) % VOCAB) as i64)
        .collect();
    let x0 = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [BATCH, SEQ_LEN]), &device);

    let step = |iteration: u64| {
        let t = sample_times(
            TimeSampler::LowDiscrepancy,
            1,
            iteration,
            BATCH,
            diffusion.training_range(),
        );
        let mut noise = rng::rows(1, Stream::Noise, &[iteration], 0..BATCH as u64);
        let out = diffusion.loss(&net, x0.clone(), &t, &mut noise);
        let grads = out.loss.backward();
        B::sync(&device).unwrap();
        grads
    };

    println!(
        "text8-sized DiT ({} blocks × {}, {} heads, K = {}), batch {BATCH} × {SEQ_LEN} tokens, flex CPU",
        network.n_blocks,
        network.n_embed,
        network.n_heads,
        VOCAB + 1
    );
    drop(step(0)); // warm-up
    let start = Instant::now();
    for i in 0..steps {
        drop(step(1 + i as u64));
    }
    let per_step = start.elapsed().as_secs_f64() / steps as f64;
    let tokens_per_s = (BATCH * SEQ_LEN) as f64 / per_step;
    println!(
        "forward+backward: {per_step:.3} s/step, {tokens_per_s:.0} tokens/s ({steps} steps after 1 warm-up)"
    );
}
