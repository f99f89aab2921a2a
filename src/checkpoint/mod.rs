//! Weights on disk: every file that holds a trained network, how it is written, and how it
//! is opened again for evaluation, sampling and resuming.
//!
//! ```text
//! run folder     results/<experiment>/<run>/checkpoints/latest.safetensors, best.safetensors
//!                (written by `ddexp run`): both weight sets and the optimiser state
//! model folder   model.json, experiment.ron, weights.safetensors (written by
//!                `ddexp import nanodd`): one weight set
//! nanoDD .pt     a checkpoint of the reference implementation, read by `ddexp import nanodd`
//! ```
//!
//! Every weights file is safetensors ([`tensor_file`]) and names the network's tensors as
//! nanoDD's `D3PMAbsorbing` state dict does: `net.*` for the network in PyTorch's layout
//! ([`crate::model::StateDict`]), plus the schedule buffers `betas` and `alpha_bars`. So
//! nanoDD can load a ddexp model folder as it is.

mod model_folder;
mod nanodd;
mod open;
pub mod tensor_file;
pub mod torch_storage;
mod training;

pub use model_folder::{
    ImportSummary, ModelInfo, model_state_dict, network_from_weights, read_model_info,
    write_model_folder,
};
pub use nanodd::{
    ModelArgs, NanoddCheckpoint, import_nanodd, load_nanodd,
    read_checkpoint as read_nanodd_checkpoint,
};
pub use open::{CheckpointChoice, LoadedModel, Origin, SavedModel, open};
pub use training::{BEST, Checkpoint, CheckpointWeights, LATEST};

/// The name of the first tensor among `tensors` that holds a NaN or an infinity (integer
/// tensors are skipped). Weights read from disk are checked so that a damaged or diverged
/// file fails with its name, instead of evaluating to NaN or sampling blanks.
pub fn non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a burn::tensor::TensorData)>,
) -> Option<&'a str> {
    use burn::tensor::DType;
    tensors.into_iter().find_map(|(name, data)| {
        let finite = match data.dtype {
            DType::F32 => data
                .as_slice::<f32>()
                .is_ok_and(|v| v.iter().all(|x| x.is_finite())),
            DType::F64 | DType::F16 | DType::BF16 => data
                .to_vec::<f64>()
                .is_ok_and(|v| v.iter().all(|x| x.is_finite())),
            _ => true,
        };
        (!finite).then_some(name.as_str())
    })
}

/// Prefix of the network's weights in a D3PM-level state dict (nanoDD's `self.net`).
pub const NET_PREFIX: &str = "net.";
/// A model folder's provenance file.
pub const INFO_FILE: &str = "model.json";
/// A model folder's weights.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
