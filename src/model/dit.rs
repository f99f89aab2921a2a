//! The Diffusion Transformer (DiT) of nanoDD: a bidirectional transformer over the noised
//! tokens, conditioned on the diffusion time through adaptive LayerNorm (adaLN-zero).
//!
//! Shapes: B sequences of L tokens, width d = n_embed, H heads of size h_d = d / H,
//! K classes (vocabulary + the mask token).
//!
//! Layout. Inside the network the T = L·B tokens are rows of a [T, d] matrix in
//! sequence-major order (position first, then sequence), so every Linear is one plain
//! matrix product and a per-sequence modulation [B, d] is one row [1, B·d] that broadcasts
//! over the positions of the [L, B·d] view. Attention works head-major, [B, H, L, h_d];
//! `BatchLayout` moves rows between the two orders with row gathers. These choices keep
//! every element-wise operation on contiguous operands with at most a shared row or a
//! per-row scalar broadcast, which is what Burn's CPU backend runs as vectorised loops.

use std::sync::{Mutex, MutexGuard};

use burn::module::{Module, Param};
use burn::nn::{Dropout, Embedding, Linear};
use burn::tensor::activation::{sigmoid, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::config::DitConfig;
use crate::rng::{Stream, derive_seed};

/// Width of the sinusoidal time embedding that feeds the conditioning MLP.
pub const TIME_FREQ_DIM: usize = 256;
/// Base of both the time embedding's and the rotary embedding's frequencies.
const MAX_PERIOD: f32 = 10_000.0;
/// LayerNorm epsilon (PyTorch's default, as in the reference).
const LAYER_NORM_EPS: f64 = 1e-5;

/// The network: token embedding (tied to the output projection), time conditioning, the
/// blocks and the final adaLN. Field names follow nanoDD's module tree.
#[derive(Module, Debug)]
pub struct Dit<B: Backend> {
    /// K × d; also the output projection (logits = h · Eᵀ).
    pub(super) vocab_embed: Embedding<B>,
    pub(super) c_embed: TimestepEmbedder<B>,
    pub(super) blocks: Vec<DitBlock<B>>,
    pub(super) norm_final: LayerNorm<B>,
    /// n_cond → 2d: (shift, scale) of the final LayerNorm; zero-initialised.
    pub(super) final_modulation: Linear<B>,
    pub(super) head_dim: usize,
}

/// Time t → 256 sinusoidal features → Linear → SiLU → Linear.
#[derive(Module, Debug)]
pub struct TimestepEmbedder<B: Backend> {
    pub(super) mlp_in: Linear<B>,
    pub(super) mlp_out: Linear<B>,
}

/// One transformer block with adaLN-zero modulation of both branches.
#[derive(Module, Debug)]
pub struct DitBlock<B: Backend> {
    pub(super) norm1: LayerNorm<B>,
    /// d → 3d, no bias; the output splits as (q|k|v, head, head_dim).
    pub(super) attn_qkv: Linear<B>,
    pub(super) attn_out: Linear<B>,
    pub(super) norm2: LayerNorm<B>,
    pub(super) mlp_in: Linear<B>,
    pub(super) mlp_out: Linear<B>,
    /// n_cond → 6d: shift, scale, gate for attention, then for the MLP; zero-initialised.
    pub(super) modulation: Linear<B>,
    pub(super) dropout: Dropout,
    pub(super) n_heads: usize,
}

/// LayerNorm with a weight and no bias, as nanoDD's.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub(super) weight: Param<Tensor<B, 1>>,
}

/// The intermediate values of one forward pass, for parity tests and inspection.
#[derive(Debug, Clone, Default)]
pub struct DitTrace<B: Backend> {
    /// [B, 256] sinusoidal embedding of the time.
    pub timestep_freq: Option<Tensor<B, 2>>,
    /// [B, n_cond] the conditioning vector fed to every adaLN.
    pub cond: Option<Tensor<B, 2>>,
    /// [B, L, d] token embeddings.
    pub embed: Option<Tensor<B, 3>>,
    /// [B, L, d] the hidden state after each block.
    pub blocks: Vec<Tensor<B, 3>>,
}

