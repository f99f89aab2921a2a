//! The Diffusion Transformer (DiT) of nanoDD: a bidirectional transformer over the noised
//! tokens, conditioned on the diffusion time through adaptive LayerNorm (adaLN-zero).
//!
//! Shapes: B sequences of L tokens, width d = n_embed, H heads of size h_d = d / H,
//! K classes (vocabulary + the mask token).

use std::sync::{Mutex, MutexGuard};

use burn::module::{Module, Param};
use burn::nn::{Dropout, Embedding, Linear};
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
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

/// Rotary tables for one sequence length: [1, 1, L, h_d] each.
struct Rotary<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
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
        let [_, seq_len] = x.dims();
        let device = x.device();

        let t_freq = timestep_embedding(t);
        let c = silu(self.c_embed.forward(t_freq.clone()));
        let mut h = self.vocab_embed.forward(x);
        if let Some(trace) = trace.as_deref_mut() {
            trace.timestep_freq = Some(t_freq);
            trace.cond = Some(c.clone());
            trace.embed = Some(h.clone());
        }

        let rotary = Rotary::new(seq_len, self.head_dim, &device);
        for block in &self.blocks {
            h = block.forward(h, &rotary, c.clone());
            if let Some(trace) = trace.as_deref_mut() {
                trace.blocks.push(h.clone());
            }
        }

        let [shift, scale] = chunks(self.final_modulation.forward(c).unsqueeze_dim(1));
        let h = modulate(self.norm_final.forward(h), shift, scale);
        let embed = self.vocab_embed.weight.val(); // [K, d]
        h.matmul(embed.transpose().unsqueeze())
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
    fn forward(&self, x: Tensor<B, 3>, rotary: &Rotary<B>, c: Tensor<B, 2>) -> Tensor<B, 3> {
        let [batch, seq_len, d] = x.dims();
        let head_dim = d / self.n_heads;
        let [
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        ] = chunks(self.modulation.forward(c).unsqueeze_dim(1));

        // Attention branch.
        let h = modulate(self.norm1.forward(x.clone()), shift_msa, scale_msa);
        // [B, L, 3d] → (q|k|v, head, head_dim) → [3, B, H, L, h_d]; the reshape of each part
        // makes q, k and v contiguous, so the rotary arithmetic runs on dense memory.
        let qkv = self
            .attn_qkv
            .forward(h)
            .reshape([batch, seq_len, 3, self.n_heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([batch, self.n_heads, seq_len, head_dim])
        };
        let q = rotary.apply(part(0));
        let k = rotary.apply(part(1));
        let v = part(2);
        let h = attention(q, k, v, None, None, AttentionModuleOptions::default())
            .swap_dims(1, 2)
            .reshape([batch, seq_len, d]);
        let h = self.attn_out.forward(h);
        let x = x + gate_msa * self.dropout.forward(h);

        // MLP branch.
        let h = modulate(self.norm2.forward(x.clone()), shift_mlp, scale_mlp);
        let h = self.mlp_out.forward(gelu_tanh(self.mlp_in.forward(h)));
        x + gate_mlp * self.dropout.forward(h)
    }
}

impl<B: Backend> LayerNorm<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (var, mean) = x.clone().var_mean_bias(2);
        let normed = (x - mean) / (var + LAYER_NORM_EPS).sqrt();
        normed * self.weight.val().unsqueeze()
    }
}

impl<B: Backend> Rotary<B> {
    /// cos/sin of position × inverse frequency, computed on the host in f32 exactly as the
    /// reference does, so every backend sees the same tables.
    fn new(seq_len: usize, head_dim: usize, device: &B::Device) -> Self {
        let inv_freq = rotary_inv_freq(head_dim);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * head_dim);
        let mut sin = Vec::with_capacity(seq_len * head_dim);
        for pos in 0..seq_len {
            // "[freqs, freqs] concatenated": the two halves share frequencies.
            for i in 0..head_dim {
                let angle = pos as f32 * inv_freq[i % half];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table = |v: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(v, [seq_len, head_dim]), device).unsqueeze()
        };
        Rotary {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// x·cos + rotate_half(x)·sin for x [B, H, L, h_d], where rotate_half(x) = [−x2, x1].
    fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let half = x.dims()[3] / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
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
/// x·sigmoid(2·√(2/π)·x·(1 + 0.044715·x²)) (the same function; fewer and cheaper operations
/// than Burn's `gelu_approximate`, which raises x to the power 3 with `powf`).
fn gelu_tanh<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    const TWO_SQRT_2_OVER_PI: f64 = 2.0 * 0.797_884_560_802_865_4;
    let inner = x.clone() * (x.clone() * x.clone() * 0.044715 + 1.0) * TWO_SQRT_2_OVER_PI;
    x * sigmoid(inner)
}

/// x·(1 + scale) + shift.
fn modulate<B: Backend>(x: Tensor<B, 3>, shift: Tensor<B, 3>, scale: Tensor<B, 3>) -> Tensor<B, 3> {
    x * (scale + 1.0) + shift
}

/// Splits the last dimension into N equal chunks.
fn chunks<B: Backend, const N: usize>(x: Tensor<B, 3>) -> [Tensor<B, 3>; N] {
    let parts = x.chunk(N, 2);
    parts
        .try_into()
        .unwrap_or_else(|_| unreachable!("chunk of a dimension divisible by {N}"))
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
