//! The denoising network: nanoDD's Diffusion Transformer, its configuration, and its weights
//! as a state dict named as nanoDD's.

mod config;
mod dit;
mod state_dict;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

pub use config::DitConfig;
pub use dit::{Dit, DitTrace, TIME_FREQ_DIM, rotary_inv_freq, seed_dropout};
pub(crate) use state_dict::as_f32;
pub use state_dict::{INV_FREQ, Init, ParamSpec, StateDict, check_names_and_shapes};

/// Which weights of a trained network: the ones the optimiser produced, or their
/// exponential moving average.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WeightSet {
    /// The exponential moving average (what evaluation and sampling use by default).
    #[default]
    Ema,
    /// The raw training weights.
    Model,
}

impl WeightSet {
    pub fn name(self) -> &'static str {
        match self {
            WeightSet::Ema => "ema",
            WeightSet::Model => "model",
        }
    }
}

/// Row-major token ids as the network's input, a [batch, seq_len] tensor on `device`.
pub fn token_tensor<B: Backend>(
    ids: &[u32],
    batch: usize,
    seq_len: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(ids, [batch, seq_len]), device)
}

/// A [batch, seq_len] tensor of token ids back on the host, row-major.
pub fn token_ids<B: Backend>(x: Tensor<B, 2, Int>) -> Vec<u32> {
    x.into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("token ids")
        .into_iter()
        .map(|t| t as u32)
        .collect()
}