impl<B: Backend> Dit<B> {
    /// Logits [B, L, K] for noised tokens `x` [B, L] at raw times `t` [B] (1..=T, unscaled).
    /// The mask column is returned as the network computes it; callers that need p(x_0)
    /// remove it. Dropout is active only on an autodiff backend (training).
    pub fn forward(&self, x: Tensor<B, 2, Int>, t: Tensor<B, 1>) -> Tensor<B, 3> {
        self.forward_traced(x, t, None)
    }

    /// [`forward`](Self::forward) that also records the intermediates in `trace`.
    pub fn forward_traced(
        &self,
        x: Tensor<B, 2, Int>,
        t: Tensor<B, 1>,
        mut trace: Option<&mut DitTrace<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq_len] = x.dims();
        let [_, n_embed] = self.vocab_embed.weight.dims();
        let layout = BatchLayout::new(
            batch,
            seq_len,
            n_embed / self.head_dim,
            self.head_dim,
            &x.device(),
        );

        let t_freq = timestep_embedding(t);
        let c = silu(self.c_embed.forward(t_freq.clone()));
        // Sequence-major token rows [L·B, d]. Reshaping the transposed ids copies them: burn-tch
        // takes a transposed view for a tensor of its own, so an in-place operation on the
        // caller's ids would change the ids the embedding's backward reads.
        let ids = x.swap_dims(0, 1).reshape([1, seq_len * batch]);
        let mut h = self
            .vocab_embed
            .forward(ids)
            .reshape([seq_len * batch, n_embed]);
        if let Some(trace) = trace.as_deref_mut() {
            trace.timestep_freq = Some(t_freq);
            trace.cond = Some(c.clone());
            trace.embed = Some(layout.batch_major(h.clone()));
        }

        for block in &self.blocks {
            h = block.forward(h, c.clone(), &layout);
            if let Some(trace) = trace.as_deref_mut() {
                trace.blocks.push(layout.batch_major(h.clone()));
            }
        }

        let [shift, scale] = per_sequence(self.final_modulation.forward(c));
        let h = self.norm_final.modulate(h, shift, scale);
        let embed = self.vocab_embed.weight.val(); // [K, d]
        layout.batch_major(h.matmul(embed.transpose()))
    }

    /// Number of classes K (vocabulary + mask).
    pub fn num_classes(&self) -> usize {
        self.vocab_embed.weight.dims()[0]
    }

    /// The configuration this network was built with (dropout is not stored in the weights
    /// and is taken from the module).
    pub fn config(&self) -> DitConfig {
        let [num_classes, n_embed] = self.vocab_embed.weight.dims();
        let n_cond = self.c_embed.mlp_out.weight.dims()[1];
        DitConfig {
            num_classes,
            n_embed,
            n_heads: n_embed / self.head_dim,
            n_blocks: self.blocks.len(),
            n_cond,
            dropout: self.blocks.first().map_or(0.0, |b| b.dropout.prob),
        }
    }
}

impl<B: Backend> TimestepEmbedder<B> {
    fn forward(&self, t_freq: Tensor<B, 2>) -> Tensor<B, 2> {
        self.mlp_out.forward(silu(self.mlp_in.forward(t_freq)))
    }
}

impl<B: Backend> DitBlock<B> {
    /// Sequence-major token rows `x` [L·B, d] → the same after the block.
    fn forward(&self, x: Tensor<B, 2>, c: Tensor<B, 2>, layout: &BatchLayout<B>) -> Tensor<B, 2> {
        let [
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        ] = per_sequence(self.modulation.forward(c));

        // Attention branch.
        let h = self.norm1.modulate(x.clone(), shift_msa, scale_msa);
        let h = self.attn_out.forward(self.attention(h, layout));
        let x = x + gated(self.dropout.forward(h), gate_msa);

        // MLP branch.
        let h = self.norm2.modulate(x.clone(), shift_mlp, scale_mlp);
        let h = self.mlp_out.forward(gelu_tanh(self.mlp_in.forward(h)));
        x + gated(self.dropout.forward(h), gate_mlp)
    }

