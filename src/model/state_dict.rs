//! The DiT's weights as a state dict named exactly as nanoDD's (`vocab_embed.weight`,
//! `blocks.0.attn_qkv.weight`, ...), in PyTorch's layout (Linear weights are [out, in]).
//!
//! One naming for everything ddexp reads and writes — imported nanoDD checkpoints, model
//! folders, gradients in the parity tests, and the training checkpoints — so a ddexp weights
//! file can be loaded by nanoDD itself (under the `net.` prefix, see [`StateDict::with_prefix`])
//! and by any safetensors reader. Burn stores Linear weights as [in, out]; the transposition
//! happens here and nowhere else.
//!
//! Initialisation is part of the same table: every parameter's name, shape and initial
//! distribution are declared once in [`DitConfig::param_specs`], and a fresh network is
//! built by drawing a state dict on the host (deterministic for a seed, identical on every
//! backend) and loading it.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use burn::module::Param;
use burn::nn::{DropoutConfig, Embedding, Linear};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use rand::Rng;

use super::config::DitConfig;
use super::dit::{Dit, DitBlock, LayerNorm, TIME_FREQ_DIM, TimestepEmbedder, rotary_inv_freq};
use crate::rng::{self, Stream};

/// Name of the rotary embedding's inverse frequencies, a buffer in nanoDD's state dict.
/// It is derived from the head dimension; ddexp writes it for compatibility and checks it
/// when present.
pub const INV_FREQ: &str = "rotary_emb.inv_freq";

/// Named host tensors (f32 unless stated), ordered by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict(pub BTreeMap<String, TensorData>);

impl StateDict {
    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.0.get(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, data: TensorData) {
        self.0.insert(name.into(), data);
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every name prefixed with `prefix` (e.g. `net.`, or `model.`/`ema.` to keep two
    /// weight sets in one file).
    pub fn with_prefix(self, prefix: &str) -> StateDict {
        StateDict(
            self.0
                .into_iter()
                .map(|(k, v)| (format!("{prefix}{k}"), v))
                .collect(),
        )
    }

    /// The entries whose name starts with `prefix`, with the prefix removed.
    pub fn strip_prefix(&self, prefix: &str) -> StateDict {
        StateDict(
            self.0
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
                .collect(),
        )
    }
}

impl FromIterator<(String, TensorData)> for StateDict {
    fn from_iter<I: IntoIterator<Item = (String, TensorData)>>(iter: I) -> Self {
        StateDict(iter.into_iter().collect())
    }
}

/// How a parameter starts, following nanoDD (and PyTorch's defaults where nanoDD keeps them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Ones,
    /// adaLN-zero: the modulations start at zero so every block starts as the identity.
    Zeros,
    /// U(−bound, bound): PyTorch's default for Linear, bound = 1/√fan_in.
    Uniform(f32),
    /// N(0, std²) truncated at ±3·std: the token embedding.
    TruncatedNormal(f32),
}

/// One parameter: nanoDD name, shape in PyTorch layout, initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl DitConfig {
    /// Every parameter of the network, in nanoDD's state-dict order.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (k, d, c) = (self.num_classes, self.n_embed, self.n_cond);
        let mut specs = Specs::default();
        specs.param(
            "vocab_embed.weight".into(),
            vec![k, d],
            Init::TruncatedNormal(1.0 / (d as f32).sqrt()),
        );
        specs.linear("c_embed.mlp.0", TIME_FREQ_DIM, c, true);
        specs.linear("c_embed.mlp.2", c, c, true);
        for i in 0..self.n_blocks {
            let p = format!("blocks.{i}");
            specs.param(format!("{p}.norm1.weight"), vec![d], Init::Ones);
            specs.linear(&format!("{p}.attn_qkv"), d, 3 * d, false);
            specs.linear(&format!("{p}.attn_out"), d, d, false);
            specs.param(format!("{p}.norm2.weight"), vec![d], Init::Ones);
            specs.linear(&format!("{p}.mlp.0"), d, 4 * d, true);
            specs.linear(&format!("{p}.mlp.2"), 4 * d, d, true);
            specs.zero_linear(&format!("{p}.adaLN_modulation"), c, 6 * d);
        }
        specs.param("norm_final.weight".into(), vec![d], Init::Ones);
        specs.zero_linear("adaLN_modulation", c, 2 * d);
        specs.0
    }

    /// A freshly initialised network. Each parameter draws from its own stream
    /// `(seed, Init, [index in param_specs])`, so the weights depend on the seed only.
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> Dit<B> {
        Dit::from_state_dict(self, &self.init_state_dict(seed), device)
            .expect("an initial state dict matches its own specs")
    }

    /// The initial weights on the host, as a state dict.
    pub fn init_state_dict(&self, seed: u64) -> StateDict {
        self.param_specs()
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                let mut rng = rng::rng(seed, Stream::Init, &[index as u64]);
                let n: usize = spec.shape.iter().product();
                let values: Vec<f32> = match spec.init {
                    Init::Ones => vec![1.0; n],
                    Init::Zeros => vec![0.0; n],
                    Init::Uniform(bound) => {
                        (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                    }
                    Init::TruncatedNormal(std) => {
                        (0..n).map(|_| truncated_normal(&mut rng) * std).collect()
                    }
                };
                (spec.name, TensorData::new(values, spec.shape))
            })
            .collect()
    }
}

