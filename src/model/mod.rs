//! The denoising network: nanoDD's Diffusion Transformer, its weights (named as nanoDD's
//! state dict), model folders, and the import of nanoDD checkpoints.

mod config;
mod dit;
mod folder;
mod nanodd;
mod tensor_file;
mod weights;

pub use config::DitConfig;
pub use dit::{Dit, DitTrace, TIME_FREQ_DIM, rotary_inv_freq, seed_dropout};
pub use folder::{
    EXPERIMENT_FILE, INFO_FILE, ImportSummary, LoadedModel, ModelInfo, NET_PREFIX, WEIGHTS_FILE,
    import_nanodd, load_model_folder, model_state_dict, network_from_weights, read_model_info,
    write_model_folder,
};
pub use nanodd::{
    ModelArgs, NanoddCheckpoint, WeightSet, read_checkpoint as read_nanodd_checkpoint,
};
pub use weights::{INV_FREQ, Init, ParamSpec, StateDict};