    /// Bidirectional multi-head attention with rotary positions: token rows [T, d] in and out.
    fn attention(&self, h: Tensor<B, 2>, layout: &BatchLayout<B>) -> Tensor<B, 2> {
        // The weight's output columns are q | k | v; one product per part leaves each of
        // them contiguous for the row gathers into head-major order.
        let weight = self.attn_qkv.weight.val();
        let d = weight.dims()[0];
        let project = |part: usize| h.clone().matmul(weight.clone().narrow(1, part * d, d));
        let q = layout.rotary_heads(project(0), &layout.rotary_q);
        let k = layout.rotary_heads(project(1), &layout.rotary_k);
        let v = layout.heads(project(2));
        let weights = softmax(q.matmul(k.swap_dims(2, 3)), 3);
        layout.tokens(weights.matmul(v))
    }
}

impl<B: Backend> LayerNorm<B> {
    /// LayerNorm(x)·(1 + scale) + shift for token rows `x` [L·B, d] and per-sequence rows
    /// `shift`, `scale` [1, B·d]. The norm's weight joins the scale on the small
    /// per-sequence row, which saves a pass over the activations.
    fn modulate(&self, x: Tensor<B, 2>, shift: Tensor<B, 2>, scale: Tensor<B, 2>) -> Tensor<B, 2> {
        let [tokens, d] = x.dims();
        let [_, row] = shift.dims();
        let centered = x.clone() - x.mean_dim(1);
        let var = centered.clone().square().mean_dim(1);
        let normed = centered / (var + LAYER_NORM_EPS).sqrt();
        let gain = (scale.reshape([row / d, d]) + 1.0) * self.weight.val().unsqueeze();
        let per_position = normed.reshape([tokens * d / row, row]);
        (per_position * gain.reshape([1, row]) + shift).reshape([tokens, d])
    }
}

/// x·gate for token rows `x` [L·B, d] and a per-sequence row `gate` [1, B·d].
fn gated<B: Backend>(x: Tensor<B, 2>, gate: Tensor<B, 2>) -> Tensor<B, 2> {
    let [tokens, d] = x.dims();
    let [_, row] = gate.dims();
    (x.reshape([tokens * d / row, row]) * gate).reshape([tokens, d])
}

/// Splits a modulation [B, N·d] into its N parts, each as one row [1, B·d] (sequence b's
/// d values at b·d): the row that broadcasts over positions in the [L, B·d] view.
fn per_sequence<B: Backend, const N: usize>(modulation: Tensor<B, 2>) -> [Tensor<B, 2>; N] {
    let [batch, width] = modulation.dims();
    let parts: Vec<_> = modulation
        .chunk(N, 1)
        .into_iter()
        .map(|part| part.reshape([1, batch * width / N]))
        .collect();
    parts
        .try_into()
        .unwrap_or_else(|_| unreachable!("chunk of a dimension divisible by {N}"))
}

/// What every block of one forward shares: the rotary tables and the row orders between the
/// sequence-major token rows [T, d] and attention's head-major [B, H, L, h_d].
struct BatchLayout<B: Backend> {
    batch: usize,
    seq_len: usize,
    n_heads: usize,
    head_dim: usize,
    /// Half-head rows of [T, d] (viewed as [T·H·2, h_d/2]) in head-major order; and the same
    /// with the two halves of every head exchanged, which is rotate_half up to signs.
    to_heads: Tensor<B, 1, Int>,
    to_heads_swapped: Tensor<B, 1, Int>,
    /// Head rows of [B, H, L, h_d] (viewed as [B·H·L, h_d]) in token order.
    to_tokens: Tensor<B, 1, Int>,
    /// Rows of [L·B, ·] in batch-major order [B·L, ·].
    to_batch: Tensor<B, 1, Int>,
    rotary_q: RotaryTables<B>,
    rotary_k: RotaryTables<B>,
}