/// A standard normal draw conditioned on |z| ≤ 3 (Box–Muller with rejection).
fn truncated_normal(rng: &mut impl Rng) -> f32 {
    loop {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: keeps ln finite
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        if z.abs() <= 3.0 {
            return z as f32;
        }
    }
}

#[derive(Default)]
struct Specs(Vec<ParamSpec>);

impl Specs {
    fn param(&mut self, name: String, shape: Vec<usize>, init: Init) {
        self.0.push(ParamSpec { name, shape, init });
    }

    /// A Linear layer with PyTorch's default initialisation.
    fn linear(&mut self, name: &str, d_in: usize, d_out: usize, bias: bool) {
        let init = Init::Uniform(1.0 / (d_in as f32).sqrt());
        self.param(format!("{name}.weight"), vec![d_out, d_in], init);
        if bias {
            self.param(format!("{name}.bias"), vec![d_out], init);
        }
    }

    /// An adaLN modulation: weight and bias start at zero.
    fn zero_linear(&mut self, name: &str, d_in: usize, d_out: usize) {
        self.param(format!("{name}.weight"), vec![d_out, d_in], Init::Zeros);
        self.param(format!("{name}.bias"), vec![d_out], Init::Zeros);
    }
}

/// A parameter as the state dict sees it.
enum ParamRef<'a, B: Backend> {
    Vector(&'a Param<Tensor<B, 1>>),
    /// Stored by Burn in the state dict's layout (the embedding).
    Matrix(&'a Param<Tensor<B, 2>>),
    /// A Linear weight: Burn's [in, out], the state dict's [out, in].
    LinearWeight(&'a Param<Tensor<B, 2>>),
}

impl<B: Backend> Dit<B> {
    /// Builds a network from weights named as nanoDD's DiT (no `net.` prefix). Every
    /// parameter must be present with its exact shape; unknown names are errors, so a
    /// checkpoint of a different architecture cannot load silently.
    pub fn from_state_dict(
        config: &DitConfig,
        weights: &StateDict,
        device: &B::Device,
    ) -> Result<Dit<B>> {
        config.check()?;
        check_names_and_shapes(config, weights)?;
        let load = Loader { weights, device };
        let dropout = DropoutConfig::new(config.dropout).init();
        let blocks = (0..config.n_blocks)
            .map(|i| {
                let p = format!("blocks.{i}");
                Ok(DitBlock {
                    norm1: load.layer_norm(&format!("{p}.norm1"))?,
                    attn_qkv: load.linear(&format!("{p}.attn_qkv"), false)?,
                    attn_out: load.linear(&format!("{p}.attn_out"), false)?,
                    norm2: load.layer_norm(&format!("{p}.norm2"))?,
                    mlp_in: load.linear(&format!("{p}.mlp.0"), true)?,
                    mlp_out: load.linear(&format!("{p}.mlp.2"), true)?,
                    modulation: load.linear(&format!("{p}.adaLN_modulation"), true)?,
                    dropout: dropout.clone(),
                    n_heads: config.n_heads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Dit {
            vocab_embed: Embedding {
                weight: load.param("vocab_embed.weight", false)?,
            },
            c_embed: TimestepEmbedder {
                mlp_in: load.linear("c_embed.mlp.0", true)?,
                mlp_out: load.linear("c_embed.mlp.2", true)?,
            },
            blocks,
            norm_final: load.layer_norm("norm_final")?,
            final_modulation: load.linear("adaLN_modulation", true)?,
            head_dim: config.head_dim(),
        })
    }

    /// The weights under nanoDD's names, plus the `rotary_emb.inv_freq` buffer.
    pub fn state_dict(&self) -> StateDict {
        let mut out = StateDict::default();
        self.visit_params(&mut |name, param| {
            let data = match param {
                ParamRef::Vector(p) => p.val().into_data(),
                ParamRef::Matrix(p) => p.val().into_data(),
                ParamRef::LinearWeight(p) => transpose(&p.val().into_data()),
            };
            out.insert(name, data);
        });
        let inv_freq = rotary_inv_freq(self.head_dim);
        let len = inv_freq.len();
        out.insert(INV_FREQ, TensorData::new(inv_freq, [len]));
        out
    }

    /// Visits every parameter with its state-dict name, in [`DitConfig::param_specs`] order.
    fn visit_params(&self, f: &mut dyn FnMut(String, ParamRef<'_, B>)) {
        f(
            "vocab_embed.weight".into(),
            ParamRef::Matrix(&self.vocab_embed.weight),
        );
        visit_linear(f, "c_embed.mlp.0", &self.c_embed.mlp_in);
        visit_linear(f, "c_embed.mlp.2", &self.c_embed.mlp_out);
        for (i, block) in self.blocks.iter().enumerate() {
            let p = format!("blocks.{i}");
            f(
                format!("{p}.norm1.weight"),
                ParamRef::Vector(&block.norm1.weight),
            );
            visit_linear(f, &format!("{p}.attn_qkv"), &block.attn_qkv);
            visit_linear(f, &format!("{p}.attn_out"), &block.attn_out);
            f(
                format!("{p}.norm2.weight"),
                ParamRef::Vector(&block.norm2.weight),
            );
            visit_linear(f, &format!("{p}.mlp.0"), &block.mlp_in);
            visit_linear(f, &format!("{p}.mlp.2"), &block.mlp_out);
            visit_linear(f, &format!("{p}.adaLN_modulation"), &block.modulation);
        }
        f(
            "norm_final.weight".into(),
            ParamRef::Vector(&self.norm_final.weight),
        );
        visit_linear(f, "adaLN_modulation", &self.final_modulation);
    }
}

fn visit_linear<B: Backend>(
    f: &mut dyn FnMut(String, ParamRef<'_, B>),
    name: &str,
    linear: &Linear<B>,
) {
    f(
        format!("{name}.weight"),
        ParamRef::LinearWeight(&linear.weight),
    );
    if let Some(bias) = &linear.bias {
        f(format!("{name}.bias"), ParamRef::Vector(bias));
    }
}

impl<B: AutodiffBackend> Dit<B> {
    /// The gradient of every parameter under its state-dict name, in the state dict's layout.
    /// Parameters the loss does not depend on get zeros.
    pub fn grads_state_dict(&self, grads: &B::Gradients) -> StateDict {
        let mut out = StateDict::default();
        self.visit_params(&mut |name, param| {
            let data = match param {
                ParamRef::Vector(p) => grad_data(p, grads),
                ParamRef::Matrix(p) => grad_data(p, grads),
                ParamRef::LinearWeight(p) => transpose(&grad_data(p, grads)),
            };
            out.insert(name, data);
        });
        out
    }
}

fn grad_data<B: AutodiffBackend, const D: usize>(
    param: &Param<Tensor<B, D>>,
    grads: &B::Gradients,
) -> TensorData {
    match param.grad(grads) {
        Some(grad) => grad.into_data(),
        None => TensorData::zeros::<f32, _>(param.dims()),
    }
}

struct Loader<'a, B: Backend> {
    weights: &'a StateDict,
    device: &'a B::Device,
}

impl<B: Backend> Loader<'_, B> {
    /// A parameter from the (already shape-checked) state dict; `transposed` for Linear
    /// weights, which Burn keeps as [in, out].
    fn param<const D: usize>(&self, name: &str, transposed: bool) -> Result<Param<Tensor<B, D>>> {
        let data = self
            .weights
            .get(name)
            .with_context(|| format!("missing weight `{name}`"))?;
        let data = as_f32(name, data)?;
        let data = if transposed { transpose(&data) } else { data };
        Ok(Param::from_tensor(Tensor::from_data(data, self.device)))
    }

    fn linear(&self, name: &str, bias: bool) -> Result<Linear<B>> {
        Ok(Linear {
            weight: self.param(&format!("{name}.weight"), true)?,
            bias: if bias {
                Some(self.param(&format!("{name}.bias"), false)?)
            } else {
                None
            },
        })
    }

    fn layer_norm(&self, name: &str) -> Result<LayerNorm<B>> {
        Ok(LayerNorm {
            weight: self.param(&format!("{name}.weight"), false)?,
        })
    }
}

/// Every expected parameter is present with its shape, the only other entry allowed is the
/// rotary buffer, and that buffer matches the head dimension.
pub fn check_names_and_shapes(config: &DitConfig, weights: &StateDict) -> Result<()> {
    let specs = config.param_specs();
    for spec in &specs {
        let Some(data) = weights.get(&spec.name) else {
            bail!(
                "missing weight `{}` (expected shape {:?}) for a DiT with {} blocks",
                spec.name,
                spec.shape,
                config.n_blocks
            );
        };
        if data.shape.as_slice() != spec.shape.as_slice() {
            bail!(
                "weight `{}` has shape {:?}, expected {:?} (K = {}, n_embed = {}, n_cond = {})",
                spec.name,
                data.shape.as_slice(),
                spec.shape,
                config.num_classes,
                config.n_embed,
                config.n_cond
            );
        }
    }
    for name in weights.names() {
        if name != INV_FREQ && !specs.iter().any(|s| s.name == name) {
            bail!(
                "unexpected weight `{name}`: not a parameter of a DiT with {} blocks",
                config.n_blocks
            );
        }
    }
    if let Some(stored) = weights.get(INV_FREQ) {
        let expected = rotary_inv_freq(config.head_dim());
        let stored = as_f32(INV_FREQ, stored)?
            .to_vec::<f32>()
            .unwrap_or_default();
        let matches = stored.len() == expected.len()
            && stored
                .iter()
                .zip(&expected)
                .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs());
        if !matches {
            bail!(
                "`{INV_FREQ}` has {} frequencies, which does not match n_heads = {} \
                 (head dimension {} needs {}): the checkpoint was trained with other sizes",
                stored.len(),
                config.n_heads,
                config.head_dim(),
                expected.len()
            );
        }
    }
    Ok(())
}

/// The tensor as f32 (half-precision checkpoints are widened); other types are errors.
pub(crate) fn as_f32(name: &str, data: &TensorData) -> Result<TensorData> {
    match data.dtype {
        DType::F32 => Ok(data.clone()),
        DType::F64 | DType::F16 | DType::BF16 => Ok(data.clone().convert::<f32>()),
        other => bail!("weight `{name}` has type {other:?}, expected a float tensor"),
    }
}

/// The transpose of a 2-D f32 tensor, materialised (contiguous) on the host.
fn transpose(data: &TensorData) -> TensorData {
    let [rows, cols] = [data.shape[0], data.shape[1]];
    let values = data
        .as_slice::<f32>()
        .expect("f32 weights (checked on load)");
    let mut out = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    TensorData::new(out, [cols, rows])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn config() -> DitConfig {
        DitConfig {
            num_classes: 7,
            n_embed: 16,
            n_heads: 2,
            n_blocks: 2,
            n_cond: 8,
            dropout: 0.0,
        }
    }

    fn values(weights: &StateDict, name: &str) -> Vec<f32> {
        weights.get(name).unwrap().to_vec::<f32>().unwrap()
    }

    #[test]
    fn init_depends_on_the_seed_only() {
        let c = config();
        assert_eq!(c.init_state_dict(3), c.init_state_dict(3));
        assert_ne!(
            values(&c.init_state_dict(3), "blocks.0.attn_qkv.weight"),
            values(&c.init_state_dict(4), "blocks.0.attn_qkv.weight")
        );
    }

    #[test]
    fn init_follows_nanodd() {
        let c = config();
        let weights = c.init_state_dict(1);
        for name in ["blocks.1.adaLN_modulation.weight", "adaLN_modulation.bias"] {
            assert!(
                values(&weights, name).iter().all(|&v| v == 0.0),
                "{name} is zero"
            );
        }
        assert!(
            values(&weights, "norm_final.weight")
                .iter()
                .all(|&v| v == 1.0)
        );
        let bound = 1.0 / 16f32.sqrt();
        assert!(
            values(&weights, "blocks.0.mlp.0.weight")
                .iter()
                .all(|v| v.abs() < bound)
        );
        let bound = 1.0 / 64f32.sqrt();
        let mlp_out = values(&weights, "blocks.0.mlp.2.weight");
        assert!(mlp_out.iter().all(|v| v.abs() < bound));
        assert!(
            mlp_out.iter().any(|v| v.abs() > bound / 2.0),
            "spread over the range"
        );
        // Embedding: N(0, 1/d) cut at 3 std.
        let std = 1.0 / 16f32.sqrt();
        let embed = values(&weights, "vocab_embed.weight");
        assert!(embed.iter().all(|v| v.abs() <= 3.0 * std));
        let var = embed.iter().map(|v| v * v).sum::<f32>() / embed.len() as f32;
        assert!(
            (var.sqrt() / std - 1.0).abs() < 0.25,
            "std {} vs {std}",
            var.sqrt()
        );
    }

    #[test]
    fn state_dict_round_trips_through_the_network() {
        let c = config();
        let device = Default::default();
        let net: Dit<Flex> = c.init(5, &device);
        let exported = net.state_dict();
        let mut expected: Vec<String> = c.param_specs().into_iter().map(|s| s.name).collect();
        expected.push(INV_FREQ.into());
        expected.sort();
        assert_eq!(exported.names().collect::<Vec<_>>(), expected);
        // Linear weights are exported in PyTorch's [out, in] layout.
        assert_eq!(
            exported
                .get("blocks.0.attn_qkv.weight")
                .unwrap()
                .shape
                .to_vec(),
            vec![48, 16]
        );
        let mut init = c.init_state_dict(5);
        init.insert(INV_FREQ, exported.get(INV_FREQ).unwrap().clone());
        assert_eq!(exported, init);
        let reloaded = Dit::<Flex>::from_state_dict(&c, &exported, &device).unwrap();
        assert_eq!(reloaded.state_dict(), exported);
        assert_eq!(reloaded.config(), c);
    }

    #[test]
    fn wrong_weights_are_rejected_with_their_name() {
        let c = config();
        let device = Default::default();
        let load = |weights: &StateDict| {
            Dit::<Flex>::from_state_dict(&c, weights, &device)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };

        let mut missing = c.init_state_dict(1);
        missing.0.remove("blocks.1.mlp.2.bias");
        assert!(load(&missing).contains("missing weight `blocks.1.mlp.2.bias`"));

        let mut reshaped = c.init_state_dict(1);
        reshaped.insert(
            "blocks.0.attn_out.weight",
            TensorData::zeros::<f32, _>([16, 8]),
        );
        let err = load(&reshaped);
        assert!(
            err.contains("`blocks.0.attn_out.weight` has shape [16, 8], expected [16, 16]"),
            "{err}"
        );

        let mut extra = c.init_state_dict(1);
        extra.insert("blocks.2.norm1.weight", TensorData::zeros::<f32, _>([16]));
        assert!(load(&extra).contains("unexpected weight `blocks.2.norm1.weight`"));

        let mut heads = c.init_state_dict(1);
        heads.insert(INV_FREQ, TensorData::new(rotary_inv_freq(4), [2]));
        assert!(load(&heads).contains("does not match n_heads = 2"));

        let mut ints = c.init_state_dict(1);
        ints.insert("norm_final.weight", TensorData::new(vec![1i64; 16], [16]));
        assert!(load(&ints).contains("expected a float tensor"));
    }

    #[test]
    fn prefixes_add_and_strip() {
        let weights = config().init_state_dict(2);
        let both = {
            let mut both = weights.clone().with_prefix("model.");
            both.0.extend(weights.clone().with_prefix("ema.").0);
            both
        };
        assert_eq!(both.len(), 2 * weights.len());
        assert_eq!(both.strip_prefix("ema."), weights);
    }
}
