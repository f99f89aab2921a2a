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

/// CUDA device `index`, checked: a machine without the driver or without that device gives
/// an error that says so instead of a panic deep inside the runtime.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> anyhow::Result<burn::backend::cuda::CudaDevice> {
    use burn::tensor::Tensor;
    let device = burn::backend::cuda::CudaDevice::new(index);
    let probe = std::panic::catch_unwind(|| {
        let t = Tensor::<Cuda, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar()
    });
    match probe {
        Ok(_) => Ok(device),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow::bail!(
                "cannot use CUDA device {index}: {message}\n(is the NVIDIA driver installed and does this machine have a GPU with that index? `nvidia-smi` lists them)"
            )
        }
    }
}

/// Bytes the CUDA allocator holds on device `index` right now (what the process costs the
/// GPU, padding and pooled blocks included).
#[cfg(feature = "cuda")]
pub fn cuda_reserved_bytes(index: usize) -> Option<u64> {
    use burn::cubecl::Runtime;
    let device = burn::backend::cuda::CudaDevice::new(index);
    burn::cubecl::cuda::CudaRuntime::client(&device)
        .memory_usage()
        .ok()
        .map(|usage| usage.bytes_reserved)
}

/// Work that runs on one device of whichever backend an experiment names (evaluation and
/// sampling; training picks its own autodiff backend).
pub trait Job {
    type Output;
    fn run<B: burn::tensor::backend::Backend>(
        self,
        device: &B::Device,
    ) -> anyhow::Result<Self::Output>;
}

/// Runs `job` on the first device of `topology`: flex on the CPU, or CUDA device
/// `topology.devices[0]` (a binary built without the `cuda` feature says how to rebuild).
pub fn run_on_one_device<J: Job>(
    topology: &crate::spec::Topology,
    job: J,
) -> anyhow::Result<J::Output> {
    match topology.backend {
        crate::spec::Backend::Cpu => job.run::<Cpu>(&burn::backend::flex::FlexDevice),
        crate::spec::Backend::Cuda => run_on_cuda(topology, job),
    }
}

#[cfg(feature = "cuda")]
fn run_on_cuda<J: Job>(topology: &crate::spec::Topology, job: J) -> anyhow::Result<J::Output> {
    let device = cuda_device(topology.devices.first().copied().unwrap_or(0))?;
    job.run::<Cuda>(&device)
}

#[cfg(not(feature = "cuda"))]
fn run_on_cuda<J: Job>(_: &crate::spec::Topology, _: J) -> anyhow::Result<J::Output> {
    anyhow::bail!(crate::spec::cuda_missing_message())
}