/// x·cos + rotate_half(x)·sin for one sequence's positions, as rows [1, L·h_d] that
/// broadcast over the B·H head rows of a head-major tensor.
struct RotaryTables<B: Backend> {
    cos: Tensor<B, 2>,
    /// sin with the first half of every head negated: rotate_half(x) = swap(x) · (−1 | 1).
    sin: Tensor<B, 2>,
}

impl<B: Backend> BatchLayout<B> {
    fn new(
        batch: usize,
        seq_len: usize,
        n_heads: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let index = |rows: Vec<usize>| {
            let n = rows.len();
            let rows = rows.into_iter().map(|r| r as i64).collect();
            Tensor::from_data(TensorData::new::<i64, _>(rows, [n]), device)
        };
        let half_heads = |swap: usize| {
            let mut rows = Vec::with_capacity(seq_len * batch * n_heads * 2);
            for b in 0..batch {
                for h in 0..n_heads {
                    for l in 0..seq_len {
                        let head = (l * batch + b) * n_heads + h;
                        rows.extend([2 * head + swap, 2 * head + (1 - swap)]);
                    }
                }
            }
            index(rows)
        };
        let mut to_tokens = Vec::with_capacity(seq_len * batch * n_heads);
        for l in 0..seq_len {
            for b in 0..batch {
                to_tokens.extend((0..n_heads).map(|h| (b * n_heads + h) * seq_len + l));
            }
        }
        let to_batch: Vec<usize> = (0..batch)
            .flat_map(|b| (0..seq_len).map(move |l| l * batch + b))
            .collect();
        // The attention scale 1/√h_d rides on q's tables (exact for power-of-4 head sizes).
        let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
        BatchLayout {
            batch,
            seq_len,
            n_heads,
            head_dim,
            to_heads: half_heads(0),
            to_heads_swapped: half_heads(1),
            to_tokens: index(to_tokens),
            to_batch: index(to_batch),
            rotary_q: RotaryTables::new(seq_len, head_dim, scale, device),
            rotary_k: RotaryTables::new(seq_len, head_dim, 1.0, device),
        }
    }

    /// Token rows [T, d] → head-major [B, H, L, h_d].
    fn heads(&self, x: Tensor<B, 2>) -> Tensor<B, 4> {
        let (b, h, l, hd) = (self.batch, self.n_heads, self.seq_len, self.head_dim);
        x.reshape([l * b * h * 2, hd / 2])
            .select(0, self.to_heads.clone())
            .reshape([b, h, l, hd])
    }

    /// Token rows [T, d] → head-major [B, H, L, h_d] with the rotary embedding applied.
    fn rotary_heads(&self, x: Tensor<B, 2>, rotary: &RotaryTables<B>) -> Tensor<B, 4> {
        let (b, h, l, hd) = (self.batch, self.n_heads, self.seq_len, self.head_dim);
        let half_rows = x.reshape([l * b * h * 2, hd / 2]);
        let head_rows = |order: &Tensor<B, 1, Int>| {
            half_rows
                .clone()
                .select(0, order.clone())
                .reshape([b * h, l * hd])
        };
        let rotated = head_rows(&self.to_heads) * rotary.cos.clone()
            + head_rows(&self.to_heads_swapped) * rotary.sin.clone();
        rotated.reshape([b, h, l, hd])
    }

    /// Head-major [B, H, L, h_d] → token rows [T, d].
    fn tokens(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let (b, h, l, hd) = (self.batch, self.n_heads, self.seq_len, self.head_dim);
        x.reshape([b * h * l, hd])
            .select(0, self.to_tokens.clone())
            .reshape([l * b, h * hd])
    }

