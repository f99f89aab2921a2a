//! The compute backends ddexp can run on.
//!
//! The flex backend (pure Rust, CPU) is always built and is the default. The `cuda` cargo
//! feature adds burn-cuda, which loads the CUDA driver and NVRTC when it first runs, so a
//! binary built with it still starts on a machine without a GPU.

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_AVAILABLE: bool = cfg!(feature = "cuda");

/// The CPU backend.
pub type Cpu = burn::backend::Flex;

/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;