    /// Sequence-major rows [L·B, w] → [B, L, w].
    fn batch_major(&self, x: Tensor<B, 2>) -> Tensor<B, 3> {
        let [_, width] = x.dims();
        x.select(0, self.to_batch.clone())
            .reshape([self.batch, self.seq_len, width])
    }
}

impl<B: Backend> RotaryTables<B> {
    /// cos/sin of position × inverse frequency, computed on the host in f32 exactly as the
    /// reference does, so every backend sees the same tables; both multiplied by `scale`.
    fn new(seq_len: usize, head_dim: usize, scale: f32, device: &B::Device) -> Self {
        let inv_freq = rotary_inv_freq(head_dim);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * head_dim);
        let mut sin = Vec::with_capacity(seq_len * head_dim);
        for pos in 0..seq_len {
            // "[freqs, freqs] concatenated": the two halves share frequencies.
            for i in 0..head_dim {
                let angle = pos as f32 * inv_freq[i % half];
                let sign = if i < half { -1.0 } else { 1.0 };
                cos.push(angle.cos() * scale);
                sin.push(sign * angle.sin() * scale);
            }
        }
        let row =
            |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, seq_len * head_dim]), device);
        RotaryTables {
            cos: row(cos),
            sin: row(sin),
        }
    }
}

/// Inverse frequencies 10000^(−2i/h_d) of the rotary embedding (nanoDD's `inv_freq` buffer).
pub fn rotary_inv_freq(head_dim: usize) -> Vec<f32> {
    (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / MAX_PERIOD.powf(i as f32 / head_dim as f32))
        .collect()
}

/// [cos(t·f), sin(t·f)] for the 128 frequencies f_i = exp(−ln(10000)·i/128): [B] → [B, 256].
fn timestep_embedding<B: Backend>(t: Tensor<B, 1>) -> Tensor<B, 2> {
    let half = TIME_FREQ_DIM / 2;
    // As the reference: the f64 constant −ln(10000) rounded to f32, then f32 arithmetic.
    let scale = -(f64::from(MAX_PERIOD).ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (scale * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), &t.device());
    let args = t.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim(0);
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

/// GELU with the tanh approximation, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), written as
/// x·sigmoid(x·(c + 0.044715·c·x²)) with c = 2·√(2/π): the same function in six element-wise
/// operations (Burn's `gelu_approximate` raises x to the power 3 with `powf`).
fn gelu_tanh<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    const C: f64 = 2.0 * 0.797_884_560_802_865_4;
    let inner = x.clone() * (x.clone().square() * (0.044715 * C) + C);
    x * sigmoid(inner)
}

/// Serialises dropout draws within the process: see [`seed_dropout`].
static DROPOUT_DRAWS: Mutex<()> = Mutex::new(());

/// Seeds the backend's generator, which draws the dropout masks, from the stream
/// `(seed, Dropout, [iteration, micro, rank])`: call it before each training forward so the
/// masks are a function of where the step is, like every other random draw. Keep the guard
/// it returns until the forward has drawn its masks.
///
/// Burn's dropout draws from the backend's own generator (`Backend::seed`). On flex that is
/// one generator per process, consumed in operation order, and on CUDA it is also global to
/// the process. Replicas training in one process (or any two threads running a training
/// forward) share it, so the guard holds a process-wide lock from seeding to the end of the
/// forward: each forward's masks then depend only on its own stream, whatever the threads'
/// timing. The forward only launches work on a GPU, so GPUs still compute in parallel; CPU
/// peers take turns.
#[must_use = "the lock must be held until the forward has drawn its dropout masks"]
pub fn seed_dropout<B: Backend>(
    device: &B::Device,
    seed: u64,
    iteration: u64,
    micro: u64,
    rank: u64,
) -> MutexGuard<'static, ()> {
    let guard = DROPOUT_DRAWS.lock().unwrap_or_else(|p| p.into_inner());
    B::seed(
        device,
        derive_seed(seed, Stream::Dropout, &[iteration, micro, rank]),
    );
    guard
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    fn config(dropout: f64) -> DitConfig {
        DitConfig {
            num_classes: 7,
            n_embed: 16,
            n_heads: 2,
            n_blocks: 2,
            n_cond: 8,
            dropout,
        }
    }

    /// Initial weights with the adaLN modulations made non-zero, so every branch matters.
    fn busy_net<B: Backend>(dropout: f64) -> Dit<B> {
        let c = config(dropout);
        let mut weights = c.init_state_dict(1);
        for name in [
            "blocks.0.adaLN_modulation.weight",
            "blocks.1.adaLN_modulation.weight",
            "adaLN_modulation.weight",
        ] {
            let shape = weights.get(name).unwrap().shape.clone();
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
                .collect();
            weights.insert(name, TensorData::new(values, shape));
        }
        Dit::from_state_dict(&c, &weights, &Default::default()).unwrap()
    }

    fn inputs<B: Backend>() -> (Tensor<B, 2, Int>, Tensor<B, 1>) {
        let device = Default::default();
        let x = Tensor::from_data(
            TensorData::new(vec![0i64, 3, 6, 6, 2, 1, 5, 4, 6, 0, 1, 2], [2, 6]),
            &device,
        );
        let t = Tensor::from_data(TensorData::new(vec![1.0f32, 700.0], [2]), &device);
        (x, t)
    }

    #[test]
    fn zero_initialised_blocks_are_the_identity() {
        let net: Dit<Flex> = config(0.0).init(1, &Default::default());
        let (x, t) = inputs();
        let mut trace = DitTrace::default();
        let logits = net.forward_traced(x, t, Some(&mut trace));
        assert_eq!(logits.dims(), [2, 6, 7]);
        let embed = trace.embed.unwrap().into_data();
        for block in trace.blocks {
            assert_eq!(block.into_data(), embed);
        }
        assert_eq!(trace.timestep_freq.unwrap().dims(), [2, TIME_FREQ_DIM]);
    }

    #[test]
    fn the_output_depends_on_time_and_position() {
        let net: Dit<Flex> = busy_net(0.0);
        let (x, t) = inputs();
        let a = net.forward(x.clone(), t.clone()).into_data();
        let later = net.forward(x.clone(), t + 1.0).into_data();
        assert_ne!(a, later, "time-conditioned");
        // Same token at two positions of one sequence: rotary makes the outputs differ.
        let logits = net.forward(x, Tensor::from_data([5.0f32, 5.0], &Default::default()));
        let row = |i: usize| logits.clone().narrow(1, i, 1).into_data();
        assert_ne!(row(2), row(3), "positions 2 and 3 both hold token 6");
    }

    #[test]
    fn dropout_is_seeded_and_only_active_with_autodiff() {
        let (x, t) = inputs::<Autodiff<Flex>>();
        let device = Default::default();
        let train: Dit<Autodiff<Flex>> = busy_net(0.5);
        let run = |seed: u64| {
            let _draws = seed_dropout::<Autodiff<Flex>>(&device, 9, seed, 0, 0);
            train.forward(x.clone(), t.clone()).into_data()
        };
        assert_eq!(run(1), run(1), "same stream, same masks");
        assert_ne!(run(1), run(2), "another iteration, other masks");

        // Without autodiff (evaluation) dropout is off: equal to a dropout-free network.
        let eval: Dit<Flex> = busy_net(0.5);
        let plain: Dit<Flex> = busy_net(0.0);
        let (x, t) = inputs::<Flex>();
        assert_eq!(
            eval.forward(x.clone(), t.clone()).into_data(),
            plain.forward(x, t).into_data()
        );
    }
}
